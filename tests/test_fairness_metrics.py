"""Issue #9's fairness figures: windowed and backlogged-only Jain, gaps against the theorems'
bounds, the per-client table, and their place in summarize(). Hand-computed on token-unit runs."""

from __future__ import annotations

import numpy as np
import pytest

from prefixsched.errors import InputError
from prefixsched.reference.policies import create
from prefixsched.reference.simulator import simulate
from prefixsched.reference.workloads import make_workload
from prefixsched.theory import bounds as B
from prefixsched.theory.cost import CostModel
from prefixsched.theory.metrics import (
    backlogged_jain,
    gap_bounds,
    jain_windows,
    max_service_gap,
    per_client_table,
    summarize,
    windowed_jain,
)
from prefixsched.theory.model import Instance, Limits, Request


def _two_floods() -> Instance:
    """c0 and c1 send three 10-token, 1-output requests each at t = 0; one request runs at a time,
    so every step takes 10 time units (token units, no decode time) and serves 12 cost units."""
    reqs = [Request(f"a{i}", "c0", 0.0, tuple(100 * i + k for k in range(10)), 1) for i in range(3)]
    reqs += [Request(f"b{i}", "c1", 0.0, tuple(1000 + 100 * i + k for k in range(10)), 1) for i in range(3)]
    return Instance(tuple(reqs), cost_model=CostModel.token_units(), limits=Limits(kv_capacity_tokens=100, max_running_requests=1))


def test_jain_windows():
    assert jain_windows(0.0, 60.0, 20.0, 10.0).tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert jain_windows(5.0, 100.0, 60.0).tolist() == [5.0, 20.0, 35.0]  # quarter-window step
    assert jain_windows(0.0, 30.0, 60.0).tolist() == [0.0]  # shorter than a window: one window
    assert jain_windows(1.0, 1.0, 60.0).size == 0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError):
            jain_windows(0.0, 10.0, bad)
        with pytest.raises(InputError):
            jain_windows(0.0, 10.0, 5.0, bad)


def test_windowed_and_backlogged_jain_by_hand():
    inst = _two_floods()
    fcfs = simulate(inst, create("fcfs"))
    vtc = simulate(inst, create("vtc"))
    assert [r.first_token for r in fcfs.requests] == [10, 20, 30, 40, 50, 60]
    assert [r.first_token for r in vtc.requests] == [10, 30, 50, 20, 40, 60]
    # FCFS, windows of 20 every 10: [0,20) c0 24 / c1 0 -> 0.5; [10,30) -> 0.5; [20,40) 12/12 -> 1;
    # from 30 on c0 has nothing in the system: single-client windows are skipped
    w = windowed_jain(fcfs, inst, window_s=20.0, step_s=10.0)
    assert (w["windows"], w["min"], w["min_window"]) == (3, 0.5, [0.0, 20.0])
    assert w["mean"] == pytest.approx(2 / 3)
    # backlogged throughout: c0 waits on [0, 20), c1 on [0, 50): only [0, 20) has both
    b = backlogged_jain(fcfs, inst, window_s=20.0, step_s=10.0)
    assert (b["windows"], b["mean"], b["min"]) == (1, 0.5, 0.5)
    # VTC alternates: both backlogged on [0, 40), equal service in every window
    bv = backlogged_jain(vtc, inst, window_s=20.0, step_s=10.0)
    assert (bv["windows"], bv["mean"], bv["min"]) == (3, 1.0, 1.0)
    assert windowed_jain(vtc, inst, window_s=20.0, step_s=10.0)["min"] == 1.0
    # the actual view charges extend tokens: nothing is shared here, so the figures agree
    assert backlogged_jain(fcfs, inst, "actual", window_s=20.0, step_s=10.0)["mean"] == 0.5


def test_gap_bounds_ratio_against_vtc_and_dlpm():
    inst = _two_floods()
    tr = simulate(inst, create("fcfs"))
    g = gap_bounds(tr, inst)
    L, M = 10, 100
    assert g["vtc"]["bound"] == B.vtc_two_backlogged_bound(L, M) == 400.0
    # both backlogged on [0, 20): c0 is served at 10 and 20 (24 cost units), c1 nothing
    assert g["vtc"]["gap"] == max_service_gap(tr, inst, "client")["value"] == 24.0
    assert g["vtc"]["ratio"] == pytest.approx(24 / 400) and g["vtc"]["M"] == M
    assert g["vtc"]["pair"] == ["c0", "c1"] and g["vtc"]["period"] == [0.0, 20.0]
    assert g["dlpm"] is None
    q = 5.0
    d = gap_bounds(simulate(inst, create("dlpm", quantum=q)), inst, quantum=q)["dlpm"]
    U = B.dlpm_U(L, B.batch_output_capacity(inst))
    assert d["bound"] == B.dlpm_thm_4_1(q, U) and d["U"] == U and d["ratio"] == pytest.approx(d["gap"] / d["bound"])
    # the same as the checkers report
    assert B.check_vtc_two_backlogged(inst, tr).ratio == pytest.approx(g["vtc"]["ratio"])


def test_per_client_table():
    inst = _two_floods()
    tr = simulate(inst, create("fcfs"))
    t = per_client_table(tr, inst)
    assert list(t) == ["c0", "c1"]
    assert t["c0"]["demand_share"] == t["c1"]["demand_share"] == 0.5
    assert t["c0"]["requests"] == 3 and t["c1"]["longest_wait_s"] == 50.0 and t["c0"]["longest_wait_s"] == 20.0
    assert t["c1"]["ttft_p50_s"] == 50.0 and t["c1"]["ttft_p99_s"] == pytest.approx(59.8)
    # both clients are active only until c0's last finish (30): FCFS delivered only c0's 36 by then
    assert (t["c0"]["service_share"], t["c1"]["service_share"]) == (1.0, 0.0)
    v = per_client_table(simulate(inst, create("vtc")), inst)  # VTC, window [0, 50]: c0 36, c1 24
    assert v["c0"]["service_share"] == pytest.approx(0.6)
    assert sum(v["service_share"] for v in t.values()) == pytest.approx(1.0)


def test_summarize_keeps_its_keys_and_adds_the_new_figures():
    inst = make_workload("s1", clients=3, n_requests=200)
    tr = simulate(inst, create("dlpm", quantum=4000))
    old = summarize(tr, inst.weights)
    new = summarize(tr, inst, window_s=10.0)
    assert old["gap_bounds"] is None and new["gap_bounds"]["dlpm"]["Q_u"] == 4000.0
    for k in ("jain", "jain_actual", "jain_window", "max_service_gap", "per_client", "hit_rate", "ttft_p99"):
        assert old[k] == new[k], k
    assert new["jain_windowed"]["window_s"] == 10.0 and new["jain_windowed"]["windows"] > 1
    assert 0 < new["jain_windowed"]["min"] <= new["jain_windowed"]["mean"] <= 1
    assert set(new["per_client_table"]) == set(inst.clients)
    assert "whole window" in new["jain_scope"]
    np.testing.assert_allclose(sum(v["demand_share"] for v in new["per_client_table"].values()), 1.0)
    # a weighted DLPM has no unweighted bound to compare with
    wt = simulate(inst, create("dlpm", quantum=4000, weights={"c0": 2.0}))
    assert summarize(wt, inst)["gap_bounds"]["dlpm"] is None


def test_plot_draws_the_worst_pair_against_the_vtc_envelope():
    from prefixsched.plots import plot_simulation

    inst = _two_floods()
    traces = [simulate(inst, create(p)) for p in ("fcfs", "vtc")]
    fig = plot_simulation(inst, ["fcfs", "vtc"], traces)
    axes = fig.axes
    assert len(axes) == 6 and "VTC bound" in axes[2].get_title()
    ratio = gap_bounds(traces[0], inst)["vtc"]["ratio"]
    assert f"{ratio:.2f} x bound" in axes[2].get_legend().get_title().get_text()
    assert len(plot_simulation(inst, ["fcfs"], traces[:1], envelope=False).axes) == 2


def test_cluster_summary_has_the_windowed_figures():
    from prefixsched.reference.cluster import simulate_cluster
    from prefixsched.theory.metrics import summarize_cluster

    inst = _two_floods()
    one = summarize(simulate(inst, create("vtc")), inst, window_s=60.0)
    ct = simulate_cluster(inst, "vtc", "round-robin", workers=1)
    s = summarize_cluster(ct)
    assert s["gap_bounds"] is None
    for k in ("jain_windowed", "jain_backlogged"):
        assert s[k]["mean"] == pytest.approx(one[k]["mean"]) and s[k]["windows"] == one[k]["windows"]
    assert s["per_client_table"] == one["per_client_table"]
    two = summarize_cluster(simulate_cluster(inst, "vtc", "client-round-robin", workers=2))
    assert sum(v["service_share"] for v in two["per_client_table"].values()) == pytest.approx(1.0)
