"""Sequential scheduling models and their independent checker (issue #3).

This module is the *specification* of the exact solvers in :mod:`prefixsched.theory.exact`:
every backend (CP-SAT, z3, DP, brute force) returns a service order, and the order is replayed
here (:func:`evaluate`) before a result leaves the backend (:func:`to_result`). It imports no
solver and no policy.

Models (one query at a time, non-preemptive, prefill only; source: the k-LPM paper's theory
model, ``shared/specs/klpm.md`` §1, Definition 2)
----------------------------------------------------------------------------------------------
Queries are served in an order ``j_1, j_2, ...``. Query ``j`` has prompt ``x_j`` (token ids),
arrival ``t_j`` and output length ``o_j``. With ``reuse(j_k)`` the cached prefix it finds::

    extend(j_k)  = |x_{j_k}| - reuse(j_k)                                   (tokens)
    cost(j_k)    = (1 + c_attn * |x_{j_k}|) * extend(j_k)                   (time units)
    start(j_k)   = max(finish(j_{k-1}), t_{j_k})      (semi-active; finish(j_0) = 0)
    finish(j_k)  = start(j_k) + cost(j_k)
    TTFT(j)      = finish(j) - t_j

- ``"prev"``: ``reuse(j_k) = LCP(x_{j_k}, x_{j_{k-1}})``, the prefix shared with the *previous*
  query only (klpm.md §1.2; the first query has reuse 0).
- ``"radix"``: ``reuse(j_k) = max_{m < k} LCP(x_{j_k}, x_{j_m})``, the longest prefix held by any
  earlier-processed query (an unbounded radix cache that never evicts). With ``c_attn = 0`` the
  total work ``sum_j extend(j)`` is the number of distinct non-empty prefixes of the prompts (the
  node count of their trie) for *every* order, so the order changes TTFTs and idle time but not
  the total work. With ``c_attn > 0`` the total work does depend on the order (the query that
  first computes a shared prefix pays its own attention factor for it).
- ``"fair"``: the radix model plus clients and DLPM's service charge (dlpm.md §1)
  ``W = w_e * extend + w_q * output`` (see :func:`service_gap` for the fairness constraint).

Unit of time: one uncached token (``c_attn = 0`` unless the instance's cost model sets it). An
:class:`~prefixsched.theory.model.Instance`'s arrival times are read *as they are* in that unit
(:meth:`SeqInstance.from_instance`), so a Foundation JSON instance can be solved unchanged.

Objectives (:data:`OBJECTIVES`): ``max-ttft`` = ``max_j TTFT(j)``; ``mean-ttft`` =
``sum_j TTFT(j) / n``; ``makespan`` = ``max_j finish(j)`` (the completion time of the last query,
measured from time 0, not from the first arrival); ``ttft-feasible`` = the decision "is there an
order with every TTFT <= T" whose value is the schedule's max TTFT.

Conventions for results (used by every backend through :func:`to_result`):

- optimisation objectives: ``OPTIMAL`` only with a proven bound equal to the objective (gap 0);
  an incumbent without that proof is ``FEASIBLE`` with the proven bound and the gap.
- ``ttft-feasible`` with bound ``T``: "yes" is ``FEASIBLE`` with a witness schedule whose max TTFT
  is ``<= T`` (``proof`` names the witness); "no" is ``INFEASIBLE`` with ``proof`` naming the
  source; "don't know" (timeout) is ``UNKNOWN``.

Numerics: times are floats; comparisons use the absolute tolerance :data:`TOL` scaled by the
instance's horizon (:func:`tolerance`). With ``c_attn = 0`` and integer arrivals every time is an
integer and exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefixsched.errors import CheckerError, InputError
from prefixsched.theory.exact.result import SolveResult, Status, relative_gap
from prefixsched.theory.model import ServiceWeights

if TYPE_CHECKING:  # pragma: no cover
    from prefixsched.theory.model import Instance

__all__ = [
    "MODELS",
    "OBJECTIVES",
    "TOL",
    "SeqQuery",
    "SeqInstance",
    "SeqSchedule",
    "cost",
    "tolerance",
    "evaluate",
    "objective_value",
    "service_gap",
    "check_fair",
    "to_result",
    "lcp_tokens",
]

MODELS: tuple[str, ...] = ("prev", "radix", "fair")
OBJECTIVES: tuple[str, ...] = ("max-ttft", "mean-ttft", "makespan", "ttft-feasible")

#: Relative tolerance of time comparisons (times up to ~1e9 token units stay well inside float64).
TOL = 1e-9


def tolerance(inst: "SeqInstance") -> float:
    """Absolute tolerance for comparing times of ``inst``: ``TOL * max(1, horizon)``.

    ``horizon`` = latest arrival + total cost of all queries without reuse (an upper bound on
    every finish time of a semi-active schedule).
    """
    return TOL * max(1.0, inst.horizon)


def lcp_tokens(a: Sequence[int], b: Sequence[int]) -> int:
    """Longest common prefix length of two token tuples (binary search on C-level slice compares)."""
    n = min(len(a), len(b))
    if n == 0 or a[0] != b[0]:
        return 0
    if a[:n] == b[:n]:
        return n
    lo, hi = 1, n - 1  # a[:lo] == b[:lo] holds, a[:n] != b[:n]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def cost(x_tokens: int | Sequence[int], reuse: int, c_attn: float) -> float:
    """Service time of one query (klpm.md §1.3, Definition 2): ``(1 + c_attn*|x|) * (|x| - reuse)``.

    Parameters
    ----------
    x_tokens:
        The prompt (token ids) or its length ``|x|`` in tokens.
    reuse:
        Cached prefix tokens, ``0 <= reuse <= |x|``.
    c_attn:
        Attention factor (>= 0).

    Returns
    -------
    float
        Time units (one uncached token = 1 when ``c_attn = 0``).

    Raises
    ------
    InputError
        If ``reuse`` is outside ``[0, |x|]`` or ``c_attn < 0``.
    """
    n = x_tokens if isinstance(x_tokens, int) else len(x_tokens)
    if not 0 <= reuse <= n:
        raise InputError("reuse", f"must be in [0, {n}], got {reuse}")
    if c_attn < 0 or not math.isfinite(c_attn):
        raise InputError("c_attn", f"must be a finite number >= 0, got {c_attn}")
    return (1.0 + c_attn * n) * (n - reuse)


@dataclass(frozen=True)
class SeqQuery:
    """One query of a sequential instance.

    Attributes
    ----------
    id: unique id. client: its client (only the ``fair`` model reads it).
    arrival: arrival time in time units (>= 0, finite).
    tokens: prompt token ids (length >= 1).
    output_len: output tokens (>= 0); only the ``fair`` model's service charge reads it.
    """

    id: str
    client: str
    arrival: float
    tokens: tuple[int, ...]
    output_len: int = 1


@dataclass(frozen=True)
class SeqInstance:
    """A sequential-model instance: queries (any order; position = tie-break), ``c_attn``, weights.

    Derived (not part of equality): ``lcp[i][j]`` = LCP of the prompts of queries ``i`` and ``j``
    (positions in ``queries``), ``index`` = id -> position, ``lengths``, ``horizon``.

    Raises
    ------
    InputError
        Empty instance, duplicate ids, negative/non-finite arrival, empty prompt, negative
        output length, negative ``c_attn``.
    """

    queries: tuple[SeqQuery, ...]
    c_attn: float = 0.0
    weights: ServiceWeights = field(default_factory=ServiceWeights)
    lcp: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)
    index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        qs = tuple(self.queries)
        object.__setattr__(self, "queries", qs)
        if not qs:
            raise InputError("queries", "the instance is empty")
        if isinstance(self.c_attn, bool) or not isinstance(self.c_attn, (int, float)) or not math.isfinite(
            self.c_attn
        ) or self.c_attn < 0:
            raise InputError("c_attn", f"must be a finite number >= 0, got {self.c_attn!r}")
        self.weights.validate()
        index: dict[str, int] = {}
        for i, q in enumerate(qs):
            where = f"queries[{i}]"
            if q.id in index:
                raise InputError(f"{where}.id", f"duplicate id {q.id!r}")
            index[q.id] = i
            if not isinstance(q.arrival, (int, float)) or not math.isfinite(q.arrival) or q.arrival < 0:
                raise InputError(f"{where}.arrival", f"must be a finite number >= 0, got {q.arrival!r}")
            if len(q.tokens) < 1:
                raise InputError(f"{where}.tokens", "must hold at least one token")
            if not isinstance(q.output_len, int) or q.output_len < 0:
                raise InputError(f"{where}.output_len", f"must be an integer >= 0, got {q.output_len!r}")
        n = len(qs)
        rows = [[0] * n for _ in range(n)]
        for i in range(n):
            rows[i][i] = len(qs[i].tokens)
            for j in range(i + 1, n):
                v = lcp_tokens(qs[i].tokens, qs[j].tokens)
                rows[i][j] = rows[j][i] = v
        object.__setattr__(self, "lcp", tuple(tuple(r) for r in rows))
        object.__setattr__(self, "index", index)

    # -- derived ------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.queries)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(q.id for q in self.queries)

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(len(q.tokens) for q in self.queries)

    @property
    def arrivals(self) -> tuple[float, ...]:
        return tuple(float(q.arrival) for q in self.queries)

    @property
    def clients(self) -> tuple[str, ...]:
        """Client names in order of first appearance."""
        return tuple(dict.fromkeys(q.client for q in self.queries))

    @property
    def horizon(self) -> float:
        """Latest arrival + sum of no-reuse costs: no semi-active schedule finishes later."""
        return max(self.arrivals) + sum(cost(L, 0, self.c_attn) for L in self.lengths)

    def overlap(self, i: int | str, j: int | str) -> int:
        """LCP (tokens) of the prompts of queries ``i`` and ``j`` (positions or ids)."""
        a = self.index[i] if isinstance(i, str) else i
        b = self.index[j] if isinstance(j, str) else j
        return self.lcp[a][b]

    def cost_of(self, i: int, reuse: int) -> float:
        """:func:`cost` of query at position ``i`` with ``reuse`` cached tokens."""
        return cost(len(self.queries[i].tokens), reuse, self.c_attn)

    def service_of(self, i: int, extend: int) -> float:
        """DLPM service charge ``w_e * extend + w_q * output_len`` of query ``i`` (cost units)."""
        return self.weights.w_e * extend + self.weights.w_q * self.queries[i].output_len

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def from_instance(inst: "Instance") -> "SeqInstance":
        """Sequential view of an :class:`~prefixsched.theory.model.Instance`.

        ``tokens = tuple(prompt)`` (a BlockPrompt is expanded to its token ids), arrival read as
        token units unchanged, ``c_attn = inst.cost_model.c_attn``, ``weights = inst.weights``.
        The cost model's other parameters (seconds per token, step overheads, decode) and the
        limits are ignored: the sequential models have no batching and no capacity.
        """
        qs = tuple(
            SeqQuery(id=r.id, client=r.client, arrival=float(r.arrival), tokens=tuple(r.prompt), output_len=r.output_len)
            for r in inst.requests
        )
        return SeqInstance(queries=qs, c_attn=float(inst.cost_model.c_attn), weights=inst.weights)

    @staticmethod
    def simple(
        prompts: Sequence[Sequence[int]],
        arrivals: Sequence[float] | None = None,
        *,
        clients: Sequence[str] | None = None,
        output_lens: Sequence[int] | None = None,
        c_attn: float = 0.0,
        weights: ServiceWeights | None = None,
    ) -> "SeqInstance":
        """Convenience builder: ids ``q0, q1, ...``; arrivals default to 0, clients to ``c0``,
        output lengths to 1."""
        n = len(prompts)
        arrivals = [0.0] * n if arrivals is None else list(arrivals)
        clients = ["c0"] * n if clients is None else list(clients)
        output_lens = [1] * n if output_lens is None else list(output_lens)
        for name, seq in (("arrivals", arrivals), ("clients", clients), ("output_lens", output_lens)):
            if len(seq) != n:
                raise InputError(name, f"must have {n} entries (one per prompt), got {len(seq)}")
        qs = tuple(
            SeqQuery(f"q{i}", str(clients[i]), float(arrivals[i]), tuple(int(t) for t in prompts[i]), int(output_lens[i]))
            for i in range(n)
        )
        return SeqInstance(qs, c_attn=float(c_attn), weights=weights or ServiceWeights())


@dataclass(frozen=True)
class SeqSchedule:
    """A replayed sequential schedule (all dicts keyed by query id).

    Attributes
    ----------
    order: query ids in service order.
    start, finish, ttft: time units. ``ttft[j] = finish[j] - arrival[j]``.
    extend: uncached prompt tokens of each query under the model's reuse rule.
    makespan: ``max finish`` (from time 0). max_ttft, mean_ttft: over all queries.
    reuse: cached prefix tokens of each query (``len(prompt) - extend``).
    service: DLPM charge ``w_e*extend + w_q*output_len`` (cost units) of each query.
    model: the model it was evaluated under.
    """

    order: tuple[str, ...]
    start: dict[str, float]
    finish: dict[str, float]
    ttft: dict[str, float]
    extend: dict[str, int]
    makespan: float
    max_ttft: float
    mean_ttft: float
    reuse: dict[str, int] = field(default_factory=dict)
    service: dict[str, float] = field(default_factory=dict)
    model: str = ""

    @property
    def total_work(self) -> float:
        """Sum of service times (time units), i.e. makespan minus idle time."""
        return sum(self.finish[j] - self.start[j] for j in self.order)


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise InputError("model", f"unknown model {model!r} (choices: {', '.join(MODELS)})")


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise InputError("objective", f"unknown objective {objective!r} (choices: {', '.join(OBJECTIVES)})")


def reuse_sequence(inst: SeqInstance, order_idx: Sequence[int], model: str) -> list[int]:
    """Cached prefix tokens of each query of ``order_idx`` (positions) under ``model``."""
    _check_model(model)
    out: list[int] = []
    lcp = inst.lcp
    for k, j in enumerate(order_idx):
        if k == 0:
            out.append(0)
        elif model == "prev":
            out.append(lcp[j][order_idx[k - 1]])
        else:
            row = lcp[j]
            out.append(max(row[m] for m in order_idx[:k]))
    return out


def evaluate(
    inst: SeqInstance,
    order: Sequence[str],
    model: str,
    *,
    start: Mapping[str, float] | None = None,
) -> SeqSchedule:
    """Replay ``order`` under ``model`` and return the schedule (module docstring formulas).

    Parameters
    ----------
    inst:
        The instance.
    order:
        Query ids in service order: a permutation of all ids.
    model:
        One of :data:`MODELS`.
    start:
        Optional explicit start times (time units, per id). ``None`` gives the semi-active
        schedule (each query starts at ``max(previous finish, arrival)``). With explicit starts
        the checker verifies ``start >= arrival`` and that each query starts no earlier than its
        predecessor's finish (no overlap, one query at a time; non-preemption holds because each
        query is one interval of its full service time), within :func:`tolerance`.

    Raises
    ------
    InputError
        Unknown model.
    CheckerError
        ``order`` is not a permutation of the ids, a start time is missing, before the arrival,
        or overlaps the previous query.
    """
    _check_model(model)
    order = tuple(order)
    if len(order) != inst.n or set(order) != set(inst.index):
        missing = sorted(set(inst.index) - set(order))
        extra = sorted(set(order) - set(inst.index))
        raise CheckerError(
            f"order is not a permutation of the {inst.n} query ids "
            f"(len {len(order)}, missing {missing[:5]}, unknown {extra[:5]})"
        )
    idx = [inst.index[j] for j in order]
    reuses = reuse_sequence(inst, idx, model)
    tol = tolerance(inst)
    st: dict[str, float] = {}
    fin: dict[str, float] = {}
    ttft: dict[str, float] = {}
    ext: dict[str, int] = {}
    reu: dict[str, int] = {}
    srv: dict[str, float] = {}
    prev_finish = 0.0
    for k, (qid, i) in enumerate(zip(order, idx)):
        q = inst.queries[i]
        dur = inst.cost_of(i, reuses[k])
        if start is None:
            s = max(prev_finish, float(q.arrival))
        else:
            if qid not in start:
                raise CheckerError(f"start time of {qid!r} missing")
            s = float(start[qid])
            if not math.isfinite(s):
                raise CheckerError(f"start time of {qid!r} is not finite: {s}")
            if s < q.arrival - tol:
                raise CheckerError(f"{qid!r} starts at {s} before its arrival {q.arrival}")
            if k > 0 and s < prev_finish - tol:
                raise CheckerError(
                    f"{qid!r} starts at {s} before its predecessor {order[k - 1]!r} finishes at "
                    f"{prev_finish} (one query at a time, non-preemptive)"
                )
        f = s + dur
        st[qid], fin[qid] = s, f
        ttft[qid] = f - q.arrival
        e = len(q.tokens) - reuses[k]
        ext[qid], reu[qid] = e, reuses[k]
        srv[qid] = inst.service_of(i, e)
        prev_finish = f
    tt = list(ttft.values())
    return SeqSchedule(
        order=order,
        start=st,
        finish=fin,
        ttft=ttft,
        extend=ext,
        makespan=max(fin.values()),
        max_ttft=max(tt),
        mean_ttft=sum(tt) / len(tt),
        reuse=reu,
        service=srv,
        model=model,
    )


def objective_value(sched: SeqSchedule, objective: str) -> float:
    """Value of ``sched`` under ``objective`` (``ttft-feasible`` -> max TTFT). Time units."""
    _check_objective(objective)
    if objective in ("max-ttft", "ttft-feasible"):
        return sched.max_ttft
    if objective == "mean-ttft":
        return sched.mean_ttft
    return sched.makespan


# ---------------------------------------------------------------------------------------------
# fairness (model "fair")


def backlog_flags(inst: SeqInstance, sched: SeqSchedule) -> tuple[list[set[str]], list[set[str]]]:
    """Per position ``r`` of ``sched.order``: the clients backlogged *before* and *after* pick r.

    ``before[r]``: clients with a query ``i`` with ``arrival(i) <= start_r`` and position ``>= r``
    (the query picked at r still counts: it is waiting up to the instant it starts).
    ``after[r]``: clients with a query with ``arrival <= start_r`` and position ``> r`` (still
    waiting right after the pick, hence throughout ``(start_r, start_{r+1})``).
    """
    pos_client = [inst.queries[inst.index[j]].client for j in sched.order]
    arr = [float(inst.queries[inst.index[j]].arrival) for j in sched.order]
    n = len(sched.order)
    tol = tolerance(inst)
    before: list[set[str]] = []
    after: list[set[str]] = []
    for r in range(n):
        t = sched.start[sched.order[r]]
        b = {pos_client[m] for m in range(r, n) if arr[m] <= t + tol}
        before.append(b)
        after.append({pos_client[m] for m in range(r + 1, n) if arr[m] <= t + tol})
    return before, after


def service_gap(inst: SeqInstance, sched: SeqSchedule) -> float:
    """Largest service gap between two continuously backlogged clients (model ``fair``).

    Definition (ours; dlpm.md §1 and §4 Thm 4.1's premise made exact for a sequential server):

    - Service (cost units) ``W = w_e * extend + w_q * output_len`` of a query is charged to its
      client at the query's **admission** (its start time), in full. DLPM charges
      ``w_e * extend`` at admission (Algorithm 1 line 11) and ``w_q`` per decoded token; the
      sequential model is prefill-only, so the output charge is lumped at admission too.
    - A client is **backlogged** at time ``t`` when it has a query with ``arrival <= t`` that has
      not started by ``t`` (at the instant a query starts it still counts as waiting). This is
      DLPM's "has a request in the waiting queue", the condition under which DLPM keeps a client
      in its active list; a client whose queue empties leaves it and its deficit is reset on
      rejoining (dlpm.md Appendix A.1), which is why Thm 4.1 assumes *continuous* backlog.
    - For an interval ``[t1, t]`` during which clients ``f`` and ``g`` are both continuously
      backlogged, the gap is ``|W_f(t1, t) - W_g(t1, t)|`` with ``W_x(t1, t)`` the charges at
      admission times in ``[t1, t]``. We measure at every completion time ``t`` and take the
      maximum over ``t``, ``t1`` and pairs ``f != g``.

    Because charges happen only at start times, the maximum is attained on windows of consecutive
    positions ``p..q`` of the order (``t1 = start_p``, ``t = finish_q``). The window is valid for
    ``(f, g)`` iff both are in ``before[p]`` and in ``after[r]`` for every ``p <= r < q``
    (:func:`backlog_flags`); its gap is ``|sum_{r=p..q} W_r [client_r = f] - ... [client_r = g]|``.
    A one-position window (``p = q``) with both backlogged already has gap ``W_p``, so any
    ``delta`` below the smallest such charge is infeasible whenever two clients compete: like
    DLPM's bound ``2(U + Q_u) >= U``, the gap of atomic service cannot be below one request.

    Returns 0.0 when no two clients are ever backlogged together. Cost units.
    """
    before, after = backlog_flags(inst, sched)
    n = len(sched.order)
    clients_at = [inst.queries[inst.index[j]].client for j in sched.order]
    w = [sched.service[j] for j in sched.order]
    clients = inst.clients
    best = 0.0
    for a in range(len(clients)):
        for b in range(a + 1, len(clients)):
            f, g = clients[a], clients[b]
            for p in range(n):
                if f not in before[p] or g not in before[p]:
                    continue
                d = 0.0
                for q in range(p, n):
                    c = clients_at[q]
                    if c == f:
                        d += w[q]
                    elif c == g:
                        d -= w[q]
                    if abs(d) > best:
                        best = abs(d)
                    if f not in after[q] or g not in after[q]:
                        break
    return best


def check_fair(inst: SeqInstance, sched: SeqSchedule, delta: float) -> float:
    """Raise :class:`CheckerError` if :func:`service_gap` exceeds ``delta`` (cost units).

    Returns the gap. The comparison allows :data:`TOL` relative slack.
    """
    if delta is None or not math.isfinite(delta) or delta < 0:
        raise InputError("delta", f"must be a finite number >= 0, got {delta!r}")
    gap = service_gap(inst, sched)
    if gap > delta + TOL * max(1.0, abs(delta)):
        raise CheckerError(f"service gap {gap} exceeds delta {delta} (model fair)")
    return gap


# ---------------------------------------------------------------------------------------------
# the funnel every backend goes through


def to_result(
    inst: SeqInstance,
    sched: SeqSchedule | Sequence[str] | None,
    model: str,
    objective: str,
    status: Status | str,
    bound: float | None,
    wall_s: float,
    solver: str,
    proof: str | None,
    *,
    ttft_bound: float | None = None,
    delta: float | None = None,
    anytime: Iterable[tuple[float, float]] = (),
    use_start: bool = True,
) -> SolveResult:
    """Replay a backend's schedule with :func:`evaluate` and build the :class:`SolveResult`.

    Parameters
    ----------
    sched:
        A :class:`SeqSchedule` (its order and, if ``use_start``, its start times are replayed),
        a bare order (semi-active replay), or ``None`` (no schedule: INFEASIBLE / UNKNOWN).
    bound:
        Proven lower bound on the optimum (time units) or ``None``.
    ttft_bound:
        ``T`` of ``ttft-feasible`` (required for that objective).
    delta:
        The fairness bound of model ``fair`` (required for it); the replayed schedule must meet
        :func:`check_fair`.

    Checks (a failure is a backend bug, raised as :class:`CheckerError`): the replay succeeds;
    a replayed objective that differs from the backend's own schedule value; OPTIMAL without a
    bound or with a non-zero gap; a proven bound above a feasible objective; a ``ttft-feasible``
    witness above ``T``; a ``fair`` schedule whose gap exceeds ``delta``; a schedule with status
    INFEASIBLE/UNKNOWN or no schedule with status OPTIMAL/FEASIBLE.
    """
    _check_model(model)
    _check_objective(objective)
    status = Status(status)
    if objective == "ttft-feasible" and ttft_bound is None:
        raise InputError("bound", "objective ttft-feasible needs the TTFT bound T")
    if model == "fair" and delta is None:
        raise InputError("delta", "model fair needs the service-gap bound delta")
    base: dict[str, Any] = dict(wall_s=float(wall_s), model=model, objective_name=objective, solver=solver,
                                anytime=tuple((float(a), float(b)) for a, b in anytime))
    if sched is None:
        if status in (Status.OPTIMAL, Status.FEASIBLE):
            raise CheckerError(f"{solver}: status {status.value} without a schedule")
        if status is Status.INFEASIBLE and not proof:
            raise CheckerError(f"{solver}: INFEASIBLE without a proof source")
        return SolveResult(status=status, objective=None, bound=bound, gap=None, proof=proof, **base)
    if status in (Status.INFEASIBLE, Status.UNKNOWN):
        raise CheckerError(f"{solver}: status {status.value} with a schedule")
    if isinstance(sched, SeqSchedule):
        claimed: float | None = objective_value(sched, objective)
        replay = evaluate(inst, sched.order, model, start=sched.start if use_start else None)
    else:
        claimed = None
        replay = evaluate(inst, tuple(sched), model)
    value = objective_value(replay, objective)
    tol = tolerance(inst)
    if claimed is not None and abs(claimed - value) > tol:
        raise CheckerError(f"{solver}: claimed objective {claimed} but the replay gives {value}")
    if model == "fair":
        check_fair(inst, replay, float(delta))  # type: ignore[arg-type]
    if objective == "ttft-feasible":
        if replay.max_ttft > float(ttft_bound) + tol:  # type: ignore[arg-type]
            raise CheckerError(f"{solver}: witness has max TTFT {replay.max_ttft} > T = {ttft_bound}")
        if status is Status.OPTIMAL:
            status = Status.FEASIBLE  # a decision "yes" is FEASIBLE + witness (module docstring)
        gap = relative_gap(value, bound) if bound is not None else None
        return SolveResult(status=status, objective=value, bound=bound, gap=gap, order=replay.order,
                           start=dict(replay.start), ttft=dict(replay.ttft), proof=proof or "witness schedule",
                           **base)
    if bound is not None and bound > value + tol:
        raise CheckerError(f"{solver}: proven bound {bound} exceeds a feasible objective {value}")
    if bound is not None and abs(bound - value) <= tol:
        bound = value  # snap float noise
    gap = relative_gap(value, bound)
    if status is Status.OPTIMAL and gap != 0.0:
        raise CheckerError(f"{solver}: OPTIMAL claimed with bound {bound} and objective {value} (gap {gap})")
    return SolveResult(status=status, objective=value, bound=bound, gap=gap, order=replay.order,
                       start=dict(replay.start), ttft=dict(replay.ttft), proof=proof, **base)
