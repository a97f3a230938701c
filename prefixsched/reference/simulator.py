"""Deterministic discrete-event simulator of one continuous-batching worker (SGLang-like).

``simulate(instance, policy)`` runs a :class:`~prefixsched.reference.policies.base.Policy` over an
:class:`~prefixsched.theory.model.Instance` and returns a :class:`~prefixsched.theory.trace.Trace`.
Units: time in seconds (the instance's :class:`~prefixsched.theory.cost.CostModel`; with
``CostModel.token_units()`` one uncached token = one time unit), lengths in tokens.

Engine semantics (decided here; DESIGN.md "Determinism and time", issue #2 items 4-7)
----------------------------------------------------------------------------------------
Clock and events.
    One total order of events: (time, event-kind rank, sequence number). Ranks: arrivals (in
    instance order) < scheduling decision < forward step < end-of-step events (prefill inserts in
    admission order, then finishes in ``(finish_step, seq)`` order) < ``policy.on_step_end``.
    No wall clock is read into the trace.

Arrivals.
    Before each step every request with ``arrival <= now`` joins the waiting queue:
    ``policy.on_arrival(req, now, snap)`` is called first (``now`` is the engine time at which it
    joins, ``>= req.arrival``; ``snap`` shows the queue without it), then it enters the waiting
    index. When nothing runs and nothing waits the clock jumps to the next arrival.

Scheduling.
    Once per forward step, if the queue is non-empty and a running slot is free,
    ``policy.decide(snap)`` returns a :class:`~prefixsched.reference.policies.base.Decision`. The
    engine replays it through a fresh :class:`BatchBuilder` (the same code the policy's
    ``snap.batch()`` runs) and raises :class:`~prefixsched.errors.IllegalDecisionError` naming the
    request and the violated limit if any admitted id is unknown, duplicated, not yet arrived, not
    waiting, or does not fit: running slots (``max_running_requests``), prefill-token budget
    (``max_prefill_tokens`` on extend tokens; the *first* request of a step may exceed it alone, as
    SGLang with chunked prefill off), or KV memory. If nothing is admitted and nothing runs, the
    clock jumps to the next arrival; if there is none, the run cannot progress and
    ``IllegalDecisionError`` is raised (a policy that idles the server forever).
    The builder's ``full`` is True as soon as no *waiting* request can fit any more (the index
    keeps the smallest extend and extend + output of the queue), and the builder offers the
    optional extension ``client_full(client)`` (the same per client); policies use them to stop a
    pass early, never to change its outcome.

Prefix hit and KV memory.
    As SGLang, only the first ``prompt_len - 1`` tokens of a prompt are matched (at least one token
    is prefilled): the request uses ``used = min(match_pages, (prompt_len - 1) // page_size)``
    pages, ``cached_tokens = used * page_size`` (page-aligned; with ``page_size == 1`` this is
    ``min(match_pages, prompt_len - 1)``) and ``extend_tokens = prompt_len - cached_tokens``. Only
    the used pages are pinned, so a request always fits an empty pool of ``prompt_len +
    output_len`` tokens. The engine first matches every admitted prompt's used pages
    (``match_prefix(split=True, touch=True, count_hit=True)``) and pins them (``inc_lock_ref``),
    then reserves ``extend + output_len`` private tokens per request, evicting LRU unlocked leaves
    if ``free_tokens`` is short. The **full output is reserved at admission; retraction and
    preemption are not modelled** (as VTC's artifact and the DLPM proofs assume). KV feasibility of
    a batch is exact: a batch fits iff ``sum(extend + output) <= free + evictable - (unlocked
    tokens on the union of the batch's used prefix paths)``; the builder counts that union node by
    node (partial edges included), so
    ``try_add`` returns True iff the engine can apply the admission. Two requests of one batch that
    share an uncached prefix both prefill it (the tree only learns it at the end of the step), and
    a policy charging ``extend_tokens`` charges both (DLPM §8.5).

Step time.
    ``cost_model.step_time(sum of weighted_extend(extend, prompt_len) over the admitted,
    batch_size = requests running before the step, context = their prompt + generated tokens)``.
    A cost model with zero decode cost (``token_units``) gives decode-only steps of zero duration
    (``step_end == step_start``).

End of a step.
    (1) Each admitted request's full prompt pages are inserted into the tree (SGLang's
    ``cache_unfinished_req``); the engine locks the new deepest node, unlocks the matched node and
    releases the private tokens of the full extend pages (pages another request inserted in the
    meantime are simply freed). Its first output token appears at the step end.
    (2) Every running request (including those just admitted) produced one output token; a request
    admitted in step ``a`` finishes in step ``a + output_len - 1``. Finishes come off a heap keyed
    by ``(finish_step, seq)``: per-step work is O(#clients with running requests + events), never
    a loop over the running batch.
    (3) A finished request inserts prompt + output full pages
    (``sequence_page_keys(req, page_size, with_output=True)``), releases its remaining private
    tokens and unpins its node.
    (4) ``policy.on_step_end(decoded, finished, snap)``: ``decoded[client]`` = the client's
    running requests in the step; ``snap`` shows the state after the step.

Trace.
    One :class:`~prefixsched.theory.trace.RequestRecord` per request (instance order); steps in
    which nothing ran are not recorded. ``meta``: ``seed``, ``engine``, ``prompt_tokens``,
    ``hit_tokens`` (sum of claimed ``cached_tokens``), ``extend_tokens``, ``output_tokens``,
    ``cache_hit_tokens``/``inserted_tokens``/``evicted_tokens`` (cache statistics), ``peak_running``,
    ``peak_kv_used_tokens``, ``decisions`` (number of ``decide`` calls), and with
    ``record_states=True`` ``states``: ``[[step, policy.state()], ...]`` logged after every step
    whose state differs from the previous log entry (compact).

Steppable engine.
    :class:`Worker` holds the engine state and the loop; ``simulate`` is
    ``Worker(instance, policy).run(final=True)`` followed by ``Worker.trace()``. A cluster
    (:mod:`prefixsched.reference.cluster`) builds workers in *online* mode, hands them requests
    one by one (:meth:`Worker.submit`) and advances them to each arrival time
    (:meth:`Worker.run` runs the steps starting before it); a worker then produces exactly the
    trace ``simulate`` gives on the sub-instance of the requests it received.

The engine itself draws no random numbers; ``seed`` is recorded in ``meta`` (policies with
randomness take their own ``seed`` parameter).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prefixsched.errors import IllegalDecisionError, InputError
from prefixsched.reference.policies.base import Decision, FinishedInfo, Policy
from prefixsched.reference.radix_cache import RadixCache
from prefixsched.reference.waiting import Entry, WaitingIndex
from prefixsched.theory.model import Instance, Request, page_keys, sequence_page_keys
from prefixsched.theory.trace import RequestRecord, Trace

__all__ = ["simulate", "Worker", "BatchBuilder", "EngineSnapshot", "ENGINE_VERSION"]

ENGINE_VERSION = "prefixsched.reference.simulator/1"


class BatchBuilder:
    """Cumulative admission budget of one step (SGLang's ``PrefillAdder``; DLPM's CAN_ADD).

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

    def __init__(self, engine: "Worker") -> None:
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
        counted marks to commit."""
        upto = e.used
        if upto == 0:
            return 0, []
        node = self._engine.cache.watched_node(e.seq)
        counted = self._counted
        root = self._root
        new = 0
        updates: list[tuple[int, int]] = []
        x = node
        while x is not root and x.lock_ref == 0:
            d = x.depth
            lo = d - len(x.key)
            hi = d if d < upto else upto
            if hi > lo:
                prev = counted.get(x.id)
                if prev is None:
                    new += hi - lo
                    updates.append((x.id, hi))
                else:
                    if hi > prev:
                        new += hi - prev
                        updates.append((x.id, hi))
                    break  # ancestors were counted in full by the walk that counted x
            x = x.parent
        return new * self._engine.page_size, updates

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


def _seq_of(e: Any) -> int:
    return e.seq


class _CacheView:
    """Read-only view of the engine's radix cache (``CacheView`` protocol)."""

    __slots__ = ("_engine", "_dfs_key", "_dfs_order")

    def __init__(self, engine: "Worker") -> None:
        self._engine = engine
        self._dfs_key: Any = None
        self._dfs_order: list[Any] = []

    def match_tokens(self, request: Request) -> int:
        eng = self._engine
        seq = eng.seq_of.get(request.id)
        if seq is not None:
            e = eng.index.entries.get(seq)
            if e is not None:
                return e.cached_tokens
        ps = eng.page_size
        keys = page_keys(request.prompt, ps)
        pages = eng.cache.match_prefix(keys, split=False, touch=False).pages
        return min(pages, (request.prompt_len - 1) // ps) * ps

    def dfs_weight_order(self, entries: Sequence[Any]) -> list[Any]:
        """SGLang's dfs-weight order (:meth:`WaitingIndex.dfs_weight_order`). The last result is
        reused while the waiting index is unchanged (same version, same entries)."""
        eng = self._engine
        entries = list(entries)
        key = (eng.index.version, tuple(map(_seq_of, entries)))
        if key == self._dfs_key:
            return list(self._dfs_order)
        wn = eng.cache.watched_node
        order = eng.index.dfs_weight_order(entries, lambda e: wn(e.seq))
        self._dfs_key = key
        self._dfs_order = order
        return list(order)

    @property
    def free_tokens(self) -> int:
        return self._engine.cache.free_tokens

    @property
    def evictable_tokens(self) -> int:
        return self._engine.cache.evictable_tokens


class EngineSnapshot:
    """The simulator's :class:`~prefixsched.reference.policies.base.Snapshot` (read-only view).

    One object per run; ``now`` and ``step`` are updated by the engine. Iterators over the
    waiting queue must not be held across engine calls.
    """

    def __init__(self, engine: "Worker") -> None:
        inst = engine.instance
        self._engine = engine
        self.now = 0.0
        self.step = 0
        self.limits = inst.limits
        self.weights = inst.weights
        self.cost_model = inst.cost_model
        self.cache = _CacheView(engine)

    def _ci(self, client: str) -> int | None:
        return self._engine.ci_of.get(client)

    def waiting_count(self, client: str | None = None) -> int:
        idx = self._engine.index
        if client is None:
            return len(idx.entries)
        ci = self._ci(client)
        return 0 if ci is None else idx.count_by[ci]

    def waiting_clients(self) -> Sequence[str]:
        names = self._engine.clients
        return [names[ci] for ci in self._engine.index.clients_waiting]

    def running_count(self, client: str | None = None) -> int:
        eng = self._engine
        if client is None:
            return eng.n_running
        ci = self._ci(client)
        return 0 if ci is None else eng.run_by[ci]

    def running_clients(self) -> Sequence[str]:
        names = self._engine.clients
        return [names[ci] for ci in sorted(self._engine.run_clients)]

    def fcfs(self, client: str | None = None) -> Iterator[Any]:
        idx = self._engine.index
        if client is None:
            return idx.iter_fcfs()
        ci = self._ci(client)
        return iter(()) if ci is None else idx.iter_fcfs(ci)

    def lpm(self, client: str | None = None) -> Iterator[Any]:
        idx = self._engine.index
        if client is None:
            return idx.iter_lpm()
        ci = self._ci(client)
        return iter(()) if ci is None else idx.iter_lpm(ci)

    def entry(self, request_id: str) -> Any:
        """The waiting entry of ``request_id``; KeyError if it is not waiting."""
        eng = self._engine
        seq = eng.seq_of.get(request_id)
        e = None if seq is None else eng.index.entries.get(seq)
        if e is None:
            raise KeyError(f"request {request_id!r} is not waiting")
        return e

    def batch(self) -> BatchBuilder:
        return BatchBuilder(self._engine)


class _EvictionLogCache(RadixCache):
    """A :class:`RadixCache` that logs every evicted leaf (for a cluster's dispatcher, D²LPM
    Algorithm 2 ON_EVICT).

    Each evicted leaf ``x`` appends ``(event_time, path_keys, start_pages)`` to ``evictions``:
    ``path_keys`` are the page keys from the root to the end of ``x``'s edge and ``start_pages`` is
    where ``x``'s edge starts, so the worker stopped holding pages ``path_keys[start_pages:]`` (it
    still holds ``path_keys[:start_pages]``). ``event_time`` is set by the :class:`Worker` before
    each phase of a step (step start for admission-time evictions, step end for evictions made by
    end-of-step inserts).

    It uses the cache's public ``on_evict`` hook, called once per evicted leaf right after it is
    unlinked, so the path is read there. The cluster tests check that the logged pages add up to
    ``stats.evicted_tokens``.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, on_evict=self._log_eviction, **kw)
        self.event_time = 0.0
        self.evictions: list[tuple[float, tuple, int]] = []

    def _log_eviction(self, x: Any, parent: Any) -> None:
        parts = [x.key]
        root = self.root
        y = parent
        while y is not root:
            parts.append(y.key)
            y = y.parent
        path: tuple = ()
        for p in reversed(parts):
            path += p
        self.evictions.append((self.event_time, path, x.depth - len(x.key)))


class Worker:
    """One continuous-batching worker that can be driven step by step (the engine of
    :func:`simulate`, and one replica of :func:`prefixsched.reference.cluster.simulate_cluster`).

    Two modes:

    - **whole instance** (``requests=None``): every request of ``instance`` is known up front, in
      instance order (this is :func:`simulate`: ``Worker(inst, pol).run(final=True)`` then
      :meth:`trace`);
    - **online** (``requests=()``): requests are handed over one by one with :meth:`submit`, in
      non-decreasing arrival order, and the worker is advanced with :meth:`run` up to a time. The
      requests' positions in submission order are their ``seq`` and clients get indices in order
      of first submission, so the worker behaves exactly as :func:`simulate` on the sub-instance
      of the requests it received (same trace, byte for byte).

    Engine semantics: module docstring. ``run(t)`` runs every step whose start time is ``< t``; a
    request with ``arrival == t`` submitted after ``run(t)`` joins before the step starting at
    ``t`` (as in :func:`simulate`, where arrivals ``<= now`` join before the step at ``now``).

    Parameters
    ----------
    instance:
        The instance: limits (per worker), cost model, weights; in whole-instance mode also the
        requests.
    policy:
        A fresh local :class:`Policy`.
    requests:
        ``None`` (whole instance) or ``()`` (online mode; the only other accepted value).
    seed:
        Recorded in ``trace.meta["seed"]``.
    progress:
        Optional ``callable(done, total_known)`` called after each step in which requests
        finished.
    record_states:
        Log ``policy.state()`` after every step in which it changed.
    log_events:
        Keep ``finish_log`` (``(time, request)`` per finished request, in finishing order) and
        eviction events (``(time, path_keys, start_pages)``, see :class:`_EvictionLogCache`) for a
        cluster dispatcher; :meth:`pop_events` hands them over.

    Raises
    ------
    InputError
        Bad ``seed``, ``policy`` or ``requests``.
    """

    def __init__(
        self,
        instance: Instance,
        policy: Policy,
        *,
        requests: Sequence[Request] | None = None,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
        record_states: bool = False,
        log_events: bool = False,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError("seed", f"must be an integer, got {seed!r}")
        if not isinstance(policy, Policy):
            raise InputError("policy", f"must be a Policy instance, got {type(policy).__name__}")
        if requests is not None and len(requests) != 0:
            raise InputError("requests", "must be None (whole instance) or empty (online mode, use submit())")
        self.instance = instance
        self.policy = policy
        self.seed = seed
        self.progress = progress
        self.record_states = record_states
        self.log_events = log_events
        lim = instance.limits
        ps = lim.page_size
        self.page_size = ps
        self.max_running = lim.max_running_requests
        self.max_prefill = lim.max_prefill_tokens
        all_reqs = instance.requests
        online = requests is not None
        self.online = online
        if online:
            self.clients: list[str] | tuple[str, ...] = []
            self.ci_of: dict[str, int] = {}
            self.reqs: list[Request] = []
            self.seq_of: dict[str, int] = {}
            n = 0
        else:
            self.clients = instance.clients
            self.ci_of = {c: i for i, c in enumerate(self.clients)}
            self.reqs = list(all_reqs)
            self.seq_of = {r.id: i for i, r in enumerate(all_reqs)}
            n = len(all_reqs)
        # LPM keys are -cached * N + seq: any N > max seq gives the same order
        self.index = WaitingIndex(len(all_reqs), instance.clients, ps)
        cache_cls = _EvictionLogCache if log_events else RadixCache
        self.cache = cache_cls(lim.kv_capacity_tokens, ps, on_match_change=self.index.on_match_change)
        self.index.attach(self.cache)
        nc = len(instance.clients)
        self.n_running = 0
        self.run_by = [0] * nc
        self.run_clients: set[int] = set()
        self.snap = EngineSnapshot(self)
        # per-request state, by seq
        self.keys_of: list[Any] = [None] * n
        self.admit_t = [0.0] * n
        self.first_t = [0.0] * n
        self.finish_t = [0.0] * n
        self.admit_s = [0] * n
        self.finish_s = [0] * n
        self.cached_r = [0] * n
        self.extend_r = [0] * n
        self.private = [0] * n
        self.node_of: list[Any] = [None] * n
        # run state
        self.heap: list[tuple[int, int]] = []  # (finish_step, seq)
        self.dec_n = 0  # requests in the decode batch (admitted in an earlier step, not finished)
        self.dec_sum = 0  # sum over the decode batch of (prompt_len - admit_step)
        self.step_start: list[float] = []
        self.step_end: list[float] = []
        self.states: list[list[Any]] = []
        self.last_state: Any = None
        self.now = 0.0
        self.step = 0
        self.nxt = 0  # next request (by seq) to join the waiting queue
        self.done = 0
        self.decisions = 0
        self.peak_running = 0
        self.peak_kv = 0
        self.hit_total = 0
        self.extend_total = 0
        self.blocked = False  # online mode: the policy idled the server; wait for the next arrival
        self.finish_log: list[tuple[float, Request]] = []

    # ------------------------------------------------------------------ online interface

    def submit(self, request: Request, keys: tuple | None = None) -> int:
        """Hand ``request`` to the worker (online mode); it joins the waiting queue before the
        first step starting at or after ``request.arrival``. ``keys`` are its prompt's page keys
        (computed if omitted). Returns its ``seq`` on this worker.

        Raises
        ------
        InputError
            Not in online mode, a duplicate id, more requests than the instance holds (the waiting
            index's LPM keys are sized by it), an arrival earlier than the previous submission's
            or earlier than the start of a step already run (the worker was advanced past it).
        """
        if not self.online:
            raise InputError("requests", "submit() needs a worker built with requests=()")
        if request.id in self.seq_of:
            raise InputError("request.id", f"duplicate id {request.id!r}")
        if self.reqs and request.arrival < self.reqs[-1].arrival:
            raise InputError("request.arrival", f"{request.arrival} is before the previous submission's {self.reqs[-1].arrival}")
        if self.step_start and request.arrival <= self.step_start[-1]:
            raise InputError(
                "request.arrival",
                f"{request.arrival} is before the start {self.step_start[-1]} of a step already run "
                "(advance the worker only to times <= the next arrival)",
            )
        if len(self.reqs) >= self.index.capacity:
            raise InputError(
                "requests",
                f"this worker was built for at most {self.index.capacity} requests (the instance's "
                "request count); build it from an instance that holds every request it will be given",
            )
        c = request.client
        if c not in self.ci_of:
            if len(self.clients) >= len(self.run_by):
                raise InputError("request.client", f"client {c!r} is not a client of the instance")
            self.ci_of[c] = len(self.clients)
            self.clients.append(c)  # type: ignore[union-attr]
        seq = len(self.reqs)
        self.reqs.append(request)
        self.seq_of[request.id] = seq
        self.keys_of.append(keys)
        for a in (self.admit_t, self.first_t, self.finish_t):
            a.append(0.0)
        for b in (self.admit_s, self.finish_s, self.cached_r, self.extend_r, self.private):
            b.append(0)
        self.node_of.append(None)
        return seq

    @property
    def n_submitted(self) -> int:
        """Requests known to the worker (submitted, or the whole instance)."""
        return len(self.reqs)

    @property
    def n_waiting(self) -> int:
        """Requests in the waiting queue now."""
        return len(self.index.entries)

    @property
    def outstanding(self) -> int:
        """Known requests not finished yet (waiting, running or not yet joined): D²LPM's ``s_w``."""
        return len(self.reqs) - self.done

    def pop_events(self) -> tuple[list[tuple[float, Request]], list[tuple[float, tuple, int]]]:
        """Finish and eviction events logged since the last call (``log_events=True``), each list
        in time order: ``(time, request)`` and ``(time, path_keys, start_pages)``."""
        fin = self.finish_log
        self.finish_log = []
        cache = self.cache
        ev: list[tuple[float, tuple, int]] = []
        if isinstance(cache, _EvictionLogCache):
            ev = cache.evictions
            cache.evictions = []
        return fin, ev

    # ------------------------------------------------------------------ the engine loop

    def run(self, until: float = math.inf, *, final: bool = False) -> None:
        """Run every step whose start time is ``< until`` (module docstring semantics).

        With ``final=True`` no further request will be submitted: the worker runs until every
        known request has finished.

        Raises
        ------
        IllegalDecisionError
            As :func:`simulate` (an illegal decision, or a policy that idles the server while
            requests wait and, with ``final``, no further request will arrive).
        """
        policy = self.policy
        snap = self.snap
        reqs = self.reqs
        cost = self.instance.cost_model
        ps = self.page_size
        cache = self.cache
        index = self.index
        ci_of = self.ci_of
        run_by = self.run_by
        run_clients = self.run_clients
        clients = self.clients
        max_running = self.max_running
        record_states = self.record_states
        progress = self.progress
        log = self.log_events
        finish_log = self.finish_log

        # cost-model coefficients (inlined step_time; identical arithmetic to CostModel.step_time)
        pa, pb, cat = cost.prefill_base_s, cost.prefill_per_token_s, cost.c_attn
        dc, dd, de = cost.decode_base_s, cost.decode_per_request_s, cost.decode_per_context_token_s

        admit_t = self.admit_t
        first_t = self.first_t
        finish_t = self.finish_t
        admit_s = self.admit_s
        finish_s = self.finish_s
        cached_r = self.cached_r
        extend_r = self.extend_r
        private = self.private
        node_of = self.node_of
        keys_of = self.keys_of

        heap = self.heap
        dec_n = self.dec_n
        dec_sum = self.dec_sum
        step_start = self.step_start
        step_end = self.step_end
        states = self.states
        last_state = self.last_state

        now = self.now
        step = self.step
        nxt = self.nxt
        done = self.done
        decisions = self.decisions
        peak_running = self.peak_running
        peak_kv = self.peak_kv
        hit_total = self.hit_total
        extend_total = self.extend_total
        blocked = self.blocked
        n = len(reqs)

        try:
            while True:
                if blocked:  # online mode: the policy idled the server; wake up at the next arrival
                    if nxt < n:
                        now = reqs[nxt].arrival
                        blocked = False
                    elif final:
                        raise IllegalDecisionError(
                            f"policy {policy.name!r} admitted nothing at t={now} (step {step}) while the "
                            f"server is idle, {len(index.entries)} requests wait and no further request "
                            "will arrive: the run cannot make progress"
                        )
                    else:
                        break
                if self.n_running == 0 and not index.entries:
                    if nxt >= n:
                        break  # idle and nothing known: finished, or wait for a submission
                    if reqs[nxt].arrival > now:
                        now = reqs[nxt].arrival
                if now >= until:
                    break
                # arrivals join the queue
                while nxt < n and reqs[nxt].arrival <= now:
                    r = reqs[nxt]
                    snap.now = now
                    snap.step = step
                    policy.on_arrival(r, now, snap)
                    k = keys_of[nxt]
                    index.add(Entry(r, nxt, page_keys(r.prompt, ps) if k is None else k, ci_of[r.client]))
                    nxt += 1

                admitted: list[Entry] = []
                if index.entries and self.n_running < max_running:
                    snap.now = now
                    snap.step = step
                    decision = policy.decide(snap)
                    decisions += 1
                    admitted = _validate(self, decision, policy, now, reqs)
                if not admitted and self.n_running == 0:
                    if nxt < n:  # idle server: jump to the next arrival (all earlier ones have joined)
                        now = reqs[nxt].arrival
                        continue
                    if not final:
                        blocked = True
                        break
                    raise IllegalDecisionError(
                        f"policy {policy.name!r} admitted nothing at t={now} (step {step}) while the server is "
                        f"idle, {len(index.entries)} requests wait and no further request will arrive: the run "
                        "cannot make progress"
                    )

                # ---- apply the admissions: match + pin every prompt, then reserve (evicting if short)
                weighted = 0.0
                if admitted:
                    if log:
                        cache.event_time = now  # type: ignore[union-attr]
                    total_need = 0
                    for e in admitted:
                        s = e.seq
                        r = e.request
                        index.remove(e)
                        m = cache.match_prefix(e.keys[: e.used], split=True, touch=True, count_hit=True)
                        if m.pages != e.used:  # pragma: no cover - engine bug guard
                            raise AssertionError(f"match of {r.id!r} changed between decision and admission")
                        cache.inc_lock_ref(m.node)
                        node_of[s] = m.node
                        c = e.cached_tokens
                        x = e.extend_tokens
                        cached_r[s] = c
                        extend_r[s] = x
                        hit_total += c
                        extend_total += x
                        need = x + r.output_len
                        private[s] = need
                        total_need += need
                        weighted += (1.0 + cat * r.prompt_len) * x
                        admit_s[s] = step
                        finish_s[s] = step + r.output_len - 1
                        admit_t[s] = now
                        ci = e.ci
                        if run_by[ci] == 0:
                            run_clients.add(ci)
                        run_by[ci] += 1
                    free = cache.free_tokens
                    if total_need > free:
                        cache.evict(total_need - free)
                    cache.reserve(total_need)
                    self.n_running += len(admitted)
                    if self.n_running > peak_running:
                        peak_running = self.n_running
                    used = cache.total_tokens + cache.reserved_tokens
                    if used > peak_kv:
                        peak_kv = used

                # ---- the forward step
                dt = 0.0
                if weighted > 0:
                    dt = pa + pb * weighted
                if dec_n > 0:
                    dt += dc + dd * dec_n + de * (dec_sum + dec_n * step)
                start = now
                end = now + dt
                step_start.append(start)
                step_end.append(end)
                if log:
                    cache.event_time = end  # type: ignore[union-attr]

                # decoded tokens per client (every running request, admitted ones included)
                decoded = {clients[ci]: run_by[ci] for ci in sorted(run_clients)}

                # ---- end of step (1): prefill inserts, in admission order
                for e in admitted:
                    s = e.seq
                    r = e.request
                    first_t[s] = end
                    keys = e.keys
                    moved = (len(keys) - e.used) * ps
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
                        heapq.heappush(heap, (finish_s[s], s))
                        dec_n += 1
                        dec_sum += r.prompt_len - step

                # ---- end of step (2)-(3): finishes
                finished: list[FinishedInfo] = []
                while heap and heap[0][0] == step:
                    _, s = heapq.heappop(heap)
                    r = reqs[s]
                    finish_t[s] = end
                    if r.output_len > 1:
                        dec_n -= 1
                        dec_sum -= r.prompt_len - admit_s[s]
                    cache.release(private[s])
                    private[s] = 0
                    cache.insert(sequence_page_keys(r, ps, with_output=True))
                    cache.dec_lock_ref(node_of[s])
                    node_of[s] = None
                    ci = ci_of[r.client]
                    run_by[ci] -= 1
                    if run_by[ci] == 0:
                        run_clients.discard(ci)
                    self.n_running -= 1
                    finished.append(FinishedInfo(r.id, r.client))
                    if log:
                        finish_log.append((end, r))
                done += len(finished)

                now = end
                snap.now = now
                snap.step = step
                policy.on_step_end(decoded, finished, snap)
                if record_states:
                    st = policy.state()
                    if st != last_state:
                        states.append([step, st])
                        last_state = st
                step += 1
                if progress is not None and finished:
                    progress(done, n)
        finally:
            self.dec_n = dec_n
            self.dec_sum = dec_sum
            self.last_state = last_state
            self.now = now
            self.step = step
            self.nxt = nxt
            self.done = done
            self.decisions = decisions
            self.peak_running = peak_running
            self.peak_kv = peak_kv
            self.hit_total = hit_total
            self.extend_total = extend_total
            self.blocked = blocked

    # ------------------------------------------------------------------ result

    def trace(self) -> Trace:
        """The trace of the requests this worker received (module docstring, "Trace"); call it
        after ``run(final=True)``. In online mode the records are in submission order (= the
        order of the sub-instance of these requests)."""
        reqs = self.reqs
        cache = self.cache
        admit_t, first_t, finish_t = self.admit_t, self.first_t, self.finish_t
        admit_s, finish_s, cached_r, extend_r = self.admit_s, self.finish_s, self.cached_r, self.extend_r
        records = [
            RequestRecord(
                id=r.id,
                client=r.client,
                arrival=r.arrival,
                admit=admit_t[s],
                first_token=first_t[s],
                finish=finish_t[s],
                admit_step=admit_s[s],
                finish_step=finish_s[s],
                prompt_len=r.prompt_len,
                cached_tokens=cached_r[s],
                extend_tokens=extend_r[s],
                output_len=r.output_len,
            )
            for s, r in enumerate(reqs)
        ]
        meta: dict[str, Any] = {
            "seed": self.seed,
            "engine": ENGINE_VERSION,
            "prompt_tokens": sum(r.prompt_len for r in reqs),
            "hit_tokens": self.hit_total,
            "extend_tokens": self.extend_total,
            "output_tokens": sum(r.output_len for r in reqs),
            "cache_hit_tokens": cache.stats.hit_tokens,
            "inserted_tokens": cache.stats.inserted_tokens,
            "evicted_tokens": cache.stats.evicted_tokens,
            "peak_running": self.peak_running,
            "peak_kv_used_tokens": self.peak_kv,
            "decisions": self.decisions,
        }
        if self.record_states:
            meta["states"] = self.states
        return Trace(
            policy=self.policy.describe(),
            requests=records,
            step_start=list(self.step_start),
            step_end=list(self.step_end),
            meta=meta,
        )


_Engine = Worker  # the engine state the builder and the snapshot read (historical name)


def simulate(
    instance: Instance,
    policy: Policy,
    *,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    record_states: bool = False,
) -> Trace:
    """Run ``policy`` on ``instance`` (module docstring) and return the trace.

    Parameters
    ----------
    instance:
        The validated instance (requests sorted by arrival).
    policy:
        A fresh policy object (policies keep state across calls; do not reuse one across runs).
    seed:
        Recorded in ``trace.meta["seed"]``; the engine itself is deterministic.
    progress:
        Optional ``callable(done_requests, total)``, called after each step in which requests
        finished.
    record_states:
        Log ``policy.state()`` after every step in which it changed (``meta["states"]``).

    Returns
    -------
    Trace
        Same instance, policy parameters and seed give a byte-identical ``Trace.to_dict()``.

    Raises
    ------
    IllegalDecisionError
        If the policy admits a request that is unknown, not waiting, duplicated or does not fit,
        returns something that is not a :class:`Decision`, or idles the server forever.
    InputError
        If ``seed`` is not an int or ``policy`` is not a :class:`Policy`.
    """
    w = Worker(instance, policy, seed=seed, progress=progress, record_states=record_states)
    w.run(final=True)
    return w.trace()


def _validate(eng: Worker, decision: Any, policy: Policy, now: float, reqs: Sequence[Request]) -> list[Entry]:
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
    ids = decision.admit
    if not ids:
        return []
    b = BatchBuilder(eng)
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
