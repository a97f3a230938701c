"""CP-SAT backend: the optimiser of the sequential models ``prev`` and ``radix`` (issue #3).

The models, objectives and units are those of :mod:`prefixsched.theory.sequential` (the k-LPM
paper's theory model, ``shared/specs/klpm.md`` §1, Definition 2): one query at a time,
non-preemptive, prefill only; query ``j`` (prompt ``x_j``, arrival ``a_j``) served with ``l``
cached tokens costs ``p_j(l) = (1 + c_attn*|x_j|) * (|x_j| - l)`` time units (one uncached token
= one unit). ``prev`` reuses the LCP with the immediately previous query; ``radix`` the longest
prefix shared with *any* earlier query. Objectives: ``max-ttft``, ``mean-ttft``, ``makespan``
and the decision ``ttft-feasible`` (every TTFT ``<= T``).

Encoding (single machine, release dates, sequence-dependent processing times)
-----------------------------------------------------------------------------
Nodes ``0`` (a dummy depot) and ``1..n`` (the queries). One literal ``arc[i, j]`` per allowed arc;
``add_circuit`` makes them one Hamiltonian circuit through the depot: ``0 -> j`` means "j is
served first", ``i -> 0`` "i is served last". Per query: integer ``S_j`` (start), ``D_j``
(service time), ``C_j = S_j + D_j`` (completion, i.e. the first token), ``S_j >= a_j`` and
``arc[i, j] => S_j >= C_i``. A redundant ``add_no_overlap`` over the intervals ``[S_j, C_j)``
gives CP-SAT's disjunctive propagators (edge finding, precedences) on top of the circuit.

- ``prev``: ``D_j = sum_i p_j(LCP(x_i, x_j)) * arc[i, j] + p_j(0) * arc[0, j]`` (exactly one
  incoming arc is true, so this is the predecessor's cost, a linear "element").
- ``radix``: one *reuse source* literal per query, ``par[i, j]`` ("j reuses the prefix it shares
  with i", only for ``LCP > 0``) or ``par[0, j]`` (no reuse), exactly one per ``j``;
  ``par[i, j] => S_j >= C_i`` and ``D_j = p_j(0) - sum_i (p_j(0) - p_j(LCP_ij)) * par[i, j]``.
  A model solution may name a worse source than the best earlier query; then its ``D_j`` is
  larger than the true cost, so every model solution is a real schedule of no larger objective
  after the semi-active replay, and the best source of every real schedule is a model solution of
  equal objective: optima and bounds coincide. Source cycles cannot occur: along a cycle of
  ``S_j >= C_i`` all services would have length 0, which needs ``x_j`` to be a prefix of ``x_i``
  for every edge, i.e. all prompts on the cycle identical, and sources between identical prompts
  are allowed only from the earlier position (rule R1 below). If a zero-length query's source
  lies *after* it in the circuit (both at the same instant), the source's own source is an
  ancestor whose LCP with ``j`` is at least as long (LCP is an ultrametric:
  ``LCP(a, c) >= min(LCP(a, b), LCP(b, c))``), so the true reuse in circuit order is never less
  than the claimed one.
- ``fair`` is not supported (its service-gap constraint ranges over windows of consecutive
  positions with time-dependent backlog flags); :class:`~prefixsched.errors.SolverLimitError`
  names the ``dp``/``z3``/``brute`` backends instead.

Objective variable: ``Z >= C_j - a_j`` (``max-ttft``), ``Z >= C_j`` (``makespan``),
``sum_j (C_j - a_j)`` (``mean-ttft``, divided by ``n`` when reported), none for
``ttft-feasible`` (``C_j <= a_j + T`` in the domains).

Integral data (decision). CP-SAT needs integers. Every arrival, ``c_attn`` and ``T`` is read as
the exact rational of its shortest decimal representation (``Fraction(repr(x))``); all times are
multiplied by ``scale`` = the least common multiple of their denominators, which makes every
arrival and every ``p_j(l)`` integral (``p_j(l) = (|x_j|-l) + c_attn*|x_j|*(|x_j|-l)``). A scale
above :data:`MAX_SCALE` or a scaled horizon above :data:`MAX_HORIZON` raises
:class:`~prefixsched.errors.InputError` (field ``c_attn``/``arrival``): round the data first.

Upper bounds and hints. Candidate orders: the greedy policies of :mod:`.greedy` (FCFS, LPM,
k-LPM for k = 2, 3, 4), the caller's ``hint_orders``, and "query f first, then the rest in
arrival order" for the few ``f`` with the smallest lower bound ``LB_f`` (below). Each is
normalised by rule R1 (which never makes it worse), evaluated, and the best one becomes a
*complete* hint (every arc, source, start, service, completion and objective variable) and the
upper bound ``U`` of the objective domain.

Lower bounds (all proved by relaxation; ``pmin_j`` = cost of ``j`` with the longest LCP it has
with any *allowed* predecessor/source, ``pfirst_j = p_j(0)``)
----------------------------------------------------------------------------------------------
- LB1 (``max-ttft``, ``makespan``, ``ttft-feasible``): replace every service time by ``pmin_j``
  except the first query's, which is ``pfirst_f`` (nothing is cached before the first query).
  For a fixed first query ``f`` the rest is ``1 | r_j | L_max`` with due dates ``a_j`` (resp.
  ``1 | r_j | C_max``); release and due dates are *agreeable* (both equal ``a_j``), so
  earliest-release order (FCFS) is optimal for it (adjacent-exchange argument: swapping an
  adjacent pair out of release order never increases the later completion and the earlier
  query's lateness is dominated by the later one's). Actual service times are ``>= pmin_j``, so
  ``LB_f`` = the FCFS value of that relaxation bounds every schedule starting with ``f``; the
  bound is ``min_f LB_f``, and an ``f`` with ``LB_f > U`` (``> T``) never starts: arc ``0 -> f``
  is removed. With no reuse at all this bound is exact (FCFS is optimal, klpm.md §2.3), and it is
  exact whenever every query has the same best LCP with every possible predecessor (e.g. windows
  of the Mooncake trace at block granularity, where all prompts share exactly the system block).
- LB3 (``prev``, ``max-ttft``/``ttft-feasible``): bound B of :mod:`.bounds_lb` (trie entries:
  a set ``Q`` of queries arriving in ``[a_lo, a_hi]`` needs at least its distinct prefixes minus
  the longest LCP with an outsider in service time between ``a_lo`` and ``a_hi + Z``; proof
  there), rounded up in scaled integer units. It sees that a shared prefix must be recomputed
  each time the order enters its family, which LB1 cannot. ``lb = max(LB1, LB3)``.
- LB2 (``mean-ttft``): SRPT on the preemptive relaxation ``1 | r_j, pmtn | sum C_j`` with
  service times ``pmin_j`` (optimal for it, Schrage 1968), minus ``sum a_j``.
- Time windows: a schedule of value ``<= U`` has deadlines ``C_j <= d_j`` with ``d_j = a_j + U``
  (``max-ttft``; ``a_j + T`` for ``ttft-feasible``), ``d_j = U`` (``makespan``) or
  ``d_j = a_j + U - sum_{k != j} pmin_k`` (``mean-ttft``), and ``C_j >= a_j + pmin_j``. Pair
  rule: if ``a_i + pmin_i + pmin_j > d_j`` then ``i`` cannot precede ``j`` at all, so ``j``
  precedes ``i`` (``C_j <= S_i``) and arc ``i -> j`` and source ``par[i, j]`` are removed; an arc
  ``i -> j`` is also removed when ``max(a_i + pmin_i, a_j) + p_j(LCP_ij) > d_j``. After removals
  ``pmin`` is recomputed over the remaining predecessors and the rules are iterated to a fixpoint
  (a bounded number of rounds). All of these hold for every schedule of value ``<= U``, which
  includes the hint and at least one optimum.

Dominance and symmetry rules (each preserves at least one optimal schedule for every objective)
-----------------------------------------------------------------------------------------------
- R1 (identical prompts in arrival order). Let ``i`` and ``j`` have identical prompts (for
  ``fair`` also the same client) with ``(a_i, i) < (a_j, j)`` and suppose ``j`` is served at
  position ``p`` before ``i`` at position ``q > p``. Exchange them and keep every position's start
  and completion time. The sequence of prompts is unchanged, so every service time is unchanged
  (``prev`` and ``radix`` read only prompts); position ``p`` now starts at ``S_p >= a_j >= a_i``
  and position ``q`` at ``S_q >= C_p >= S_p >= a_j``, so the exchanged schedule is feasible. Its
  TTFTs at the two positions are ``C_p - a_i`` and ``C_q - a_j``, against ``C_p - a_j`` and
  ``C_q - a_i`` before: the sum is the same, and the maximum is ``<= C_q - a_i``; makespan is
  unchanged. Repeating (bubble sort inside each class) gives an optimal schedule with every class
  in arrival order. Encoded as ``C_i <= S_j``, no arc ``j -> i`` and no source ``par[j, i]``.
- R2 (time windows, LB1 and the pair rule above) remove only schedules of value ``> U`` (or
  ``> T``), and the incumbent attains ``U``.
- Semi-active schedules are not imposed (idle time is allowed in the model); the returned order is
  replayed semi-actively, which never increases a completion time.
  No other symmetry breaking is used: two queries of one prefix family with different suffixes or
  arrivals are not interchangeable under release dates, so ordering them a priori is unsound.

Status discipline. ``OPTIMAL`` only when CP-SAT reports OPTIMAL *and* the replayed objective
equals the proven bound (:func:`~prefixsched.theory.sequential.to_result` re-checks);
``FEASIBLE`` with bound and gap when the time limit stops the search with an incumbent (the greedy
incumbent when CP-SAT found nothing better); ``INFEASIBLE`` (proof ``"cpsat"``) when no order
meets ``T``; a decision "yes" is ``FEASIBLE`` with the witness. The bound reported is
``max(CP-SAT's best bound, LB)``.

Determinism. ``random_seed = seed`` and ``num_workers = workers``. With ``workers == 1`` and a
search that finishes (OPTIMAL/INFEASIBLE) the result is reproducible; with several workers, or
when the wall-clock limit stops the search, CP-SAT's portfolio threads race and the returned
schedule (not the optimal value) may differ between runs. ``wall_s`` and ``anytime`` are
informational only.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from ortools.sat.python import cp_model

from prefixsched.errors import CheckerError, InputError, SolverLimitError
from prefixsched.theory.exact._interrupt import Guard
from prefixsched.theory.exact.result import SolveResult, Status
from prefixsched.theory.sequential import (
    MODELS,
    OBJECTIVES,
    SeqInstance,
    evaluate,
    objective_value,
    to_result,
)

__all__ = ["solve_cpsat", "solve", "MAX_N", "MAX_SCALE", "MAX_HORIZON", "lower_bound"]

#: Largest instance accepted (the model has ``n^2`` arc literals and enforced constraints).
MAX_N = 200
#: Largest time scale accepted to make fractional data integral.
MAX_SCALE = 10**6
#: Largest scaled time value accepted (CP-SAT works with 64-bit integers; keep sums far from it).
MAX_HORIZON = 2**50

_SUPPORTED_MODELS = ("prev", "radix")
#: How many "f first, then FCFS" candidate orders are evaluated as extra incumbents.
_FIRST_CANDIDATES = 8
#: Rounds of the pmin / pair-rule fixpoint.
_PRUNE_ROUNDS = 4


# ---------------------------------------------------------------------------------------------
# data preparation


def _exact(x: float | int, field: str) -> Fraction:
    if isinstance(x, int):
        return Fraction(x)
    if not math.isfinite(x):
        raise InputError(field, f"must be finite, got {x!r}")
    return Fraction(repr(float(x)))


class _Data:
    """Scaled integer data of one instance (positions 0..n-1 = the instance's query order)."""

    def __init__(self, inst: SeqInstance, model: str, ttft_bound: float | None) -> None:
        n = inst.n
        self.inst = inst
        self.model = model
        self.n = n
        self.ids = inst.ids
        c = _exact(inst.c_attn, "c_attn")
        arr = [_exact(q.arrival, f"queries[{i}].arrival") for i, q in enumerate(inst.queries)]
        T = _exact(ttft_bound, "bound") if ttft_bound is not None else None
        scale = 1
        for v in [c, *arr] + ([T] if T is not None else []):
            scale = math.lcm(scale, v.denominator)
        if scale > MAX_SCALE:
            raise InputError(
                "c_attn" if c.denominator > MAX_SCALE else "arrival",
                f"needs a time scale of {scale} > {MAX_SCALE} to become integral; round the data "
                f"to fewer decimals (cpsat works on integers)",
            )
        self.scale = scale
        self.L = list(inst.lengths)
        # w_j = scale * (1 + c*|x_j|), an integer because scale is a multiple of c's denominator
        self.w = [int(scale * (1 + c * L)) for L in self.L]
        self.arr = [int(a * scale) for a in arr]
        self.T = int(math.floor(T * scale)) if T is not None else None
        self.lcp = inst.lcp
        horizon = max(self.arr) + sum(w * L for w, L in zip(self.w, self.L))
        if horizon > MAX_HORIZON:
            late = max(range(n), key=lambda i: (self.arr[i], -i))
            if self.arr[late] * 2 > MAX_HORIZON:  # one arrival dominates: name the request
                raise InputError(
                    f"queries[{late}].arrival",
                    f"request {self.ids[late]!r} arrives at {inst.queries[late].arrival:g} time units; cpsat needs "
                    f"every time (x scale {scale}) below 2**50 = {MAX_HORIZON:.3g}; shift or rescale the arrivals",
                )
            raise InputError(
                "arrival",
                f"latest arrival + total no-reuse work = {horizon / scale:.4g} time units (x scale {scale}) "
                f"exceeds cpsat's 2**50 = {MAX_HORIZON:.3g}; rescale the instance",
            )
        self.horizon = horizon
        # identical-prompt classes (R1): earlier (arrival, position) first
        self.same_before: list[list[int]] = [[] for _ in range(n)]  # same_before[j] = identical i before j
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, q in enumerate(inst.queries):
            key = (q.tokens, q.client) if model == "fair" else (q.tokens,)
            groups.setdefault(key, []).append(i)
        self.rank = {}
        for members in groups.values():
            members.sort(key=lambda i: (self.arr[i], i))
            for k, j in enumerate(members):
                self.same_before[j] = members[:k]
                self.rank[j] = k
        self.group_of = {}
        for key, members in groups.items():
            for j in members:
                self.group_of[j] = members

    def p(self, j: int, reuse: int) -> int:
        """Scaled service time of ``j`` with ``reuse`` cached tokens."""
        return self.w[j] * (self.L[j] - reuse)

    def pair(self, i: int, j: int) -> int:
        """Scaled cost of ``j`` reusing the prefix shared with ``i``."""
        return self.p(j, self.lcp[i][j])

    # -- integer replay (same formulas as sequential.evaluate, used for candidate incumbents)
    def replay(self, order: Sequence[int]) -> tuple[list[int], list[int]]:
        n = self.n
        S = [0] * n
        C = [0] * n
        t = 0
        best = [0] * n
        for k, j in enumerate(order):
            if k == 0:
                reuse = 0
            elif self.model == "prev":
                reuse = self.lcp[order[k - 1]][j]
            else:
                reuse = best[j]
            s = max(t, self.arr[j])
            S[j], C[j] = s, s + self.p(j, reuse)
            t = C[j]
            if self.model != "prev":
                row = self.lcp[j]
                for i in range(n):
                    if row[i] > best[i]:
                        best[i] = row[i]
        return S, C

    def value(self, C: Sequence[int], objective: str) -> int:
        if objective in ("max-ttft", "ttft-feasible"):
            return max(c - a for c, a in zip(C, self.arr))
        if objective == "mean-ttft":
            return sum(c - a for c, a in zip(C, self.arr))
        return max(C)

    def normalise(self, order: Sequence[int]) -> list[int]:
        """Rule R1: inside each identical-prompt class, reassign its positions in arrival order."""
        order = list(order)
        seen: dict[int, int] = {}
        out = []
        for j in order:
            members = self.group_of[j]
            k = seen.get(id(members), 0)
            seen[id(members)] = k + 1
            out.append(members[k])
        return out


# ---------------------------------------------------------------------------------------------
# lower bounds (module docstring LB1, LB2)


def _fcfs_relaxed(d: _Data, pmin: Sequence[int], first: int | None, objective: str) -> int:
    """FCFS value of the relaxation with service ``pmin`` (and ``pfirst`` for ``first``)."""
    arr = d.arr
    order = sorted(range(d.n), key=lambda j: (arr[j], j))
    t = 0
    worst = -(10**30)
    if first is not None:
        t = arr[first] + d.p(first, 0)
        worst = t - arr[first] if objective != "makespan" else t
        order = [j for j in order if j != first]
    for j in order:
        t = max(t, arr[j]) + pmin[j]
        worst = max(worst, t - arr[j] if objective != "makespan" else t)
    return worst


def _srpt_sum(d: _Data, pmin: Sequence[int]) -> int:
    """Sum of completion times of SRPT on the preemptive relaxation, minus the arrivals."""
    order = sorted(range(d.n), key=lambda j: (d.arr[j], j))
    heap: list[tuple[int, int]] = []
    t = 0
    k = 0
    total = 0
    n = d.n
    while k < n or heap:
        if not heap:
            t = max(t, d.arr[order[k]])
        while k < n and d.arr[order[k]] <= t:
            heapq.heappush(heap, (pmin[order[k]], order[k]))
            k += 1
        rem, j = heapq.heappop(heap)
        nxt = d.arr[order[k]] if k < n else None
        if nxt is not None and t + rem > nxt:
            heapq.heappush(heap, (rem - (nxt - t), j))
            t = nxt
        else:
            t += rem
            total += t - d.arr[j]
    return total


def _first_bounds(d: _Data, pmin: Sequence[int], objective: str) -> list[int]:
    return [_fcfs_relaxed(d, pmin, f, objective) for f in range(d.n)]


def lower_bound(inst: SeqInstance, model: str, objective: str) -> float:
    """The relaxation lower bound LB1/LB2 (module docstring) in time units, without pruning.

    For ``mean-ttft`` the value is the bound on the *mean* TTFT. Raises :class:`InputError` for an
    unknown model/objective or non-integrable data (see the module docstring).
    """
    if model not in MODELS:
        raise InputError("model", f"unknown model {model!r} (choices: {', '.join(MODELS)})")
    if objective not in OBJECTIVES:
        raise InputError("objective", f"unknown objective {objective!r} (choices: {', '.join(OBJECTIVES)})")
    d = _Data(inst, model, None)
    pmin = [min([d.p(j, 0)] + [d.pair(i, j) for i in range(d.n) if i != j]) for j in range(d.n)]
    if objective == "mean-ttft":
        return _srpt_sum(d, pmin) / d.scale / d.n
    return min(_first_bounds(d, pmin, objective)) / d.scale


# ---------------------------------------------------------------------------------------------
# the solver


class _Anytime(cp_model.CpSolverSolutionCallback):
    def __init__(self, t0: float, to_units: float) -> None:
        super().__init__()
        self.t0 = t0
        self.to_units = to_units
        self.points: list[tuple[float, float]] = []

    def on_solution_callback(self) -> None:  # noqa: D401 (CP-SAT API)
        self.points.append((time.perf_counter() - self.t0, self.objective_value * self.to_units))


def solve(
    inst: SeqInstance,
    model: str,
    objective: str,
    *,
    bound: float | None = None,
    delta: float | None = None,
    time_limit: float | None = None,
    workers: int | None = None,
    hint_orders: Sequence[Sequence[str]] | None = None,
) -> SolveResult:
    """Dispatcher entry point (:data:`prefixsched.theory.exact.BACKEND_SIGNATURE`).

    ``time_limit=None`` means 10 s, ``workers=None`` means 2; see :func:`solve_cpsat`.
    """
    return solve_cpsat(
        inst,
        model,
        objective,
        bound=bound,
        delta=delta,
        time_limit=10.0 if time_limit is None else time_limit,
        workers=2 if workers is None else workers,
        hint_orders=() if hint_orders is None else hint_orders,
    )


def solve_cpsat(
    seq_inst: SeqInstance,
    model: str,
    objective: str,
    *,
    bound: float | None = None,
    delta: float | None = None,
    time_limit: float = 10.0,
    workers: int = 2,
    hint_orders: Sequence[Sequence[str]] = (),
    seed: int = 0,
    log: bool = False,
    strengthen: bool = True,
) -> SolveResult:
    """Solve ``seq_inst`` under ``model`` for ``objective`` with CP-SAT (module docstring).

    Parameters
    ----------
    seq_inst:
        The instance (time unit: one uncached token; arrivals in that unit).
    model:
        ``"prev"`` or ``"radix"`` (``"fair"`` raises :class:`SolverLimitError`).
    objective:
        ``"max-ttft"``, ``"mean-ttft"``, ``"makespan"`` or ``"ttft-feasible"``.
    bound:
        ``T`` (time units) of ``ttft-feasible``; required for it and only for it.
    delta:
        Accepted for signature compatibility; only ``fair`` reads it (unsupported here).
    time_limit:
        Wall-clock seconds for CP-SAT (> 0). Data preparation and bounds are not counted.
    workers:
        CP-SAT threads (>= 1). More than one is not reproducible run to run.
    hint_orders:
        Orders (query ids) used as candidate incumbents/hints, together with the greedy ones.
    seed:
        CP-SAT ``random_seed``.
    log:
        Print CP-SAT's search log.
    strengthen:
        ``False`` builds the *plain* model for ablation benchmarks: circuit and horizon only, no
        relaxation bounds, no pruning, no rule R1, no hint (the greedy incumbent is still returned
        when CP-SAT finds nothing). Results are equally valid, only slower to prove.

    Returns
    -------
    SolveResult
        Built by :func:`prefixsched.theory.sequential.to_result` (semi-active replay of the order),
        ``solver="cpsat"``; ``bound`` = max(CP-SAT best bound, relaxation bound) in time units;
        ``anytime`` = ``(wall_s, objective)`` per improving CP-SAT solution.

    Raises
    ------
    InputError
        Unknown model/objective, missing or spurious ``bound``, bad ``time_limit``/``workers``,
        a hint that is not a permutation, or data that cannot be made integral.
    SolverLimitError
        ``n > MAX_N`` (use the greedy orders or the simulator), or model ``fair`` (use ``dp``
        or ``brute``).
    CheckerError
        The replayed schedule disagrees with the model (a bug).
    SolveInterrupted
        An interrupt (Ctrl-C, SIGTERM) stopped the search; it carries the result built from what
        the search had, marked ``interrupted`` (:mod:`prefixsched.theory.exact._interrupt`).
    """
    guard = Guard()
    return guard.finish(_solve_cpsat(
        guard, seq_inst, model, objective, bound=bound, delta=delta, time_limit=time_limit, workers=workers,
        hint_orders=hint_orders, seed=seed, log=log, strengthen=strengthen,
    ))


def _solve_cpsat(
    guard: Guard,
    seq_inst: SeqInstance,
    model: str,
    objective: str,
    *,
    bound: float | None,
    delta: float | None,
    time_limit: float,
    workers: int,
    hint_orders: Sequence[Sequence[str]],
    seed: int,
    log: bool,
    strengthen: bool,
) -> SolveResult:
    t0 = time.perf_counter()
    if model not in MODELS:
        raise InputError("model", f"unknown model {model!r} (choices: {', '.join(MODELS)})")
    if objective not in OBJECTIVES:
        raise InputError("objective", f"unknown objective {objective!r} (choices: {', '.join(OBJECTIVES)})")
    if model not in _SUPPORTED_MODELS:
        raise SolverLimitError(
            f"cpsat does not support model {model!r} (its service-gap constraint is not encoded); "
            f"use solver='dp' (n <= 14) or 'brute' (n <= 8); z3 does not encode it either"
        )
    if objective == "ttft-feasible":
        if bound is None:
            raise InputError("bound", "objective ttft-feasible needs the TTFT bound T (time units)")
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not bound >= 0:
            raise InputError("bound", f"must be a number >= 0, got {bound!r}")
    elif bound is not None:
        raise InputError("bound", f"only objective ttft-feasible takes a bound, got objective {objective!r}")
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise InputError("time_limit", f"must be > 0 seconds, got {time_limit!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError("workers", f"must be an integer >= 1, got {workers!r}")
    if seq_inst.n > MAX_N:
        raise SolverLimitError(
            f"cpsat accepts at most {MAX_N} queries, got {seq_inst.n}; use the greedy orders "
            f"(prefixsched.theory.exact.greedy.best_greedy) or the simulator for larger instances"
        )
    d = _Data(seq_inst, model, bound if objective == "ttft-feasible" else None)
    if not strengthen:
        d.same_before = [[] for _ in range(seq_inst.n)]
        d.group_of = {j: [j] for j in range(seq_inst.n)}
    n = d.n
    ids = d.ids
    pos = seq_inst.index
    hints_idx: list[list[int]] = []
    for k, h in enumerate(hint_orders):
        h = tuple(h)
        if len(h) != n or set(h) != set(ids):
            raise InputError(f"hint_orders[{k}]", "must be a permutation of the query ids")
        hints_idx.append([pos[q] for q in h])

    # ---- relaxation bounds and pruning (module docstring LB1/LB2/R2)
    allowed = [[i != j for j in range(n)] for i in range(n)]  # i may precede j
    for j in range(n):
        for i in d.same_before[j]:
            allowed[j][i] = False  # R1
    arc_ok = [[allowed[i][j] for j in range(n)] for i in range(n)]  # arc i -> j possible
    first_ok = [True] * n
    for j in range(n):
        if d.same_before[j]:
            first_ok[j] = False  # R1: an identical earlier query precedes j

    def pmin_of() -> list[int]:
        out = []
        for j in range(n):
            cands = [d.p(j, 0)] if first_ok[j] or model == "radix" else []
            src = arc_ok if model == "prev" else allowed
            cands += [d.pair(i, j) for i in range(n) if src[i][j]]
            out.append(min(cands) if cands else d.p(j, 0))
        return out

    pmin = pmin_of()

    def relax_lb(pm: list[int]) -> tuple[int, list[int]]:
        if objective == "mean-ttft":
            return _srpt_sum(d, pm), []
        fb = _first_bounds(d, pm, "makespan" if objective == "makespan" else "max-ttft")
        return min(fb[f] for f in range(n) if first_ok[f]), fb

    lb, fb = relax_lb(pmin)
    if strengthen and model == "prev" and objective in ("max-ttft", "ttft-feasible"):
        # bound B of bounds_lb (trie entries over arrival intervals), scaled to integers
        from prefixsched.theory.exact.bounds_lb import entry_interval_bound

        lb = max(lb, math.ceil(entry_interval_bound(seq_inst, "prev") * d.scale - 1e-6))
    if not strengthen:
        pmin = [min([d.p(j, 0)] + [d.pair(i, j) for i in range(n) if i != j]) for j in range(n)]
        lb, fb = 0, []

    # ---- candidate incumbents
    from prefixsched.theory.exact.greedy import greedy_orders

    cands: list[list[int]] = [[pos[q] for q in o] for _, o in sorted(greedy_orders(seq_inst, model).items())]
    cands += hints_idx
    if fb:
        by_arrival = sorted(range(n), key=lambda j: (d.arr[j], j))
        firsts = sorted((f for f in range(n) if first_ok[f]), key=lambda f: (fb[f], f))[:_FIRST_CANDIDATES]
        for f in firsts:
            cands.append([f] + [j for j in by_arrival if j != f])
    best_val: int | None = None
    best_order: list[int] = []
    best_S: list[int] = []
    best_C: list[int] = []
    for o in cands:
        o = d.normalise(o)
        S, C = d.replay(o)
        v = d.value(C, objective)
        if best_val is None or v < best_val:
            best_val, best_order, best_S, best_C = v, o, S, C
    assert best_val is not None
    T = d.T
    if objective == "ttft-feasible":
        U = T  # type: ignore[assignment]
        assert U is not None
    else:
        U = best_val

    # ---- deadlines and pair rule, iterated (R2)
    must_before: set[tuple[int, int]] = set()  # (j, i): j precedes i
    for j in range(n):
        for i in d.same_before[j]:
            must_before.add((i, j))
    infeasible_by_bound = lb > U
    if not strengthen:
        U = T if objective == "ttft-feasible" else (d.horizon * (n if objective == "mean-ttft" else 1))
    if strengthen and not infeasible_by_bound:
        for _round in range(_PRUNE_ROUNDS):
            if objective in ("max-ttft", "ttft-feasible"):
                dl = [d.arr[j] + U for j in range(n)]
            elif objective == "makespan":
                dl = [U] * n
            else:
                tot = sum(pmin)
                dl = [d.arr[j] + U - (tot - pmin[j]) for j in range(n)]
            changed = False
            for i in range(n):
                ei = d.arr[i] + pmin[i]
                for j in range(n):
                    if i == j or not allowed[i][j]:
                        continue
                    if ei + pmin[j] > dl[j]:
                        allowed[i][j] = False
                        arc_ok[i][j] = False
                        must_before.add((j, i))
                        changed = True
                    elif arc_ok[i][j] and max(ei, d.arr[j]) + (
                        d.pair(i, j) if model == "prev" else pmin[j]
                    ) > dl[j]:
                        arc_ok[i][j] = False
                        changed = True
            if fb:
                for f in range(n):
                    if first_ok[f] and fb[f] > U:
                        first_ok[f] = False
                        changed = True
            if not any(first_ok):
                infeasible_by_bound = True
                break
            new_pmin = pmin_of()
            if new_pmin != pmin:
                pmin = new_pmin
                changed = True
            lb2, fb = relax_lb(pmin)
            lb = max(lb, lb2)
            if lb > U:
                infeasible_by_bound = True
                break
            if not changed:
                break

    to_units = 1.0 / d.scale / (n if objective == "mean-ttft" else 1)

    # ---- build the CP-SAT model
    m = cp_model.CpModel()
    H = d.horizon
    dl_final: list[int]
    if objective in ("max-ttft", "ttft-feasible"):
        dl_final = [min(H, d.arr[j] + U) for j in range(n)]
    elif objective == "makespan":
        dl_final = [min(H, U)] * n
    else:
        tot = sum(pmin)
        dl_final = [min(H, d.arr[j] + U - (tot - pmin[j])) for j in range(n)]
    if not infeasible_by_bound and any(d.arr[j] + pmin[j] > dl_final[j] for j in range(n)):
        infeasible_by_bound = True
    if infeasible_by_bound:
        if objective != "ttft-feasible":
            raise CheckerError(f"cpsat: relaxation bound {lb} above a feasible incumbent {U} (bug)")
        return to_result(seq_inst, None, model, objective, Status.INFEASIBLE, None,
                         time.perf_counter() - t0, solver="cpsat", ttft_bound=bound,
                         proof="relaxation bound LB1 > T (cpsat presolve)")
    S_v = [m.new_int_var(d.arr[j], max(d.arr[j], dl_final[j] - pmin[j]), f"S_{ids[j]}") for j in range(n)]
    pmax = [d.p(j, 0) for j in range(n)]
    D_v = [m.new_int_var(pmin[j], pmax[j], f"D_{ids[j]}") for j in range(n)]
    C_v = [m.new_int_var(d.arr[j] + pmin[j], max(d.arr[j] + pmin[j], dl_final[j]), f"C_{ids[j]}") for j in range(n)]
    iv = []
    for j in range(n):
        iv.append(m.new_interval_var(S_v[j], D_v[j], C_v[j], f"I_{ids[j]}"))
    m.add_no_overlap(iv)
    arcs: list[tuple[int, int, Any]] = []
    arc_lit: dict[tuple[int, int], Any] = {}
    for j in range(n):
        if first_ok[j]:
            lit0 = m.new_bool_var(f"first_{ids[j]}")
            arc_lit[(-1, j)] = lit0
            arcs.append((0, j + 1, lit0))
        litl = m.new_bool_var(f"last_{ids[j]}")
        arc_lit[(j, -1)] = litl
        arcs.append((j + 1, 0, litl))
    for i in range(n):
        for j in range(n):
            if i != j and arc_ok[i][j]:
                lit = m.new_bool_var(f"arc_{ids[i]}_{ids[j]}")
                arc_lit[(i, j)] = lit
                arcs.append((i + 1, j + 1, lit))
                m.add(S_v[j] >= C_v[i]).only_enforce_if(lit)
    m.add_circuit(arcs)
    par_lit: dict[tuple[int, int], Any] = {}
    if model == "prev":
        for j in range(n):
            terms = [d.p(j, 0) * arc_lit[(-1, j)]] if (-1, j) in arc_lit else []
            terms += [d.pair(i, j) * arc_lit[(i, j)] for i in range(n) if (i, j) in arc_lit]
            m.add(D_v[j] == sum(terms))
    else:
        for j in range(n):
            opts = [m.new_bool_var(f"nosrc_{ids[j]}")]
            par_lit[(-1, j)] = opts[0]
            expr = d.p(j, 0) * opts[0]
            for i in range(n):
                if i != j and allowed[i][j] and d.lcp[i][j] > 0:
                    lit = m.new_bool_var(f"src_{ids[i]}_{ids[j]}")
                    par_lit[(i, j)] = lit
                    opts.append(lit)
                    expr += d.pair(i, j) * lit
                    m.add(S_v[j] >= C_v[i]).only_enforce_if(lit)
            m.add_exactly_one(opts)
            m.add(D_v[j] == expr)
    for j, i in sorted(must_before):
        m.add(C_v[j] <= S_v[i])
    for j in range(n):
        m.add(C_v[j] == S_v[j] + D_v[j])

    obj_var = None
    if objective == "max-ttft":
        obj_var = m.new_int_var(lb, max(lb, U), "max_ttft")
        for j in range(n):
            m.add(obj_var >= C_v[j] - d.arr[j])
        m.minimize(obj_var)
    elif objective == "makespan":
        obj_var = m.new_int_var(lb, max(lb, U), "makespan")
        for j in range(n):
            m.add(obj_var >= C_v[j])
        m.minimize(obj_var)
    elif objective == "mean-ttft":
        obj_var = m.new_int_var(lb, max(lb, U), "sum_ttft")
        m.add(obj_var == sum(C_v) - sum(d.arr))
        m.minimize(obj_var)

    # ---- complete hint (only meaningful when the incumbent is within the domains)
    hint_ok = strengthen and not infeasible_by_bound and d.value(best_C, objective) <= U
    if hint_ok:
        succ = {}
        for k, j in enumerate(best_order):
            succ[j] = best_order[k + 1] if k + 1 < n else -1
        prev_of = {j: (best_order[k - 1] if k else -1) for k, j in enumerate(best_order)}
        for (i, j), lit in arc_lit.items():
            if i == -1:
                m.add_hint(lit, prev_of[j] == -1)
            elif j == -1:
                m.add_hint(lit, succ[i] == -1)
            else:
                m.add_hint(lit, succ[i] == j)
        for j in range(n):
            m.add_hint(S_v[j], best_S[j])
            m.add_hint(C_v[j], best_C[j])
            m.add_hint(D_v[j], best_C[j] - best_S[j])
        if model == "radix":
            placed: list[int] = []
            for j in best_order:
                src = -1
                bestl = 0
                for i in placed:
                    if (i, j) in par_lit and d.lcp[i][j] > bestl:
                        src, bestl = i, d.lcp[i][j]
                for (i2, j2), lit in par_lit.items():
                    if j2 == j:
                        m.add_hint(lit, i2 == src)
                placed.append(j)
        if obj_var is not None:
            m.add_hint(obj_var, best_val)

    # ---- solve
    solver = cp_model.CpSolver()
    prm = solver.parameters
    prm.max_time_in_seconds = float(time_limit)
    prm.num_workers = int(workers)
    prm.random_seed = int(seed)
    prm.log_search_progress = bool(log)
    prm.catch_sigint_signal = False  # interrupts are ours: reported, never swallowed (_interrupt)
    cb = _Anytime(t0, to_units) if obj_var is not None else None
    st = guard.run(lambda: solver.solve(m, cb) if cb is not None else solver.solve(m), solver.stop_search)
    wall = time.perf_counter() - t0
    anytime = tuple(cb.points) if cb is not None else ()

    def order_from_solution() -> list[int]:
        succ_of: dict[int, int] = {}
        for (i, j), lit in arc_lit.items():
            if j != -1 and solver.boolean_value(lit):
                succ_of[i] = j
        out: list[int] = []
        cur = -1
        for _ in range(n):
            if cur not in succ_of:
                raise CheckerError("cpsat: the circuit of the solution is broken")
            cur = succ_of[cur]
            out.append(cur)
        return out

    common = dict(solver="cpsat", ttft_bound=bound if objective == "ttft-feasible" else None, anytime=anytime)
    if st == cp_model.INFEASIBLE:
        if objective != "ttft-feasible":
            raise CheckerError("cpsat: optimisation model infeasible although an incumbent exists (bug)")
        return to_result(seq_inst, None, model, objective, Status.INFEASIBLE, None, wall, proof="cpsat", **common)
    if st == cp_model.MODEL_INVALID:
        raise CheckerError(f"cpsat: model invalid: {m.validate()}")
    lb_units = lb * to_units
    if st in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        order = order_from_solution()
        sched = evaluate(seq_inst, [ids[j] for j in order], model)
        model_val = round(solver.objective_value) if obj_var is not None else None
        true_val = objective_value(sched, objective)
        tol = 1e-9 * max(1.0, d.horizon / d.scale)
        if model_val is not None and true_val > model_val * to_units + tol:
            raise CheckerError(
                f"cpsat: replayed objective {true_val} exceeds the model's {model_val * to_units}"
            )
        if obj_var is None:
            return to_result(seq_inst, tuple(sched.order), model, objective, Status.FEASIBLE, None, wall,
                             proof="cpsat witness", **common)
        best_bound = max(lb, math.ceil(solver.best_objective_bound - 1e-6))
        bnd = best_bound * to_units
        status = Status.FEASIBLE
        if st == cp_model.OPTIMAL and model_val == best_bound:
            status = Status.OPTIMAL
            bnd = model_val * to_units
            if abs(true_val - bnd) > tol:
                raise CheckerError(f"cpsat: optimal model value {bnd} but the replay gives {true_val}")
            bnd = true_val
        return to_result(seq_inst, tuple(sched.order), model, objective, status, bnd, wall,
                         proof="cpsat" if status is Status.OPTIMAL else None, **common)
    # UNKNOWN: nothing found within the limit; fall back on the incumbent when it is feasible
    if objective == "ttft-feasible":
        if d.value(best_C, objective) <= U:
            return to_result(seq_inst, tuple(ids[j] for j in best_order), model, objective, Status.FEASIBLE,
                             None, wall, proof="greedy witness", **common)
        return to_result(seq_inst, None, model, objective, Status.UNKNOWN, None, wall, proof=None, **common)
    return to_result(seq_inst, tuple(ids[j] for j in best_order), model, objective, Status.FEASIBLE,
                     lb_units, wall, proof=None, **common)
