"""The ``ideal`` engine: the continuous-batching server the papers' theorems assume.

Semantics (DLPM §2-4, VTC §A, klpm.md §1; settled in issue #2 and kept as they were):

Clock and events.
    One total order of events: (time, event-kind rank, sequence number). Ranks: arrivals (in
    instance order) < scheduling decision < forward step < end-of-step events (prefill inserts in
    admission order, then finishes in ``(finish_step, seq)`` order) < ``policy.on_step_end``.
    No wall clock is read into the trace. Every step is *mixed* (kind ``"M"``): it prefills the
    requests admitted in it and decodes one token for every request already running.

Arrivals.
    Before each step every request with ``arrival <= now`` joins the waiting queue:
    ``policy.on_arrival(req, now, snap)`` is called first (``now`` is the engine time at which it
    joins, ``>= req.arrival``; ``snap`` shows the queue without it), then it enters the waiting
    index. When nothing runs and nothing waits the clock jumps to the next arrival.

Scheduling.
    Once per forward step, if the queue is non-empty and a running slot is free,
    ``policy.decide(snap)`` returns a :class:`~prefixsched.reference.policies.base.Decision`. The
    engine replays it through a fresh :class:`IdealBatchBuilder` (the same code the policy's
    ``snap.batch()`` runs) and raises :class:`~prefixsched.errors.IllegalDecisionError` naming the
    request and the violated limit if any admitted id is unknown, duplicated, not yet arrived, not
    waiting, or does not fit: running slots (``max_running_requests``), prefill-token budget
    (``max_prefill_tokens`` on extend tokens; the *first* request of a step may exceed it alone),
    or KV memory. If nothing is admitted and nothing runs, the clock jumps to the next arrival; if
    there is none, the run cannot progress and ``IllegalDecisionError`` is raised (a policy that
    idles the server forever). A request that does not fit may be skipped and the pass goes on
    (the builder does not stop at the first misfit). There is **no chunked prefill**
    (``Limits.chunked_prefill_size`` is ignored) **and no retraction or preemption**.

Prefix hit and KV memory.
    As SGLang, only the first ``prompt_len - 1`` tokens of a prompt are matched (at least one token
    is prefilled): the request uses ``used = min(match_pages, (prompt_len - 1) // page_size)``
    pages, ``cached_tokens = used * page_size`` and ``extend_tokens = prompt_len - cached_tokens``.
    Only the used pages are pinned, so a request always fits an empty pool of ``prompt_len +
    output_len`` tokens. The engine first matches every admitted prompt's used pages
    (``match_prefix(split=True, touch=True, count_hit=True)``) and pins them (``inc_lock_ref``),
    then reserves ``extend + output_len`` private tokens per request, evicting LRU unlocked leaves
    if ``free_tokens`` is short. The **full output is reserved at admission** (as VTC's artifact
    and the DLPM proofs assume). KV feasibility of a batch is exact: a batch fits iff
    ``sum(extend + output) <= free + evictable - (unlocked tokens on the union of the batch's used
    prefix paths)``. Two requests of one batch that share an uncached prefix both prefill it (the
    tree only learns it at the end of the step), and a policy charging ``extend_tokens`` charges
    both (DLPM §8.5).

Step time.
    ``cost_model.step_time(sum of weighted_extend(extend, prompt_len) over the admitted,
    batch_size = requests running before the step, context = their prompt + generated tokens)``.

End of a step.
    (1) Each admitted request's full prompt pages are inserted into the tree (SGLang's
    ``cache_unfinished_req``); the engine locks the new deepest node, unlocks the matched node and
    releases the private tokens of the full extend pages. Its first output token appears at the
    step end. (2) Every running request (including those just admitted) produced one output token;
    a request admitted in step ``a`` finishes in step ``a + output_len - 1`` (a heap keyed by
    ``(finish_step, seq)``). (3) A finished request inserts prompt + output full pages, releases
    its remaining private tokens and unpins its node. (4) ``policy.on_step_end(decoded, finished,
    snap)``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import Any

from prefixsched.errors import IllegalDecisionError
from prefixsched.reference.engine.core import EngineBase, fill_keys, lock_walk
from prefixsched.reference.engine.snapshot import EngineSnapshot
from prefixsched.reference.policies.base import Decision, FinishedInfo, Policy
from prefixsched.reference.waiting import Entry
from prefixsched.theory.model import Request

__all__ = ["IdealWorker", "IdealBatchBuilder"]


class IdealBatchBuilder:
    """Cumulative admission budget of one step of the ``ideal`` engine (DLPM's CAN_ADD).

    Implements :class:`~prefixsched.reference.policies.base.BatchBuilder`. Limits, all checked
    cumulatively over the requests added so far:

    - running slots: ``running + added < max_running_requests``;
    - prefill budget: ``sum(extend_tokens) <= max_prefill_tokens``, except that the first request
      of a step may exceed it alone (no chunked prefill);
    - KV: ``sum(extend + output_len) + (unlocked tokens on the union of the added requests' matched
      paths) <= free_tokens + evictable_tokens`` at the start of the step. The union is counted
      per node and per matched page (a match ending inside an edge counts only its pages).

    ``full`` (an attribute, updated after each admission) is True once no *waiting* request could
    be added any more: no slot left, or (after the first request) the prefill budget left is below
    the smallest waiting ``extend_tokens``, or the KV left is below the smallest waiting
    ``extend_tokens + output_len``. It is exact in one direction: when ``full`` is True every
    ``try_add`` of a waiting request returns False. Passes therefore stop early instead of
    visiting a queue in which nothing fits (this matters for DLPM: refill rounds are triggered
    only by requests visited while admission is still possible).
    """

    __slots__ = ("_slots", "_rem", "_avail", "_counted", "_ids", "_set", "_engine", "_root", "full", "_min_ext", "_min_need")

    def __init__(self, engine: "IdealWorker") -> None:
        cache = engine.cache
        self._engine = engine
        self._slots = engine.max_running - engine.n_running
        self._rem = engine.max_prefill
        self._avail = cache.free_tokens + cache.evictable_tokens
        self._counted: dict[int, int] = {}
        self._ids: list[str] = []
        self._set: set[str] = set()
        self._root = cache.root
        self._min_ext = engine.index.min_extend()
        self._min_need = engine.index.min_need()
        self.full = self._slots <= 0 or self._avail < self._min_need

    @property
    def admitted(self) -> Sequence[str]:
        return tuple(self._ids)

    def _lock_walk(self, e: Entry) -> tuple[int, list[tuple[int, int]]]:
        """Tokens the entry's match would newly take out of ``evictable`` and the per-node
        counted marks to commit (:func:`~prefixsched.reference.engine.core.lock_walk`)."""
        eng = self._engine
        return lock_walk(eng.cache.watched_node(e.seq), e.used, self._counted, self._root, eng.cache)

    def client_full(self, client: str) -> bool:
        """True if no waiting request of ``client`` can be added any more (optional extension of
        the ``BatchBuilder`` protocol; exact in the same direction as ``full``: when True, every
        ``try_add`` of that client's waiting requests returns False)."""
        if self.full:
            return True
        eng = self._engine
        ci = eng.ci_of.get(client)
        if ci is None:
            return True
        idx = eng.index
        if self._avail < idx.min_need(ci):
            return True
        return bool(self._ids) and self._rem < idx.min_extend(ci)

    def why_not(self, e: Entry) -> str | None:
        """None if ``e`` fits next to the requests added so far, else the reason (text)."""
        if self._slots <= 0:
            return (
                f"no running slot left (max_running_requests = {self._engine.max_running}, "
                f"running {self._engine.n_running}, admitted in this step {len(self._ids)})"
            )
        ext = e.extend_tokens
        if self._ids and ext > self._rem:
            return (
                f"extend_tokens {ext} > prefill budget left {self._rem} "
                f"(max_prefill_tokens = {self._engine.max_prefill})"
            )
        need = ext + e.request.output_len
        if need > self._avail:
            return f"needs {need} KV tokens (extend + output), only {self._avail} free or evictable left"
        lock, _ = self._lock_walk(e)
        if need + lock > self._avail:
            return (
                f"needs {need} KV tokens (extend + output) and pins {lock} evictable cached tokens; "
                f"only {self._avail} free or evictable left"
            )
        return None

    def _need(self, e: Any) -> int | None:
        """Private KV ``extend + output_len`` if ``e`` passes the cheap checks (not added yet, a
        running slot, the prefill-token budget, KV before locking its prefix); else None."""
        if self._slots <= 0 or e.request.id in self._set:
            return None
        ext = e.extend_tokens
        if self._ids and ext > self._rem:
            return None
        need = ext + e.request.output_len
        return need if need <= self._avail else None

    def fits(self, entry: Any) -> bool:
        need = self._need(entry)
        if need is None:
            return False
        lock, _ = self._lock_walk(entry)
        return need + lock <= self._avail

    def try_add(self, entry: Any) -> bool:
        e = entry
        need = self._need(e)
        if need is None:
            return False
        ext = e.extend_tokens
        rid = e.request.id
        lock, updates = self._lock_walk(e)
        if need + lock > self._avail:
            return False
        counted = self._counted
        for nid, hi in updates:
            counted[nid] = hi
        self._avail -= need + lock
        self._rem -= ext
        self._slots -= 1
        self._ids.append(rid)
        self._set.add(rid)
        self.full = self._slots <= 0 or self._rem < self._min_ext or self._avail < self._min_need
        return True




class IdealWorker(EngineBase):
    """The ``ideal`` engine (module docstring); constructor as :class:`EngineBase`."""

    name = "ideal"
    version = "prefixsched.engine.ideal/1"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.heap: list[tuple[int, int]] = []  # (finish_step, seq)
        self.dec_n = 0  # requests in the decode batch (admitted in an earlier step, not finished)
        self.dec_sum = 0  # sum over the decode batch of (prompt_len - admit_step)
        self.snap = EngineSnapshot(self)

    # ------------------------------------------------------------------ snapshot hooks

    def new_builder(self) -> IdealBatchBuilder:
        return IdealBatchBuilder(self)

    def queue_order(self) -> Iterator[Entry]:
        return self.index.iter_fcfs()

    def _enqueue(self, seq: int, request: Request) -> None:
        self.index.add(Entry(request, seq, self.prompt_keys(seq), self.ci_of[request.client]))

    # ------------------------------------------------------------------ the phases

    def _iterate(self, final: bool) -> bool:
        self._arrivals()
        admitted = self._schedule()
        if not admitted and self.n_running == 0:
            return self._idle(final)
        weighted = self._admit(admitted)
        end = self._forward(weighted)
        self._results(admitted, end)
        return False

    def _schedule(self) -> list[Entry]:
        """Phase 2: one ``policy.decide`` per step (if a request waits and a slot is free),
        replayed through a fresh builder."""
        if not self.index.entries or self.n_running >= self.max_running:
            return []
        snap = self.snap
        snap.now = self.now
        snap.step = self.step
        decision = self.policy.decide(snap)
        self.decisions += 1
        return _validate(self, decision, self.policy, self.now, self.reqs)

    def _admit(self, admitted: list[Entry]) -> float:
        """Phase 3: match and pin every admitted prompt, then reserve ``extend + output`` per
        request (evicting LRU leaves if short). Returns the step's weighted extend tokens."""
        if not admitted:
            return 0.0
        cache = self.cache
        if self.log_events:
            cache.event_time = self.now  # type: ignore[attr-defined]
        cat = self.instance.cost_model.c_attn
        step = self.step
        now = self.now
        weighted = 0.0
        total_need = 0
        index = self.index
        for e in admitted:
            s = e.seq
            r = e.request
            index.remove(e)
            m = cache.match_prefix(e.keys[: e.used], split=True, touch=True, count_hit=True)
            if m.pages != e.used:  # pragma: no cover - engine bug guard
                raise AssertionError(f"match of {r.id!r} changed between decision and admission")
            cache.inc_lock_ref(m.node)
            self.node_of[s] = m.node
            c = e.cached_tokens
            x = e.extend_tokens
            self.cached_r[s] = c
            self.extend_r[s] = x
            self.hit_total += c
            self.extend_total += x
            need = x + r.output_len
            self.private[s] = need
            total_need += need
            weighted += (1.0 + cat * r.prompt_len) * x
            self.admit_s[s] = step
            self.finish_s[s] = step + r.output_len - 1
            self.admit_t[s] = now
            self._client_started(e.ci)
        free = cache.free_tokens
        if total_need > free:
            cache.evict(total_need - free)
        cache.reserve(total_need)
        self.n_running += len(admitted)
        if self.n_running > self.peak_running:
            self.peak_running = self.n_running
        used = cache.total_tokens + cache.reserved_tokens
        if used > self.peak_kv:
            self.peak_kv = used
        return weighted

    def _forward(self, weighted: float) -> float:
        """Phase 4: the step's duration (identical arithmetic to ``CostModel.step_time``); records
        the step and returns its end time."""
        cost = self.instance.cost_model
        dt = 0.0
        if weighted > 0:
            dt = cost.prefill_base_s + cost.prefill_per_token_s * weighted
        dec_n = self.dec_n
        if dec_n > 0:
            dt += (
                cost.decode_base_s
                + cost.decode_per_request_s * dec_n
                + cost.decode_per_context_token_s * (self.dec_sum + dec_n * self.step)
            )
        start = self.now
        end = start + dt
        self._record_step(start, end, "M")
        if self.log_events:
            self.cache.event_time = end  # type: ignore[attr-defined]
        return end

    def _results(self, admitted: list[Entry], end: float) -> None:
        """Phase 5: prefill inserts (admission order), finishes (``(finish_step, seq)`` order),
        ``policy.on_step_end``."""
        cache = self.cache
        ps = self.page_size
        step = self.step
        clients = self.clients
        run_by = self.run_by
        decoded = {clients[ci]: run_by[ci] for ci in sorted(self.run_clients)}
        heap = self.heap
        node_of = self.node_of
        private = self.private
        for e in admitted:
            s = e.seq
            r = e.request
            self.first_t[s] = end
            keys = e.keys
            moved = (e.cum[-1] if e.cum is not None else len(keys) * ps) - e.cached_tokens
            if moved:
                cache.release(moved)
                private[s] -= moved
            res = cache.insert(keys)
            cache.inc_lock_ref(res.node)
            cache.dec_lock_ref(node_of[s])
            node_of[s] = res.node
            if r.output_len == 1:
                heapq.heappush(heap, (step, s))
            else:
                heapq.heappush(heap, (self.finish_s[s], s))
                self.dec_n += 1
                self.dec_sum += r.prompt_len - step
        finished: list[FinishedInfo] = []
        reqs = self.reqs
        while heap and heap[0][0] == step:
            _, s = heapq.heappop(heap)
            r = reqs[s]
            self.finish_t[s] = end
            if r.output_len > 1:
                self.dec_n -= 1
                self.dec_sum -= r.prompt_len - self.admit_s[s]
            cache.release(private[s])
            private[s] = 0
            cache.insert(fill_keys(r, ps, r.prompt_len + r.output_len, self.prompt_keys(s)))
            self.keys_of[s] = None  # a finished prompt's keys are not needed again (memory at 1M requests)
            cache.dec_lock_ref(node_of[s])
            node_of[s] = None
            self._client_stopped(self.ci_of[r.client])
            self.n_running -= 1
            finished.append(FinishedInfo(r.id, r.client))
            if self.log_events:
                self.finish_log.append((end, r))
        self.done += len(finished)
        self.now = end
        snap = self.snap
        snap.now = end
        snap.step = step
        self.policy.on_step_end(decoded, finished, snap)
        self._log_state()
        self.step += 1
        if self.progress is not None and finished:
            self.progress(self.done, len(reqs))


def _validate(eng: "IdealWorker", decision: Any, policy: Policy, now: float, reqs: Sequence[Request]) -> list[Entry]:
    """Replay ``decision`` through a fresh builder; return the admitted entries in order.

    Raises
    ------
    IllegalDecisionError
        Naming the policy, the request and the violated rule.
    """
    if not isinstance(decision, Decision):
        raise IllegalDecisionError(
            f"policy {policy.name!r} returned {type(decision).__name__}, expected a Decision"
        )
    if decision.preempt:  # the papers' model has no preemption (engine.preemption is sglang-only)
        raise IllegalDecisionError(
            f"policy {policy.name!r} at t={now}: preempts {decision.preempt[0]!r}, but the ideal engine never preempts"
        )
    ids = decision.admit
    if not ids:
        return []
    b = IdealBatchBuilder(eng)
    out: list[Entry] = []
    seen: set[str] = set()
    entries = eng.index.entries
    for rid in ids:
        where = f"policy {policy.name!r} at t={now}: request {rid!r}"
        if not isinstance(rid, str):
            raise IllegalDecisionError(f"{where}: ids must be strings")
        if rid in seen:
            raise IllegalDecisionError(f"{where}: admitted twice in one decision")
        seen.add(rid)
        seq = eng.seq_of.get(rid)
        if seq is None:
            raise IllegalDecisionError(f"{where}: no such request in the instance")
        e = entries.get(seq)
        if e is None:
            r = reqs[seq]
            if r.arrival > now:
                raise IllegalDecisionError(f"{where}: has not arrived yet (arrival {r.arrival})")
            raise IllegalDecisionError(f"{where}: is not waiting (already admitted)")
        why = b.why_not(e)
        if why is not None:
            raise IllegalDecisionError(f"{where}: does not fit: {why}")
        ok = b.try_add(e)
        assert ok
        out.append(e)
    return out
