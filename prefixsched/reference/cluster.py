"""Data-parallel cluster simulator: D workers, one dispatcher (D²LPM and baselines).

``simulate_cluster(instance, local_policy, dispatcher, workers=D)`` runs ``D`` replicas of the
single-worker engine (:class:`~prefixsched.reference.simulator.Worker`), each with its own radix
cache, its own limits (the instance's limits apply *per worker*) and its own instance of the local
policy, behind a global dispatcher that sends every request to one worker at its arrival time.

Sources: Cao et al., "Locality-aware Fair Scheduling in LLM Serving", arXiv:2501.14312v1, §5.2
Algorithm 2 (D²LPM) and §6 baselines (dlpm.md §3, §5); Preble (vtc_fastswitch_preble.md §C.2).

Clock (decided here)
--------------------
Requests are dispatched in instance order at their arrival time ``A``. Before dispatching a
request every worker is advanced over all its steps that *start* before ``A``
(:meth:`Worker.run`), and the dispatcher then receives, in time order, every event with time
``<= A``: finishes (time = end of the step that produced the last token) and cache evictions
(time = start of the step for evictions made to admit a batch, end of the step for evictions made
by end-of-step inserts). Events of a step that started before ``A`` but ends after it are
delivered at a later dispatch (or at the end of the run): the dispatcher never sees the future.
Events at equal times are delivered ordered by ``(time, worker, order on the worker)``; finishes
and evictions are independent streams. The request then joins its worker's queue before the
worker's first step starting at or after ``A`` (the single-worker arrival rule), so every worker
behaves exactly as :func:`~prefixsched.reference.simulator.simulate` on the sub-instance of the
requests it received: ``ClusterTrace.traces[w]`` is byte-identical to
``simulate(cluster_trace.sub_instance(w), fresh local policy)`` (tested).

Load signal (dlpm.md §3): ``s_w`` = requests dispatched to ``w`` and not finished yet (waiting,
running, or not yet joined), ``+1`` on dispatch, ``-1`` on finish. Ties everywhere: lowest worker
index.

Dispatchers (registry :data:`DISPATCHERS`, CLI ``--dispatch NAME[:VALUE]``)
----------------------------------------------------------------------------
- ``round-robin``: request ``k`` (global dispatch order) goes to worker ``k mod D`` (SGLang's
  default data-parallel dispatch; the RR + LPM baseline with local ``lpm``).
- ``client-round-robin``: per-client round robin (the VTC baseline of Thm A.6, with local
  ``vtc``). *Decision:* client ``i``'s ``k``-th request goes to ``(o_i + k) mod D`` with
  ``o_i`` = (index of the client in order of first arrival) ``mod D``, so clients with few
  requests do not all pile onto worker 0; each client's requests are spread evenly (counts per
  worker differ by at most one).
- ``least-load``: ``argmin_w s_w``, ties lowest index.
- ``d2lpm`` (primary parameter ``q_w``): Algorithm 2, see :class:`D2LPMDispatcher`.
- ``preble``: a *simplification* of Preble's E2 (see :class:`PrebleDispatcher`).
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, ClassVar

from prefixsched.errors import InputError
from prefixsched.reference.policies import create as create_policy
from prefixsched.reference.policies.base import Policy
from prefixsched.reference.simulator import DEFAULT_ENGINE, Worker
from prefixsched.theory.model import Instance, PageKeys, Request
from prefixsched.theory.trace import ClusterTrace
from prefixsched.theory.metrics import summarize_cluster  # re-exported; metrics live in theory.metrics

__all__ = [
    "Dispatcher",
    "RoundRobinDispatcher",
    "ClientRoundRobinDispatcher",
    "LeastLoadDispatcher",
    "D2LPMDispatcher",
    "PrebleDispatcher",
    "GlobalPrefixTree",
    "DISPATCHERS",
    "available_dispatchers",
    "create_dispatcher",
    "ClusterTrace",
    "simulate_cluster",
    "summarize_cluster",
    "DEFAULT_Q_W",
    "CLUSTER_VERSION",
]

CLUSTER_VERSION = "prefixsched.reference.cluster/1"
DEFAULT_Q_W = 16000.0


def _jsonable(x: float) -> float | str:
    """Non-finite floats as strings (``"inf"``), so that logs stay strict JSON."""
    if math.isfinite(x):
        return x
    return "nan" if x != x else ("inf" if x > 0 else "-inf")


# ---------------------------------------------------------------------------------------------
# approximate global radix tree (D²LPM's R)


class _GNode:
    __slots__ = ("mask", "children", "parent", "key")

    def __init__(self, key: Hashable, parent: "_GNode | None") -> None:
        self.mask = 0
        self.children: dict[Hashable, _GNode] = {}
        self.parent = parent
        self.key = key


class GlobalPrefixTree:
    """D²LPM's approximate global radix tree ``R`` (Algorithm 2 lines 8, 12, 14), one node per
    page key, each tagged with a bitmask of the workers believed to hold the prefix ending there.

    - :meth:`insert` (``R.INSERT(r.input_tokens, w)``): tag every page of the prompt with ``w``
      (optimistic: done at dispatch, before the worker has computed anything).
    - :meth:`remove` (``R.EVICT(P, w)``): untag pages ``keys[start:]`` for ``w``; nodes left with
      no worker and no children are pruned.
    - :meth:`longest_match_workers` (``R.LONGEST_MATCH_WORKERS(r)``): worker ``w`` matches ``m_w``
      pages = the longest prefix of the prompt whose every page is tagged ``w`` (a contiguous run
      from the root: after an eviction in the middle of a path, deeper optimistic tags no longer
      count). Returns the largest ``m`` and the workers attaining it.

    Memory: at most one node per distinct prompt page dispatched (no budget: *decision*, dlpm.md
    §8.11; stale tags are only removed by eviction events).
    """

    __slots__ = ("root", "n_nodes", "version")

    def __init__(self) -> None:
        self.root = _GNode(None, None)
        self.n_nodes = 0
        self.version = 0  # bumped by every change; a path from match_path is valid while it holds

    def match_path(self, keys: Sequence[Hashable]) -> tuple[int, int, list[_GNode]]:
        """``(pages, mask, path)``: :meth:`longest_match_workers`'s answer plus ``path``, the nodes
        of ``keys`` present in the tree from the root (possibly deeper than the match). Passing
        ``path`` back to :meth:`insert` while :attr:`version` is unchanged saves the second walk
        (one walk per dispatch instead of two)."""
        node = self.root
        cur = -1
        best_p = 0
        best_m = 0
        path: list[_GNode] = []
        append = path.append
        for k in keys:
            child = node.children.get(k)
            if child is None:
                break
            append(child)
            if cur:
                cur &= child.mask
                if cur:
                    best_p = len(path)
                    best_m = cur
            node = child
        return best_p, best_m, path

    def insert(self, keys: Sequence[Hashable], worker: int, path: list[_GNode] | None = None) -> None:
        """Tag every page of ``keys`` with ``worker``, creating missing nodes. ``path``: the
        nodes :meth:`match_path` returned for these ``keys`` at the current :attr:`version`."""
        bit = 1 << worker
        if path is None:
            path = self.match_path(keys)[2]
        for nd in path:
            nd.mask |= bit
        node = path[-1] if path else self.root
        n = len(path)
        if n < len(keys):
            for k in keys[n:]:
                child = _GNode(k, node)
                child.mask = bit
                node.children[k] = child
                node = child
            self.n_nodes += len(keys) - n
        self.version += 1

    def longest_match_workers(self, keys: Sequence[Hashable]) -> tuple[int, int]:
        """``(pages, mask)``: the longest match over workers and the bitmask of the workers with
        that match (``(0, 0)`` if no worker matches a single page)."""
        pages, mask, _ = self.match_path(keys)
        return pages, mask

    def remove(self, keys: Sequence[Hashable], start: int, worker: int) -> int:
        """Untag ``worker`` from the nodes of pages ``keys[start:]`` (those present). Returns the
        number of nodes untagged."""
        bit = 1 << worker
        clear = ~bit
        node = self.root
        n = 0
        i = 0
        for k in keys:
            child = node.children.get(k)
            if child is None:
                break
            if i >= start and child.mask & bit:
                child.mask &= clear
                n += 1
            node = child
            i += 1
        # prune untagged leaves upwards
        root = self.root
        while node is not root and node.mask == 0 and not node.children:
            parent = node.parent
            assert parent is not None
            del parent.children[node.key]
            self.n_nodes -= 1
            node = parent
        self.version += 1
        return n

    def workers_at(self, keys: Sequence[Hashable]) -> list[int]:
        """Masks along ``keys`` (one int per page present), for tests and inspection."""
        out = []
        node = self.root
        for k in keys:
            child = node.children.get(k)
            if child is None:
                break
            out.append(child.mask)
            node = child
        return out


# ---------------------------------------------------------------------------------------------
# dispatchers


class Dispatcher(abc.ABC):
    """Global dispatcher of a cluster: picks a worker for each arriving request.

    Call sequence (:func:`simulate_cluster` guarantees it): :meth:`bind` once; then, in time
    order, :meth:`on_finish` / :meth:`on_evict` for the events up to the arrival, and for each
    request :meth:`select` followed by :meth:`on_dispatch` with the chosen worker. ``loads[w]`` is
    the cluster's ``s_w`` (requests dispatched to ``w``, not finished) before this dispatch.
    A dispatcher object holds state for one run: use a fresh one per run.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    primary_param: ClassVar[str | None] = None

    def bind(self, instance: Instance, workers: int) -> None:
        """The run's instance and number of workers (called once, before any request)."""
        self.workers = workers
        self.w_e = instance.weights.w_e
        self.w_q = instance.weights.w_q

    @abc.abstractmethod
    def select(self, request: Request, keys: tuple, now: float, loads: Sequence[int]) -> int:
        """The worker index (``0 <= w < workers``) for ``request`` (``keys``: its prompt's page
        keys)."""

    def on_dispatch(self, request: Request, keys: tuple, worker: int, now: float) -> None:
        """``request`` was sent to ``worker``. Default: nothing."""

    def on_finish(self, request: Request, worker: int, now: float) -> None:
        """``request`` produced its last token on ``worker`` at ``now``. Default: nothing."""

    def on_evict(self, worker: int, keys: tuple, start_pages: int, now: float) -> None:
        """``worker`` evicted pages ``keys[start_pages:]`` of the path ``keys``. Default: nothing."""

    def params(self) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.params()}


def _cached_path(cached: tuple | None, keys: tuple, tree: GlobalPrefixTree) -> list | None:
    """The path :meth:`GlobalPrefixTree.match_path` gave in ``select`` for these very ``keys``,
    if the tree has not changed since (else None: :meth:`~GlobalPrefixTree.insert` walks again)."""
    if cached is not None and cached[0] is keys and cached[1] == tree.version:
        return cached[2]
    return None


def _argmin_load(cands: Sequence[int], loads: Sequence[int]) -> int:
    best = cands[0]
    bl = loads[best]
    for w in cands:
        if loads[w] < bl:
            best, bl = w, loads[w]
    return best


class RoundRobinDispatcher(Dispatcher):
    """Global round robin: the ``k``-th dispatched request goes to worker ``k mod D``."""

    name = "round-robin"
    description = "global round robin (SGLang's default data-parallel dispatch; RR + LPM baseline)"

    def bind(self, instance: Instance, workers: int) -> None:
        super().bind(instance, workers)
        self.k = 0

    def select(self, request: Request, keys: tuple, now: float, loads: Sequence[int]) -> int:
        w = self.k % self.workers
        self.k += 1
        return w


class ClientRoundRobinDispatcher(Dispatcher):
    """Per-client round robin (VTC baseline of Thm A.6): client ``i``'s ``k``-th request goes to
    ``(o_i + k) mod D``, ``o_i`` = (rank of the client's first arrival) ``mod D`` (module
    docstring)."""

    name = "client-round-robin"
    description = "per-client round robin (VTC + per-client RR baseline, Thm A.6)"

    def bind(self, instance: Instance, workers: int) -> None:
        super().bind(instance, workers)
        self.next: dict[str, int] = {}

    def select(self, request: Request, keys: tuple, now: float, loads: Sequence[int]) -> int:
        c = request.client
        k = self.next.get(c)
        if k is None:
            k = len(self.next) % self.workers
        self.next[c] = (k + 1) % self.workers
        return k

    def state(self) -> dict[str, Any]:
        return {"next": dict(self.next)}


class LeastLoadDispatcher(Dispatcher):
    """``argmin_w s_w`` (requests dispatched and not finished), ties lowest index."""

    name = "least-load"
    description = "least outstanding requests (s_w), ties lowest worker index"

    def select(self, request: Request, keys: tuple, now: float, loads: Sequence[int]) -> int:
        return _argmin_load(range(self.workers), loads)  # type: ignore[arg-type]


class D2LPMDispatcher(Dispatcher):
    """D²LPM's global scheduler, Algorithm 2 (dlpm.md §3), with quantum ``Q_w = q_w``.

    State: the approximate global radix tree ``R`` (:class:`GlobalPrefixTree`), the deficits
    ``q[i][w]`` (cost units) and the loads ``s[w]`` (requests).

    - SELECT_WORKER (lines 1-7): ``G_avail = {w : q_{i,w} > 0}``; while it is empty every worker's
      ``q_{i,w}`` of this client gets ``+Q_w`` (a *refill round*, counted in ``refills[i]``);
      ``G`` = the workers with the longest match of the prompt in ``R``; ``G_cand = G ∩
      G_avail``; the choice is ``argmin s_w`` over ``G_cand`` if non-empty, else over
      ``G_avail``; ties by smallest ``s_w`` then lowest worker index.
    - dispatch (lines 10-12): ``s_w += 1``; ``q_{i,w} -= w_e * prompt_len`` (the **full** input,
      not the extend length); ``R.INSERT(prompt pages, w)``.
    - ON_FINISH (line 13): ``q_{i,w} -= w_q * output_len``; ``s_w -= 1``.
    - ON_EVICT (line 14): ``R.EVICT(P, w)``.

    Open choices (dlpm.md §8), decided here:

    - ``q_{i,w}`` starts at 0 for every worker when client i first arrives, so its first dispatch
      triggers a refill round. It is **never reset** (Algorithm 2 has no active list; unlike the
      local DLPM no rejoin reset is specified).
    - ``G`` when nothing matches (match length 0): empty, so the choice is the least-loaded
      credited worker (the same as G = all workers, §8.9). "Longest match" is the exact maximal
      page count (no ratio threshold); the tree works on the full pages of the prompt.
    - ``q_w = math.inf`` is allowed: a single refill gives ``q = inf`` on every worker, charges
      leave it ``inf``, so ``G_avail`` is always every worker and the dispatcher is pure locality
      with least-load tie-breaking (Preble-like; provably unfair, Thm A.5).
    - The local quantum ``Q_u`` belongs to the workers' local DLPM, not to this class.

    Parameters
    ----------
    q_w:
        ``Q_w`` in cost units, ``> 0`` (``math.inf`` allowed). Default :data:`DEFAULT_Q_W` = 16000
        (Fig. 10 sweeps 2000-40000; 16000 is the geometric middle, about 2x the local default Q_u).
    record:
        Keep a per-dispatch log (``log``) for tests and the cluster trace's ``meta``.

    Raises
    ------
    InputError
        If ``q_w`` is not a number ``> 0``.
    """

    name = "d2lpm"
    description = "D2LPM (Alg. 2): longest global prefix match gated by per-(client, worker) deficits Q_w"
    primary_param = "q_w"

    def __init__(self, q_w: float = DEFAULT_Q_W, *, record: bool = False) -> None:
        if isinstance(q_w, bool) or not isinstance(q_w, (int, float)) or q_w != q_w or q_w <= 0:
            raise InputError("q_w", f"must be a number > 0 (math.inf allowed), got {q_w!r}")
        self.q_w = float(q_w)
        self.record = record

    def bind(self, instance: Instance, workers: int) -> None:
        super().bind(instance, workers)
        self.tree = GlobalPrefixTree()
        self.q: dict[str, list[float]] = {}
        self.s = [0] * workers
        self.refills: dict[str, int] = {}
        self.log: list[dict[str, Any]] = []
        self.evict_events = 0
        self._path: tuple | None = None

    def select(self, request: Request, keys: tuple, now: float, loads: Sequence[int]) -> int:
        c = request.client
        D = self.workers
        q = self.q.get(c)
        if q is None:
            q = self.q[c] = [0.0] * D
            self.refills[c] = 0
        avail = [w for w in range(D) if q[w] > 0]
        while not avail:  # per-client refill of all workers (lines 2-4)
            for w in range(D):
                q[w] += self.q_w
            self.refills[c] += 1
            avail = [w for w in range(D) if q[w] > 0]
        pages, G, path = self.tree.match_path(keys)
        self._path = (keys, self.tree.version, path)
        cand = [w for w in avail if G >> w & 1]
        s = self.s
        choice = _argmin_load(cand or avail, s)
        if self.record:
            self.log.append(
                {
                    "id": request.id,
                    "client": c,
                    "t": now,
                    "worker": choice,
                    "match_pages": pages,
                    "G": [w for w in range(D) if G >> w & 1],
                    "avail": avail,
                    "q_before": [_jsonable(x) for x in q],
                    "loads": list(s),
                    "refills": self.refills[c],
                }
            )
        return choice

    def on_dispatch(self, request: Request, keys: tuple, worker: int, now: float) -> None:
        self.s[worker] += 1
        self.q[request.client][worker] -= self.w_e * request.prompt_len
        self.tree.insert(keys, worker, _cached_path(self._path, keys, self.tree))

    def on_finish(self, request: Request, worker: int, now: float) -> None:
        self.q[request.client][worker] -= self.w_q * request.output_len
        self.s[worker] -= 1

    def on_evict(self, worker: int, keys: tuple, start_pages: int, now: float) -> None:
        self.evict_events += 1
        self.tree.remove(keys, start_pages, worker)

    def params(self) -> dict[str, Any]:
        return {"q_w": _jsonable(self.q_w)}

    def state(self) -> dict[str, Any]:
        return {
            "deficits": {c: [_jsonable(x) for x in v] for c, v in self.q.items()},
            "loads": list(self.s),
            "refills": dict(self.refills),
            "tree_nodes": self.tree.n_nodes,
            "evict_events": self.evict_events,
        }


class PrebleDispatcher(Dispatcher):
    """**Simplified** Preble E2 (vtc_fastswitch_preble.md §C.2): exploit if the longest global
    prefix match covers more than ``threshold`` of the prompt (send to the least-loaded worker
    among those with the longest match), otherwise explore (send to the least-loaded worker).

    Simplifications (clearly not Preble): the load is ``s_w`` in requests, not Preble's
    prefill/decode cost estimate over a time window; no multi-level priority queue, no
    prefix-tree replication or autoscaling, no post-assignment rebalancing. It shares
    D²LPM's approximate tree (optimistic insert, removal on eviction).

    Parameters
    ----------
    threshold:
        Match ratio in ``[0, 1)`` above which the request exploits locality (Preble: 0.5).

    Raises
    ------
    InputError
        If ``threshold`` is outside ``[0, 1)``.
    """

    name = "preble"
    description = "simplified Preble E2: exploit if prefix-match ratio > threshold, else least load"
    primary_param = "threshold"

    def __init__(self, threshold: float = 0.5) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
            raise InputError("threshold", f"must be a number in [0, 1), got {threshold!r}")
        self.threshold = float(threshold)

    def bind(self, instance: Instance, workers: int) -> None:
        super().bind(instance, workers)
        self.tree = GlobalPrefixTree()
        self.page_size = instance.limits.page_size
        self._path: tuple | None = None

    def select(self, request: Request, keys: tuple, now: float, loads: Sequence[int]) -> int:
        pages, G, path = self.tree.match_path(keys)
        self._path = (keys, self.tree.version, path)
        if pages and pages * self.page_size > self.threshold * request.prompt_len:
            return _argmin_load([w for w in range(self.workers) if G >> w & 1], loads)
        return _argmin_load(range(self.workers), loads)  # type: ignore[arg-type]

    def on_dispatch(self, request: Request, keys: tuple, worker: int, now: float) -> None:
        self.tree.insert(keys, worker, _cached_path(self._path, keys, self.tree))

    def on_evict(self, worker: int, keys: tuple, start_pages: int, now: float) -> None:
        self.tree.remove(keys, start_pages, worker)

    def params(self) -> dict[str, Any]:
        return {"threshold": self.threshold}


DISPATCHERS: dict[str, type[Dispatcher]] = {
    cls.name: cls
    for cls in (RoundRobinDispatcher, ClientRoundRobinDispatcher, LeastLoadDispatcher, D2LPMDispatcher, PrebleDispatcher)
}


def available_dispatchers() -> dict[str, str]:
    """``{name: one-line description}``, sorted by name."""
    return {n: DISPATCHERS[n].description for n in sorted(DISPATCHERS)}


def create_dispatcher(spec: str, **params: Any) -> Dispatcher:
    """A fresh dispatcher from ``"NAME"`` or ``"NAME:VALUE"`` (``"d2lpm:8000"``, ``"d2lpm:inf"``)
    and keyword parameters (those the class does not accept, or None, are ignored; the spec's
    value wins).

    Raises
    ------
    InputError
        Unknown name, a ``:VALUE`` for a dispatcher without a primary parameter, or a bad value.
    """
    if not isinstance(spec, str):
        raise InputError("dispatch", f"must be a name, got {spec!r}")
    name, sep, value = spec.partition(":")
    cls = DISPATCHERS.get(name)
    if cls is None:
        raise InputError("dispatch", f"unknown dispatcher {name!r}; known: {', '.join(sorted(DISPATCHERS))}")
    sig = inspect.signature(cls.__init__) if cls.__init__ is not object.__init__ else None
    accepted = set(sig.parameters) - {"self"} if sig is not None else set()
    kwargs = {k: v for k, v in params.items() if v is not None and k in accepted}
    if sep:
        if cls.primary_param is None:
            raise InputError("dispatch", f"{name!r} takes no ':VALUE' (got {spec!r})")
        low = value.strip().lower()
        try:
            v: float = math.inf if low in ("inf", "infinity") else float(value)
        except ValueError:
            raise InputError("dispatch", f"bad value in {spec!r}: {value!r} is not a number") from None
        kwargs[cls.primary_param] = v
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# result


# ClusterTrace (the result type) lives in prefixsched.theory.trace: the theory layer's bounds
# and metrics read it, and theory imports nothing of reference.


# ---------------------------------------------------------------------------------------------
# the cluster loop


def _policy_factory(local_policy: str | Callable[[], Policy]) -> Callable[[], Policy]:
    if isinstance(local_policy, str):
        spec = local_policy
        create_policy(spec)  # fail early on an unknown name
        return lambda: create_policy(spec)
    if callable(local_policy):
        return local_policy
    raise InputError("local_policy", f"must be a policy spec or a factory, got {local_policy!r}")


class _EventPump:
    """Hands the workers' finish and eviction events to the dispatcher in time order (module
    docstring, "Clock"), keeping the cluster's loads ``s_w`` in step."""

    def __init__(self, ws: list[Worker], loads: list[int], disp: Dispatcher) -> None:
        self.ws = ws
        self.loads = loads
        self.disp = disp
        D = len(ws)
        self.fin: list[list[tuple[float, Request]]] = [[] for _ in range(D)]
        self.ev: list[list[tuple[float, tuple, int]]] = [[] for _ in range(D)]
        self.n_finish = 0
        self.n_evict = 0

    def deliver(self, limit: float) -> None:
        """Deliver every pending event with time ``<= limit``."""
        batch: list[tuple[float, int, int, int, Any]] = []  # (time, worker, kind, position, payload)
        for w, wk in enumerate(self.ws):
            f, e = wk.pop_events()
            fq = self.fin[w]
            eq = self.ev[w]
            if f:
                fq.extend(f)
            if e:
                eq.extend(e)
            i = 0
            while i < len(fq) and fq[i][0] <= limit:
                batch.append((fq[i][0], w, 0, i, fq[i][1]))
                i += 1
            if i:
                del fq[:i]
            j = 0
            while j < len(eq) and eq[j][0] <= limit:
                batch.append((eq[j][0], w, 1, j, eq[j]))
                j += 1
            if j:
                del eq[:j]
        if not batch:
            return
        batch.sort(key=lambda x: x[:4])
        disp = self.disp
        loads = self.loads
        for t, w, kind, _pos, payload in batch:
            if kind == 0:
                loads[w] -= 1
                self.n_finish += 1
                disp.on_finish(payload, w, t)
            else:
                self.n_evict += 1
                disp.on_evict(w, payload[1], payload[2], t)


def simulate_cluster(
    instance: Instance,
    local_policy: str | Callable[[], Policy],
    dispatcher: str | Dispatcher,
    *,
    workers: int,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    record_states: bool = False,
    engine: str = DEFAULT_ENGINE,
    **engine_options: Any,
) -> ClusterTrace:
    """Simulate ``workers`` data-parallel replicas behind ``dispatcher`` (module docstring).

    Parameters
    ----------
    instance:
        The requests; its limits apply to *each* worker.
    local_policy:
        A policy spec (``"dlpm"``, ``"dlpm:8000"``) or a zero-argument factory returning a fresh
        :class:`Policy`; one instance per worker.
    dispatcher:
        A spec (``"d2lpm"``, ``"d2lpm:inf"``, ``"least-load"``...) or a fresh :class:`Dispatcher`.
    workers:
        ``D >= 1``.
    seed:
        Recorded in every worker trace's ``meta``; the engine draws no random numbers.
    progress:
        Optional ``callable(done, total)`` after each dispatch and at the end.
    record_states:
        Log each worker's policy state (``meta["states"]`` of its trace) and, for D²LPM, the
        per-dispatch log (``meta["dispatch_log"]``).
    engine, engine_options:
        Every worker's engine (``"sglang"``, the default, or ``"ideal"``) and its options (as
        :func:`~prefixsched.reference.simulator.simulate`).

    Returns
    -------
    ClusterTrace
        Deterministic: same arguments, same bytes of ``to_dict()``.

    Raises
    ------
    InputError
        Bad ``workers``, ``seed``, policy or dispatcher spec, or a dispatcher returning an
        invalid worker index.
    IllegalDecisionError
        From a worker's local policy (as :func:`~prefixsched.reference.simulator.simulate`).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError("workers", f"must be an integer >= 1, got {workers!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError("seed", f"must be an integer, got {seed!r}")
    if not isinstance(instance, Instance):
        raise InputError("instance", f"must be an Instance, got {type(instance).__name__}")
    make = _policy_factory(local_policy)
    if isinstance(dispatcher, str):
        disp = create_dispatcher(dispatcher, record=record_states or None)
    elif isinstance(dispatcher, Dispatcher):
        disp = dispatcher
    else:
        raise InputError("dispatcher", f"must be a spec or a Dispatcher, got {type(dispatcher).__name__}")
    D = workers
    disp.bind(instance, D)
    ws = [
        Worker(instance, make(), engine=engine, requests=(), seed=seed, record_states=record_states, log_events=True,
               **engine_options)
        for _ in range(D)
    ]
    keymaker = PageKeys(instance.requests, instance.limits.page_size)  # the workers' keys too
    loads = [0] * D
    dispatch: dict[str, int] = {}
    pump = _EventPump(ws, loads, disp)
    reqs = instance.requests
    n = len(reqs)
    for k, r in enumerate(reqs):
        A = r.arrival
        for wk in ws:
            wk.run(A)
        pump.deliver(A)
        keys = keymaker.keys(r.prompt)
        w = disp.select(r, keys, A, tuple(loads))
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w < D:
            raise InputError("dispatcher", f"{disp.name!r} returned worker {w!r} for {r.id!r}; expected 0..{D - 1}")
        dispatch[r.id] = w
        loads[w] += 1
        disp.on_dispatch(r, keys, w, A)
        ws[w].submit(r)  # keys recomputed at join: Worker.keys_of would keep every prompt's keys for the whole run
        if progress is not None:
            progress(k + 1, n)
    for wk in ws:
        wk.run(final=True)
    pump.deliver(math.inf)
    traces = [wk.trace() for wk in ws]
    meta: dict[str, Any] = {
        "engine": CLUSTER_VERSION,
        "workers": D,
        "seed": seed,
        "local_policy": traces[0].policy,
        "requests_per_worker": [wk.n_submitted for wk in ws],
        "dispatcher_state": disp.state(),
        "final_loads": list(loads),
        "finish_events": pump.n_finish,
        "evict_events": pump.n_evict,
    }
    if record_states and isinstance(disp, D2LPMDispatcher):
        meta["dispatch_log"] = disp.log
    return ClusterTrace(instance=instance, dispatcher=disp.describe(), traces=traces, dispatch=dispatch, meta=meta)


# ---------------------------------------------------------------------------------------------
# cluster-wide metrics row


