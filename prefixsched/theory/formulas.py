"""The fairness theorems of VTC, DLPM and D²LPM as formulas: one plain function per theorem.

Cost units (``W = w_e * n_e + w_q * n_q``) or, for the latency bounds, seconds. The parameters
(``L_input``, ``M``, ``U``, ``a``) and the sources are described in :mod:`prefixsched.theory.bounds`,
which re-exports every function here and adds the checks that scan traces. This module is apart
so that :mod:`prefixsched.theory.metrics` can put a gap next to its bound without importing the
checks (which import the metrics).
"""

from __future__ import annotations

import math

from prefixsched.errors import InputError
from prefixsched.theory.model import Instance

__all__ = [
    "max_input_tokens", "kv_batch_tokens", "batch_output_capacity", "vtc_U", "dlpm_U",
    "vtc_two_backlogged_bound", "dlpm_thm_a1", "dlpm_thm_4_1", "dlpm_thm_4_2", "dlpm_thm_a2_latency",
    "d2lpm_thm_a3", "d2lpm_thm_5_1", "d2lpm_thm_5_2", "d2lpm_thm_a4",
]


def max_input_tokens(instance: Instance) -> int:
    """``L_input``: the largest prompt of ``instance``, in tokens."""
    return max(r.prompt_len for r in instance.requests)


def kv_batch_tokens(instance: Instance) -> int:
    """``M`` read literally: ``limits.kv_capacity_tokens`` (tokens)."""
    return instance.limits.kv_capacity_tokens


def batch_output_capacity(instance: Instance) -> int:
    """``M`` per instance (module docstring): output tokens one running batch can still produce.

    ``min(kv_capacity_tokens, sum of the max_running_requests largest output_len)``, in tokens.
    Sound because the simulator reserves each running request's full output in the KV pool and
    runs at most ``max_running_requests`` requests at once.
    """
    outs = sorted((r.output_len for r in instance.requests), reverse=True)
    top = sum(outs[: instance.limits.max_running_requests])
    return min(instance.limits.kv_capacity_tokens, top)


def _positive(name: str, v: float, *, allow_zero: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (
        not allow_zero and v == 0
    ):
        raise InputError(name, f"must be a finite number {'>=' if allow_zero else '>'} 0, got {v!r}")
    return float(v)


def vtc_U(L_input: float, M: float, w_e: float = 1.0, w_q: float = 2.0) -> float:
    """VTC's ``U = max(w_e * L_input, w_q * M)`` (cost units; vtc_fastswitch_preble.md §A.4).

    Raises :class:`InputError` for a negative or non-finite argument.
    """
    return max(_positive("w_e", w_e) * _positive("L_input", L_input), _positive("w_q", w_q) * _positive("M", M))


def dlpm_U(L_input: float, M: float, w_e: float = 1.0, w_q: float = 2.0) -> float:
    """DLPM's ``U = w_e * L_input + w_q * M`` (cost units; dlpm.md §1): the most counter a single
    request can consume, prefill charge plus the decode charge bounded by batch capacity.

    Raises :class:`InputError` for a negative or non-finite argument.
    """
    return _positive("w_e", w_e) * _positive("L_input", L_input) + _positive("w_q", w_q) * _positive("M", M)


# ---------------------------------------------------------------------------------------------
# formulas


def vtc_two_backlogged_bound(L_input: float, M: float, w_e: float = 1.0, w_q: float = 2.0) -> float:
    """VTC main theorem (Sheng et al. OSDI'24; vtc_fastswitch_preble.md §A.4).

    For any interval ``[t1, t2)`` in which clients f and g are both backlogged::

        |W_f(t1,t2) - W_g(t1,t2)| <= 2 * max(w_e * L_input, w_q * M)

    ``L_input`` and ``M`` in tokens; returns cost units.
    """
    return 2.0 * vtc_U(L_input, M, w_e, w_q)


def dlpm_thm_a1(Q_u: float, U: float) -> float:
    """DLPM Thm A.1 as printed (dlpm.md §4): a client backlogged over ``[t1, t2)`` and refilled
    ``K_i`` times in it satisfies ``|W_i(t1,t2) - K_i * Q_u| <= max(Q_u, U)`` (cost units).

    Proof gap: with ``q_i in (-U, Q_u]`` the exact identity is
    ``W_i = K_i*Q_u + q_i(t1) - q_i(t2)``. The printed ``max(Q_u, U)`` drops ``q_i(t1)``: it holds
    when ``q_i(t1) = 0``, i.e. from the client's join or rejoin (:func:`check_dlpm_thm_a1_from_join`),
    and in general only ``< Q_u + U`` does. See ``papers/dlpm/bounds_findings.md`` for the
    empirical test.
    """
    return max(_positive("Q_u", Q_u, allow_zero=False), _positive("U", U))


def dlpm_thm_4_1(Q_u: float, U: float) -> float:
    """DLPM Thm 4.1 (dlpm.md §4): for f, g both continuously backlogged on ``[t1, t2)``::

        |W_f(t1,t2) - W_g(t1,t2)| <= 2 * (U + Q_u)        (cost units)
    """
    return 2.0 * (_positive("U", U) + _positive("Q_u", Q_u, allow_zero=False))


def dlpm_thm_4_2(Q_u: float, U: float) -> float:
    """DLPM Thm 4.2 (dlpm.md §4): f backlogged on ``[t1, t2)``, g arbitrary (not backlogged)::

        W_g(t1,t2) - W_f(t1,t2) <= 2*U + 2*Q_u            (cost units)
    """
    return 2.0 * _positive("U", U) + 2.0 * _positive("Q_u", Q_u, allow_zero=False)


def dlpm_thm_a2_latency(n: int, Q_u: float, U: float, a: float) -> float:
    """DLPM Thm A.2 (dlpm.md §4): with ``n`` clients, a request r_f of a client f that had nothing
    waiting and nothing running when r_f arrived is dispatched (admitted) within::

        D(r_f) - A(r_f) <= 2 * (n - 1) * (Q_u + U) / a     (seconds)

    ``a``: lower bound on server capacity in cost units per second (> 0).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError("n", f"must be an integer >= 1, got {n!r}")
    return 2.0 * (n - 1) * (_positive("Q_u", Q_u, allow_zero=False) + _positive("U", U)) / _positive(
        "a", a, allow_zero=False
    )


def _workers(n_workers: int) -> int:
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise InputError("n_workers", f"must be an integer >= 1, got {n_workers!r}")
    return n_workers


def d2lpm_thm_a3(Q_u: float, U: float, n_workers: int) -> float:
    """D²LPM Thm A.3 (dlpm.md §4): ``|sum_w k_{i,w}*Q_u - W_i| <= max(Q_u, U) * |W|`` (cost units),
    ``k_{i,w}`` the local DLPM refills of client i on worker w, ``|W|`` = ``n_workers``.
    Inherits Thm A.1's gap (the sound per-worker constant is ``Q_u + U``)."""
    return dlpm_thm_a1(Q_u, U) * _workers(n_workers)


def d2lpm_thm_5_1(Q_u: float, U: float, n_workers: int) -> float:
    """D²LPM Thm 5.1 (dlpm.md §4): over backlogged clients,
    ``max_i W_i(t1,t2) - min_i W_i(t1,t2) <= 2 * |W| * (U + Q_u)`` (cost units). ``Q_w`` does not
    appear (it must only be finite)."""
    return 2.0 * _workers(n_workers) * (_positive("U", U) + _positive("Q_u", Q_u, allow_zero=False))


def d2lpm_thm_5_2(Q_u: float, U: float, n_workers: int) -> float:
    """D²LPM Thm 5.2 (dlpm.md §4): f backlogged, g not:
    ``W_g(t1,t2) - W_f(t1,t2) <= 2 * (U + Q_u) * |W|`` (cost units)."""
    return 2.0 * (_positive("U", U) + _positive("Q_u", Q_u, allow_zero=False)) * _workers(n_workers)


def d2lpm_thm_a4(n: int, Q_u: float, U: float, a: float, n_workers: int) -> float:
    """D²LPM Thm A.4 (dlpm.md §4): under Thm A.2's premise,
    ``D(r_f) - A(r_f) <= (n - 1) * |W| * (2U + 2Q_u) / a`` (seconds)."""
    return dlpm_thm_a2_latency(n, Q_u, U, a) * _workers(n_workers)


# ---------------------------------------------------------------------------------------------
# helpers on traces (metrics-compatible evaluation points)
