"""Adversarial families: every growth law of ``prefixsched.reductions.families`` measured on 3 sizes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from prefixsched.errors import InputError
from prefixsched.reductions.families import (
    FAMILIES,
    d2lpm_infinite_qw,
    fcfs_no_reuse,
    klpm_definition4,
    lpm_starvation,
    prev_greedy_order,
    vtc_locality,
)
from prefixsched.theory.exact import Status, solve
from prefixsched.theory.exact.greedy import greedy_order
from prefixsched.theory.model import Instance
from prefixsched.theory.sequential import SeqInstance, evaluate


def _simulate(inst: Instance, spec: str, **params):
    from prefixsched.reference.policies import create
    from prefixsched.reference.simulator import simulate

    return simulate(inst, create(spec, **params), engine="ideal")  # the families are stated for the papers' model


def _ttft_of(trace, rid: str) -> float:
    from prefixsched.theory.metrics import request_latencies

    ids = [r.id for r in trace.requests]
    return float(request_latencies(trace)["ttft"][ids.index(rid)])


# ---------------------------------------------------------------------------------------------
# registry


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_registry_builds_valid_deterministic_instances(name: str) -> None:
    builder, desc = FAMILIES[name]
    assert desc
    a, b = builder(3), builder(3)
    assert isinstance(a, Instance) and a == b
    assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)
    assert Instance.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    assert a.cost_model.prefill_per_token_s == 1 and a.cost_model.prefill_base_s == 0


def test_bad_parameters_raise_input_error() -> None:
    with pytest.raises(InputError):
        lpm_starvation(0)
    with pytest.raises(InputError):
        lpm_starvation(3, spacing=16, suffix=8)
    with pytest.raises(InputError):
        fcfs_no_reuse(4, groups=1)
    with pytest.raises(InputError):
        klpm_definition4(u=10, d=5, s=-1, k=2, users=3)
    with pytest.raises(InputError):
        prev_greedy_order(fcfs_no_reuse(2), "lpm", ties="random")


# ---------------------------------------------------------------------------------------------
# LPM starvation (simulator)


def test_lpm_starvation_grows_linearly_fcfs_bounded() -> None:
    P, s, C, delta = 64, 8, 32, 4
    lpm, fcfs = [], []
    for n in (4, 16, 64):
        inst = lpm_starvation(n, prefix=P, suffix=s, cold_len=C, spacing=delta)
        lpm.append(_ttft_of(_simulate(inst, "lpm"), "cold"))
        fcfs.append(_ttft_of(_simulate(inst, "fcfs"), "cold"))
        assert lpm[-1] == P + n * s + C - delta / 2  # docstring formula, exact in token units
        assert fcfs[-1] == P + s + C - delta / 2
    assert lpm[0] < lpm[1] < lpm[2]
    assert (lpm[2] - lpm[1]) / (64 - 16) == s  # slope s per hot request
    assert len(set(fcfs)) == 1


def test_lpm_starvation_k_lpm_stays_bounded() -> None:
    vals = {_ttft_of(_simulate(lpm_starvation(n), "k-lpm", k=2), "cold") for n in (4, 16, 64)}
    assert len(vals) == 1  # the oldest-request slot serves the cold request within one cycle


# ---------------------------------------------------------------------------------------------
# FCFS without reuse (prev model, exact optimum)


def test_fcfs_no_reuse_ratio_to_exact_optimum_grows_with_L() -> None:
    g, q = 2, 3
    ratios = []
    for L in (2, 8, 32):
        inst = fcfs_no_reuse(L, groups=g, per_group=q)
        si = SeqInstance.from_instance(inst)
        fcfs = evaluate(si, greedy_order(si, "prev", "fcfs"), "prev").makespan
        lpm = evaluate(si, greedy_order(si, "prev", "lpm"), "prev").makespan
        opt = solve(inst, model="prev", objective="makespan", solver="dp")
        assert opt.status is Status.OPTIMAL
        assert fcfs == g * q * (L + 1)
        assert opt.objective == g * L + g * q == lpm
        ratios.append(fcfs / opt.objective)
        assert math.isclose(ratios[-1], q * (L + 1) / (L + q))
    assert ratios[0] < ratios[1] < ratios[2] < q


# ---------------------------------------------------------------------------------------------
# VTC loses locality (simulator)


def test_vtc_locality_throughput_ratio_falls() -> None:
    from prefixsched.theory.metrics import hit_rate, throughput

    ratios = []
    for n in (2, 4, 8):
        inst = vtc_locality(n)
        tv, tl = _simulate(inst, "vtc"), _simulate(inst, "lpm")
        ratios.append(throughput(tv)["tokens_per_s"] / throughput(tl)["tokens_per_s"])
        assert math.isclose(ratios[-1], 2 / (n + 1))
        assert hit_rate(tv) == 0.0 and hit_rate(tl) > 0.0
    assert ratios[0] > ratios[1] > ratios[2]


# ---------------------------------------------------------------------------------------------
# D2LPM with infinite worker quantum (Thm A.5)


def test_d2lpm_infinite_qw_instance_shape() -> None:
    inst = d2lpm_infinite_qw(5, prefix=32, suffix=4)
    f = [r for r in inst.requests if r.client == "f"]
    g = [r for r in inst.requests if r.client == "g"]
    assert len(f) == len(g) == 5
    assert all(r.arrival == 0 for r in inst.requests)
    assert all(r.prompt[:32] == f[0].prompt[:32] for r in f)
    assert len({r.prompt[0] for r in g}) == 5 and not {r.prompt[0] for r in g} & {f[0].prompt[0]}
    assert {len(r.prompt) for r in inst.requests} == {36}


def _a5_cluster(n: int, spec: str):
    """Thm A.5's instance on 4 workers with one running slot each (so queues build up), local
    DLPM with Q_u = 500; returns the cluster run and the Thm 5.1 report."""
    import dataclasses

    from prefixsched.reference.cluster import simulate_cluster
    from prefixsched.reference.policies import create
    from prefixsched.theory.bounds import check_d2lpm_thm_5_1

    inst = d2lpm_infinite_qw(n, prefix=256, suffix=64, output_len=1)
    inst = dataclasses.replace(inst, limits=dataclasses.replace(inst.limits, max_running_requests=1))
    ct = simulate_cluster(inst, lambda: create("dlpm", quantum=500), spec, workers=4, engine="ideal")
    return ct, check_d2lpm_thm_5_1(inst, ct, 500.0)


def test_d2lpm_infinite_qw_gap_grows_on_cluster() -> None:
    """Thm A.5: with Q_w = inf all of f goes to the worker holding its prefix, g spreads over the
    others, and the service gap between the two backlogged clients grows linearly with n until
    it exceeds Thm 5.1's bound 2|W|(U + Q_u); with a finite Q_w it stays within the bound."""
    gaps = {}
    for n in (8, 32, 128):
        ct, rep = _a5_cluster(n, "d2lpm:inf")
        assert {ct.dispatch[f"f{i}"] for i in range(n)} == {0}  # pure locality: f pinned to one worker
        assert {ct.dispatch[f"g{i}"] for i in range(n)} == {1, 2, 3}
        assert rep.checked == 1 and rep.witness["pair"] == ("g", "f")
        gaps[n] = rep.worst
        _ct, fin = _a5_cluster(n, "d2lpm:2000")
        assert fin.holds and fin.checked == 1, str(fin)
    assert gaps[8] < gaps[32] < gaps[128]
    assert gaps[128] > 3 * gaps[32] > 9 * gaps[8]  # linear growth (about 129 cost units per request)
    _ct, rep = _a5_cluster(128, "d2lpm:inf")
    assert not rep.holds and rep.worst > 2 * rep.bound


# ---------------------------------------------------------------------------------------------
# k-LPM Definition 4 (prev model, greedy orders)


def test_definition4_shape() -> None:
    u, d, s, k, users = 10, 4, 3, 3, 5
    inst = klpm_definition4(u, d, s, k, users, seed=7)
    assert len(inst.requests) == users * k
    assert [r.arrival for r in inst.requests] == [i * (d + s) for i in range(users * k)]
    si = SeqInstance.from_instance(inst)
    for i, a in enumerate(inst.requests):
        for j, b in enumerate(inst.requests):
            if i != j:
                assert si.lcp[i][j] == (u if a.client == b.client else 0)
    assert inst != klpm_definition4(u, d, s, k, users, seed=8)  # the shuffle depends on the seed


def test_prev_greedy_order_matches_theory_greedy_with_oldest_ties() -> None:
    si = SeqInstance.from_instance(klpm_definition4(20, 5, 8, 3, 8, seed=3))
    for pol, k in (("fcfs", None), ("lpm", None), ("klpm", 2), ("klpm", 3)):
        assert prev_greedy_order(si, pol, k) == greedy_order(si, "prev", pol, k)


def _def4_max_ttft(inst: Instance, k: int, ties: str) -> dict[str, float]:
    si = SeqInstance.from_instance(inst)
    return {
        name: evaluate(si, prev_greedy_order(si, pol, kk, ties=ties), "prev").max_ttft
        for name, pol, kk in (("fcfs", "fcfs", None), ("lpm", "lpm", None), ("klpm", "klpm", k))
    }


def test_definition4_klpm_beats_fcfs_and_lpm_with_newest_ties() -> None:
    """Corollary 3's regime 0 < s < u, k > 1 at u=100, d=20, s=20, k=4, 25 users (100 queries):
    with LPM ties to the newest query, k-LPM < min(FCFS, LPM) on every seed."""
    for seed in range(4):
        r = _def4_max_ttft(klpm_definition4(100, 20, 20, 4, 25, seed=seed), 4, "newest")
        assert r["klpm"] < min(r["fcfs"], r["lpm"]), (seed, r)


def test_definition4_oldest_ties_make_lpm_best() -> None:
    """The same point with the project's LPM rule (ties to the oldest): LPM beats k-LPM, which
    beats FCFS (averaged over 4 seeds): Corollary 3 does not hold for this tie rule."""
    rs = [_def4_max_ttft(klpm_definition4(100, 20, 20, 4, 25, seed=seed), 4, "oldest") for seed in range(4)]
    avg = {key: float(np.mean([r[key] for r in rs])) for key in rs[0]}
    assert avg["lpm"] < avg["klpm"] < avg["fcfs"], avg


def test_definition4_fcfs_overload_grows_with_users() -> None:
    """s < u: FCFS pays u + d per query against a gap d + s, so its max TTFT grows ~ N(u - s)."""
    vals = [_def4_max_ttft(klpm_definition4(100, 20, 20, 4, users, seed=0), 4, "oldest")["fcfs"] for users in (5, 10, 20)]
    assert vals[0] < vals[1] < vals[2]
    n = [5 * 4, 10 * 4, 20 * 4]
    for v, N in zip(vals, n):  # backlog after N queries is at most N*(u - s) + u + d
        assert v <= N * (100 - 20) + 120
