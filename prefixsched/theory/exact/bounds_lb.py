"""Relaxation lower bounds that see shared prefixes (trie "entry" bounds) for the exact solvers.

The first-query-aware FCFS relaxation of :mod:`.cpsat` (LB1) charges every query its cheapest
possible service ``pmin_j`` *independently*: a family of queries sharing a long prefix is charged
as if every member reused it, although in the ``prev`` model (klpm.md §1.2) the prefix must be
computed again every time the order *enters* the family. This module adds bounds that count those
entries. Units: time units of :mod:`prefixsched.theory.sequential` (one uncached token).

Trie entries (the identity behind every bound here)
---------------------------------------------------
Let the prompts form a trie; each trie edge ``e`` carries one token, and ``sub(e)`` is the set of
queries whose prompt passes through ``e``. For an order ``s_1, s_2, ...`` with ``s_0`` the
predecessor of ``s_1`` (the depot, i.e. nothing, at the start of the schedule), the uncached
tokens of ``s_k`` in ``prev`` are ``|x_{s_k}| - LCP(x_{s_k}, x_{s_{k-1}})`` = the number of edges
``e`` on the path of ``s_k`` with ``s_{k-1}`` not in ``sub(e)``: ``s_k`` *enters* ``e``. Hence,
with ``c_attn = 0``, the service of a segment ``s_1..s_m`` is the number of entries
``sum_e #{k : s_k in sub(e), s_{k-1} not in sub(e)}``; with ``c_attn > 0`` every entry at ``s_k``
costs ``1 + c_attn*|x_{s_k}| >= 1 + c_attn*L_min`` (``L_min`` the shortest prompt), so the count
times ``w_min = 1 + c_attn*L_min`` is a lower bound.

Lemma (segment work). Let ``Q`` be a set of queries and ``sigma`` the segment of the order from the
first served member of ``Q`` to the last one (it may contain other queries). Then the service time
of ``sigma`` is at least ``w_min * (steiner(Q) - lam(Q, P))`` where ``steiner(Q)`` is the number
of trie edges on the paths of ``Q`` (the size of the union of the prefixes of ``Q``,
``= sum_j |x_j| - max_{i before j} LCP`` in any order of adding) and ``lam(Q, P) =
max_{j in Q, p in P} LCP(x_j, x_p)`` with ``P`` any set that contains the predecessor of
``sigma``'s first query (0 if that predecessor is the depot).
Proof: every edge ``e`` of ``steiner(Q)`` has ``sub(e)`` meeting ``sigma``; let ``k*`` be the first
position of ``sigma`` in ``sub(e)``: either ``s_{k*-1}`` is outside ``sub(e)`` (an entry inside
``sigma``) or ``k* = 1`` and ``s_0`` is in ``sub(e)``, which happens only for edges on the common
path of ``s_0`` and ``s_1``: at most ``LCP(x_{s_1}, x_{s_0}) <= lam(Q, P)`` edges. QED.

Bound B (max TTFT, ``prev``; :func:`entry_interval_bound`). In any schedule with max TTFT ``Z``
take any set ``Q`` of queries, with smallest and largest arrivals ``a_lo`` and ``a_hi``.
``sigma`` starts at or after its first query's arrival ``>= a_lo`` and ends with the completion of
a query of ``Q``, at most ``a_hi + Z``, and one query runs at a time, so its service time is at
most ``a_hi + Z - a_lo``. The predecessor of ``sigma`` is the depot or a query outside ``Q``
(``sigma`` starts with ``Q``'s first served member), so ``P`` = all queries not in ``Q``. Hence
``Z >= w_min*(steiner(Q) - lam(Q, not Q)) - (a_hi - a_lo)``. We take the maximum over the
``O(n^2)`` sets ``Q`` = contiguous runs of the arrival order (ties by position), computed in
``O(n^2)`` numpy work per run start, and never return less than 0. For ``radix`` the same
argument holds with ``lam`` replaced by the edges already cached by *any* earlier query; we use
``steiner(Q) - |steiner(Q) cap steiner(not Q)|`` (the edges of ``Q`` no outsider ever
computes: the first query through such an edge is a member of ``Q``, hence in ``sigma``).

Bound S (decision DP states, ``prev``; :func:`suffix_state_bound`). In a partial schedule with
done set ``D``, last query ``last`` finishing at ``f`` and remaining set ``R``, take for every
arrival ``a_k`` of ``R`` the suffix ``Q_k = {j in R : a_j >= a_k}``. Its segment starts at or after
``max(f, a_k)`` and its last query arrives at most ``a_max(R)``; its predecessor is ``last`` or a
remaining query outside ``Q_k``. So every completion has max TTFT at least
``max_k max(f, a_k) + w_min*(steiner(Q_k) - lam(Q_k, (R minus Q_k) + {last})) - a_max(R)``
``= max(f + A, B) - a_max(R)`` with ``A = max_k W_k``, ``B = max_k (a_k + W_k)``.

These bounds are exact consequences of the model, never heuristics; the tests check them against
brute-force optima on random tiny instances (``tests/test_exact_bounds.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prefixsched.errors import InputError
from prefixsched.theory.sequential import SeqInstance

__all__ = ["steiner_size", "entry_interval_bound", "suffix_state_bound", "suffix_table",
           "suffix_bound_from_table", "entry_weight"]


def entry_weight(inst: SeqInstance) -> float:
    """``w_min = 1 + c_attn * L_min`` (time units per entered trie edge; module docstring)."""
    return 1.0 + inst.c_attn * min(inst.lengths)


def steiner_size(inst: SeqInstance, members: Sequence[int]) -> int:
    """Number of distinct non-empty prefixes (trie edges, tokens) of the prompts at ``members``.

    Positions in ``inst.queries``. ``sum_j (|x_j| - max_{i earlier} LCP(x_i, x_j))`` (adding a
    path to a trie creates exactly the edges below its longest common prefix with the tree).
    """
    lcp = inst.lcp
    lens = inst.lengths
    tot = 0
    seen: list[int] = []
    for j in members:
        row = lcp[j]
        tot += lens[j] - max((row[i] for i in seen), default=0)
        seen.append(j)
    return tot


def entry_interval_bound(inst: SeqInstance, model: str = "prev") -> float:
    """Bound B of the module docstring: a lower bound on min max TTFT (time units).

    ``max`` over contiguous runs ``Q`` of the arrival order of ``w_min*(steiner(Q) - lam) - (a_l - a_k)``
    (``prev``: ``lam`` = longest LCP between a member and an outsider; ``radix``: the edges of
    ``Q`` shared with any outsider), and of the largest single-query service ``w_min*(|x_j| -
    max_i LCP(x_i, x_j))``. ``O(n^2)`` numpy memory and ``O(n^3)`` vector work for ``prev``;
    the ``radix`` variant is pure Python and meant for small ``n``.

    Raises
    ------
    InputError
        ``model`` not ``prev``/``radix``.
    """
    if model not in ("prev", "radix"):
        raise InputError("model", f"entry bounds cover models prev and radix, got {model!r}")
    n = inst.n
    arr = inst.arrivals
    w = entry_weight(inst)
    order = sorted(range(n), key=lambda j: (arr[j], j))
    lens = np.array([inst.lengths[j] for j in order], dtype=np.int64)
    a = np.array([arr[j] for j in order], dtype=np.float64)
    Lm = np.array([[inst.lcp[i][j] for j in order] for i in order], dtype=np.int64)
    np.fill_diagonal(Lm, 0)
    best = float(w * max(int(lens[u]) - int(Lm[u].max(initial=0)) for u in range(n)))
    # G[u, k] = uncached edges of query u added to the set order[k..u-1] = len_u - max_{k<=t<u} Lm[u, t]
    G = np.zeros((n, n), dtype=np.int64)
    for u in range(n):
        G[u, u] = lens[u]
        if u:
            G[u, :u] = lens[u] - np.maximum.accumulate(Lm[u, :u][::-1])[::-1]
    # prefix / suffix maxima of each row over the arrival order
    PL = np.maximum.accumulate(Lm, axis=1)  # PL[t, s] = max_{s' <= s} Lm[t, s']
    PR = np.maximum.accumulate(Lm[:, ::-1], axis=1)[:, ::-1]  # PR[t, s] = max_{s' >= s} Lm[t, s']
    # Lright[k, l] = max_{k<=t<=l} max_{s>l} Lm[t, s]
    Lright = np.zeros((n, n), dtype=np.int64)
    for l in range(n - 1):
        col = PR[: l + 1, l + 1]  # rows t <= l
        Lright[: l + 1, l] = np.maximum.accumulate(col[::-1])[::-1]
    for k in range(n):
        st = np.cumsum(G[k:, k])  # steiner(order[k..l]) for l = k..n-1
        if model == "prev":
            if k:
                left = np.maximum.accumulate(PL[k:, k - 1])  # max_{k<=t<=l} max_{s<k} Lm[t, s]
            else:
                left = np.zeros(n, dtype=np.int64)
            lam = np.maximum(left, Lright[k, k:])
            vals = w * (st - lam) - (a[k:] - a[k])
        else:
            vals = []
            for l in range(k, n):
                members = order[k: l + 1]
                outs = order[:k] + order[l + 1:]
                shared = int(st[l - k]) + steiner_size(inst, outs) - steiner_size(inst, members + outs) if outs else 0
                vals.append(w * (int(st[l - k]) - shared) - (a[l] - a[k]))
            vals = np.array(vals)
        v = float(np.max(vals))
        if v > best:
            best = v
    return max(best, 0.0)


def suffix_table(
    lcp: Sequence[Sequence[int]], lens: Sequence[int], arr: Sequence[float], rem_sorted: Sequence[int]
) -> list[tuple[int, float, int, int]]:
    """Cut points of bound S for the remaining queries ``rem_sorted`` (sorted by arrival).

    Returns ``[(k, a_k, steiner(Q_k), lam_k), ...]`` for every ``k`` that starts a new arrival
    value, with ``Q_k = rem_sorted[k:]`` and ``lam_k`` the longest LCP between ``Q_k`` and
    ``rem_sorted[:k]`` (0 for ``k = 0``). ``O(m^2)`` for ``m`` queries.
    """
    m = len(rem_sorted)
    # steiner sizes of the suffixes, built from the back
    st = [0] * (m + 1)
    for k in range(m - 1, -1, -1):
        j = rem_sorted[k]
        row = lcp[j]
        st[k] = st[k + 1] + lens[j] - max((row[rem_sorted[t]] for t in range(k + 1, m)), default=0)
    # lam_k = max_{t >= k, s < k} lcp; cur[t] = max_{s < k} lcp(rem[t], rem[s])
    cur = [0] * m
    out: list[tuple[int, float, int, int]] = []
    for k in range(m):
        if k > 0:
            pk = lcp[rem_sorted[k - 1]]
            for t in range(k, m):
                v = pk[rem_sorted[t]]
                if v > cur[t]:
                    cur[t] = v
        out.append((k, arr[rem_sorted[k]], st[k], max(cur[k:])))
    return out


def suffix_state_bound(
    inst: SeqInstance, remaining: Sequence[int], last: int | None
) -> tuple[float, float, float]:
    """Bound S of the module docstring for a partial ``prev`` schedule.

    Parameters
    ----------
    remaining:
        Positions of the unserved queries (non-empty).
    last:
        Position of the last served query, or ``None`` at the start (the depot).

    Returns
    -------
    (A, B, a_max)
        Every completion from finish time ``f`` has max TTFT ``>= max(f + A, B) - a_max``
        (time units).

    Raises
    ------
    InputError
        ``remaining`` empty.
    """
    arr = inst.arrivals
    rem = sorted(remaining, key=lambda j: (arr[j], j))
    if not rem:
        raise InputError("remaining", "needs at least one unserved query")
    return suffix_bound_from_table(suffix_table(inst.lcp, inst.lengths, arr, rem), rem,
                                   None if last is None else inst.lcp[last], entry_weight(inst), arr[rem[-1]])


def suffix_bound_from_table(
    table: Sequence[tuple[int, float, int, int]],
    rem_sorted: Sequence[int],
    last_row: Sequence[int] | None,
    w: float,
    amax: float,
) -> tuple[float, float, float]:
    """``(A, B, a_max)`` of bound S from :func:`suffix_table` and the LCP row of ``last``."""
    m = len(rem_sorted)
    # lastmax[k] = max_{t >= k} lcp(last, rem[t])
    lastmax = [0] * (m + 1)
    if last_row is not None:
        for t in range(m - 1, -1, -1):
            v = last_row[rem_sorted[t]]
            lastmax[t] = v if v > lastmax[t + 1] else lastmax[t + 1]
    A = B = float("-inf")
    for k, a, stk, lam in table:
        lk = lastmax[k]
        W = w * (stk - (lam if lam > lk else lk))
        if W > A:
            A = W
        if a + W > B:
            B = a + W
    return A, B, amax
