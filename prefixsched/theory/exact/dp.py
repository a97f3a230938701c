"""Exact subset dynamic programs for the sequential models (the "dp" backend).

Source: klpm.md §2.2 (state = (done set, last query), earliest-finish dominance), generalised to
every objective by keeping, per state, the Pareto set of ``(finish, accumulated objective)`` pairs,
and to the ``radix`` and ``fair`` models by changing the state.

States, layer by layer (``|S| = 0, 1, ..., n``):

- ``prev``: ``(S, last)``. The next query's cost depends only on ``last``
  (``reuse = LCP(x_j, x_last)``), and its start only on the finish time ``f``.
- ``radix``: ``S`` alone. The cached content after serving ``S`` is the union of the prefixes of
  ``S``, so the next query's reuse ``max_{i in S} LCP(x_j, x_i)`` depends only on the *set*; but
  the finish time of the set depends on the order through idle time, so the Pareto set over
  ``(finish, objective)`` is kept per ``S``.
- ``fair``: ``(S, W)`` where ``W`` holds, per pair of clients, the range ``[lo, hi]`` of the
  service differences of the still-open windows of :func:`prefixsched.theory.sequential.service_gap`
  (a window stays open while both clients stay backlogged; every open window receives the same
  future increments, so the range is all that matters), or ``None`` when no window is open.
  Moves that push some ``|difference|`` above ``delta`` are dropped.

Dominance: within one state an entry ``(f1, a1)`` dominates ``(f2, a2)`` if ``f1 <= f2`` and
``a1 <= a2``: every continuation of the second is available to the first (starts are
``max(f, arrival)``, monotone in ``f``) at no larger TTFTs, and in ``fair`` with backlog sets that
are subsets, hence no larger gaps. ``a`` is the max TTFT so far (``max-ttft``), the TTFT sum
(``mean-ttft``), or unused (``makespan``, ``ttft-feasible``: one earliest finish per state, exactly
klpm.md §2.2).

Pruning (never removes a strictly better completion):

- incumbent ``UB``: the best of the greedy orders (FCFS, LPM, k-LPM), the given hints, and a
  first-improvement local search (moves of one query) from the best of them;
- lower bounds of a partial schedule ending at ``f`` with remaining set ``R``, from the relaxation
  "preemptive, each remaining query at its least possible cost ``p_min`` (its best reuse with any
  other query)": for max TTFT and makespan the relaxation is solved exactly by FCFS (preemptive
  EDD with due dates = arrivals never preempts), for the TTFT sum by SRPT;
- ``ttft-feasible``: a move whose TTFT exceeds ``T``, or whose relaxation does, is dropped.

``max-ttft`` is solved by bisection on ``T`` with the decision DP (one earliest finish per state,
klpm.md §2.2, which prunes far harder than a loose incumbent): ``lo`` = the root relaxation bound,
``hi`` = the incumbent; a feasible ``T`` lowers ``hi`` to the witness's value, an infeasible one
raises ``lo`` (to ``T + 1`` when all data are integers, then every value is an integer); for
non-integer data the last step asks "is any order better than ``hi`` by more than the
tolerance?". The other objectives use one Pareto pass pruned by the incumbent.

Result: OPTIMAL (proof ``"dp exhaustion"``) when the layers are exhausted; on ``time_limit`` or
the state cap, FEASIBLE with the incumbent and the proven bound (``lo`` of the bisection, or
``min`` over the open layer of the lower bounds: every completion passes through that layer).

Measured (one core of a shared 2-core machine, pure Python): ``prev``, ``max-ttft``, Definition-4
instances (4 queries per user, prefix 100, document 20 tokens, shuffled, arrival gap 30 =
overloaded): n = 16 in 1-5 s, n = 18 in 7-22 s, n = 20 in ~30 s; gap 50: n = 28 in 2-7 s.
Mooncake windows read as token units are trivially overloaded (the longest query decides) and
solve in 0.1 s at n = 20.

Size limits: ``prev``/``radix`` ``n <= 20``, ``fair`` ``n <= 14`` (:data:`MAX_N`); beyond them
:class:`~prefixsched.errors.SolverLimitError` points to ``solver="cpsat"``.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from itertools import combinations
from types import MappingProxyType
from typing import Any

from prefixsched.errors import InputError, SolverLimitError
from prefixsched.theory.exact.greedy import greedy_orders
from prefixsched.theory.exact.result import SolveResult, Status
from prefixsched.theory.sequential import (
    MODELS,
    OBJECTIVES,
    SeqInstance,
    evaluate,
    objective_value,
    service_gap,
    to_result,
    tolerance,
)

__all__ = ["solve", "MAX_N", "DEFAULT_MAX_ENTRIES", "local_search"]

MAX_N = MappingProxyType({"prev": 20, "radix": 20, "fair": 14})
#: Cap on the entries of one layer; above it the DP stops with FEASIBLE + bound.
DEFAULT_MAX_ENTRIES = 2_000_000


def _value(inst: SeqInstance, order: Sequence[str], model: str, objective: str, delta: float | None) -> float | None:
    """Objective of a semi-active order, or None if it breaks the fairness bound."""
    sched = evaluate(inst, order, model)
    if model == "fair" and service_gap(inst, sched) > float(delta) + 1e-9 * max(1.0, float(delta)):  # type: ignore[arg-type]
        return None
    return objective_value(sched, objective)


def local_search(
    inst: SeqInstance,
    order: Sequence[str],
    model: str,
    objective: str,
    delta: float | None = None,
    *,
    max_evals: int = 4000,
) -> tuple[float | None, tuple[str, ...]]:
    """First-improvement search over single-query moves (remove one, reinsert elsewhere).

    Deterministic; stops at a local optimum or after ``max_evals`` evaluations. Returns
    ``(value, order)`` (value None if no order met ``delta``).
    """
    best = tuple(order)
    val = _value(inst, best, model, objective, delta)
    if val is None:
        return None, best
    evals = 0
    improved = True
    n = len(best)
    while improved and evals < max_evals:
        improved = False
        for i in range(n):
            for k in range(n):
                if k == i:
                    continue
                lst = list(best)
                q = lst.pop(i)
                lst.insert(k, q)
                cand = tuple(lst)
                evals += 1
                v = _value(inst, cand, model, objective, delta)
                if v is not None and v < val - 1e-12 * max(1.0, abs(val)):
                    best, val, improved = cand, v, True
                    break
                if evals >= max_evals:
                    break
            if improved or evals >= max_evals:
                break
    return val, best


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
    max_entries: int = DEFAULT_MAX_ENTRIES,
    max_n: int | None = None,
) -> SolveResult:
    """Solve by subset DP (module docstring). Signature of every backend; ``workers`` is ignored.

    ``max_entries`` caps one layer's entries (then FEASIBLE + bound); ``max_n`` overrides the
    size limit :data:`MAX_N` (lightly loaded instances solve well beyond it, batch-like ones do
    not).

    Raises
    ------
    SolverLimitError
        ``n`` above :data:`MAX_N` for the model.
    InputError
        Unknown model/objective, missing ``bound``/``delta``.
    """
    t0 = time.perf_counter()
    if model not in MODELS:
        raise InputError("model", f"unknown model {model!r} (choices: {', '.join(MODELS)})")
    if objective not in OBJECTIVES:
        raise InputError("objective", f"unknown objective {objective!r} (choices: {', '.join(OBJECTIVES)})")
    if objective == "ttft-feasible" and bound is None:
        raise InputError("bound", "objective ttft-feasible needs the TTFT bound T")
    if model == "fair" and delta is None:
        raise InputError("delta", "model fair needs delta")
    n = inst.n
    limit = MAX_N[model] if max_n is None else int(max_n)
    if n > limit:
        raise SolverLimitError(
            f"dp backend: model {model!r} is limited to n <= {limit} queries (got {n}); "
            f"use solver='cpsat' (anytime, with a proven bound) for larger instances"
        )
    deadline = None if time_limit is None else t0 + float(time_limit)
    tol = tolerance(inst)
    T = None if bound is None else float(bound)
    dlt = None if delta is None else float(delta)

    def result(order: Sequence[str] | None, status: Status, lb: float | None, proof: str | None) -> SolveResult:
        return to_result(inst, None if order is None else tuple(order), model, objective, status, lb,
                         time.perf_counter() - t0, "dp", proof, ttft_bound=T, delta=dlt)

    # ---- incumbent from greedy orders, hints and local search --------------------------------
    cands = list(greedy_orders(inst, model).values()) + [tuple(h) for h in (hint_orders or ())]
    inc_val: float | None = None
    inc_order: tuple[str, ...] | None = None
    score_obj = "max-ttft" if objective == "ttft-feasible" else objective
    for o in cands:
        v = _value(inst, o, model, score_obj, dlt)
        if v is not None and (inc_val is None or v < inc_val):
            inc_val, inc_order = v, tuple(o)
    if inc_order is not None:
        v, o = local_search(inst, inc_order, model, score_obj, dlt, max_evals=min(4000, 20 * n * n))
        if v is not None and v < inc_val:  # type: ignore[operator]
            inc_val, inc_order = v, o
    if objective == "ttft-feasible" and inc_val is not None and inc_val <= T + tol:  # type: ignore[operator]
        return result(inc_order, Status.FEASIBLE, None, "witness schedule (greedy/local search), replayed")

    # ---- static data -------------------------------------------------------------------------
    arr = inst.arrivals
    lcp = inst.lcp
    c = inst.c_attn
    lens = inst.lengths
    cost_tab = [[(1.0 + c * lens[j]) * (lens[j] - r) for r in range(lens[j] + 1)] for j in range(n)]
    pmin = [cost_tab[j][max((lcp[j][i] for i in range(n) if i != j), default=0)] for j in range(n)]
    by_arr = sorted(range(n), key=lambda i: (arr[i], i))
    full = (1 << n) - 1
    ids = inst.ids
    is_prev = model == "prev"
    obj_max = objective == "max-ttft"
    obj_sum = objective == "mean-ttft"
    obj_mk = objective == "makespan"
    feas = objective == "ttft-feasible"
    # UB in the DP's accumulator unit (sum for mean-ttft)
    UB = None if inc_val is None else (inc_val * n if obj_sum else inc_val)
    UB_cut = None if UB is None else UB - tol * (n if obj_sum else 1)

    # fair data
    clients = inst.clients
    cbit = [1 << clients.index(q.client) for q in inst.queries]
    pairs = list(combinations(range(len(clients)), 2))
    serv = [[inst.service_of(j, lens[j] - r) for r in range(lens[j] + 1)] for j in range(n)] if model == "fair" else []
    dtol = 0.0 if dlt is None else 1e-9 * max(1.0, dlt)

    NEG = float("-inf")
    relax: dict[int, tuple[float, float, float, float]] = {}

    def lower(S: int, f: float, acc: float) -> float:
        """Lower bound on the final accumulator of any completion (module docstring)."""
        if obj_sum:
            # SRPT on remaining with p_min from time f (preemptive relaxation of sum C_j).
            rem = [j for j in by_arr if not S >> j & 1]
            t = f
            heap: list[float] = []
            k = 0
            tot = acc
            m = len(rem)
            while k < m or heap:
                if not heap:
                    if arr[rem[k]] > t:
                        t = arr[rem[k]]
                while k < m and arr[rem[k]] <= t:
                    heapq.heappush(heap, pmin[rem[k]])
                    tot -= arr[rem[k]]
                    k += 1
                p = heapq.heappop(heap)
                nxt = arr[rem[k]] if k < m else float("inf")
                if t + p <= nxt:
                    t += p
                    tot += t
                else:
                    heapq.heappush(heap, p - (nxt - t))
                    t = nxt
            return tot
        # FCFS relaxation from f: with P_k the prefix sums of p_min over the remaining queries in
        # arrival order, C_k = max(f + P_k, max_{i<=k} a_i + P_k - P_{i-1}); hence
        # max_k (C_k - a_k) = max(f + m(S), h(S)) and C_last = max(f + P, h_mk(S)).
        rc = relax.get(S)
        if rc is None:
            P = 0.0
            m = h = hm = NEG
            best_start = NEG  # max_{i<=k} (a_i - P_{i-1})
            for j in by_arr:
                if not S >> j & 1:
                    a = arr[j]
                    if a - P > best_start:
                        best_start = a - P
                    P += pmin[j]
                    if P - a > m:
                        m = P - a
                    if best_start + P - a > h:
                        h = best_start + P - a
            hm = best_start + P
            rc = relax[S] = (m, h, P, hm)
        m, h, P, hm = rc
        if obj_mk:
            return max(f + P, hm)
        return max(acc, f + m, h)

    # ---- layered DP --------------------------------------------------------------------------
    # layer: key -> list of entries [f, acc, node] with node = (j, parent_node) for the order.
    # key: prev -> S * 32 + last; radix -> S; fair -> (S, pairstate)
    def unwind(node: Any) -> tuple[str, ...]:
        out = []
        while node is not None:
            out.append(ids[node[0]])
            node = node[1]
        return tuple(reversed(out))

    def run(feas: bool, T: float | None, UB_cut: float | None) -> tuple[str, tuple[str, ...] | None, float | None]:
        """One layered pass. Returns (kind, order, open_lb): kind "done" (order = best complete
        entry), "pruned" (every state pruned), "timeout" (time limit or state cap; open_lb = the
        proven bound in accumulator units)."""
        layer: dict[Any, list[tuple[float, float, Any]]] = {}
        start_key: Any = (0, None) if model == "fair" else (-1 if is_prev else 0)
        layer[start_key] = [(0.0, 0.0, None)]
        best_reuse: dict[int, tuple[int, ...]] = {0: (0,) * n}
        open_lb: float | None = lower(0, 0.0, 0.0)
        timed_out = False
        entries_count = 1
        for size in range(n):
            new: dict[Any, list[tuple[float, float, Any]]] = {}
            new_count = 0
            for key, ents in layer.items():
                if deadline is not None and time.perf_counter() > deadline:
                    timed_out = True
                    break
                if model == "fair":
                    S, pst = key
                    last = -1
                elif is_prev:
                    if key == -1:
                        S, last = 0, -1
                    else:
                        S, last = key >> 5, key & 31
                else:
                    S, last = key, -1
                if not is_prev:
                    br = best_reuse[S]
                for j in range(n):
                    if S >> j & 1:
                        continue
                    aj = arr[j]
                    if is_prev:
                        r = lcp[j][last] if last >= 0 else 0
                    else:
                        r = br[j]
                    dur = cost_tab[j][r]
                    S2 = S | (1 << j)
                    for f, acc, node in ents:
                        st = f if f > aj else aj
                        fin = st + dur
                        tt = fin - aj
                        if feas:
                            if tt > T + tol:  # type: ignore[operator]
                                continue
                            acc2 = 0.0
                        elif obj_max:
                            acc2 = acc if acc > tt else tt
                        elif obj_sum:
                            acc2 = acc + tt
                        else:
                            acc2 = fin
                        if model == "fair":
                            before = 0
                            after = 0
                            for i in range(n):
                                if not S >> i & 1 and arr[i] <= st + tol:
                                    before |= cbit[i]
                                    if i != j:
                                        after |= cbit[i]
                            new_p = []
                            ok = True
                            cj = cbit[j]
                            w = serv[j][r]
                            for pi, (a, b) in enumerate(pairs):
                                ba, bb = 1 << a, 1 << b
                                rng = pst[pi] if pst is not None else None
                                if before & ba and before & bb:
                                    rng = (0.0, 0.0) if rng is None else (max(rng[0], 0.0), min(rng[1], 0.0))
                                if rng is not None:
                                    d = w if cj == ba else (-w if cj == bb else 0.0)
                                    rng = (rng[0] + d, rng[1] + d)
                                    if rng[0] > dlt + dtol or -rng[1] > dlt + dtol:  # type: ignore[operator]
                                        ok = False
                                        break
                                    if not (after & ba and after & bb):
                                        rng = None
                                new_p.append(rng)
                            if not ok:
                                continue
                            key2: Any = (S2, tuple(new_p) if any(x is not None for x in new_p) else None)
                        elif is_prev:
                            key2 = S2 * 32 + j
                        else:
                            key2 = S2
                        lst = new.get(key2)
                        if lst is not None:
                            dominated = False
                            for e in lst:
                                if e[0] <= fin and e[1] <= acc2:
                                    dominated = True
                                    break
                            if dominated:
                                continue
                        lb = lower(S2, fin, acc2)
                        if feas:
                            if lb > T + tol:  # type: ignore[operator]
                                continue
                        elif UB_cut is not None and lb >= UB_cut:
                            continue
                        if lst is None:
                            new[key2] = [(fin, acc2, (j, node), lb)]  # type: ignore[list-item]
                            new_count += 1
                        else:
                            keep = [e for e in lst if not (fin <= e[0] and acc2 <= e[1])]
                            new_count += len(keep) + 1 - len(lst)
                            keep.append((fin, acc2, (j, node), lb))  # type: ignore[arg-type]
                            new[key2] = keep
            if timed_out:
                break
            # radix / fair: cached reuse vectors of the new sets
            if not is_prev:
                nb: dict[int, tuple[int, ...]] = {}
                for key2 in new:
                    S2 = key2[0] if model == "fair" else key2
                    if S2 in nb:
                        continue
                    # any parent works: reuse vector is a function of the set
                    j0 = (S2 & -S2).bit_length() - 1
                    parent = best_reuse.get(S2 & ~(1 << j0))
                    if parent is None:
                        parent = tuple(max((lcp[i][m] for m in range(n) if S2 >> m & 1 and m != i), default=0)
                                       for i in range(n))
                        nb[S2] = parent
                        continue
                    row = lcp[j0]
                    nb[S2] = tuple(p if p >= row[i] else row[i] for i, p in enumerate(parent))
                best_reuse = nb
            layer = {k: [(e[0], e[1], e[2]) for e in v] for k, v in new.items()}  # type: ignore[misc]
            lbs = [e[3] for v in new.values() for e in v]  # type: ignore[misc]
            if lbs:
                open_lb = min(lbs)
            entries_count = new_count
            if not layer:
                break
            if entries_count > max_entries:
                timed_out = True
                break
        if timed_out:
            return "timeout", None, open_lb
        if layer and all((k[0] if model == "fair" else (k >> 5 if is_prev else k)) == full for k in layer):
            best = min((e for v in layer.values() for e in v), key=lambda e: (e[0] if feas else e[1], e[0]))
            return "done", unwind(best[2]), open_lb
        return "pruned", None, open_lb

    if feas:
        kind, order, _ = run(True, T, None)
        if kind == "done":
            return result(order, Status.FEASIBLE, None, "witness schedule found by dp")
        if kind == "pruned":
            return result(None, Status.INFEASIBLE, None, "dp exhaustion (klpm.md §2.2): no order meets T")
        return result(None, Status.UNKNOWN, None, None)

    if obj_max and inc_val is not None:
        # bisection on T with the decision DP (one earliest finish per state; the TTFT bound
        # prunes far harder than a loose incumbent), then exact closing steps "any order < hi?"
        lo = min(lower(0, 0.0, 0.0), inc_val)
        hi = inc_val
        integral = float(c).is_integer() and all(float(a).is_integer() for a in arr)
        eps = 1e-6 * max(1.0, abs(hi))
        while True:
            if integral:
                if lo >= hi:
                    break
                mid = float((lo + hi) // 2)
            elif hi - lo > eps:
                mid = (lo + hi) / 2
            else:
                mid = hi - 2 * tol  # closing step: is there an order strictly better than hi?
            kind, order, _ = run(True, mid, None)
            if kind == "timeout":
                return result(inc_order, Status.FEASIBLE, lo, None)
            if kind == "done":
                v = objective_value(evaluate(inst, order, model), objective)
                if v < hi:
                    hi, inc_order = v, order
                else:  # pragma: no cover - a witness at T = mid has value <= mid < hi
                    raise AssertionError("dp: decision witness does not improve the incumbent")
                continue
            # no order has max TTFT <= mid
            if integral:
                lo = mid + 1.0
            elif mid >= hi - 2 * tol:
                lo = hi
                break
            else:
                lo = mid
        return result(inc_order, Status.OPTIMAL, hi, "dp exhaustion (decision DP bisection, klpm.md §2.2)")

    kind, order, open_lb = run(False, None, UB_cut)
    if kind == "timeout":
        lb_acc = open_lb if open_lb is not None else UB
        if UB is not None and lb_acc is not None and lb_acc > UB:
            lb_acc = UB
        lb_val = None if lb_acc is None else (lb_acc / n if obj_sum else lb_acc)
        if inc_order is None:
            return result(None, Status.UNKNOWN, lb_val, None)
        return result(inc_order, Status.FEASIBLE, lb_val, None)
    if kind == "done":
        val = objective_value(evaluate(inst, order, model), objective)
        return result(order, Status.OPTIMAL, val, "dp exhaustion")
    if inc_order is None:
        if model == "fair":
            return result(None, Status.INFEASIBLE, None, "dp exhaustion: no order meets the service-gap bound delta")
        raise AssertionError("dp: no incumbent and no complete state")  # pragma: no cover
    return result(inc_order, Status.OPTIMAL, inc_val, "dp exhaustion (incumbent proven by bound pruning)")
