"""Theorems as code (prefixsched.theory.bounds): formulas, checkers, and the empirical findings of
papers/dlpm/bounds_findings.md pinned as regression tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefixsched.errors import InputError
from prefixsched.reference.policies import create
import functools

from prefixsched.reference.simulator import simulate as _simulate
from prefixsched.testing.strategies import backlogged_instances, instances
from prefixsched.theory import bounds as B
from prefixsched.theory.cost import CostModel
from prefixsched.theory.metrics import backlog_intervals, max_service_gap, service_timeline
from prefixsched.theory.model import Instance, Limits, Request
from prefixsched.theory.trace import RequestRecord, Trace

simulate = functools.partial(_simulate, engine="ideal")  # the papers' model these tests state

TOK = CostModel.token_units()


def inst_of(spec, kv=7, running=1, prefill=1, page=1):
    """spec: list of (client, arrival, prompt tuple, output_len)."""
    reqs = tuple(Request(f"r{i}", c, a, tuple(p), o) for i, (c, a, p, o) in enumerate(spec))
    return Instance(reqs, TOK, Limits(kv_capacity_tokens=kv, max_prefill_tokens=prefill, max_running_requests=running, page_size=page))


# ---------------------------------------------------------------------------------------------
# formulas


def test_formulas_match_the_papers_statements():
    assert B.vtc_U(100, 30) == 100 and B.vtc_U(10, 30) == 60
    assert B.vtc_two_backlogged_bound(100, 30) == 200
    assert B.vtc_two_backlogged_bound(10, 30, w_e=1, w_q=2) == 120
    U = B.dlpm_U(100, 30)
    assert U == 160
    assert B.dlpm_thm_a1(50, U) == 160 and B.dlpm_thm_a1(500, U) == 500
    assert B.dlpm_thm_4_1(40, U) == 2 * (160 + 40)
    assert B.dlpm_thm_4_2(40, U) == 2 * 160 + 2 * 40
    assert B.dlpm_thm_a2_latency(3, 40, U, a=10) == pytest.approx(2 * 2 * 200 / 10)
    assert B.dlpm_thm_a2_latency(1, 40, U, a=10) == 0
    assert B.d2lpm_thm_a3(50, U, 4) == 4 * 160
    assert B.d2lpm_thm_5_1(40, U, 3) == 2 * 3 * 200
    assert B.d2lpm_thm_5_2(40, U, 3) == 2 * 200 * 3
    assert B.d2lpm_thm_a4(3, 40, U, 10, 2) == pytest.approx((3 - 1) * 2 * (2 * 160 + 2 * 40) / 10)


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: B.dlpm_U(-1, 3), "L_input"),
        (lambda: B.vtc_U(1, math.inf), "M"),
        (lambda: B.dlpm_thm_4_1(0, 5), "Q_u"),
        (lambda: B.dlpm_thm_a2_latency(0, 1, 1, 1), "n"),
        (lambda: B.dlpm_thm_a2_latency(2, 1, 1, 0), "a"),
        (lambda: B.d2lpm_thm_5_1(1, 1, 0), "n_workers"),
    ],
)
def test_bad_parameters_raise_input_error_naming_the_field(call, field):
    with pytest.raises(InputError) as e:
        call()
    assert e.value.field == field


def test_M_values_from_limits():
    inst = inst_of([("a", 0, (1, 2), 3), ("a", 0, (3,), 5), ("b", 0, (4, 5, 6), 2)], kv=20, running=2)
    assert B.max_input_tokens(inst) == 3
    assert B.kv_batch_tokens(inst) == 20
    assert B.batch_output_capacity(inst) == 5 + 3  # two largest outputs, under kv
    tight = inst_of([("a", 0, (1,), 9), ("a", 0, (2,), 9)], kv=10, running=2)
    assert B.batch_output_capacity(tight) == 10  # capped by kv


# ---------------------------------------------------------------------------------------------
# checkers on a hand-made trace (the detector fires on a known gap)


def _trace(records, starts, ends):
    return Trace({"name": "hand"}, records, starts, ends)


def _rec(rid, client, arrival, admit_step, starts, ends, prompt, out, cached=0):
    return RequestRecord(rid, client, arrival, starts[admit_step], ends[admit_step], ends[admit_step + out - 1],
                         admit_step, admit_step + out - 1, prompt, cached, prompt - cached, out)


def test_checkers_fire_on_a_trace_that_serves_one_backlogged_client_only():
    # a's three requests run back to back while b's request waits until the end
    starts = [0.0, 1.0, 2.0, 3.0]
    ends = [1.0, 2.0, 3.0, 4.0]
    recs = [
        _rec("r0", "a", 0.0, 0, starts, ends, 10, 1),
        _rec("r1", "a", 0.0, 1, starts, ends, 10, 1),
        _rec("r2", "a", 0.0, 2, starts, ends, 10, 1),
        _rec("r3", "b", 0.0, 3, starts, ends, 10, 1),
    ]
    inst = Instance(
        tuple(Request(r.id, r.client, 0.0, tuple(range(100 * i, 100 * i + 10)), 1) for i, r in enumerate(recs)),
        TOK, Limits(kv_capacity_tokens=11, max_running_requests=1),
    )
    t = _trace(recs, starts, ends)
    # a backlogged on [0, 2) (r2 admitted at 2), b on [0, 3): over (0, 2] a gets 2 * (10 + 2)
    r = B.check_vtc_two_backlogged(inst, t, M=1)
    assert r.worst == 24 and r.bound == 2 * max(10, 2) and not r.holds
    assert r.witness == {"pair": ("a", "b"), "interval": (0.0, 2.0)} and "VIOLATED" in str(r)
    r41 = B.check_dlpm_thm_4_1(inst, t, Q_u=1, M=0)
    assert r41.worst == 24 and r41.bound == 2 * (10 + 1) and not r41.holds
    # one-sided 4.2 scans b's whole backlog [0, 3): a gets 3 * 12 = 36 while b gets nothing
    r42 = B.check_dlpm_thm_4_2(inst, t, Q_u=1, M=0)
    assert r42.worst == 36 and r42.witness["backlogged"] == "b" and not r42.holds
    ok = B.check_dlpm_thm_4_1(inst, t, Q_u=100, M=1)
    assert ok.holds and "holds" in str(ok)


def test_thm_4_2_scan_matches_brute_force_over_every_interval():
    inst = make_three_client_instance()
    t = simulate(inst, create("lpm"))
    times, clients, cum = service_timeline(t, inst, "actual")
    ends = sorted(set(times.tolist()))

    def W(c, x):  # service of c by time x (steps ending <= x)
        k = clients.index(c)
        idx = np.searchsorted(times, x, side="right")
        return 0.0 if idx == 0 else float(cum[idx - 1, k])

    brute = 0.0
    for f, ivs in backlog_intervals(t).items():
        for t0, t1 in ivs:
            pts = [t0] + [x for x in ends if t0 < x <= t1]
            for g in clients:
                if g == f:
                    continue
                for i, a in enumerate(pts):
                    for b in pts[i + 1 :]:
                        brute = max(brute, (W(g, b) - W(g, a)) - (W(f, b) - W(f, a)))
    rep = B.check_dlpm_thm_4_2(inst, t, Q_u=1.0)
    assert rep.checked > 0
    assert rep.worst == pytest.approx(brute)


def make_three_client_instance():
    spec = [("a", 0, (1, 2, 3, 4), 3), ("a", 0, (1, 2, 3, 5), 2), ("b", 0, (9, 8), 4), ("b", 1, (9, 8, 7), 1),
            ("c", 2, (1, 2, 6), 2), ("a", 3, (1, 2), 2), ("c", 3, (5,), 3), ("b", 6, (9,), 2)]
    return inst_of(spec, kv=14, running=2, prefill=3)


def test_vtc_check_agrees_with_metrics_max_service_gap():
    inst = make_three_client_instance()
    t = simulate(inst, create("vtc"))
    rep = B.check_vtc_two_backlogged(inst, t)
    gap = max_service_gap(t, inst, "client")
    assert rep.worst == gap["value"] and rep.checked >= 1


def test_state_log_required_for_counter_checks():
    inst = make_three_client_instance()
    t = simulate(inst, create("dlpm", quantum=5))
    with pytest.raises(InputError) as e:
        B.check_dlpm_thm_a1(inst, t, 5.0)
    assert e.value.field == "trace.meta.states"


def test_vacuous_report_says_so():
    inst = inst_of([("a", 0, (1,), 1)])
    t = simulate(inst, create("fcfs"))
    r = B.check_vtc_two_backlogged(inst, t)
    assert r.checked == 0 and r.holds and "vacuous" in str(r)


# ---------------------------------------------------------------------------------------------
# findings (papers/dlpm/bounds_findings.md), pinned


def test_finding_thm_a1_printed_bound_fails_sound_bound_holds():
    """Thm A.1 as printed (max(Q_u, U)) is false: client c1 receives W = 18 with K = 0 refills
    while max(Q_u, U) = 10; the identity W = K*Q_u + q(t1) - q(t2) gives Q_u + U = 20."""
    inst = inst_of([("c0", 0, (1, 2), 1), ("c1", 0, (1, 2), 4), ("c1", 0, (1, 2), 4), ("c1", 0, (1, 2), 4)], kv=7)
    U = B.dlpm_U(B.max_input_tokens(inst), B.batch_output_capacity(inst))
    assert U == 10
    t = simulate(inst, create("dlpm", quantum=U), record_states=True)
    printed = B.check_dlpm_thm_a1(inst, t, U)
    sound = B.check_dlpm_thm_a1(inst, t, U, printed=False)
    assert not printed.holds and printed.worst == 18 and printed.witness["K"] == 0
    assert sound.holds and sound.bound == 20
    # even with the literal M = kv_capacity_tokens (U = 16) the printed bound fails
    assert not B.check_dlpm_thm_a1(inst, t, U, M=B.kv_batch_tokens(inst)).holds


def test_finding_vtc_max_form_needs_M_to_count_prompts():
    """VTC's 2*max(w_e*L, w_q*M) with an output-only M is false (24 > 16); with
    M = kv_capacity_tokens (prompt + outputs in memory) it holds."""
    P0, P1 = (10000, 100000, 100000, 100000, 100000), (10000, 100000, 100000, 100002, 100000, 100000)
    spec = [("c0", 2, P0, 4), ("c0", 2, P1, 4), ("c0", 2, (10000,), 4),
            ("c1", 2, (20000, 20001, 20002, 20003), 4), ("c1", 2, (20000, 20001, 20002, 20003), 4),
            ("c1", 2, (20000, 20001, 20002, 20003), 4)]
    inst = inst_of(spec, kv=11)
    t = simulate(inst, create("vtc"), record_states=True)
    tight = B.check_vtc_two_backlogged(inst, t, M=B.batch_output_capacity(inst))
    assert not tight.holds and tight.worst == 24 and tight.bound == 16
    assert B.check_vtc_two_backlogged(inst, t).holds  # default M = kv_capacity_tokens


# ---------------------------------------------------------------------------------------------
# properties: the reference DLPM and VTC satisfy their (sound) statements


Q_FACTORS = st.sampled_from([0.25, 0.5, 1.0, 2.0])
WORKLOADS = st.one_of(instances(max_clients=3, max_requests_per_client=6), backlogged_instances(max_requests_per_client=8))


@given(inst=WORKLOADS, f=Q_FACTORS)
def test_dlpm_satisfies_thm_4_1_4_2_a1_sound_a2_and_its_counter_invariants(inst, f):
    U = B.dlpm_U(B.max_input_tokens(inst), B.batch_output_capacity(inst))
    Q = f * U
    t = simulate(inst, create("dlpm", quantum=Q), record_states=True)
    for rep in (
        B.check_dlpm_thm_4_1(inst, t, Q),
        B.check_dlpm_thm_4_2(inst, t, Q),
        B.check_dlpm_thm_a1(inst, t, Q, printed=False),
        B.check_dlpm_thm_a2_latency(inst, t, Q),
        B.check_dlpm_deficit_range(inst, t, Q),
        B.check_dlpm_accounting(inst, t, Q),
    ):
        assert rep.holds, str(rep)


@given(inst=WORKLOADS)
def test_vtc_satisfies_two_backlogged_bound_and_counter_spread(inst):
    t = simulate(inst, create("vtc"), record_states=True)
    for rep in (B.check_vtc_two_backlogged(inst, t), B.check_vtc_counter_spread(inst, t)):
        assert rep.holds, str(rep)


@given(inst=WORKLOADS)
def test_vtc_checker_worst_equals_the_metric_for_any_policy(inst):
    # the premise scan and the metric agree for any policy (no hidden re-computation)
    t = simulate(inst, create("fcfs"))
    assert B.check_vtc_two_backlogged(inst, t).worst == max_service_gap(t, inst, "client")["value"]


# ---------------------------------------------------------------------------------------------
# D²LPM (clusters)


def _cluster(inst, spec, D, Q, record=False):
    from prefixsched.reference.cluster import simulate_cluster

    return simulate_cluster(inst, lambda: create("dlpm", quantum=Q), spec, workers=D, record_states=record, engine="ideal")


def test_d2lpm_thm_5_1_5_2_scans_match_brute_force_over_every_interval():
    from prefixsched.theory.metrics import cluster_service_timeline

    inst = make_three_client_instance()
    ct = _cluster(inst, "round-robin", 2, 3.0)
    times, clients, cum = cluster_service_timeline(ct.traces, inst, clients=inst.clients)
    ends = times.tolist()

    def W(c, x):
        idx = np.searchsorted(times, x, side="right")
        return 0.0 if idx == 0 else float(cum[idx - 1, clients.index(c)])

    backlog = backlog_intervals(ct.merged_trace())
    b51 = b52 = 0.0
    for f, ivs in backlog.items():
        for t0, t1 in ivs:
            pts = [t0] + [x for x in ends if t0 < x <= t1]
            for g in clients:
                if g == f:
                    continue
                for i, a in enumerate(pts):
                    for b in pts[i + 1 :]:
                        d = (W(g, b) - W(g, a)) - (W(f, b) - W(f, a))
                        b52 = max(b52, d)
                        # both backlogged on [a, b)?
                        if any(s <= a and b <= e for s, e in backlog[g]):
                            b51 = max(b51, abs(d))
    r51 = B.check_d2lpm_thm_5_1(inst, ct, 1.0)
    r52 = B.check_d2lpm_thm_5_2(inst, ct, 1.0)
    assert r51.checked > 0 and r52.checked > 0
    assert r51.worst == pytest.approx(b51) and r52.worst == pytest.approx(b52)
    assert b52 > 0


def test_d2lpm_one_worker_checks_equal_the_dlpm_checks():
    inst = make_three_client_instance()
    Q = 5.0
    ct = _cluster(inst, "d2lpm", 1, Q, record=True)
    t = ct.traces[0]
    assert B.check_d2lpm_thm_5_1(inst, ct, Q).worst == pytest.approx(B.check_dlpm_thm_4_1(inst, t, Q).worst)
    assert B.check_d2lpm_thm_5_2(inst, ct, Q).worst == pytest.approx(B.check_dlpm_thm_4_2(inst, t, Q).worst)
    assert B.check_d2lpm_thm_a4_latency(inst, ct, Q).worst == pytest.approx(B.check_dlpm_thm_a2_latency(inst, t, Q).worst)
    a3 = B.check_d2lpm_thm_a3(inst, ct, Q, printed=False)
    assert a3.bound == pytest.approx(B.check_dlpm_thm_a1(inst, t, Q, printed=False).bound)


def test_d2lpm_checks_fire_when_one_worker_serves_a_backlogged_client_alone():
    # the Thm A.5 counterexample (pure locality, Q_w = inf): Thm 5.1 and 5.2 are violated
    import dataclasses

    from prefixsched.reductions.families import d2lpm_infinite_qw

    inst = d2lpm_infinite_qw(128, prefix=256, suffix=64, output_len=1)
    inst = dataclasses.replace(inst, limits=dataclasses.replace(inst.limits, max_running_requests=1))
    ct = _cluster(inst, "d2lpm:inf", 4, 500.0)
    r51, r52 = B.check_d2lpm_thm_5_1(inst, ct, 500.0), B.check_d2lpm_thm_5_2(inst, ct, 500.0)
    assert not r51.holds and not r52.holds
    assert r52.witness["backlogged"] == "f" and r52.witness["other"] == "g"
    assert "VIOLATED" in str(r51)


@given(inst=WORKLOADS, f=Q_FACTORS, D=st.integers(2, 3), qw=st.sampled_from([0.5, 2.0]))
def test_d2lpm_satisfies_thm_5_1_5_2_a3_sound_a4(inst, f, D, qw):
    U = B.dlpm_U(B.max_input_tokens(inst), B.batch_output_capacity(inst))
    Q = f * U
    ct = _cluster(inst, f"d2lpm:{qw * U}", D, Q, record=True)
    reps = B.check_d2lpm_all(inst, ct, Q)
    assert len(reps) == 5
    for rep in reps:
        if "printed" in rep.name:
            continue  # Thm A.1's printed constant is false (INV-16); A.3 inherits it
        assert rep.holds, str(rep)
