"""SGLang's scheduler state as a prefixsched :class:`~prefixsched.reference.policies.base.Snapshot`,
and SGLang's ``PrefillAdder`` as the policy's :class:`BatchBuilder`.

This module is the whole adaptation: the reference policy classes
(:func:`prefixsched.reference.policies.create`) run unchanged on top of it, so there is one
implementation of every policy. Nothing here imports SGLang at module level; the classes take the
scheduler objects they are given (SGLang 0.5.23 and 0.5.17, sglang.md §1).

How a policy drives admission (the design of issue #10 §1, modelled by the simulator's
``sglang`` engine)
-------------------------------------------------------------------------------------------
One scheduling pass is one call of ``Scheduler._get_new_batch_prefill_raw``. The adder class the
scheduler builds for the pass is :func:`bound_adder_class` (a ``PrefillAdder`` subclass bound to
the scheduler's :class:`PolicyDriver`):

1. The scheduler resumes its chunked request (``add_chunked_req``) as usual.
2. The loop over the waiting queue calls ``adder.budget_state()`` before touching the first
   request (0.5.23). The bound adder's first such call runs ``policy.decide(snapshot)`` and then
   returns ``OTHER``, so the loop admits nothing more. SGLang 0.5.17 has no call at the loop top:
   there the first ``add_one_req`` of the loop triggers the decision (after the loop already ran
   ``init_next_round_input`` on the queue head; that match splits and touches like any visited
   request, the only difference from 0.5.23) and returns ``OTHER``.
3. During the decision the policy reads :class:`SGLangSnapshot` and admits through
   :class:`AdderBatchBuilder`; ``try_add(entry)`` does exactly what the loop body does for one
   visited request: the allocatable-slot check (``Scheduler.get_num_allocatable_reqs``, setting
   ``running_batch.batch_is_full``), ``req.init_next_round_input(tree_cache)`` (match, split, LRU
   touch), the real ``PrefillAdder.add_one_req``; True iff the request landed in
   ``can_run_list``. After any result other than ``CONTINUE`` the builder is ``full`` (SGLang
   stops at the first misfit) and ``NO_TOKEN`` sets ``batch_is_full`` as the loop does.
4. The scheduler removes ``can_run_list`` from the waiting queue and builds the batch as usual
   (a truncated request becomes the chunked request).

The snapshot's LPM order uses prefix lengths from a **non-mutating** walk of the tree
(:func:`peek_prefix_len`: no split, no LRU touch, the same ``len - 1`` cap and page alignment as
``mem_cache/common.py::match_kv_cache``), so only the requests the policy visits are matched
for real, as in SGLang's own loop. The walk needs the Python ``RadixCache``
(``mem_cache/radix_cache.py``, the default tree of 0.5.17 for a Llama model); for any other tree
(0.5.23's ``UnifiedRadixCache``, whose Rust core exposes no nodes) it falls back to the tree's own
``match_prefix``, which splits and touches exactly as SGLang's ``calc_priority`` does for its LPM
(decision: logged once; ``PolicyDriver.peek_mode`` says which one runs).

Client id (decision)
--------------------
``req.routing_key`` (``routing_key`` in ``/generate``, header ``X-SMG-Routing-Key`` on the OpenAI
routes), else ``req.session_id``, else the default client ``"default"`` (environment variable
``PREFIXSCHED_DEFAULT_CLIENT``).

Requests as the policies see them
---------------------------------
``Request(id=rid, client, arrival, prompt, output_len)``: ``arrival`` is the driver's clock when
the request first joined the waiting queue, ``prompt`` a read-only view of
``req.origin_input_ids`` and ``output_len`` = ``sampling_params.max_new_tokens`` (the real output
length is unknown before the request finishes; exact under ``ignore_eos``). FCFS order is
``(arrival, seq)`` with ``seq`` the order of entry into this scheduler's queue; a retracted or
preempted request re-queued goes to the back, as in SGLang's own queue (its arrival becomes the
re-queue time, :meth:`PolicyDriver.requeue`). LPM order is ``(-cached_tokens, arrival, seq)``.

Running requests are ``running_batch.reqs`` plus the scheduler's chunked request, minus finished
ones. ``snap.now`` is the driver's clock (seconds since the driver was created, or the twin
driver's simulated clock); the built-in policies' decisions do not depend on it, so the TP ranks
of one server, each running its own scheduler, decide alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefixsched.reference.policies.base import Decision, FinishedInfo, Policy
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Limits, Request, ServiceWeights

__all__ = [
    "DEFAULT_CLIENT",
    "client_of",
    "peek_prefix_len",
    "prefix_len_of",
    "extend_len_of",
    "PolicyDriver",
    "SGLangSnapshot",
    "AdderBatchBuilder",
    "bound_adder_class",
    "PassRecord",
]

logger = logging.getLogger("prefixsched.sglang")

DEFAULT_CLIENT = "default"


# ---------------------------------------------------------------------------------------------
# small readers of SGLang objects (0.5.17 and 0.5.23 spell some fields differently)


def client_of(req: Any, default: str = DEFAULT_CLIENT) -> str:
    """The client id of an SGLang ``Req`` (module docstring): routing key, session id, default."""
    for name in ("routing_key", "session_id"):
        v = getattr(req, name, None)
        if v is not None and v != "":
            return str(v)
    return default


def prefix_len_of(req: Any) -> int:
    """Device prefix length of the request's last match (``req.prefix_len`` in 0.5.23,
    ``len(req.prefix_indices)`` in 0.5.17)."""
    v = getattr(req, "prefix_len", None)
    if isinstance(v, int):
        return v
    idx = getattr(req, "prefix_indices", None)
    return 0 if idx is None else len(idx)


def extend_len_of(req: Any) -> int:
    """Tokens the request prefills in its current round (``req.extend_len`` in 0.5.23,
    ``req.extend_range.length`` in 0.5.17)."""
    v = getattr(req, "extend_len", None)
    if isinstance(v, int):
        return v
    rng = getattr(req, "extend_range", None)
    return 0 if rng is None else int(rng.length)


def _max_new_tokens(req: Any) -> int:
    return int(req.sampling_params.max_new_tokens)


class _Tokens(Sequence[int]):
    """Read-only view of a request's prompt token array (hashable by identity)."""

    __slots__ = ("_a",)

    def __init__(self, a: Any) -> None:
        self._a = a

    def __len__(self) -> int:
        return len(self._a)

    def __getitem__(self, i: Any) -> Any:
        return self._a[i]

    def __iter__(self) -> Iterator[int]:
        return iter(self._a)

    def __hash__(self) -> int:
        return id(self._a)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Tokens) and other._a is self._a


def _radix_key(tree: Any, req: Any) -> Any:
    """The ``RadixKey`` SGLang's ``match_kv_cache`` builds for ``req`` (prompt + output, the
    ``len - 1`` cap of ``Req._compute_max_prefix_len``, extra_key, cache_salt, SWA tail)."""
    tokens = req.origin_input_ids + req.output_ids
    limit = req._compute_max_prefix_len(len(tokens))
    try:
        from sglang.srt.mem_cache.common import _req_radix_key  # 0.5.23

        return _req_radix_key(tree, req, tokens, limit)
    except ImportError:
        pass
    from sglang.srt.mem_cache.radix_cache import RadixKey  # 0.5.17

    tail = 0
    fn = getattr(tree, "swa_reprefill_tail_tokens", None)
    if fn is not None:
        try:
            tail = fn() or 0
        except TypeError:
            tail = fn(req) or 0
    if tail:
        limit = min(limit, max(0, len(tokens) - tail))
    return RadixKey(token_ids=tokens, extra_key=getattr(req, "extra_key", None), limit=limit)


def _is_python_radix_cache(tree: Any) -> bool:
    try:
        from sglang.srt.mem_cache.radix_cache import RadixCache
    except ImportError:  # pragma: no cover - SGLang without the Python tree
        return False
    return type(tree) is RadixCache


def peek_prefix_len(tree: Any, req: Any) -> tuple[int, bool]:
    """``(cached tokens, exact)``: the device prefix ``req`` would match now, page-aligned and
    capped at ``len - 1`` like ``match_kv_cache``.

    On the Python ``RadixCache`` the walk copies ``RadixCache._match_prefix_helper`` without its
    side effects (no ``_split_node``, no ``last_access_time`` update): ``exact`` is True. On any
    other tree it calls ``tree.match_prefix`` (which may split and touch, like SGLang's LPM
    ``calc_priority``): ``exact`` is False.
    """
    key = _radix_key(tree, req)
    if not _is_python_radix_cache(tree):
        from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

        res = tree.match_prefix(MatchPrefixParams(key=key))
        return int(res.device_prefix_len), False
    if getattr(tree, "disable", False) or len(key) == 0:
        return 0, True
    conv = getattr(key, "maybe_to_bigram_view", None)
    if conv is not None:
        key, _ = conv(getattr(tree, "is_eagle", False))
    ps = tree.page_size
    key = key.page_aligned(ps)
    if len(key) == 0:
        return 0, True
    node = tree.root_node
    matched = 0
    child_key = key.child_key(ps)
    while len(key) > 0 and child_key in node.children:
        child = node.children[child_key]
        n = child.key.match(key, page_size=ps)
        matched += n
        if n < len(child.key):
            break
        node = child
        key = key[n:]
        if len(key):
            child_key = key.child_key(ps)
    return matched, True


# ---------------------------------------------------------------------------------------------
# waiting entries and the snapshot


class _Entry:
    """One waiting request (``WaitingEntry`` protocol); ``cached_tokens`` from the peek walk."""

    __slots__ = ("req", "request", "seq", "_snap", "_cached")

    def __init__(self, req: Any, request: Request, seq: int, snap: "SGLangSnapshot") -> None:
        self.req = req
        self.request = request
        self.seq = seq
        self._snap = snap
        self._cached: int | None = None

    @property
    def cached_tokens(self) -> int:
        if self._cached is None:
            self._cached = self._snap._peek(self.req)
        return self._cached

    @property
    def extend_tokens(self) -> int:
        return self.request.prompt_len - self.cached_tokens

    def __repr__(self) -> str:
        return f"_Entry({self.request.id!r}, client={self.request.client!r}, cached={self._cached})"


class _CacheView:
    __slots__ = ("_snap",)

    def __init__(self, snap: "SGLangSnapshot") -> None:
        self._snap = snap

    def match_tokens(self, request: Request) -> int:
        e = self._snap._by_id.get(request.id)
        if e is not None:
            return e.cached_tokens
        req = self._snap._driver.req_of(request.id)
        if req is None:
            raise KeyError(f"request {request.id!r} is not known to this scheduler")
        return self._snap._peek(req)

    def dfs_weight_order(self, entries: Sequence[Any]) -> list[Any]:
        raise NotImplementedError(
            "dfs-weight order is not offered by the SGLang adapter; use SGLang's own "
            "--schedule-policy dfs-weight without PREFIXSCHED_POLICY"
        )


class SGLangSnapshot:
    """The ``Snapshot`` protocol over a live SGLang scheduler (module docstring).

    Parameters
    ----------
    driver:
        The scheduler's :class:`PolicyDriver`.
    scheduler:
        The SGLang ``Scheduler`` (or the twin driver's stand-in).
    running_batch:
        The running batch of this pass (the one ``_get_new_batch_prefill_raw`` was given).
    builder_factory:
        Returns the pass's :class:`AdderBatchBuilder`; None outside a scheduling pass (then
        :meth:`batch` raises).
    exclude:
        A request to leave out of the waiting view (the one arriving, for ``on_arrival``).
    extra_running:
        Requests to count as running besides ``running_batch`` (the batch whose result is being
        processed, not merged yet).
    """

    def __init__(
        self,
        driver: "PolicyDriver",
        scheduler: Any,
        running_batch: Any,
        *,
        builder_factory: Callable[[], "AdderBatchBuilder"] | None = None,
        exclude: Any = None,
        extra_running: Sequence[Any] = (),
    ) -> None:
        self._driver = driver
        self._sched = scheduler
        self.engine = "sglang"  # the Snapshot of the sglang engine: native policies walk queue()
        self.now = driver.clock()
        self.step = driver.step
        self.limits = driver.limits_of(scheduler)
        self.weights = driver.weights
        self.cost_model = driver.cost_model
        self.cache = _CacheView(self)
        self._builder_factory = builder_factory
        self._builder: AdderBatchBuilder | None = None
        entries: list[_Entry] = []
        for req in scheduler.waiting_queue:
            if req is exclude:
                continue
            request, seq = driver.request_and_seq(req)
            entries.append(_Entry(req, request, seq, self))
        self._queue = list(entries)  # SGLang's waiting_queue list order (after calc_priority)
        entries.sort(key=lambda e: (e.request.arrival, e.seq))
        self._fcfs = entries
        self._by_id = {e.request.id: e for e in entries}
        self._lpm: list[_Entry] | None = None
        by_client: dict[str, list[_Entry]] = {}
        for e in entries:
            by_client.setdefault(e.request.client, []).append(e)
        rank = driver.client_rank
        self._clients = sorted(by_client, key=lambda c: rank.get(c, 1 << 60))
        self._by_client = by_client
        running: dict[int, Any] = {}
        batches = [getattr(running_batch, "reqs", None) or [], list(extra_running)]
        chunked = getattr(scheduler, "chunked_req", None)
        if chunked is not None:
            batches.append([chunked])
        for reqs in batches:
            for r in reqs:
                if not r.finished():
                    running[id(r)] = r
        run_by: dict[str, int] = {}
        default = driver.default_client
        for r in running.values():
            c = client_of(r, default)
            run_by[c] = run_by.get(c, 0) + 1
        self._running = run_by
        self._n_running = len(running)

    # -- cache -------------------------------------------------------------------------------

    def _peek(self, req: Any) -> int:
        n, exact = peek_prefix_len(self._sched.tree_cache, req)
        self._driver.note_peek(exact)
        return n

    # -- Snapshot protocol -------------------------------------------------------------------

    def waiting_count(self, client: str | None = None) -> int:
        if client is None:
            return len(self._fcfs)
        return len(self._by_client.get(client, ()))

    def waiting_clients(self) -> Sequence[str]:
        return list(self._clients)

    def running_count(self, client: str | None = None) -> int:
        if client is None:
            return self._n_running
        return self._running.get(client, 0)

    def running_clients(self) -> Sequence[str]:
        rank = self._driver.client_rank
        return sorted(self._running, key=lambda c: rank.get(c, 1 << 60))

    def fcfs(self, client: str | None = None) -> Iterator[_Entry]:
        return iter(self._fcfs if client is None else self._by_client.get(client, []))

    def lpm(self, client: str | None = None) -> Iterator[_Entry]:
        if self._lpm is None:
            self._lpm = sorted(self._fcfs, key=lambda e: (-e.cached_tokens, e.request.arrival, e.seq))
        if client is None:
            return iter(self._lpm)
        return (e for e in self._lpm if e.request.client == client)

    def queue(self) -> Iterator[_Entry]:
        """SGLang's ``waiting_queue`` in its list order: sorted by SGLang's own ``calc_priority``
        for the native policies (FCFS, LPM), whose ``calc_priority`` the plugin leaves running."""
        return iter(self._queue)

    def entry(self, request_id: str) -> _Entry:
        try:
            return self._by_id[request_id]
        except KeyError:
            raise KeyError(f"request {request_id!r} is not waiting") from None

    def batch(self) -> "AdderBatchBuilder":
        if self._builder_factory is None:
            raise RuntimeError("snap.batch(): no scheduling pass is open (on_arrival / on_step_end)")
        if self._builder is not None:
            raise RuntimeError(
                "snap.batch() called twice in one pass: the SGLang adapter has one admission "
                "budget per pass (SGLang's PrefillAdder), it cannot offer a second fresh one"
            )
        self._builder = self._builder_factory()
        return self._builder


# ---------------------------------------------------------------------------------------------
# the builder over a real PrefillAdder


class AdderBatchBuilder:
    """``BatchBuilder`` over SGLang's ``PrefillAdder`` (module docstring, step 3).

    Parameters
    ----------
    adder:
        The pass's adder (an instance of :func:`bound_adder_class`).
    add_one_req:
        The *unbound original* ``add_one_req`` (the bound adder's own override would start a
        decision).
    scheduler, running_batch:
        As in :class:`SGLangSnapshot`.
    has_chunked_req, truncation_align_size:
        The arguments the scheduler's loop passes to ``add_one_req``.
    """

    def __init__(
        self,
        adder: Any,
        add_one_req: Callable[..., Any],
        scheduler: Any,
        running_batch: Any,
        *,
        has_chunked_req: bool,
        truncation_align_size: int | None,
        results: type,
        native_budget_state: Callable[[Any], Any],
        hierarchical: bool,
        new_style_no_token: bool,
    ) -> None:
        self._adder = adder
        self._add = add_one_req
        self._sched = scheduler
        self._rb = running_batch
        self._has_chunked = has_chunked_req
        self._trunc = truncation_align_size
        self._R = results
        self._hier = hierarchical
        self._new_no_token = new_style_no_token
        self._ids: list[str] = []
        self._set: set[str] = set()
        self.results: list[str] = []  # AddReqResult names, one per add_one_req call
        self.full = False
        state = native_budget_state(adder)  # the native state, not the override
        if state != results.CONTINUE:
            self.full = True
        elif self._slots_exhausted():
            self._rb.batch_is_full = True
            self.full = True

    def _slots_exhausted(self) -> bool:
        sched = self._sched
        running_bs = len(self._rb.reqs)
        can_run = self._adder.can_run_list
        try:  # 0.5.23: (running_bs, beam_width, running_batch=, num_held_rows=)
            n = sched.get_num_allocatable_reqs(
                running_bs,
                None,
                running_batch=self._rb,
                num_held_rows=sum(1 for r in can_run if getattr(getattr(r, "kv", None), "holds_kv", False)),
            )
        except TypeError:  # 0.5.17: (running_bs)
            n = sched.get_num_allocatable_reqs(running_bs)
        return len(can_run) >= n

    @property
    def admitted(self) -> Sequence[str]:
        return tuple(self._ids)

    def fits(self, entry: Any) -> bool:
        raise NotImplementedError(
            "BatchBuilder.fits: SGLang's PrefillAdder has no side-effect-free fit test; use try_add"
        )

    def try_add(self, entry: Any) -> bool:
        if self.full:
            return False
        req = entry.req
        rid = req.rid
        if rid in self._set:
            return False
        if self._slots_exhausted():
            self._rb.batch_is_full = True
            self.full = True
            return False
        req.init_next_round_input(self._sched.tree_cache)
        res = self._add(
            self._adder, req, has_chunked_req=self._has_chunked, truncation_align_size=self._trunc
        )
        self.results.append(getattr(res, "name", str(res)))
        can_run = self._adder.can_run_list
        added = bool(can_run) and can_run[-1] is req
        if res != self._R.CONTINUE:
            if res == self._R.NO_TOKEN:
                if self._new_no_token or self._hier:
                    self._rb.batch_is_full = len(can_run) > 0 or not self._rb.is_empty()
                else:
                    self._rb.batch_is_full = True
            if not added:  # the loop's revert of staged Mamba state (no-op for other models)
                kv = getattr(req, "kv", req)
                if hasattr(kv, "mamba_cow_src_index"):
                    kv.mamba_cow_src_index = None
                if hasattr(kv, "mamba_needs_clear"):
                    kv.mamba_needs_clear = False
            self.full = True
        if added:
            self._ids.append(rid)
            self._set.add(rid)
        return added


# ---------------------------------------------------------------------------------------------
# the driver: one policy per scheduler


@dataclass
class PassRecord:
    """What one scheduling pass decided (kept when ``PolicyDriver.record`` is on)."""

    step: int
    now: float
    admitted: list[str]
    decision: list[str]
    chunked: str | None
    chunk_len: int | None
    cache_hits: dict[str, int]
    results: list[str]
    state: dict[str, Any]


@dataclass
class _Arrival:
    request: Request
    seq: int
    req: Any


@dataclass
class PolicyDriver:
    """A prefixsched policy attached to one SGLang scheduler.

    Holds the policy object, the arrival order, the step counter and the error state. Every
    entry point (:meth:`on_arrival`, :meth:`decide`, :meth:`on_step_end`) catches exceptions:
    the first one is logged with its traceback and the driver turns itself **off**, after which
    SGLang's own scheduling runs unchanged (``calc_priority`` sorts again, the adder is passive).

    Attributes
    ----------
    policy:
        The reference policy object.
    weights, cost_model:
        What the snapshot offers (service weights ``w_e, w_q``; the cost model, informational).
    default_client:
        Client of requests with neither a routing key nor a session id.
    clock:
        ``() -> seconds``; default: seconds since the driver was created.
    record:
        Keep a :class:`PassRecord` per pass in ``passes`` (the twin driver) and the policy state
        after every processed batch in ``states``.
    """

    policy: Policy
    spec: str = ""
    weights: ServiceWeights = field(default_factory=ServiceWeights)
    cost_model: CostModel = field(default_factory=CostModel)
    default_client: str = DEFAULT_CLIENT
    clock: Callable[[], float] | None = None
    record: bool = False
    sglang_version: str = "0.5.23"
    state_log: Any = None  # a writable text file: one JSON line per pass that admitted (optional)

    def __post_init__(self) -> None:
        if self.clock is None:
            t0 = time.monotonic()
            self.clock = lambda: time.monotonic() - t0
        self.active = True
        self.off_reason: str | None = None
        self.step = 0
        self.decisions = 0
        self.decision_mismatches = 0
        self.arrivals = 0
        self.requeues = 0
        self.peek_mode: str | None = None
        self._known: dict[str, _Arrival] = {}
        self._seq = -1
        self.client_rank: dict[str, int] = {}
        self.passes: list[PassRecord] = []
        self.states: list[tuple[int, dict[str, Any]]] = []

    # -- bookkeeping -------------------------------------------------------------------------

    def note_peek(self, exact: bool) -> None:
        mode = "exact" if exact else "native-match"
        if self.peek_mode != mode:
            if not exact:
                logger.warning(
                    "prefixsched: the tree is not SGLang's Python RadixCache; LPM prefix lengths come "
                    "from the tree's own match_prefix (splits and LRU touches like SGLang's calc_priority)"
                )
            self.peek_mode = mode

    def limits_of(self, scheduler: Any) -> Limits:
        cps = getattr(scheduler, "chunked_prefill_size", None)
        alloc = scheduler.token_to_kv_pool_allocator
        return Limits(
            kv_capacity_tokens=int(getattr(alloc, "size", 0) or 1),
            max_prefill_tokens=int(scheduler.max_prefill_tokens),
            max_running_requests=int(getattr(scheduler, "max_running_requests", 0) or 1),
            page_size=int(scheduler.page_size),
            chunked_prefill_size=int(cps) if cps is not None and cps > 0 else None,
        )

    def req_of(self, rid: str) -> Any:
        a = self._known.get(rid)
        return None if a is None else a.req

    def _register(self, req: Any) -> _Arrival:
        client = client_of(req, self.default_client)
        self.client_rank.setdefault(client, len(self.client_rank))
        request = Request(
            id=str(req.rid),
            client=client,
            arrival=float(self.clock()),  # type: ignore[misc]
            prompt=_Tokens(req.origin_input_ids),  # type: ignore[arg-type]
            output_len=_max_new_tokens(req),
        )
        a = _Arrival(request, self._next_seq(), req)
        self._known[request.id] = a
        return a

    def request_and_seq(self, req: Any) -> tuple[Request, int]:
        a = self._known.get(req.rid)
        if a is None:  # in the queue before the plugin saw it arrive (should not happen)
            a = self._register(req)
        return a.request, a.seq

    def forget(self, rid: str) -> None:
        self._known.pop(rid, None)

    def turn_off(self, where: str, exc: BaseException) -> None:
        if self.active:
            logger.error(
                "prefixsched: policy %s failed in %s (%s: %s); prefixsched turns itself off, SGLang's own "
                "scheduler runs unchanged from now on",
                self.spec or self.policy.name,
                where,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        self.active = False
        self.off_reason = f"{where}: {type(exc).__name__}: {exc}"

    # -- the three policy calls --------------------------------------------------------------

    def requeue(self, req: Any) -> None:
        """``req`` (known) re-entered the waiting queue after a retraction or a preemption. It is
        not an arrival for the policy and keeps its arrival time and its place in the FCFS and LPM
        tie orders (``snap.fcfs()``/``snap.lpm()``: the request's age, as the ``sglang`` engine
        keeps it); ``snap.queue()`` shows SGLang's list, where it is at the back."""
        self.requeues += 1
        if req.rid not in self._known:
            self._register(req)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def on_arrival(self, scheduler: Any, req: Any) -> bool:
        """``req`` has just been appended to ``scheduler.waiting_queue``. A request id seen before
        (a retracted or preempted request re-queued) is not an arrival (decision; see
        :meth:`requeue`). Returns True if the policy's ``on_arrival`` ran."""
        if not self.active:
            return False
        if req.rid in self._known:
            self.requeue(req)
            return False
        try:
            a = self._register(req)
            snap = SGLangSnapshot(self, scheduler, scheduler.running_batch, exclude=req)
            self.policy.on_arrival(a.request, a.request.arrival, snap)
            self.arrivals += 1
            return True
        except Exception as e:  # noqa: BLE001 - never crash the scheduler
            self.turn_off("on_arrival", e)
            return False

    def decide(self, adder: Any, builder_args: dict[str, Any]) -> None:
        """Run ``policy.decide`` for the pass of ``adder`` (module docstring, step 2-3)."""
        sched = adder._ps_scheduler
        rb = adder.running_batch
        holder: list[AdderBatchBuilder] = []

        def factory() -> AdderBatchBuilder:
            b = AdderBatchBuilder(adder, builder_args["add_one_req"], sched, rb, **builder_args["kw"])
            holder.append(b)
            return b

        try:
            snap = SGLangSnapshot(self, sched, rb, builder_factory=factory)
            decision = self.policy.decide(snap)
            self.decisions += 1
            b = holder[0] if holder else None
            admitted = list(b.admitted) if b is not None else []
            ids = list(decision.admit) if isinstance(decision, Decision) else None
            if ids != admitted:
                self.decision_mismatches += 1
                logger.warning(
                    "prefixsched: policy %s returned %r but admitted %r through the builder; SGLang runs "
                    "what the builder admitted",
                    self.policy.name,
                    ids,
                    admitted,
                )
            if self.record or (self.state_log is not None and admitted):
                self._log_pass(snap, adder, admitted, ids or [], b)
        except Exception as e:  # noqa: BLE001
            self.turn_off("decide", e)

    def _log_pass(self, snap: SGLangSnapshot, adder: Any, admitted: list[str], ids: list[str], b: Any) -> None:
        chunked = getattr(adder, "new_chunked_req", None)
        hits = {}
        for r in adder.can_run_list:
            if r.rid in admitted:
                hits[r.rid] = prefix_len_of(r)
        rec = PassRecord(
            step=self.step,
            now=float(snap.now),
            admitted=admitted,
            decision=ids,
            chunked=None if chunked is None else str(chunked.rid),
            chunk_len=None if chunked is None else extend_len_of(chunked),
            cache_hits=hits,
            results=list(b.results) if b is not None else [],
            state=self.policy.state(),
        )
        if self.record:
            self.passes.append(rec)
        if self.state_log is not None:
            import json

            self.state_log.write(json.dumps(rec.__dict__, sort_keys=True, default=str) + "\n")
            self.state_log.flush()

    def on_step_end(self, scheduler: Any, batch: Any, before: dict[int, tuple[int, bool]]) -> None:
        """After SGLang processed ``batch``'s result. ``before[id(req)] = (len(output_ids),
        finished)`` taken before the processing; the difference gives ``decoded[client]`` and the
        requests that finished in this step."""
        self.step += 1
        if not self.active:
            return
        try:
            decoded: dict[str, int] = {}
            finished: list[FinishedInfo] = []
            default = self.default_client
            for r in batch.reqs:
                n0, f0 = before.get(id(r), (len(r.output_ids), r.finished()))
                k = len(r.output_ids) - n0
                c = client_of(r, default)
                if k > 0:
                    decoded[c] = decoded.get(c, 0) + k
                if r.finished() and not f0:
                    finished.append(FinishedInfo(str(r.rid), c))
            snap = SGLangSnapshot(self, scheduler, scheduler.running_batch, extra_running=batch.reqs)
            rank = self.client_rank
            decoded = {c: decoded[c] for c in sorted(decoded, key=lambda c: rank.get(c, 1 << 60))}
            self.policy.on_step_end(decoded, finished, snap)
            for f in finished:
                self.forget(f.id)
            if self.record:
                self.states.append((self.step - 1, self.policy.state()))
        except Exception as e:  # noqa: BLE001
            self.turn_off("on_step_end", e)


# ---------------------------------------------------------------------------------------------
# the adder subclass


def bound_adder_class(driver: PolicyDriver, scheduler: Any, base: type) -> type:
    """A subclass of SGLang's ``PrefillAdder`` class ``base`` whose pass is decided by
    ``driver.policy`` (module docstring). Cached per ``(scheduler, base)``.

    While ``driver.active`` is False it behaves exactly as ``base``.
    """
    cache = scheduler.__dict__.setdefault("_prefixsched_adder_classes", {})
    cls = cache.get(base)
    if cls is not None:
        return cls
    from sglang.srt.managers.schedule_policy import AddReqResult

    native_add = base.add_one_req
    native_state = base.budget_state
    # NO_TOKEN sets batch_is_full = "something can be served" in 0.5.23, always True in 0.5.17
    # (unless the hierarchical cache is on)
    new_no_token = driver.sglang_version != "0.5.17"

    class PrefixschedPrefillAdder(base):  # type: ignore[misc, valid-type]
        _ps_driver = driver
        _ps_scheduler = scheduler

        def _ps_decide(self, has_chunked_req: bool | None, truncation_align_size: Any) -> None:
            self._ps_phase = 1
            try:
                sched = self._ps_scheduler
                kw = dict(
                    has_chunked_req=(
                        has_chunked_req if has_chunked_req is not None else getattr(sched, "chunked_req", None) is not None
                    ),
                    truncation_align_size=(
                        truncation_align_size
                        if has_chunked_req is not None
                        else getattr(sched, "truncation_align_size", None)
                    ),
                    results=AddReqResult,
                    native_budget_state=native_state,
                    hierarchical=bool(getattr(sched, "enable_hierarchical_cache", False)),
                    new_style_no_token=new_no_token,
                )
                self._ps_driver.decide(self, {"add_one_req": native_add, "kw": kw})
            finally:
                self._ps_phase = 2

        def budget_state(self):  # type: ignore[no-untyped-def]
            if getattr(self, "_ps_phase", 0) == 0 and self._ps_driver.active:
                self._ps_decide(None, None)
                return AddReqResult.OTHER
            return super().budget_state()

        def add_one_req(self, req, has_chunked_req, truncation_align_size):  # type: ignore[no-untyped-def]
            phase = getattr(self, "_ps_phase", 0)
            if phase == 0 and self._ps_driver.active:  # 0.5.17: the loop's first visited request
                self._ps_decide(has_chunked_req, truncation_align_size)
                return AddReqResult.OTHER
            if phase == 2:  # never admit past the policy's decision
                return AddReqResult.OTHER
            return super().add_one_req(req, has_chunked_req, truncation_align_size)

    PrefixschedPrefillAdder.__qualname__ = f"PrefixschedPrefillAdder[{base.__name__}]"
    cache[base] = PrefixschedPrefillAdder
    return PrefixschedPrefillAdder
