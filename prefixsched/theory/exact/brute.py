"""Brute force over all service orders (the "brute" backend): ground truth for the tiniest sizes.

Every permutation is replayed semi-actively (each query starts at ``max(previous finish,
arrival)``). That loses nothing: for a fixed order every objective is non-decreasing in the start
times, and so is the service gap of model ``fair`` (a later start can only add arrived queries,
hence backlogged clients, hence valid windows; see
:func:`prefixsched.theory.sequential.service_gap`). So the best semi-active order is optimal over
all schedules.

The enumeration is a depth-first walk over permutation prefixes (incremental times, no pruning),
in lexicographic order of instance positions; the first order attaining the minimum is returned,
so the output is deterministic. ``fair`` orders are filtered by a full
:func:`~prefixsched.theory.sequential.service_gap` replay at the leaves.

Size limit: ``n <= 9`` (``n <= 8`` for ``fair``), :data:`MAX_N`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import MappingProxyType

from prefixsched.errors import InputError, SolverLimitError
from prefixsched.theory.exact.result import SolveResult, Status
from prefixsched.theory.sequential import (
    MODELS,
    OBJECTIVES,
    SeqInstance,
    evaluate,
    service_gap,
    to_result,
    tolerance,
)

__all__ = ["solve", "MAX_N", "enumerate_orders"]

MAX_N = MappingProxyType({"prev": 9, "radix": 9, "fair": 8})


def enumerate_orders(inst: SeqInstance, model: str):
    """Yield ``(order_positions, max_ttft, sum_ttft, makespan)`` for every permutation (semi-active)."""
    n = inst.n
    arr = inst.arrivals
    lcp = inst.lcp
    cost = inst.cost_of
    order: list[int] = []
    used = [False] * n

    def rec(f: float, mx: float, sm: float):
        if len(order) == n:
            yield tuple(order), mx, sm, f
            return
        for j in range(n):
            if used[j]:
                continue
            if not order:
                r = 0
            elif model == "prev":
                r = lcp[j][order[-1]]
            else:
                r = max(lcp[j][m] for m in order)
            st = f if f > arr[j] else arr[j]
            fin = st + cost(j, r)
            tt = fin - arr[j]
            used[j] = True
            order.append(j)
            yield from rec(fin, mx if mx > tt else tt, sm + tt)
            order.pop()
            used[j] = False

    yield from rec(0.0, 0.0, 0.0)


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
    """Enumerate all ``n!`` orders (module docstring). ``time_limit``, ``workers`` and hints are ignored.

    Raises
    ------
    SolverLimitError
        ``n`` above :data:`MAX_N`.
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
    if inst.n > MAX_N[model]:
        raise SolverLimitError(
            f"brute backend: model {model!r} is limited to n <= {MAX_N[model]} queries (got {inst.n}); "
            f"use solver='dp' (n <= 20) or solver='cpsat'"
        )
    tol = tolerance(inst)
    ids = inst.ids
    best_v: float | None = None
    best_o: tuple[int, ...] | None = None
    dtol = 0.0 if delta is None else 1e-9 * max(1.0, float(delta))
    for o, mx, sm, mk in enumerate_orders(inst, model):
        if objective == "ttft-feasible":
            v = mx
            if v > float(bound) + tol:  # type: ignore[arg-type]
                continue
        elif objective == "max-ttft":
            v = mx
        elif objective == "mean-ttft":
            v = sm / inst.n
        else:
            v = mk
        if best_v is not None and not v < best_v:
            continue
        if model == "fair":
            order_ids = tuple(ids[i] for i in o)
            if service_gap(inst, evaluate(inst, order_ids, model)) > float(delta) + dtol:  # type: ignore[arg-type]
                continue
        best_v, best_o = v, o
        if objective == "ttft-feasible":
            break
    wall = time.perf_counter() - t0
    T = None if bound is None else float(bound)
    dl = None if delta is None else float(delta)
    if best_o is None:
        what = "no order meets T" if objective == "ttft-feasible" else "no order meets delta"
        return to_result(inst, None, model, objective, Status.INFEASIBLE, None, wall, "brute",
                         f"brute force over all {inst.n}! orders: {what}", ttft_bound=T, delta=dl)
    order = tuple(ids[i] for i in best_o)
    if objective == "ttft-feasible":
        return to_result(inst, order, model, objective, Status.FEASIBLE, None, wall, "brute",
                         "witness schedule found by brute force", ttft_bound=T, delta=dl)
    return to_result(inst, order, model, objective, Status.OPTIMAL, best_v, wall, "brute",
                     f"brute force over all {inst.n}! orders", ttft_bound=T, delta=dl)
