"""What every engine shares: the requests, the radix cache, the waiting index, the per-request
record keeping, online submission and the trace.

An engine is a :class:`EngineBase` subclass that implements one scheduling iteration per call of
:meth:`EngineBase._iterate`, written in the phases of SGLang's event loop
(``Scheduler.event_loop_normal``): **arrivals** (``ingest_requests``), **scheduling** (the
policy's decision, validated), **admission** (match, lock, evict, allocate, chunk), **forward**
(the cost model's clock) and **results** (``process_batch_result``: tokens, inserts, finishes,
retraction). :meth:`EngineBase.run` drives the iterations; the two engines are
:class:`~prefixsched.reference.engine.ideal.IdealWorker` (the papers' model) and
:class:`~prefixsched.reference.engine.sglang.SGLangWorker` (SGLang 0.5.23).

Per-request state lives in lists indexed by ``seq`` (the request's position in the instance, or
in submission order on an online worker); a request's history is its list of runs
(:class:`~prefixsched.theory.trace.Run`), written to the trace by :meth:`EngineBase.trace`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from prefixsched.errors import IllegalDecisionError, InputError
from prefixsched.reference.policies.base import Policy
from prefixsched.reference.radix_cache import RadixCache
from prefixsched.reference.waiting import WaitingIndex
from prefixsched.theory.model import Instance, PageKeys, Request, WKey, page_keys
from prefixsched.theory.trace import RequestRecord, Run, Trace

__all__ = ["EngineBase", "EvictionLogCache", "fill_keys", "output_token", "lock_walk"]


def fill_keys(request: Request, page_size: int, n_tokens: int, prompt_keys: tuple | None = None) -> tuple:
    """Page keys of the first ``n_tokens`` tokens of ``prompt + outputs`` (full pages only).

    Prompt pages keep their :func:`~prefixsched.theory.model.page_keys` keys; a page holding at
    least one output token is ``("O", request.id, page_index)``: outputs are synthetic and unique
    to their request (:mod:`prefixsched.theory.model`), so they occupy KV but never match another
    prompt. ``prompt_keys`` (the prompt's page keys) saves recomputing them.
    """
    keys = page_keys(request.prompt, page_size) if prompt_keys is None else prompt_keys
    rid = request.id
    if page_size == 1 and keys and type(keys[0]) is WKey:  # compressed keys cover the whole prompt
        plen = request.prompt_len
        if n_tokens >= plen:
            return keys + tuple(("O", rid, p) for p in range(plen, n_tokens))
        t = 0
        for i, k in enumerate(keys):
            t += k[3] if type(k) is WKey else 1
            if t > n_tokens:
                return keys[:i]
        return keys
    n_full = n_tokens // page_size
    if n_full <= len(keys):
        return keys[:n_full]
    return keys + tuple(("O", rid, p) for p in range(len(keys), n_full))


def output_token(seq: int, j: int) -> int:
    """A token id for output token ``j`` of the request at ``seq`` when token ids are needed
    (SGLang conformance states): unique per ``(seq, j)`` and above every prompt token id the
    loaders produce (``2**52 + seq * 2**24 + j``)."""
    return (1 << 52) + (seq << 24) + j


def lock_walk(node: Any, upto: int, counted: dict[int, int], root: Any, cache: RadixCache) -> tuple[int, list[tuple[int, int]]]:
    """What pinning a match would take out of the evictable tokens, next to the matches already
    pinned in this pass.

    ``node`` is the node whose edge holds the end of a match of ``upto`` pages; ``counted[node_id]``
    is how many pages (from the root, ``<= node.depth``) of that node the pass has already counted.
    Walks up from ``node`` through *unlocked* nodes (lock refs are path-monotone, so the first
    locked node ends the walk) and counts the pages not counted yet; a node counted before stops
    the walk (its ancestors were counted in full). Returns ``(tokens, updates)``: the new tokens
    (:meth:`RadixCache.edge_tokens`) and the ``(node_id, pages)`` marks to commit if the match is
    pinned.
    This is the union of the pinned prefix paths of a batch, counted node by node and per matched
    page (a match ending inside an edge counts only its pages).
    """
    if upto == 0:
        return 0, []
    new = 0
    updates: list[tuple[int, int]] = []
    x = node
    et = cache.edge_tokens
    while x is not root and x.lock_ref == 0:
        d = x.depth
        lo = d - len(x.key)
        hi = d if d < upto else upto
        if hi > lo:
            prev = counted.get(x.id)
            if prev is None:
                new += et(x, hi - lo)
                updates.append((x.id, hi))
            else:
                if hi > prev:
                    new += et(x, hi - lo) - et(x, prev - lo)
                    updates.append((x.id, hi))
                break  # ancestors were counted in full by the walk that counted x
        x = x.parent
    return new, updates


class EvictionLogCache(RadixCache):
    """A :class:`RadixCache` that logs every evicted leaf (for a cluster's dispatcher, D²LPM
    Algorithm 2 ON_EVICT).

    Each evicted leaf ``x`` appends ``(event_time, path_keys, start_pages)`` to ``evictions``:
    ``path_keys`` are the page keys from the root to the end of ``x``'s edge and ``start_pages`` is
    where ``x``'s edge starts, so the worker stopped holding pages ``path_keys[start_pages:]`` (it
    still holds ``path_keys[:start_pages]``). ``event_time`` is set by the engine before each
    phase of a step (step start for admission-time evictions, step end for evictions made by
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


class EngineBase:
    """State and bookkeeping shared by the engines (module docstring).

    Two modes:

    - **whole instance** (``requests=None``): every request of ``instance`` is known up front, in
      instance order (:func:`~prefixsched.reference.simulator.simulate`);
    - **online** (``requests=()``): requests are handed over one by one with :meth:`submit`, in
      non-decreasing arrival order, and the engine is advanced with :meth:`run` up to a time. The
      requests' positions in submission order are their ``seq`` and clients get indices in order
      of first submission, so the engine behaves exactly as on the sub-instance of the requests it
      received (same trace, byte for byte).

    ``run(t)`` runs every step whose start time is ``< t``; a request with ``arrival == t``
    submitted after ``run(t)`` joins before the step starting at ``t``.

    Parameters
    ----------
    instance:
        Limits (per worker), cost model, weights; in whole-instance mode also the requests.
    policy:
        A fresh :class:`Policy`.
    requests:
        ``None`` (whole instance) or ``()`` (online mode; the only other accepted value).
    seed:
        Recorded in ``trace.meta["seed"]``; the engines draw no random numbers.
    progress:
        Optional ``callable(done, total_known)`` called after each step in which requests finished.
    record_states:
        Log ``policy.state()`` after every step in which it changed (``meta["states"]``).
    log_events:
        Keep ``finish_log`` and eviction events for a cluster dispatcher (:meth:`pop_events`).

    Raises
    ------
    InputError
        Bad ``seed``, ``policy`` or ``requests``.
    """

    #: Engine name (``"ideal"`` or ``"sglang"``), recorded in ``trace.meta["engine"]``.
    name = ""
    #: Version tag of the engine's semantics, recorded in ``trace.meta["engine_version"]``.
    version = ""

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
        self.page_size = lim.page_size
        self.max_running = lim.max_running_requests
        self.max_prefill = lim.max_prefill_tokens
        all_reqs = instance.requests
        self.online = requests is not None
        if self.online:
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
        self.index = WaitingIndex(len(all_reqs), instance.clients, self.page_size)
        self.keymaker = PageKeys(all_reqs, self.page_size)  # consistent compressed page-1 keys
        cache_cls = EvictionLogCache if log_events else RadixCache
        self.cache = cache_cls(lim.kv_capacity_tokens, self.page_size, on_match_change=self.index.on_match_change)
        self.index.attach(self.cache)
        nc = len(instance.clients)
        self.n_running = 0
        self.run_by = [0] * nc
        self.run_clients: set[int] = set()
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
        self.runs_of: list[list[list[Any]] | None] = [None] * n  # only requests of several runs/chunks
        # run state
        self.step_start: list[float] = []
        self.step_end: list[float] = []
        self.kinds: list[str] = []
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
        self.snap: Any = None  # set by the subclass (its EngineSnapshot)

    # ------------------------------------------------------------------ online interface

    def _grow(self) -> None:
        """Per-request lists get one more slot (a submitted request)."""
        for a in (self.admit_t, self.first_t, self.finish_t):
            a.append(0.0)
        for b in (self.admit_s, self.finish_s, self.cached_r, self.extend_r, self.private):
            b.append(0)
        self.node_of.append(None)
        self.runs_of.append(None)

    def submit(self, request: Request, keys: tuple | None = None) -> int:
        """Hand ``request`` to the engine (online mode); it joins the waiting queue before the
        first step starting at or after ``request.arrival``. ``keys`` are its prompt's page keys
        (computed if omitted). Returns its ``seq`` on this engine.

        Raises
        ------
        InputError
            Not in online mode, a duplicate id, more requests than the instance holds (the waiting
            index's LPM keys are sized by it), an arrival earlier than the previous submission's
            or earlier than the start of a step already run (the engine was advanced past it).
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
        self._grow()
        return seq

    @property
    def n_submitted(self) -> int:
        """Requests known to the engine (submitted, or the whole instance)."""
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
        if isinstance(cache, EvictionLogCache):
            ev = cache.evictions
            cache.evictions = []
        return fin, ev

    def prompt_keys(self, seq: int) -> tuple:
        """The prompt's page keys of request ``seq`` (computed once, kept until it finishes)."""
        k = self.keys_of[seq]
        if k is None:
            k = self.keymaker.keys(self.reqs[seq].prompt)
            self.keys_of[seq] = k
        return k

    # ------------------------------------------------------------------ shared phase helpers

    def _log_state(self) -> None:
        if self.record_states:
            st = self.policy.state()
            if st != self.last_state:
                self.states.append([self.step, st])
                self.last_state = st

    def _no_progress(self) -> IllegalDecisionError:
        return IllegalDecisionError(
            f"policy {self.policy.name!r} admitted nothing at t={self.now} (step {self.step}) while the "
            f"server is idle, {len(self.index.entries)} requests wait and no further request will "
            "arrive: the run cannot make progress"
        )

    def _idle(self, final: bool) -> bool:
        """Nothing ran in this iteration and nothing runs: jump to the next arrival, or report
        that the engine must stop. Returns True if the loop should stop (online: blocked)."""
        if self.nxt < len(self.reqs):
            self.now = self.reqs[self.nxt].arrival
            return False
        if not final:
            self.blocked = True
            return True
        raise self._no_progress()

    def _iterate(self, final: bool) -> bool:  # pragma: no cover - abstract
        """One scheduling iteration; returns True to stop the run loop."""
        raise NotImplementedError

    def _busy(self) -> bool:
        """True while something runs (a running request, or a chunked prefill in progress)."""
        return self.n_running > 0

    def run(self, until: float = math.inf, *, final: bool = False) -> None:
        """Run every step whose start time is ``< until`` (module docstring semantics).

        With ``final=True`` no further request will be submitted: the engine runs until every
        known request has finished.

        Raises
        ------
        IllegalDecisionError
            An illegal decision, or a policy that idles the server while requests wait and, with
            ``final``, no further request will arrive.
        """
        n = len(self.reqs)
        while True:
            if self.blocked:  # online mode: the policy idled the server; wake up at the next arrival
                if self.nxt < n:
                    self.now = self.reqs[self.nxt].arrival
                    self.blocked = False
                elif final:
                    raise self._no_progress()
                else:
                    break
            if not self._busy() and not self.index.entries:
                if self.nxt >= n:
                    break  # idle and nothing known: finished, or wait for a submission
                if self.reqs[self.nxt].arrival > self.now:
                    self._on_idle_gap()
                    self.now = self.reqs[self.nxt].arrival
            if self.now >= until:
                break
            if self._iterate(final):
                break

    def _on_idle_gap(self) -> None:
        """The server is fully idle until the next arrival (SGLang ``Scheduler.on_idle``)."""

    def _arrivals(self) -> None:
        """Phase 1: every request with ``arrival <= now`` joins the waiting queue
        (``policy.on_arrival`` first, with the queue shown without it)."""
        reqs = self.reqs
        n = len(reqs)
        snap = self.snap
        policy = self.policy
        while self.nxt < n and reqs[self.nxt].arrival <= self.now:
            s = self.nxt
            r = reqs[s]
            snap.now = self.now
            snap.step = self.step
            policy.on_arrival(r, self.now, snap)
            self._enqueue(s, r)
            self.nxt += 1

    def _enqueue(self, seq: int, request: Request) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _client_started(self, ci: int) -> None:
        if self.run_by[ci] == 0:
            self.run_clients.add(ci)
        self.run_by[ci] += 1

    def _client_stopped(self, ci: int) -> None:
        self.run_by[ci] -= 1
        if self.run_by[ci] == 0:
            self.run_clients.discard(ci)

    def _record_step(self, start: float, end: float, kind: str) -> None:
        self.step_start.append(start)
        self.step_end.append(end)
        self.kinds.append(kind)

    # ------------------------------------------------------------------ result

    def _meta(self) -> dict[str, Any]:
        reqs = self.reqs
        cache = self.cache
        meta: dict[str, Any] = {
            "seed": self.seed,
            "engine": self.name,
            "engine_version": self.version,
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
        return meta

    def trace(self) -> Trace:
        """The trace of the requests this engine received; call it after ``run(final=True)``. In
        online mode the records are in submission order (= the order of the sub-instance of
        these requests)."""
        reqs = self.reqs
        admit_t, first_t, finish_t = self.admit_t, self.first_t, self.finish_t
        admit_s, finish_s, cached_r, extend_r = self.admit_s, self.finish_s, self.cached_r, self.extend_r
        runs_of = self.runs_of
        records = []
        for s, r in enumerate(reqs):
            rl = runs_of[s]
            runs = None
            if rl is not None and not (len(rl) == 1 and len(rl[0][2]) == 1 and rl[0][4] == "finish"):
                runs = tuple(Run(x[0], x[1], tuple((st, tk) for st, tk in x[2]), x[3], x[4], x[5] if len(x) > 5 else None)
                             for x in rl)
            records.append(
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
                    runs=runs,
                )
            )
        kinds = "".join(self.kinds)
        return Trace(
            policy=self.policy.describe(),
            requests=records,
            step_start=list(self.step_start),
            step_end=list(self.step_end),
            meta=self._meta(),
            step_kinds=None if not kinds or set(kinds) == {"M"} else kinds,
            switches=self._switches(),
        )

    def _switches(self) -> Any:
        """The trace's switch events (:attr:`~prefixsched.theory.trace.Trace.switches`); None
        for an engine without swap-mode preemption."""
        return None
