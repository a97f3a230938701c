"""The fairness theorems of VTC, DLPM and D²LPM as code: one formula per theorem, one checker per
premise.

Every formula is a plain function of the theorem's parameters, in **cost units** (weighted tokens,
``W = w_e * n_e + w_q * n_q``) or, for latency bounds, in **seconds** (cost units divided by a
capacity ``a`` in cost units per second). Every ``check_*`` function scans a simulator
:class:`~prefixsched.theory.trace.Trace` over *all* intervals where the theorem's premise holds
and returns a :class:`BoundReport` with the worst value found and the interval (or request)
attaining it. Service, backlog and latency come from :mod:`prefixsched.theory.metrics` only
(:func:`~prefixsched.theory.metrics.service_timeline`,
:func:`~prefixsched.theory.metrics.backlog_intervals`,
:func:`~prefixsched.theory.metrics.max_service_gap`), with its conventions: ``W_f(t1, t2)`` is the
service delivered by steps ending in ``(t1, t2]``; a client is *backlogged* while it has a request
waiting (arrived, not admitted); evaluation points inside a backlogged period ``[T0, T1)`` are
``T0`` and every distinct step end in ``(T0, T1]``.

Sources: VTC — Sheng et al., OSDI'24 (vtc_fastswitch_preble.md §A.4); DLPM/D²LPM — Cao et al.,
arXiv:2501.14312v1, §4.2, §5.2 and Appendix A (dlpm.md §4).

Parameters (dlpm.md §1)
-----------------------
``L_input``
    The largest prompt of the instance, in tokens (:func:`max_input_tokens`). A request's
    admission charge is at most ``w_e * L_input`` in both views (extend <= prompt).
``M``
    "The largest number of tokens a running batch can hold". In every proof its role is to bound
    the *decode charge still to come from requests already running* when a client stops being
    admitted, so prefixsched reads it as **output tokens one running batch can still produce**.
    *Decision:* two values are offered and each check documents its default.

    - :func:`kv_batch_tokens` ``= kv_capacity_tokens``, the batch token capacity: the literal
      reading, under which VTC's theorem is stated. **Default of the VTC checks** and of VTC's bound
      for every policy (:func:`prefixsched.theory.metrics.gap_bounds`). VTC's ``max`` form holds
      with it: its proof charges a request's prompt *and* the outputs still to come against the
      same memory (``w_e*L_input + w_q*outputs <= w_q*M`` when ``w_q >= w_e`` and prompt + outputs
      fit in ``M``). What fails is an output-only reading of ``M``, not the theorem
      (counterexample in ``papers/dlpm/bounds_findings.md``).
    - :func:`batch_output_capacity` ``= min(kv_capacity_tokens, sum of the
      max_running_requests largest output_len)``, output tokens only. **Default of the DLPM
      checks**: DLPM's ``U`` already adds ``w_e*L_input``, and Thm A.1's induction only needs
      ``M`` to bound the decode charge of the requests already running, which this does (the
      simulator reserves every running request's full output in the KV pool and runs at most
      ``max_running_requests`` requests). Tighter, so the checks are more sensitive; it is also
      the ``M`` that :mod:`prefixsched.reference.policies.dlpm` documents for its invariant.
      (An engine that does not reserve whole outputs, such as SGLang's ``new_token_ratio``
      admission with retraction, needs this argument redone.)

    Pass ``M=`` to any check to override.
``U``
    VTC: ``max(w_e * L_input, w_q * M)``; DLPM/D²LPM: ``w_e * L_input + w_q * M``
    (:func:`vtc_U`, :func:`dlpm_U`).
``a``
    Latency bounds: a lower bound on server capacity in cost units per second. *Decision:*
    :func:`capacity_lower_bound` measures it on the trace as the smallest service rate of any step
    of positive duration (actual view); zero-duration steps (free decode under
    ``CostModel.token_units()``) are skipped.

Views. VTC charges full prompts, so its theorem is checked on the client view by default
(``view="client"``); DLPM charges extend tokens, so DLPM theorems use the actual view.

Engines. Every theorem here is proved for the papers' server, the ``ideal`` engine
(:mod:`prefixsched.reference.engine.ideal`): mixed steps, the whole output reserved at admission
(so a running request's remaining decode charge is bounded by ``M``), skip-if-it-does-not-fit, no
chunking, no retraction. Every check also reads traces of the ``sglang`` engine
(:mod:`prefixsched.reference.engine.sglang`), which breaks three premises; what the policies do
there, and what was measured (``papers/engines/bounds_on_engines.py``, results in
``papers/engines/README.md``):

- *Stop at the first misfit.* SGLang's loop ends the pass at the first credited request that does
  not fit, where the papers' pass skips it. The deficit bookkeeping is unchanged (a pass still
  admits in LPM order among credited clients, and charges only what it admits).
- *Chunked prefill.* DLPM and VTC charge a request's whole extend (VTC: prompt) when it is
  admitted, while the trace's service ``W`` counts each chunk in the step that runs it: the charge
  leads the service by at most one chunked request (one per worker at a time).
- *Retraction.* No refund: the re-prefill after a retraction is a new admission, which needs
  credit again (DLPM) and is charged again; it is real work and counts in ``W``. Running requests
  are reserved at ``new_token_ratio`` and may be retracted, but their remaining decode charge is
  still at most ``M`` output tokens, so ``U`` bounds it as before.

Measured on 300 generated instances (60 with chunked prefill) and three 300-request workloads with
binding memory (3 to 16 retractions, 300+ chunks each), DLPM's Thm 4.1, 4.2, A.1 (sound form
``Q_u + U``), A.2 and the deficit range held on the ``sglang`` engine as on the ``ideal`` one (0
violations); the worst ratios were the same on the generated instances and up to 0.2 higher on
the workloads (Thm 4.1 on ``s1``: 0.377 vs 0.257). The printed Thm A.1 fails on both engines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prefixsched.errors import InputError
from prefixsched.theory.metrics import (
    _cluster_curves,
    _distinct_step_ends,
    _eval_rows,
    _time_of,
    backlog_intervals,
    cluster_max_service_gap,
    max_service_gap,
    service_timeline,
)
from prefixsched.theory.formulas import (
    _positive,
    batch_output_capacity,
    d2lpm_thm_5_1,
    d2lpm_thm_5_2,
    d2lpm_thm_a3,
    d2lpm_thm_a4,
    dlpm_thm_4_1,
    dlpm_thm_4_2,
    dlpm_thm_a1,
    dlpm_thm_a2_latency,
    dlpm_U,
    kv_batch_tokens,
    max_input_tokens,
    vtc_two_backlogged_bound,
    vtc_U,
)
from prefixsched.theory.model import Instance
from prefixsched.theory.trace import ClusterTrace, Trace


__all__ = [
    "BoundReport",
    "max_input_tokens",
    "kv_batch_tokens",
    "batch_output_capacity",
    "vtc_U",
    "dlpm_U",
    "vtc_two_backlogged_bound",
    "dlpm_thm_a1",
    "dlpm_thm_4_1",
    "dlpm_thm_4_2",
    "dlpm_thm_a2_latency",
    "d2lpm_thm_a3",
    "d2lpm_thm_5_1",
    "d2lpm_thm_5_2",
    "d2lpm_thm_a4",
    "capacity_lower_bound",
    "check_vtc_two_backlogged",
    "check_vtc_counter_spread",
    "check_dlpm_thm_4_1",
    "check_dlpm_thm_4_2",
    "check_dlpm_thm_a1",
    "check_dlpm_thm_a1_from_join",
    "check_dlpm_deficit_range",
    "check_dlpm_thm_a2_latency",
    "check_dlpm_accounting",
    "check_all",
    "state_log",
    "check_d2lpm_thm_5_1",
    "check_d2lpm_thm_5_2",
    "check_d2lpm_thm_a3",
    "check_d2lpm_thm_a4_latency",
    "check_d2lpm_all",
    "vtc_preemptive_bound",
    "switch_delay_steps",
    "check_vtc_preemptive_gap",
]


# ---------------------------------------------------------------------------------------------
# report


@dataclass(frozen=True)
class BoundReport:
    """Outcome of one ``check_*`` scan.

    Attributes
    ----------
    name:
        The theorem (``"DLPM Thm 4.1"``).
    bound:
        The theorem's bound for this instance (cost units, or seconds for latency bounds).
    worst:
        The worst value found over every interval / request satisfying the premise (0.0 when none
        does).
    holds:
        ``worst <= bound`` (up to ``1e-9`` relative, float summation noise).
    witness:
        Where ``worst`` is attained: ``{"pair": (f, g), "interval": (t1, t2), ...}`` or
        ``{"request": id, ...}``; empty when nothing satisfied the premise.
    checked:
        How many premise instances were examined (pairs with a common backlog, backlogged periods,
        requests): 0 means the check was vacuous.
    params:
        The parameters used (``L_input``, ``M``, ``Q_u``, ``a``, ``view``...).
    """

    name: str
    bound: float
    worst: float
    holds: bool
    witness: dict[str, Any] = field(default_factory=dict)
    checked: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """``worst / bound`` (0 when the bound is infinite or zero and nothing was found)."""
        if self.bound == 0 or math.isinf(self.bound):
            return 0.0 if self.worst == 0 else math.inf
        return self.worst / self.bound

    def __str__(self) -> str:
        if self.checked == 0:
            return f"{self.name}: vacuous (no interval satisfied the premise); bound {self.bound:g}"
        where = ", ".join(f"{k}={_fmt(v)}" for k, v in self.witness.items())
        if self.holds:
            share = f"{self.ratio:.1%} of the bound, " if self.bound > 0 else ""
            return (
                f"{self.name}: holds: worst {self.worst:g} <= bound {self.bound:g} "
                f"({share}{self.checked} checked; worst at {where})"
            )
        return (
            f"{self.name}: VIOLATED: worst {self.worst:g} > bound {self.bound:g}; counterexample: {where}"
        )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return repr(v) if isinstance(v, str) else str(v)


def _holds(worst: float, bound: float) -> bool:
    return worst <= bound + 1e-9 * max(1.0, abs(bound))


# ---------------------------------------------------------------------------------------------
# parameters


# the theorems' formulas live in prefixsched.theory.formulas (re-exported here)


def _params(instance: Instance, M: int | None, *, literal: bool = False) -> tuple[int, int]:
    L = max_input_tokens(instance)
    if M is None:
        m = kv_batch_tokens(instance) if literal else batch_output_capacity(instance)
    else:
        m = int(M)
    if m < 0:
        raise InputError("M", f"must be >= 0, got {M!r}")
    return L, m


def capacity_lower_bound(instance: Instance, trace: Trace, view: str = "actual") -> float:
    """``a`` for the latency theorems: the smallest service rate (cost units per second) over the
    trace's steps of positive duration. Service per step from
    :func:`~prefixsched.theory.metrics.service_timeline`. Returns ``inf`` if no step has positive
    duration (everything was free)."""
    _times, _clients, cum = service_timeline(trace, instance, view)
    if cum.size == 0:
        return math.inf
    per_step = np.diff(np.vstack([np.zeros((1, cum.shape[1])), cum]), axis=0).sum(axis=1)
    dur = np.asarray(trace.step_end) - np.asarray(trace.step_start)
    pos = dur > 0
    if not np.any(pos):
        return math.inf
    return float(np.min(per_step[pos] / dur[pos]))


def state_log(trace: Trace) -> list[tuple[int, dict[str, Any]]]:
    """``trace.meta["states"]`` (``simulate(..., record_states=True)``) as ``[(step, state)]``.

    Raises
    ------
    InputError
        If the trace was recorded without ``record_states=True``.
    """
    states = trace.meta.get("states")
    if states is None:
        raise InputError("trace.meta.states", "missing: run simulate(..., record_states=True)")
    return [(int(s), st) for s, st in states]


def _states_at_steps(trace: Trace, key: str) -> list[dict[str, Any] | None]:
    """``state[key]`` in force after each step (the log is compact: carry the last entry)."""
    out: list[dict[str, Any] | None] = [None] * trace.n_steps
    log = state_log(trace)
    j = 0
    cur: dict[str, Any] | None = None
    for s in range(trace.n_steps):
        while j < len(log) and log[j][0] <= s:
            cur = log[j][1].get(key)
            j += 1
        out[s] = cur
    return out


def _waiting_after_step(trace: Trace) -> list[set[str]]:
    """Clients with a waiting request right after step s ends (the moment ``state()`` is logged):
    requests that joined by step s (``arrival <= step_start[s]``) and are admitted after it, or
    that a retraction put back in the queue by then (``sglang`` engine)."""
    S = trace.n_steps
    starts = np.asarray(trace.step_start)
    clients = list(dict.fromkeys(r.client for r in trace.requests))
    ci = {c: k for k, c in enumerate(clients)}
    diff = np.zeros((len(clients), S + 1), dtype=np.int64)
    for r in trace.requests:
        first = int(np.searchsorted(starts, r.arrival, side="left"))  # first step starting >= arrival
        runs = r.all_runs()
        # waiting before its first admission, and again between a retraction and the re-admission
        spans = [(first, runs[0].admit_step)] + [(a.end_step + 1, b.admit_step) for a, b in zip(runs, runs[1:])]
        for lo, hi in spans:
            hi = min(hi, S)
            if lo < hi:
                diff[ci[r.client], lo] += 1
                diff[ci[r.client], hi] -= 1
    live = np.cumsum(diff, axis=1)[:, :S] > 0
    return [{clients[k] for k in np.flatnonzero(live[:, s])} for s in range(S)]


# ---------------------------------------------------------------------------------------------
# checks


def check_vtc_two_backlogged(
    instance: Instance, trace: Trace, *, M: int | None = None, view: str = "client"
) -> BoundReport:
    """Scan ``trace`` for VTC's two-backlogged-clients bound (:func:`vtc_two_backlogged_bound`).

    Worst value: :func:`~prefixsched.theory.metrics.max_service_gap` over every pair and every
    interval in which both are backlogged. ``view="client"`` (full prompts, what VTC charges by
    default); use ``"actual"`` for ``VTC(charge="extend")``. ``M`` defaults to
    ``kv_capacity_tokens`` (module docstring).
    """
    L, m = _params(instance, M, literal=True)
    w = instance.weights
    bound = vtc_two_backlogged_bound(L, m, w.w_e, w.w_q)
    gap = max_service_gap(trace, instance, view, per_pair=True)
    witness = {"pair": gap["pair"], "interval": gap["interval"]} if gap["pair"] else {}
    return BoundReport(
        "VTC two-backlogged (OSDI'24 main theorem)", bound, float(gap["value"]),
        _holds(float(gap["value"]), bound), witness, len(gap["per_pair"]),
        {"L_input": L, "M": m, "view": view, "w_e": w.w_e, "w_q": w.w_q},
    )


def check_dlpm_thm_4_1(
    instance: Instance, trace: Trace, Q_u: float, *, M: int | None = None, view: str = "actual"
) -> BoundReport:
    """Scan ``trace`` for DLPM Thm 4.1 (:func:`dlpm_thm_4_1`): the largest
    ``|W_f(t1,t2) - W_g(t1,t2)|`` over pairs both backlogged on ``[t1, t2)``
    (:func:`~prefixsched.theory.metrics.max_service_gap`, actual view)."""
    L, m = _params(instance, M)
    w = instance.weights
    U = dlpm_U(L, m, w.w_e, w.w_q)
    bound = dlpm_thm_4_1(Q_u, U)
    gap = max_service_gap(trace, instance, view, per_pair=True)
    witness = {"pair": gap["pair"], "interval": gap["interval"]} if gap["pair"] else {}
    return BoundReport(
        "DLPM Thm 4.1", bound, float(gap["value"]), _holds(float(gap["value"]), bound), witness,
        len(gap["per_pair"]), {"L_input": L, "M": m, "U": U, "Q_u": Q_u, "view": view},
    )


def _one_sided_scan(
    times: np.ndarray, clients: Sequence[str], ext: np.ndarray, backlog: dict[str, list[tuple[float, float]]]
) -> tuple[float, dict[str, Any], int]:
    """The premise scan of Thm 4.2 / 5.2: for every client f, every backlogged period of f and
    every other client g, the largest ``W_g(t1,t2) - W_f(t1,t2)`` over ``t1 < t2`` in the period
    (one-sided: a running minimum instead of max - min). Returns (worst, witness, pairs checked)."""
    worst, witness, checked = 0.0, {}, 0
    for fi, f in enumerate(clients):
        for t0, t1 in backlog.get(f, []):
            rows = _eval_rows(times, t0, t1)
            for gi, g in enumerate(clients):
                if gi == fi:
                    continue
                checked += 1
                d = ext[rows, gi] - ext[rows, fi]
                inc = d - np.minimum.accumulate(d)
                j2 = int(np.argmax(inc))
                if inc[j2] > worst:
                    j1 = int(np.argmin(d[: j2 + 1]))
                    worst = float(inc[j2])
                    witness = {
                        "backlogged": f, "other": g,
                        "interval": (_time_of(times, rows, j1, t0), _time_of(times, rows, j2, t0)),
                    }
    return worst, witness, checked


def check_dlpm_thm_4_2(
    instance: Instance, trace: Trace, Q_u: float, *, M: int | None = None, view: str = "actual"
) -> BoundReport:
    """Scan ``trace`` for DLPM Thm 4.2 (:func:`dlpm_thm_4_2`).

    For every client f, every backlogged period ``[T0, T1)`` of f and every other client g: the
    largest ``W_g(t1,t2) - W_f(t1,t2)`` over ``T0 <= t1 < t2 <= T1`` (evaluation points as
    :func:`~prefixsched.theory.metrics.max_service_gap`; one-sided, so a running minimum instead
    of max - min). g may or may not be backlogged (the bound covers both).
    """
    L, m = _params(instance, M)
    w = instance.weights
    U = dlpm_U(L, m, w.w_e, w.w_q)
    bound = dlpm_thm_4_2(Q_u, U)
    times, clients, cum = service_timeline(trace, instance, view)
    times, ext = _distinct_step_ends(times, cum)
    backlog = backlog_intervals(trace)
    worst, witness, checked = _one_sided_scan(times, clients, ext, backlog)
    return BoundReport(
        "DLPM Thm 4.2", bound, worst, _holds(worst, bound), witness, checked,
        {"L_input": L, "M": m, "U": U, "Q_u": Q_u, "view": view},
    )


def check_dlpm_thm_a1(
    instance: Instance, trace: Trace, Q_u: float, *, M: int | None = None, printed: bool = True
) -> BoundReport:
    """Scan ``trace`` for DLPM Thm A.1: ``|W_i(t1,t2) - K_i * Q_u|`` over every backlogged period
    of every client, ``t1 < t2`` step ends inside it, ``K_i`` = refill rounds client i received in
    between (from the policy's logged ``state()["refills"]``; needs ``record_states=True``).

    ``printed=True`` compares with the printed bound ``max(Q_u, U)``; ``printed=False`` with the
    sound bound ``Q_u + U`` that the identity ``W = K*Q_u + q(t1) - q(t2)`` and
    ``q in (-U, Q_u]`` give (dlpm.md §4 proof gap). Evaluation points are the step ends inside
    the period (the counters are logged only at step ends). Weighted DLPM (per-client refill
    ``Q_u * weight``) is not supported: pass the unweighted policy's traces.
    """
    L, m = _params(instance, M)
    w = instance.weights
    U = dlpm_U(L, m, w.w_e, w.w_q)
    bound = dlpm_thm_a1(Q_u, U) if printed else Q_u + U
    times_all, clients, cum = service_timeline(trace, instance, "actual")
    refills = _states_at_steps(trace, "refills")
    backlog = backlog_intervals(trace)
    worst, witness, checked = 0.0, {}, 0
    ends = np.asarray(trace.step_end)
    for fi, f in enumerate(clients):
        K = np.array([float((r or {}).get(f, 0)) for r in refills])
        X = cum[:, fi] - K * Q_u if len(K) else np.zeros(0)
        for t0, t1 in backlog.get(f, []):
            idx = np.flatnonzero((ends >= t0) & (ends <= t1))
            if idx.size < 2:
                continue
            checked += 1
            seg = X[idx]
            jmax, jmin = int(np.argmax(seg)), int(np.argmin(seg))
            val = float(seg[jmax] - seg[jmin])
            if val > worst:
                a, b = sorted((jmax, jmin))
                worst = val
                witness = {
                    "client": f, "interval": (float(ends[idx[a]]), float(ends[idx[b]])),
                    "W": float(cum[idx[b], fi] - cum[idx[a], fi]), "K": int(K[idx[b]] - K[idx[a]]),
                }
    return BoundReport(
        "DLPM Thm A.1" + (" (printed max(Q_u,U))" if printed else " (sound Q_u+U)"), bound, worst,
        _holds(worst, bound), witness, checked, {"L_input": L, "M": m, "U": U, "Q_u": Q_u},
    )


def check_dlpm_thm_a1_from_join(
    instance: Instance, trace: Trace, Q_u: float, *, M: int | None = None
) -> BoundReport:
    """Thm A.1's printed bound where its proof is sound: intervals that start when the client
    joins or rejoins (dlpm.md §4).

    The exact identity is ``W_i(t1,t2) = K_i*Q_u + q_i(t1) - q_i(t2)``; DLPM resets ``q_i`` to 0
    when i joins, so from a join ``|W_i - K_i*Q_u| = |q_i(t2)| <= max(Q_u, U)`` (``q`` stays in
    ``(-U, Q_u]``): the printed bound. In general only ``Q_u + U`` holds
    (:func:`check_dlpm_thm_a1` with ``printed=False``). Scans, for every request that arrives while
    its client has nothing waiting or running (a join), the backlogged period that starts there and
    every step end ``t2`` in it: ``W`` from :func:`~prefixsched.theory.metrics.service_timeline`
    (actual view, service of steps ending in ``(t1, t2]``), ``K`` from the logged
    ``state()["refills"]`` (``record_states=True``).
    """
    L, m = _params(instance, M)
    w = instance.weights
    U = dlpm_U(L, m, w.w_e, w.w_q)
    bound = dlpm_thm_a1(Q_u, U)
    times, clients, cum = service_timeline(trace, instance, "actual")
    col = {c: k for k, c in enumerate(clients)}
    refills = _states_at_steps(trace, "refills")
    backlog = backlog_intervals(trace)
    ends = np.asarray(trace.step_end)
    worst, witness, checked = 0.0, {}, 0
    for r, pending in zip(trace.requests, _pending_at_arrival(trace)):
        if pending:
            continue
        periods = [p for p in backlog.get(r.client, []) if p[0] == r.arrival]
        if not periods:
            continue
        t1, T1 = periods[0]
        i0 = int(np.searchsorted(ends, t1, side="right"))  # steps ending after the join
        i1 = int(np.searchsorted(ends, T1, side="right"))
        if i1 <= i0:
            continue
        checked += 1
        f = col[r.client]
        W0 = cum[i0 - 1, f] if i0 > 0 else 0.0
        K0 = float((refills[i0 - 1] or {}).get(r.client, 0)) if i0 > 0 else 0.0
        K = np.array([float((refills[i] or {}).get(r.client, 0)) for i in range(i0, i1)])
        X = np.abs((cum[i0:i1, f] - W0) - (K - K0) * Q_u)
        j = int(np.argmax(X))
        if X[j] > worst:
            worst = float(X[j])
            witness = {"client": r.client, "join": t1, "t2": float(ends[i0 + j]), "K": int(K[j] - K0)}
    return BoundReport(
        "DLPM Thm A.1 printed max(Q_u,U), from a join (q(t1) = 0)", bound, worst, _holds(worst, bound), witness,
        checked, {"L_input": L, "M": m, "U": U, "Q_u": Q_u},
    )


def check_dlpm_deficit_range(
    instance: Instance, trace: Trace, Q_u: float, *, M: int | None = None
) -> BoundReport:
    """Every logged DLPM deficit lies in ``(-U, Q_u]`` (the invariant behind Thm A.1).

    ``worst`` is the largest excursion beyond the range (``max(q - Q_u, -U - q)``; the check holds
    iff it is ``< 0``, reported as ``worst <= bound`` with ``bound = 0`` after shifting: a value
    of exactly ``-U`` is a violation). Reads ``state()["deficits"]`` from the state log
    (``record_states=True``).
    """
    L, m = _params(instance, M)
    w = instance.weights
    U = dlpm_U(L, m, w.w_e, w.w_q)
    tol = 1e-9 * max(1.0, Q_u, U)
    worst, witness, checked = -math.inf, {}, 0
    first_bad: dict[str, Any] | None = None
    for step, st in state_log(trace):
        for c, q in (st.get("deficits") or {}).items():
            checked += 1
            exc = max(q - Q_u, -U - q)
            if first_bad is None and (q > Q_u + tol or q <= -U):
                first_bad = {"client": c, "step": step, "deficit": float(q), "range": (-U, Q_u)}
            if exc > worst:
                worst, witness = float(exc), {"client": c, "step": step, "deficit": float(q)}
    if checked == 0:
        worst = 0.0
    return BoundReport(
        "DLPM deficit range (-U, Q_u]", 0.0, worst, first_bad is None, first_bad or witness, checked,
        {"L_input": L, "M": m, "U": U, "Q_u": Q_u},
    )


def check_dlpm_accounting(
    instance: Instance, trace: Trace, Q_u: float, *, weights: dict[str, float] | None = None
) -> BoundReport:
    """DLPM's counter tracks the actual service exactly: for a client active across step s,
    ``q(s) - q(s-1) = K_s * Q_u * weight - W(step s)`` (Algorithm 1 lines 11 and 13; the identity
    behind Thm A.1). ``worst`` = largest absolute residual (cost units); holds iff within float
    noise. Reads ``deficits`` and ``refills`` from the state log (``record_states=True``); the
    service of step s from :func:`~prefixsched.theory.metrics.service_timeline` (actual view).
    """
    deficits = _states_at_steps(trace, "deficits")
    refills = _states_at_steps(trace, "refills")
    _t, clients, cum = service_timeline(trace, instance, "actual")
    per_step = np.diff(np.vstack([np.zeros((1, cum.shape[1])), cum]), axis=0)
    wts = weights or {}
    worst, witness, checked = 0.0, {}, 0
    for s in range(1, trace.n_steps):
        q0, q1 = deficits[s - 1] or {}, deficits[s] or {}
        k0, k1 = refills[s - 1] or {}, refills[s] or {}
        for fi, f in enumerate(clients):
            if f not in q0 or f not in q1:
                continue
            checked += 1
            expect = (k1.get(f, 0) - k0.get(f, 0)) * Q_u * wts.get(f, 1.0) - per_step[s, fi]
            res = abs((q1[f] - q0[f]) - expect)
            if res > worst:
                worst, witness = float(res), {"client": f, "step": s, "delta_q": q1[f] - q0[f], "expected": float(expect)}
    tol = 1e-7 * max(1.0, Q_u, float(cum.max()) if cum.size else 1.0)
    return BoundReport("DLPM counter accounting", tol, worst, worst <= tol, witness, checked, {"Q_u": Q_u})


def check_vtc_counter_spread(
    instance: Instance, trace: Trace, *, M: int | None = None, bound: float | None = None
) -> BoundReport:
    """VTC counters stay close: after every step, ``max - min`` of the counters of the clients
    that have a waiting request is at most ``bound``.

    Default bound: ``w_e * L_input + w_q * M`` with the output-only ``M``
    (:func:`batch_output_capacity`). *Derivation (ours; vtc_fastswitch_preble.md §A.4 "DES
    checks" asks for the spread but states no constant):* a client g is admitted only while its
    counter is the smallest among waiting clients, the admission adds at most ``w_e*L_input``, and
    until g is admitted again its counter grows only by the decode of its running requests, at
    most ``w_q*M``; the lift only raises the smallest counter. This is at most the theorem's
    ``2*max(w_e*L_input, w_q*M)``. Reads ``state()["counters"]`` from the state log
    (``record_states=True``). Weighted VTC counters are service/weight: the default bound is for
    weight 1.
    """
    L, m = _params(instance, M)
    w = instance.weights
    b = w.w_e * L + w.w_q * m if bound is None else float(bound)
    counters = _states_at_steps(trace, "counters")
    waiting = _waiting_after_step(trace)
    worst, witness, checked = 0.0, {}, 0
    for s in range(trace.n_steps):
        c = counters[s] or {}
        live = sorted(u for u in waiting[s] if u in c)
        if len(live) < 2:
            continue
        checked += 1
        vals = [c[u] for u in live]
        spread = max(vals) - min(vals)
        if spread > worst:
            worst = float(spread)
            witness = {"step": s, "high": live[int(np.argmax(vals))], "low": live[int(np.argmin(vals))]}
    return BoundReport(
        "VTC counter spread", b, worst, _holds(worst, b), witness, checked, {"L_input": L, "M": m}
    )


def _pending_at_arrival(trace: Trace) -> list[bool]:
    """For each record: did its client have another request waiting or running when it arrived?

    Request q of the same client (earlier in record order) is pending at r's arrival if it was
    admitted at or after that time (still waiting when r joined) or finishes strictly after it.
    """
    out: list[bool] = []
    by_client: dict[str, list[Any]] = {}
    for r in trace.requests:
        prev = by_client.setdefault(r.client, [])
        out.append(any(q.admit >= r.arrival or q.finish > r.arrival for q in prev))
        prev.append(r)
    return out


def _first_admission_scan(instance: Instance, trace: Trace) -> tuple[float, dict[str, Any], int]:
    """The premise scan of the latency bounds (Thm A.2 / A.4): for every request that arrives
    while its client has nothing pending, the time until the client's first admission at or after
    that arrival. Returns (worst latency, witness, requests checked)."""
    pending = _pending_at_arrival(trace)
    admits: dict[str, np.ndarray] = {}
    for c in instance.clients:
        admits[c] = np.sort(np.array([r.admit for r in trace.requests if r.client == c]))
    worst, witness, checked = 0.0, {}, 0
    for r, p in zip(trace.requests, pending):
        if p:
            continue
        checked += 1
        a_c = admits[r.client]
        first = float(a_c[np.searchsorted(a_c, r.arrival, side="left")])  # exists: r itself
        lat = first - r.arrival
        if lat > worst:
            worst, witness = lat, {"request": r.id, "client": r.client, "arrival": r.arrival, "first_admit": first}
    return worst, witness, checked


def check_dlpm_thm_a2_latency(
    instance: Instance,
    trace: Trace,
    Q_u: float,
    *,
    M: int | None = None,
    a: float | None = None,
    n: int | None = None,
) -> BoundReport:
    """Scan ``trace`` for DLPM Thm A.2: a client f that had nothing waiting and nothing running
    when its request r_f arrived is served within ``2 (n-1) (Q_u + U) / a`` seconds.

    *Decision:* "served" is f's first admission at or after ``A(r_f)``, of r_f or of any request
    of f that arrived with or after it: when f rejoins with a burst, LPM order may admit another
    request of the burst first (r_f itself may legitimately wait longer), and the proof bounds the
    service others receive before f is served at all.

    ``n`` defaults to the number of clients of the instance, ``a`` to
    :func:`capacity_lower_bound` (measured on the trace). Latencies from the trace's records.
    """
    L, m = _params(instance, M)
    w = instance.weights
    U = dlpm_U(L, m, w.w_e, w.w_q)
    n_clients = len(instance.clients) if n is None else n
    cap = capacity_lower_bound(instance, trace) if a is None else float(a)
    # everything free (cap = inf): no positive wait is explained by the theorem
    bound = 0.0 if math.isinf(cap) else dlpm_thm_a2_latency(n_clients, Q_u, U, cap)
    worst, witness, checked = _first_admission_scan(instance, trace)
    return BoundReport(
        "DLPM Thm A.2 (latency)", bound, worst, _holds(worst, bound), witness, checked,
        {"L_input": L, "M": m, "U": U, "Q_u": Q_u, "a": cap, "n": n_clients},
    )


def check_all(
    instance: Instance, trace: Trace, *, Q_u: float | None = None, M: int | None = None
) -> Sequence[BoundReport]:
    """Every applicable check for ``trace`` (DLPM ones when ``Q_u`` is given, and the A.1 /
    deficit checks only if the trace has a state log)."""
    out = [check_vtc_two_backlogged(instance, trace, M=M)]
    if Q_u is not None:
        out += [
            check_dlpm_thm_4_1(instance, trace, Q_u, M=M),
            check_dlpm_thm_4_2(instance, trace, Q_u, M=M),
            check_dlpm_thm_a2_latency(instance, trace, Q_u, M=M),
        ]
        if "states" in trace.meta:
            out += [
                check_dlpm_thm_a1(instance, trace, Q_u, M=M),
                check_dlpm_deficit_range(instance, trace, Q_u, M=M),
            ]
    return out


# ---------------------------------------------------------------------------------------------
# D²LPM (clusters): the same scans over the cluster-wide service W_i = sum_w W_{i,w}
#
# Conventions (decided here): service curves from
# :func:`~prefixsched.theory.metrics.cluster_service_timeline` (every worker's step ends, merged);
# a client is *backlogged* while one of its requests waits on any worker (arrived, not admitted:
# the union of [arrival, admit) over its requests, from ``ClusterTrace.merged_trace()``); ``U``
# uses the per-worker limits (each worker has the instance's limits), so ``M`` is one worker's
# batch capacity; ``|W|`` = ``cluster_trace.workers``. The D²LPM proofs assume a backlogged client
# is backlogged on *every* worker (dlpm.md §4, Thm 5.1); the checks do not assume it: they scan
# every interval where the clients are backlogged cluster-wide, which is what the theorem claims.


def check_d2lpm_thm_5_1(
    instance: Instance, cluster_trace: "ClusterTrace", Q_u: float, *, M: int | None = None, view: str = "actual"
) -> BoundReport:
    """Scan a cluster run for D²LPM Thm 5.1 (:func:`d2lpm_thm_5_1`): the largest
    ``|W_f(t1,t2) - W_g(t1,t2)|`` (cluster-wide service) over pairs f, g both backlogged on
    ``[t1, t2)``, bound ``2 |W| (U + Q_u)``. Evaluation points as
    :func:`~prefixsched.theory.metrics.max_service_gap` (``W(T0)`` and every distinct step end of
    any worker in ``(T0, T1]``). ``Q_u`` is the workers' local DLPM quantum."""
    L, m = _params(instance, M)
    w = instance.weights
    U = dlpm_U(L, m, w.w_e, w.w_q)
    D = cluster_trace.workers
    bound = d2lpm_thm_5_1(Q_u, U, D)
    worst, witness, checked = cluster_max_service_gap(cluster_trace, instance, view)
    return BoundReport(
        "D2LPM Thm 5.1", bound, worst, _holds(worst, bound), witness, checked,
        {"L_input": L, "M": m, "U": U, "Q_u": Q_u, "workers": D, "view": view},
    )


def check_d2lpm_thm_5_2(
    instance: Instance, cluster_trace: "ClusterTrace", Q_u: float, *, M: int | None = None, view: str = "actual"
) -> BoundReport:
    """Scan a cluster run for D²LPM Thm 5.2 (:func:`d2lpm_thm_5_2`): for every client f, every
    cluster-wide backlogged period of f and every other client g, the largest
    ``W_g(t1,t2) - W_f(t1,t2)`` (one-sided, as :func:`check_dlpm_thm_4_2`), bound
    ``2 (U + Q_u) |W|``."""
    L, m = _params(instance, M)
    w = instance.weights
    U = dlpm_U(L, m, w.w_e, w.w_q)
    D = cluster_trace.workers
    bound = d2lpm_thm_5_2(Q_u, U, D)
    times, clients, ext, backlog = _cluster_curves(instance, cluster_trace, view)
    worst, witness, checked = _one_sided_scan(times, clients, ext, backlog)
    return BoundReport(
        "D2LPM Thm 5.2", bound, worst, _holds(worst, bound), witness, checked,
        {"L_input": L, "M": m, "U": U, "Q_u": Q_u, "workers": D, "view": view},
    )


def check_d2lpm_thm_a3(
    instance: Instance, cluster_trace: "ClusterTrace", Q_u: float, *, M: int | None = None, printed: bool = True
) -> BoundReport:
    """Scan a cluster run for D²LPM Thm A.3: ``|sum_w k_{i,w} Q_u - W_i(t1,t2)|`` over every
    cluster-wide backlogged period of every client and ``t1 < t2`` among the step ends (of any
    worker) inside it; ``k_{i,w}`` = local DLPM refills of client i on worker w in between (each
    worker's ``state()["refills"]`` log: run with ``record_states=True``).

    ``printed=True``: bound ``max(Q_u, U) |W|`` as printed; ``printed=False``: the sound
    ``(Q_u + U) |W|`` (Thm A.1's gap, per worker, summed; see :func:`check_dlpm_thm_a1`)."""
    L, m = _params(instance, M)
    w = instance.weights
    U = dlpm_U(L, m, w.w_e, w.w_q)
    D = cluster_trace.workers
    bound = d2lpm_thm_a3(Q_u, U, D) if printed else (Q_u + U) * D
    times, clients, ext, backlog = _cluster_curves(instance, cluster_trace, "actual")
    cum = ext[1:]
    K = np.zeros((times.size, len(clients)))
    for t in cluster_trace.traces:
        if not t.requests:
            continue
        refills = _states_at_steps(t, "refills")
        kw = np.array([[float((r or {}).get(c, 0)) for c in clients] for r in refills]).reshape(-1, len(clients))
        rows = np.searchsorted(np.asarray(t.step_end), times, side="right") - 1
        ok = rows >= 0
        K[ok] += kw[rows[ok]]
    worst, witness, checked = 0.0, {}, 0
    for fi, f in enumerate(clients):
        X = cum[:, fi] - K[:, fi] * Q_u
        for t0, t1 in backlog.get(f, []):
            lo = int(np.searchsorted(times, t0, side="left"))
            hi = int(np.searchsorted(times, t1, side="right"))
            if hi - lo < 2:
                continue
            checked += 1
            seg = X[lo:hi]
            jmax, jmin = int(np.argmax(seg)), int(np.argmin(seg))
            val = float(seg[jmax] - seg[jmin])
            if val > worst:
                a, b = sorted((jmax, jmin))
                worst = val
                witness = {
                    "client": f, "interval": (float(times[lo + a]), float(times[lo + b])),
                    "W": float(cum[lo + b, fi] - cum[lo + a, fi]), "K": int(K[lo + b, fi] - K[lo + a, fi]),
                }
    return BoundReport(
        "D2LPM Thm A.3" + (" (printed max(Q_u,U)|W|)" if printed else " (sound (Q_u+U)|W|)"), bound, worst,
        _holds(worst, bound), witness, checked, {"L_input": L, "M": m, "U": U, "Q_u": Q_u, "workers": D},
    )


def check_d2lpm_thm_a4_latency(
    instance: Instance,
    cluster_trace: "ClusterTrace",
    Q_u: float,
    *,
    M: int | None = None,
    a: float | None = None,
    n: int | None = None,
) -> BoundReport:
    """Scan a cluster run for D²LPM Thm A.4: a client with nothing waiting and nothing running
    on *any* worker when its request arrives is served (its first admission, on any worker, at
    or after that arrival; same decision as :func:`check_dlpm_thm_a2_latency`) within
    ``(n-1) |W| (2U + 2Q_u) / a`` seconds.

    ``a`` defaults to the smallest :func:`capacity_lower_bound` over the workers (each on its
    sub-instance), ``n`` to the number of clients."""
    L, m = _params(instance, M)
    w = instance.weights
    U = dlpm_U(L, m, w.w_e, w.w_q)
    D = cluster_trace.workers
    n_clients = len(instance.clients) if n is None else n
    if a is None:
        caps = [
            capacity_lower_bound(sub, t)
            for k, t in enumerate(cluster_trace.traces)
            if (sub := cluster_trace.sub_instance(k)) is not None
        ]
        cap = min(caps) if caps else math.inf
    else:
        cap = float(a)
    bound = 0.0 if math.isinf(cap) else d2lpm_thm_a4(n_clients, Q_u, U, cap, D)
    worst, witness, checked = _first_admission_scan(instance, cluster_trace.merged_trace())
    return BoundReport(
        "D2LPM Thm A.4 (latency)", bound, worst, _holds(worst, bound), witness, checked,
        {"L_input": L, "M": m, "U": U, "Q_u": Q_u, "a": cap, "n": n_clients, "workers": D},
    )


def check_d2lpm_all(
    instance: Instance, cluster_trace: "ClusterTrace", Q_u: float, *, M: int | None = None
) -> Sequence[BoundReport]:
    """Thm 5.1, 5.2 and A.4 for a cluster run with local DLPM (quantum ``Q_u``), plus Thm A.3
    (printed and sound) if the worker traces have state logs."""
    out = [
        check_d2lpm_thm_5_1(instance, cluster_trace, Q_u, M=M),
        check_d2lpm_thm_5_2(instance, cluster_trace, Q_u, M=M),
        check_d2lpm_thm_a4_latency(instance, cluster_trace, Q_u, M=M),
    ]
    if cluster_trace.traces and all("states" in t.meta for t in cluster_trace.traces):
        out += [
            check_d2lpm_thm_a3(instance, cluster_trace, Q_u, M=M, printed=True),
            check_d2lpm_thm_a3(instance, cluster_trace, Q_u, M=M, printed=False),
        ]
    return out


# ---------------------------------------------------------------------------------------------
# VTC with preemption (ours; FastSwitch / vtc_fastswitch_preble.md §B.6 "a preemptive variant")


def vtc_preemptive_bound(
    L_input: float, M: float, K: int, B: int, margin: float, sigma: int = 0, w_e: float = 1.0, w_q: float = 2.0
) -> float:
    """Service gap of preemptive VTC (:class:`~prefixsched.reference.policies.preemptive.PreemptiveVTC`)
    as a function of the re-ranking interval ``K`` and the switch cost (derived here; not a
    published theorem).

    For clients f, g both backlogged on ``[t1, t2)``, client view::

        |W_f(t1,t2) - W_g(t1,t2)| <= 2 * ( max(margin, w_e * L_input) + w_q * min(M, B * (K + sigma)) )

    with ``B`` = ``max_running_requests`` (the most tokens one client's running requests decode
    per step), ``M`` the tokens of decode a batch can hold, and ``sigma`` the switch delay in
    steps: how many steps may start between a preemption and the moment the room it frees can be
    used (0 for drop mode and synchronous swapping, whose copies finish before the next step; for
    asynchronous swapping the steps a swap-out and then a swap-in overlap, :func:`switch_delay_steps`).

    Derivation. (A1) Counters equal client-view service: ``w_e * prompt`` at a request's first
    admission, ``w_q`` per output token (``charge="prompt"``, weight 1); a client backlogged over
    the interval is never lifted in it. So ``W_f - W_g`` over ``[t1, t2)`` is the change of
    ``c_f - c_g``, at most twice the largest ``|c_f - c_g|`` with both backlogged. Let ``X`` be the
    largest counter of a client with a running request minus the smallest counter of a backlogged
    one; a backlogged client that is not running has counter at most the smallest backlogged
    counter plus ``w_e * L_input`` (it was admitted last when it was smallest), so
    ``|c_f - c_g| <= max(X, w_e * L_input)``. (A2) A backlogged client's head that is not admitted
    is blocked by KV memory or running slots (not the pass budget), and (A3) preempting the running
    requests of the clients above the margin frees enough for it. Then at each re-rank step the
    policy either admits every head or preempts until no running client exceeds the blocked head's
    counter plus ``margin``: afterwards ``X <= max(margin, w_e * L_input)`` (admissions made in the
    pass add at most ``w_e * L_input`` above the smallest counter). Between two re-ranks (``K``
    steps, plus ``sigma`` steps while freed room is still being copied out) the largest running
    counter grows by decode only, at most ``w_q`` per running request and step and at most ``w_q
    * M`` in all; (A4) the smallest backlogged counter never decreases (the counter lift; victims
    rejoin above it: true for drop and synchronous swap, and for asynchronous swap while the
    minimum grows by less than ``margin`` during a copy; no engine retraction, which could requeue
    a low-counter request).

    Where it breaks (each checked or exhibited in ``papers/fastswitch/claims.md``): (A3) fails when
    the blocked head's room is held by clients within the margin, or is taken in the same pass by
    another client within the margin admitted first (the policy preempts nothing, or not enough, and
    the high-counter client keeps decoding: the plain VTC term ``w_q * M`` comes back); the actual
    view counts drop-mode recomputation as service (a client's victims are re-prefilled, so the
    gap grows with the number of preemptions); SGLang's decode retraction requeues requests
    outside the policy (A4); a pass budget below the head's prompt, with chunking, blocks it
    without memory pressure (A2).

    Returns cost units; raises :class:`InputError` for a negative or non-finite argument.
    """
    for name, v in (("K", K), ("B", B), ("sigma", sigma)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InputError(name, f"must be an integer >= 0, got {v!r}")
    lead = max(_positive("margin", margin), _positive("w_e", w_e) * _positive("L_input", L_input))
    return 2.0 * (lead + _positive("w_q", w_q) * min(_positive("M", M), float(B) * (K + sigma)))


def switch_delay_steps(trace: Trace) -> int:
    """``sigma`` of :func:`vtc_preemptive_bound` measured on ``trace``: the most steps that start
    while one swap-out is on the link plus the most that start while one swap-in is (the room a
    victim frees is usable once its swap-out ends, and a request resuming in it runs once its own
    swap-in ends). 0 without copies, and for synchronous copies, which lie between steps."""
    st = np.asarray(trace.step_start, dtype=np.float64)
    total = 0
    for kind in ("out", "in"):
        ev = [e for e in (trace.switches or []) if e.kind == kind]
        if not ev:
            continue
        a = np.array([e.t_start for e in ev])
        b = np.array([e.t_end for e in ev])
        n = np.searchsorted(st, b, side="left") - np.searchsorted(st, a, side="left")
        total += int(max(0, n.max()))
    return total


def check_vtc_preemptive_gap(
    instance: Instance, trace: Trace, *, K: int | None = None, margin: float | None = None, sigma: int | None = None,
    M: int | None = None, view: str = "client",
) -> BoundReport:
    """Scan ``trace`` for :func:`vtc_preemptive_bound`: the largest ``|W_f - W_g|`` over pairs both
    backlogged (:func:`~prefixsched.theory.metrics.max_service_gap`, client view by default).

    ``K`` and ``margin`` default to the trace's policy parameters (``interval``, ``margin``; an
    adaptive margin, ``None``, never exceeds ``w_e * L_input``, so ``w_e * L_input`` is used);
    ``sigma`` to :func:`switch_delay_steps`; ``M`` to ``kv_capacity_tokens``; ``B`` is
    ``max_running_requests``. ``params["premises"]`` lists premises the trace visibly breaks
    (engine retractions; drop-mode recomputation in the actual view).
    """
    pol = trace.policy
    L, m_tok = _params(instance, M, literal=True)
    w = instance.weights
    k = int(pol.get("interval", 1)) if K is None else int(K)
    mg = pol.get("margin") if margin is None else margin
    mg = w.w_e * L if mg is None else float(mg)
    sg = switch_delay_steps(trace) if sigma is None else int(sigma)
    B = instance.limits.max_running_requests
    bound = vtc_preemptive_bound(L, m_tok, k, B, mg, sg, w.w_e, w.w_q)
    gap = max_service_gap(trace, instance, view, per_pair=True)
    witness = {"pair": gap["pair"], "interval": gap["interval"]} if gap["pair"] else {}
    premises = []
    if any(x.end == "retract" for r in trace.requests if r.runs for x in r.runs):
        premises.append("engine retractions (A4)")
    if view == "actual" and any(x.end == "preempt" for r in trace.requests if r.runs for x in r.runs):
        premises.append("recomputation counted as service (actual view)")
    return BoundReport(
        "VTC with preemption (ours)", bound, float(gap["value"]), _holds(float(gap["value"]), bound), witness,
        len(gap["per_pair"]),
        {"L_input": L, "M": m_tok, "K": k, "B": B, "margin": mg, "sigma": sg, "view": view, "premises": premises},
    )
