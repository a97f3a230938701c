"""z3 (SMT) backend: the independent cross-check and prover of "no schedule with objective < X".

Encoding (models ``prev`` and ``radix``; exact rational arithmetic):

- position ``p_j in {0..n-1}`` (Int), all distinct; ``before(i, j) := p_i < p_j``;
- reuse (Int): ``prev``: ``sum_i [p_i + 1 = p_j] * LCP(i, j)`` (0 for the first query);
  ``radix``: ``max_{i: before(i,j)} LCP(i, j)``, written as an if-then-else chain over the ``i``
  sorted by decreasing LCP;
- duration ``d_j = (1 + c_attn*|x_j|) * (|x_j| - reuse_j)`` (Real), start ``s_j >= t_j`` (Real),
  ``before(i, j) -> s_j >= s_i + d_i`` (one query at a time, non-preemptive);
- objective ``z``: ``z >= s_j + d_j - t_j`` (max TTFT), ``z = sum_j (s_j + d_j - t_j)`` (TTFT sum,
  reported divided by ``n``), ``z >= s_j + d_j`` (makespan).

Search: decision queries with bisection between the proven lower bound ``lo`` (initially the
trivial bound from each query's least possible cost; raised by every UNSAT answer) and the
incumbent ``hi`` (the semi-active replay of the last model's order, never worse than the model's
own value). It ends with the strict query ``z < hi``: UNSAT proves the incumbent optimal
(``proof = "z3 unsat: no schedule with objective < hi"``). ``ttft-feasible`` is one query with
every TTFT ``<= T``: SAT gives a witness, UNSAT proves INFEASIBLE.

Every z3 model is also replayed *with its own start times* through the checker (a model that the
checker rejects, or whose objective exceeds z3's ``z``, is an encoding bug: CheckerError).

Model ``fair`` is not encoded here (use ``dp``, ``brute`` or ``cpsat``). Size limit ``n <= 8``
(:data:`MAX_N`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from fractions import Fraction

from prefixsched.errors import CheckerError, InputError, SolverLimitError
from prefixsched.theory.exact._interrupt import Guard
from prefixsched.theory.exact.greedy import greedy_orders
from prefixsched.theory.exact.result import SolveResult, Status
from prefixsched.theory.sequential import (
    OBJECTIVES,
    SeqInstance,
    evaluate,
    objective_value,
    to_result,
    tolerance,
)

__all__ = ["solve", "MAX_N"]

MAX_N = 8


def _q(x: float) -> Fraction:
    return Fraction(x)


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
    """Solve with z3 (module docstring). ``workers`` is ignored; hints seed the incumbent.

    Raises
    ------
    InputError
        Model ``fair`` (not encoded), unknown objective, missing ``bound``.
    SolverLimitError
        ``n > 8``.
    SolveInterrupted
        An interrupt stopped the search; it carries the incumbent (FEASIBLE with the proven bound)
        marked ``interrupted`` (:mod:`prefixsched.theory.exact._interrupt`).
    """
    import z3

    z3.set_param("ctrl_c", False)  # z3 would catch Ctrl-C and answer "unknown"; interrupts are ours
    guard = Guard()

    t0 = time.perf_counter()
    if model not in ("prev", "radix"):
        raise InputError("model", f"the z3 backend encodes prev and radix, got {model!r}; "
                                  "use solver='dp', 'brute' or 'cpsat' for fair")
    if objective not in OBJECTIVES:
        raise InputError("objective", f"unknown objective {objective!r} (choices: {', '.join(OBJECTIVES)})")
    if objective == "ttft-feasible" and bound is None:
        raise InputError("bound", "objective ttft-feasible needs the TTFT bound T")
    n = inst.n
    if n > MAX_N:
        raise SolverLimitError(f"z3 backend is limited to n <= {MAX_N} queries (got {n}); "
                               f"use solver='dp' (n <= 20) or solver='cpsat'")
    deadline = None if time_limit is None else t0 + float(time_limit)
    tol = tolerance(inst)
    T = None if bound is None else float(bound)
    ids = inst.ids
    lens = inst.lengths
    arr = inst.arrivals
    lcp = inst.lcp
    c = _q(inst.c_attn)

    s = z3.Solver()
    p = [z3.Int(f"p_{j}") for j in range(n)]
    st = [z3.Real(f"s_{j}") for j in range(n)]
    for j in range(n):
        s.add(p[j] >= 0, p[j] < n, st[j] >= _q(arr[j]))
    if n > 1:
        s.add(z3.Distinct(*p))
    reuse = []
    for j in range(n):
        others = sorted((i for i in range(n) if i != j), key=lambda i: (-lcp[i][j], i))
        if model == "prev":
            e: z3.ArithRef = z3.IntVal(0)
            for i in others:
                if lcp[i][j]:
                    e = z3.If(p[i] + 1 == p[j], z3.IntVal(lcp[i][j]), e)
        else:
            e = z3.IntVal(0)
            for i in reversed(others):  # innermost = smallest LCP
                if lcp[i][j]:
                    e = z3.If(p[i] < p[j], z3.IntVal(lcp[i][j]), e)
        reuse.append(e)
    dur = [z3.RealVal(1 + c * lens[j]) * z3.ToReal(lens[j] - reuse[j]) for j in range(n)]
    fin = [st[j] + dur[j] for j in range(n)]
    for i in range(n):
        for j in range(n):
            if i != j:
                s.add(z3.Implies(p[i] < p[j], st[j] >= fin[i]))
    tt = [fin[j] - _q(arr[j]) for j in range(n)]
    z = z3.Real("z")
    if objective in ("max-ttft", "ttft-feasible"):
        for j in range(n):
            s.add(z >= tt[j])
    elif objective == "mean-ttft":
        s.add(z == z3.Sum(*tt) if n > 1 else z == tt[0])
    else:
        for j in range(n):
            s.add(z >= fin[j])
    scale = n if objective == "mean-ttft" else 1  # z is in accumulator units

    def check(extra: list) -> z3.CheckSatResult:
        if guard.tripped:
            return z3.unknown
        if deadline is not None:
            left = deadline - time.perf_counter()
            if left <= 0:
                return z3.unknown
            s.set("timeout", max(1, int(left * 1000)))
        s.push()
        s.add(*extra)
        r = guard.run(s.check, s.ctx.interrupt)
        if r != z3.sat:
            s.pop()
        return r

    def exact_value(order: Sequence[str]) -> Fraction:
        """Semi-active replay in exact rationals, in z units (sum for mean-ttft)."""
        idx = [inst.index[q] for q in order]
        f = Fraction(0)
        mx = Fraction(0)
        sm = Fraction(0)
        for k, j in enumerate(idx):
            if k == 0:
                r = 0
            elif model == "prev":
                r = lcp[j][idx[k - 1]]
            else:
                r = max(lcp[j][m] for m in idx[:k])
            a = _q(arr[j])
            f = max(f, a) + (1 + c * lens[j]) * (lens[j] - r)
            mx = max(mx, f - a)
            sm += f - a
        if objective in ("max-ttft", "ttft-feasible"):
            return mx
        return sm if objective == "mean-ttft" else f

    def take_model() -> tuple[tuple[str, ...], Fraction]:
        m = s.model()
        s.pop()
        pos = [m.eval(p[j], model_completion=True).as_long() for j in range(n)]
        order = tuple(ids[j] for j in sorted(range(n), key=lambda j: pos[j]))
        starts = {}
        for j in range(n):
            v = m.eval(st[j], model_completion=True)
            starts[ids[j]] = float(Fraction(v.numerator_as_long(), v.denominator_as_long()))
        zv = m.eval(z, model_completion=True)
        zval = Fraction(zv.numerator_as_long(), zv.denominator_as_long())
        own = evaluate(inst, order, model, start=starts)  # z3's own timing must pass the checker
        own_v = objective_value(own, "max-ttft" if objective == "ttft-feasible" else objective) * scale
        if own_v > float(zval) + tol * scale:
            raise CheckerError(f"z3 model: checker value {own_v} exceeds z3's objective {zval} (encoding bug)")
        ev = exact_value(order)
        if ev > zval:
            raise CheckerError(f"z3 model: semi-active replay {ev} exceeds z3's objective {zval} (encoding bug)")
        return order, ev

    def res(order, status, lb, proof):
        return guard.finish(to_result(inst, order, model, objective, status, lb, time.perf_counter() - t0, "z3",
                                      proof, ttft_bound=T))

    if objective == "ttft-feasible":
        r = check([z <= _q(T)])  # type: ignore[arg-type]
        if r == z3.sat:
            order, _ = take_model()
            return res(order, Status.FEASIBLE, None, "witness schedule found by z3")
        if r == z3.unsat:
            return res(None, Status.INFEASIBLE, None, f"z3 unsat: no order has every TTFT <= {T}")
        return res(None, Status.UNKNOWN, None, None)

    # incumbent from greedy orders and hints (exact rational values, z units)
    inc: tuple[str, ...] | None = None
    hi: Fraction | None = None
    for o in list(greedy_orders(inst, model).values()) + [tuple(h) for h in (hint_orders or ())]:
        v = exact_value(o)
        if hi is None or v < hi:
            hi, inc = v, tuple(o)
    assert hi is not None and inc is not None
    # trivial proven lower bound: each query's least possible cost
    pmin = [(1 + c * lens[j]) * (lens[j] - max((lcp[j][i] for i in range(n) if i != j), default=0))
            for j in range(n)]
    if objective == "max-ttft":
        lo = max(pmin)
    elif objective == "mean-ttft":
        lo = sum(pmin, Fraction(0))
    else:
        lo = max(_q(arr[j]) + pmin[j] for j in range(n))
    lo = min(lo, hi)
    integral = _integral(inst)
    eps = Fraction(1, 10**6) * max(1, abs(hi))
    proof = None
    timed_out = False
    while True:
        if (lo < hi) if integral else (hi - lo > eps):
            mid = (lo + hi) / 2
            if integral:
                mid = Fraction(mid.numerator // mid.denominator)
            r = check([z <= mid])
            if r == z3.sat:
                inc, hi = take_model()
            elif r == z3.unsat:
                lo = mid + 1 if integral else mid
            else:
                timed_out = True
                break
            continue
        r = check([z < hi])
        if r == z3.sat:
            o, v = take_model()
            assert v < hi
            inc, hi = o, v
            continue
        if r == z3.unsat:
            lo = hi
            proof = f"z3 unsat: no schedule with objective < {float(hi / scale)}"
            break
        timed_out = True
        break
    lo_f = float(lo / scale)
    if timed_out:
        return res(inc, Status.FEASIBLE, lo_f, None)
    return res(inc, Status.OPTIMAL, lo_f, proof)


def _integral(inst: SeqInstance) -> bool:
    """All times are integers: ``c_attn`` and every arrival are integers (then so is every value)."""
    return float(inst.c_attn).is_integer() and all(float(a).is_integer() for a in inst.arrivals)
