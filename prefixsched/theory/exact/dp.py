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

Engineering of ``prev`` (max TTFT and the decision; each step proved here):

- Profile merging: two states ``(S, i)`` and ``(S, i')`` whose last queries have the same LCP with
  every remaining query (``LCP(x_i, x_q) = LCP(x_i', x_q)`` for all ``q`` not in ``S``) have
  identical futures (every later cost reads only ``LCP(x_q, x_last)`` for remaining ``q``), so
  they are one state; its key uses the smallest such ``i`` in ``S``. (One user's queries with
  distinct documents are interchangeable as "last" once the user's prefix is what they share.)
- The decision pass runs vectorised on numpy arrays (:func:`_decide_prev_np`: one layer = arrays
  of ``S``, last, finish; "serve ``j`` next" is a vector operation; duplicates keep the earliest
  finish by a lexsort), with the same FCFS ``p_min`` pruning. A beam pass (the ``_BEAM`` states
  of each layer with the earliest finish) is tried first: its witnesses are real orders, its
  failures prove nothing and fall through to the exact pass.
- Bisection start: ``lo = max(FCFS relaxation, bound B of`` :mod:`.bounds_lb` ``)``, and the
  integral bisection *gallops from below* (``T = lo, lo+1, lo+3, lo+7, ...`` capped at the
  midpoint): infeasible ``T`` are proved quickly by pruning, feasible ``T`` far above the optimum
  are the expensive passes. Every step is still an exact decision, so the final ``lo = hi`` is a
  proof.
- Bound S of :mod:`.bounds_lb` (per-state trie-entry bound) is available in the pure-Python pass
  (``entry_bounds=True``) but off by default: on the Definition-4 family it removed ~15 % of the
  states but cost more time than it saved.

Result: OPTIMAL (proof ``"dp exhaustion"``) when the layers are exhausted; on ``time_limit`` or
the state cap, FEASIBLE with the incumbent and the proven bound (``lo`` of the bisection, or
``min`` over the open layer of the lower bounds: every completion passes through that layer).

Measured (one core of a shared 2-core machine, pure Python): ``prev``, ``max-ttft``, Definition-4
instances (4 queries per user, prefix 100, document 20 tokens, shuffled, arrival gap 30 =
overloaded): n = 16 in 1-5 s, n = 18 in 7-22 s, n = 20 in ~30 s; gap 50: n = 28 in 2-7 s.
Mooncake windows read as token units are trivially overloaded (the longest query decides) and
solve in 0.1 s at n = 20.

Measured after the engineering above (2 shared cores, time limit 60 s, benchmark
``--family def4``): proven optimal up to n = 40 (10.6 s), n = 44 not within 60 s.

Size limits: ``prev``/``radix`` ``n <= 20``, ``fair`` ``n <= 14`` (:data:`MAX_N`) without a time
limit; with a ``time_limit`` ``prev`` accepts ``n <= 56`` (:data:`MAX_N_TIMED`; the run stops with
FEASIBLE + proven bound on expiry). Beyond them :class:`~prefixsched.errors.SolverLimitError`
points to ``solver="cpsat"``.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from itertools import combinations
from types import MappingProxyType
from typing import Any

from prefixsched.errors import InputError, SolverLimitError
from prefixsched.theory.exact._interrupt import Guard
from prefixsched.theory.exact.bounds_lb import entry_interval_bound, entry_weight, suffix_bound_from_table, suffix_table
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

__all__ = ["solve", "MAX_N", "MAX_N_TIMED", "DEFAULT_MAX_ENTRIES", "local_search"]

MAX_N = MappingProxyType({"prev": 20, "radix": 20, "fair": 14})
#: Size limits when a ``time_limit`` is given (the DP then stops with FEASIBLE + bound on expiry,
#: so a larger instance cannot run away); ``prev`` uses the vectorised decision DP.
MAX_N_TIMED = MappingProxyType({"prev": 56, "radix": 20, "fair": 14})
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
    entry_bounds: bool = False,
    vectorized: bool = True,
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
    limit = (MAX_N[model] if time_limit is None else MAX_N_TIMED[model]) if max_n is None else int(max_n)
    if n > limit:
        raise SolverLimitError(
            f"dp backend: model {model!r} is limited to n <= {limit} queries (got {n}); "
            f"use solver='cpsat' (anytime, with a proven bound) for larger instances"
        )
    deadline = None if time_limit is None else t0 + float(time_limit)
    tol = tolerance(inst)
    T = None if bound is None else float(bound)
    dlt = None if delta is None else float(delta)
    # Exact arithmetic: with integral c_attn and arrivals every start, finish and TTFT is an
    # integer, and float64 holds integers exactly below 2**53. The decision passes then compare
    # exactly (slack 0). tolerance(inst) grows with the horizon (1e-9 of the latest arrival plus
    # all work), so arrivals ~1e10 make it ~10 time units: used as slack it let a decision at
    # T = hi - 1 return the incumbent itself (the "witness does not improve" failure of issue #7).
    exact = float(inst.c_attn).is_integer() and all(float(a).is_integer() for a in inst.arrivals) \
        and inst.horizon < 2.0**53
    guard = Guard()

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
    feas_slack = 0.0 if exact else tol
    if objective == "ttft-feasible" and inc_val is not None and inc_val <= T + feas_slack:  # type: ignore[operator]
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
    # key: prev -> S << SH | last (last = the canonical representative of its reuse profile,
    # module docstring "Profile merging"); radix -> S; fair -> (S, pairstate)
    SH = max(1, n.bit_length())
    MASK = (1 << SH) - 1
    canon: dict[int, int] = {}
    # differ[j][i] = bitmask of the queries q with lcp(j, q) != lcp(i, q)
    differ = [[sum(1 << q for q in range(n) if lcp[j][q] != lcp[i][q]) for i in range(n)] for j in range(n)]

    # entry bound S (bounds_lb.suffix_state_bound) for the decision DP of prev
    use_entry = is_prev and entry_bounds
    sbc: dict[int, tuple[float, float, float]] = {}
    stab: dict[int, tuple[list[int], Any, float]] = {}
    w_entry = entry_weight(inst)

    def entry_bound(S2: int, j: int) -> tuple[float, float, float]:
        tb = stab.get(S2)
        if tb is None:
            rem = [i for i in by_arr if not S2 >> i & 1]
            tb = stab[S2] = (rem, suffix_table(lcp, lens, arr, rem), arr[rem[-1]])
        return suffix_bound_from_table(tb[1], tb[0], lcp[j], w_entry, tb[2])

    def canonical(S2: int, j: int) -> int:
        """Key of state (S2, last=j): ``last`` replaced by the smallest ``i`` in ``S2`` with the
        same LCP profile over the remaining queries (then every future cost is identical)."""
        R = full & ~S2
        dj = differ[j]
        rep = j
        for i in range(j):
            if S2 >> i & 1 and not dj[i] & R:
                rep = i
                break
        k = S2 << SH | rep
        canon[S2 << SH | j] = k
        return k

    def unwind(node: Any) -> tuple[str, ...]:
        out = []
        while node is not None:
            out.append(ids[node[0]])
            node = node[1]
        return tuple(reversed(out))

    def run(
        feas: bool, T: float | None, UB_cut: float | None, slack: float = tol
    ) -> tuple[str, tuple[str, ...] | None, float | None]:
        """One layered pass. Returns (kind, order, open_lb): kind "done" (order = best complete
        entry), "pruned" (every state pruned), "timeout" (time limit or state cap; open_lb = the
        proven bound in accumulator units). The decision (``feas``) keeps the moves with every
        TTFT ``<= T + slack``."""
        Tc = None if T is None else T + slack
        layer: dict[Any, list[tuple[float, float, Any]]] = {}
        start_key: Any = (0, None) if model == "fair" else (-1 if is_prev else 0)
        layer[start_key] = [(0.0, 0.0, None)]
        best_reuse: dict[int, tuple[int, ...]] = {0: (0,) * n}
        open_lb: float | None = lower(0, 0.0, 0.0)
        timed_out = False
        entries_count = 1
        for size in range(n):
            canon.clear()  # keys of one layer only (bounded memory)
            sbc.clear()
            stab.clear()
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
                        S, last = key >> SH, key & MASK
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
                            if tt > Tc:  # type: ignore[operator]
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
                            key2 = canon.get(S2 << SH | j)
                            if key2 is None:
                                key2 = canonical(S2, j)
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
                            if lb > Tc:  # type: ignore[operator]
                                continue
                            if use_entry and S2 != full:
                                sb = sbc.get(key2)
                                if sb is None:
                                    sb = sbc[key2] = entry_bound(S2, j)
                                eb = (fin + sb[0] if fin + sb[0] > sb[1] else sb[1]) - sb[2]
                                if eb > Tc:  # type: ignore[operator]
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
        if layer and all((k[0] if model == "fair" else (k >> SH if is_prev else k)) == full for k in layer):
            best = min((e for v in layer.values() for e in v), key=lambda e: (e[0] if feas else e[1], e[0]))
            return "done", unwind(best[2]), open_lb
        return "pruned", None, open_lb

    def decide(Tq: float, slack: float) -> tuple[str, tuple[str, ...] | None, float | None]:
        """Is there an order with every TTFT <= Tq + slack? (kind "done" with a witness, "pruned":
        proven no, "timeout")."""
        if is_prev and vectorized and n <= _NP_MAX_N:
            # a cheap beam witness first (a "yes" needs only one order), then the exact pass
            kind_b, order_b, _ = _decide_prev_np(inst, Tq, pmin, cost_tab, deadline, max_entries, slack, beam=_BEAM)
            if kind_b == "done":
                return kind_b, order_b, None
            return _decide_prev_np(inst, Tq, pmin, cost_tab, deadline, max_entries, slack)
        return run(True, Tq, None, slack)

    def stopped(e: KeyboardInterrupt, lb: float | None) -> BaseException:
        """The SolveInterrupted for an interrupt of the search: the incumbent with the proven bound
        ``lb`` (FEASIBLE), or UNKNOWN for a decision / without an incumbent."""
        if inc_order is None or feas:
            part = result(None, Status.UNKNOWN, None, None)
        else:
            part = result(inc_order, Status.FEASIBLE, None if lb is None else min(lb, inc_val), None)  # type: ignore[type-var]
        return guard.interrupted_with(part, e)

    if feas:
        try:
            kind, order, _ = decide(T, feas_slack)  # type: ignore[arg-type]
        except KeyboardInterrupt as e:
            raise stopped(e, None) from None
        if kind == "done":
            return result(order, Status.FEASIBLE, None, "witness schedule found by dp")
        if kind == "pruned":
            return result(None, Status.INFEASIBLE, None, "dp exhaustion (klpm.md §2.2): no order meets T")
        return result(None, Status.UNKNOWN, None, None)

    if obj_max and inc_val is not None:
        # bisection on T with the decision DP (one earliest finish per state; the TTFT bound
        # prunes far harder than a loose incumbent), then exact closing steps "any order < hi?".
        # Each query asks "every TTFT <= U + slack?" with U + slack < hi, so a witness always
        # improves the incumbent: exact data ask U = an integer below hi with slack 0; float data
        # ask U <= hi - tol with slack tol/2 (a "no" still proves nothing <= U exists).
        lo = lower(0, 0.0, 0.0)
        if is_prev:
            lo = max(lo, entry_interval_bound(inst, "prev"))  # bounds_lb bound B
        lo = min(lo, inc_val)
        hi = inc_val
        if exact:
            lo = float(math.ceil(lo - tol))
        eps = 1e-6 * max(1.0, abs(hi))
        step = 1.0  # galloping from below: infeasible (low) T are cheap, feasible high T are not
        while True:
            if exact:
                if lo >= hi:
                    break
                U, slack, closing = float(min(lo + step - 1.0, (lo + hi) // 2)), 0.0, False
            else:
                closing = hi - lo <= max(eps, 4 * tol)
                U, slack = (hi - tol if closing else (lo + hi) / 2), tol / 2
            try:
                kind, order, _ = decide(U, slack)
            except KeyboardInterrupt as e:
                raise stopped(e, lo) from None
            if kind == "timeout":
                return result(inc_order, Status.FEASIBLE, lo, None)
            if kind == "done":
                v = objective_value(evaluate(inst, order, model), objective)
                if not v < hi:  # pragma: no cover - U + slack < hi by construction
                    raise AssertionError(f"dp: decision witness {v} at T = {U} + {slack} does not improve {hi}")
                hi, inc_order = v, order
                continue
            # no order has max TTFT <= U (+ slack)
            if exact:
                lo = U + 1.0
                step *= 2.0
            elif closing:
                lo = hi
                break
            else:
                lo = U
        return result(inc_order, Status.OPTIMAL, hi, "dp exhaustion (decision DP bisection, klpm.md §2.2)")

    root = lower(0, 0.0, 0.0)
    try:
        kind, order, open_lb = run(False, None, UB_cut)
    except KeyboardInterrupt as e:
        raise stopped(e, root / n if obj_sum else root) from None
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


#: Largest n of the vectorised ``prev`` decision DP (``S << SH | last`` must fit in an int64).
_NP_MAX_N = 56
#: Width of the beam witness search tried before each exact decision pass.
_BEAM = 2000


def _decide_prev_np(
    inst: SeqInstance,
    T: float,
    pmin: Sequence[float],
    cost_tab: Sequence[Sequence[float]],
    deadline: float | None,
    max_entries: int,
    tol: float,
    beam: int | None = None,
) -> tuple[str, tuple[str, ...] | None, float | None]:
    """The ``prev`` decision DP ("is there an order with every TTFT <= T?") on numpy arrays.

    Same states, dominance and pruning as the layered pure-Python pass (module docstring:
    earliest finish per ``(S, last)``, ``last`` merged by LCP profile, the FCFS ``p_min``
    relaxation from the finish time); one layer is a set of arrays and each transition
    "serve query ``j`` next" is a vector operation over all states of the layer. Returns
    ``("done", order, None)``, ``("pruned", None, None)`` (no order meets ``T``: proof by
    exhaustion) or ``("timeout", None, None)`` (time limit or ``max_entries``).

    ``beam = K`` keeps only the ``K`` states of each layer with the earliest finish: a heuristic
    witness search whose "no" is returned as ``("beamfail", None, None)`` and proves nothing.
    """
    import numpy as np

    n = inst.n
    arr = np.array(inst.arrivals, dtype=np.float64)
    lcp = inst.lcp
    SH = max(1, n.bit_length())
    # C[last, j]: service of j after last; row n = the depot (nothing cached)
    C = np.zeros((n + 1, n), dtype=np.float64)
    for j in range(n):
        for i in range(n):
            C[i, j] = cost_tab[j][lcp[i][j]] if i != j else np.inf
        C[n, j] = cost_tab[j][0]
    by_arr = sorted(range(n), key=lambda i: (arr[i], i))
    pm = [float(pmin[i]) for i in by_arr]
    am = [float(arr[i]) for i in by_arr]
    full = (1 << n) - 1
    # differ[j, i] = bitmask of queries q with lcp(j, q) != lcp(i, q)
    differ = [[sum(1 << q for q in range(n) if lcp[j][q] != lcp[i][q]) for i in range(n)] for j in range(n)]
    Tt = T + tol

    S = np.zeros(1, dtype=np.int64)
    last = np.full(1, n, dtype=np.int64)
    f = np.zeros(1, dtype=np.float64)
    hist: list[tuple[np.ndarray, np.ndarray]] = []  # per layer: (parent index, j)
    bits = [np.int64(1) << np.int64(i) for i in range(n)]
    for size in range(n):
        if deadline is not None and time.perf_counter() > deadline:
            return "timeout", None, None
        cS, cJ, cF, cP = [], [], [], []
        for j in range(n):
            if deadline is not None and time.perf_counter() > deadline:
                return "timeout", None, None
            idx = np.nonzero((S & bits[j]) == 0)[0]
            if idx.size == 0:
                continue
            fin = np.maximum(f[idx], arr[j]) + C[last[idx], j]
            ok = fin - arr[j] <= Tt
            if not ok.any():
                continue
            idx = idx[ok]
            cS.append(S[idx] | bits[j])
            cJ.append(np.full(idx.size, j, dtype=np.int64))
            cF.append(fin[ok])
            cP.append(idx)
        if not cS:
            return ("beamfail" if beam else "pruned"), None, None
        S2 = np.concatenate(cS)
        J2 = np.concatenate(cJ)
        F2 = np.concatenate(cF)
        P2 = np.concatenate(cP)
        # canonical last: smallest i in S2 with the same LCP profile over the remaining queries
        R2 = np.int64(full) & ~S2
        rep = J2.copy()
        for j in range(n):
            sel = np.nonzero(J2 == j)[0]
            if sel.size == 0:
                continue
            undecided = np.ones(sel.size, dtype=bool)
            dj = differ[j]
            for i in range(j):
                cond = undecided & ((S2[sel] & bits[i]) != 0) & ((R2[sel] & np.int64(dj[i])) == 0)
                if cond.any():
                    rep[sel[cond]] = i
                    undecided &= ~cond
        key = (S2 << np.int64(SH)) | rep
        o = np.lexsort((F2, key))
        key_s = key[o]
        first = np.ones(o.size, dtype=bool)
        first[1:] = key_s[1:] != key_s[:-1]
        o = o[first]
        S2, J2, F2, P2, rep = S2[o], J2[o], F2[o], P2[o], rep[o]
        # FCFS p_min relaxation of the remaining queries from F2 (module docstring)
        if size + 1 < n:
            P = np.zeros(S2.size)
            m = np.full(S2.size, -np.inf)
            h = np.full(S2.size, -np.inf)
            bs = np.full(S2.size, -np.inf)
            for q, a, p in zip(by_arr, am, pm):
                rem = (S2 & bits[q]) == 0
                if not rem.any():
                    continue
                bs = np.where(rem, np.maximum(bs, a - P), bs)
                P = np.where(rem, P + p, P)
                m = np.where(rem, np.maximum(m, P - a), m)
                h = np.where(rem, np.maximum(h, bs + P - a), h)
            keep = np.maximum(F2 + m, h) <= Tt
            S2, J2, F2, P2, rep = S2[keep], J2[keep], F2[keep], P2[keep], rep[keep]
        if S2.size == 0:
            return ("beamfail" if beam else "pruned"), None, None
        if beam is not None and S2.size > beam:
            sel = np.sort(np.argpartition(F2, beam)[:beam])
            S2, J2, F2, P2, rep = S2[sel], J2[sel], F2[sel], P2[sel], rep[sel]
        if S2.size > max_entries:
            return "timeout", None, None
        hist.append((P2, J2))
        S, last, f = S2, rep, F2
    # every state is complete; reconstruct the first one
    assert int(S[0]) == full
    k = 0
    out: list[int] = []
    for P2, J2 in reversed(hist):
        out.append(int(J2[k]))
        k = int(P2[k])
    ids = inst.ids
    return "done", tuple(ids[j] for j in reversed(out)), None
