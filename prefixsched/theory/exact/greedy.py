"""Greedy orders in the sequential models: FCFS, LPM, k-LPM (upper bounds and solver hints).

These are the sequential-model versions of the policies (klpm.md §3, Algorithm 1), *not* the
continuous-batching policies of :mod:`prefixsched.reference.policies`. They are simulated on the
semi-active clock of :func:`prefixsched.theory.sequential.evaluate`: at each decision instant
``now`` (the previous finish, or the next arrival when nothing waits) the policy picks one of the
arrived, unserved queries.

- ``fcfs``: the oldest waiting query (ties by position in the instance).
- ``lpm``: the waiting query with the longest prefix match: for ``prev`` the LCP with the query
  just processed (klpm.md §1.2), for ``radix``/``fair`` the longest prefix held by any processed
  query (the radix cache). Ties by arrival, then position in the instance.
- ``klpm`` (k-LPM, Algorithm 1 box order): pick ``m = 0, 1, 2, ...`` is an FCFS pick when
  ``m % k == 0`` and an LPM pick otherwise. Decision (the paper leaves it open, klpm.md §7 item 5):
  the counter counts picks and is *not* reset when the queue empties. ``k = 1`` is FCFS.

Policies are never idle while a query waits (work-conserving), so their orders replayed
semi-actively give exactly the simulated times.
"""

from __future__ import annotations

from collections.abc import Sequence

from prefixsched.errors import InputError
from prefixsched.theory.sequential import MODELS, SeqInstance, evaluate, objective_value

__all__ = ["POLICIES", "greedy_order", "greedy_orders", "best_greedy"]

POLICIES: tuple[str, ...] = ("fcfs", "lpm", "klpm")


def greedy_order(inst: SeqInstance, model: str, policy: str, k: int | None = None) -> tuple[str, ...]:
    """The service order of ``policy`` on ``inst`` under ``model`` (query ids).

    Parameters
    ----------
    policy:
        ``"fcfs"``, ``"lpm"`` or ``"klpm"`` (``"k-lpm"`` accepted).
    k:
        The k of k-LPM (>= 1), required for it and only for it.

    Raises
    ------
    InputError
        Unknown model or policy; missing or bad ``k``.
    """
    if model not in MODELS:
        raise InputError("model", f"unknown model {model!r} (choices: {', '.join(MODELS)})")
    policy = {"k-lpm": "klpm"}.get(policy, policy)
    if policy not in POLICIES:
        raise InputError("policy", f"unknown policy {policy!r} (choices: {', '.join(POLICIES)})")
    if policy == "klpm":
        if k is None or isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError("k", f"k-LPM needs an integer k >= 1, got {k!r}")
    elif k is not None:
        raise InputError("k", f"only klpm takes k, got policy {policy!r}")

    n = inst.n
    arr = inst.arrivals
    lcp = inst.lcp
    unserved = set(range(n))
    best_reuse = [0] * n  # radix: longest prefix of i held by the processed set
    order: list[int] = []
    now = 0.0
    cost = inst.cost_of
    while unserved:
        waiting = [i for i in unserved if arr[i] <= now]
        if not waiting:
            now = min(arr[i] for i in unserved)
            waiting = [i for i in unserved if arr[i] <= now]
        m = len(order)
        fcfs_pick = policy == "fcfs" or (policy == "klpm" and m % k == 0)  # type: ignore[operator]
        if fcfs_pick or not order:
            j = min(waiting, key=lambda i: (arr[i], i))
        elif model == "prev":
            last = order[-1]
            j = min(waiting, key=lambda i: (-lcp[i][last], arr[i], i))
        else:
            j = min(waiting, key=lambda i: (-best_reuse[i], arr[i], i))
        reuse = 0
        if order:
            reuse = lcp[j][order[-1]] if model == "prev" else best_reuse[j]
        now = max(now, arr[j]) + cost(j, reuse)
        order.append(j)
        unserved.discard(j)
        if model != "prev":
            row = lcp[j]
            for i in unserved:
                if row[i] > best_reuse[i]:
                    best_reuse[i] = row[i]
    return tuple(inst.queries[i].id for i in order)


def greedy_orders(inst: SeqInstance, model: str, ks: Sequence[int] = (2, 3, 4)) -> dict[str, tuple[str, ...]]:
    """Orders of FCFS, LPM and k-LPM for each ``k`` in ``ks``: ``{"fcfs": ..., "lpm": ..., "klpm:2": ...}``."""
    out = {"fcfs": greedy_order(inst, model, "fcfs"), "lpm": greedy_order(inst, model, "lpm")}
    for k in ks:
        out[f"klpm:{k}"] = greedy_order(inst, model, "klpm", k)
    return out


def best_greedy(inst: SeqInstance, model: str, objective: str) -> tuple[float, tuple[str, ...]]:
    """The best greedy order for ``objective`` (an upper bound on the optimum): ``(value, order)``."""
    best: tuple[float, tuple[str, ...]] | None = None
    for _name, order in sorted(greedy_orders(inst, model).items()):
        v = objective_value(evaluate(inst, order, model), objective)
        if best is None or v < best[0]:
            best = (v, order)
    assert best is not None
    return best
