"""Tests of the CP-SAT backend (prefixsched.theory.exact.cpsat): hand optima, agreement with brute
force on random tiny instances, status discipline on timeouts, infeasible decisions, refusals."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixsched.errors import InputError, SolverLimitError
from prefixsched.theory.exact import solve
from prefixsched.theory.exact.cpsat import MAX_N, lower_bound, solve_cpsat
from prefixsched.theory.exact.result import Status
from prefixsched.theory.sequential import SeqInstance, evaluate, objective_value

OPT_OBJECTIVES = ("max-ttft", "mean-ttft", "makespan")


def _brute(inst: SeqInstance, model: str, objective: str, bound: float | None = None):
    from prefixsched.theory.exact import brute

    return brute.solve(inst, model, objective, bound=bound)


def _check_replay(inst: SeqInstance, res, model: str, objective: str) -> None:
    sched = evaluate(inst, res.order, model)
    assert objective_value(sched, objective) == pytest.approx(res.objective, abs=1e-9)
    assert res.ttft == pytest.approx(sched.ttft)


# ---------------------------------------------------------------------------------------------
# hand instances with hand-computed optima


def test_single_query():
    inst = SeqInstance.simple([(1, 2, 3)], [5])
    for obj, want in (("max-ttft", 3.0), ("mean-ttft", 3.0), ("makespan", 8.0)):
        res = solve_cpsat(inst, "prev", obj, workers=1)
        assert res.status is Status.OPTIMAL and res.optimal
        assert res.objective == want and res.bound == want and res.gap == 0.0
        assert res.order == ("q0",) and res.proof == "cpsat"


def test_lpm_pairs_shared_prefixes_all_at_zero():
    # A and B share 3 tokens, C is unrelated. Min total work 4+1+1 = 6 needs A, B adjacent;
    # min mean TTFT serves the 1-token C first: TTFTs 1, 5, 6 -> 4.
    inst = SeqInstance.simple([(1, 2, 3, 4), (1, 2, 3, 5), (9,)], [0, 0, 0])
    want = {"max-ttft": 6.0, "makespan": 6.0, "mean-ttft": 4.0}
    for model in ("prev", "radix"):
        for obj, v in want.items():
            res = solve_cpsat(inst, model, obj, workers=1)
            assert res.status is Status.OPTIMAL
            assert res.objective == pytest.approx(v)
            _check_replay(inst, res, model, obj)
    res = solve_cpsat(inst, "prev", "mean-ttft", workers=1)
    assert res.order[0] == "q2"


def test_prev_and_radix_differ_with_arrivals():
    # P=(1,2,3,4)@0, Q=(5,6)@4, R=(1,2,3,7)@6. prev: P,R,Q gives makespan 9 (P,Q,R loses R's
    # reuse: 10); radix: P,Q,R keeps P's prefix in the cache: makespan 7.
    inst = SeqInstance.simple([(1, 2, 3, 4), (5, 6), (1, 2, 3, 7)], [0, 4, 6])
    prev = solve_cpsat(inst, "prev", "makespan", workers=1)
    radix = solve_cpsat(inst, "radix", "makespan", workers=1)
    assert prev.status is Status.OPTIMAL and prev.objective == 9.0
    assert prev.order == ("q0", "q2", "q1")
    assert radix.status is Status.OPTIMAL and radix.objective == 7.0
    assert radix.order == ("q0", "q1", "q2")
    # max TTFT: P itself needs 4; P,Q,R meets 4 in both models
    for model in ("prev", "radix"):
        res = solve_cpsat(inst, model, "max-ttft", workers=1)
        assert res.status is Status.OPTIMAL and res.objective == 4.0


def test_fractional_c_attn_and_arrival_are_scaled_exactly():
    # c = 0.5, |x| = 2: cost (1 + 1) * 2 = 4; arrival 0.25 -> finish 4.25
    inst = SeqInstance.simple([(1, 2)], [0.25], c_attn=0.5)
    res = solve_cpsat(inst, "prev", "makespan", workers=1)
    assert res.status is Status.OPTIMAL and res.objective == pytest.approx(4.25)
    res = solve_cpsat(inst, "radix", "max-ttft", workers=1)
    assert res.objective == pytest.approx(4.0)


def test_non_integrable_data_is_refused():
    inst = SeqInstance.simple([(1, 2)], [0], c_attn=1 / 3)
    with pytest.raises(InputError) as e:
        solve_cpsat(inst, "prev", "max-ttft")
    assert e.value.field == "c_attn"


def test_identical_prompts_rule_keeps_optimum():
    # three identical prompts and one other; prev: identical ones back to back cost 0
    inst = SeqInstance.simple([(1, 2, 3), (7, 8), (1, 2, 3), (1, 2, 3)], [0, 0, 1, 2])
    for model in ("prev", "radix"):
        for obj in OPT_OBJECTIVES:
            res = solve_cpsat(inst, model, obj, workers=1)
            want = _brute(inst, model, obj).objective
            assert res.status is Status.OPTIMAL and res.objective == pytest.approx(want)


# ---------------------------------------------------------------------------------------------
# decision version


def test_infeasible_T_is_proved():
    # two unrelated 3-token queries at 0: the second finishes at 6 in every order
    inst = SeqInstance.simple([(1, 2, 3), (4, 5, 6)], [0, 0])
    for strengthen in (True, False):
        res = solve_cpsat(inst, "prev", "ttft-feasible", bound=5.0, workers=1, strengthen=strengthen)
        assert res.status is Status.INFEASIBLE and res.order == () and res.proof
    plain = solve_cpsat(inst, "prev", "ttft-feasible", bound=5.0, workers=1, strengthen=False)
    assert plain.proof == "cpsat"
    yes = solve_cpsat(inst, "prev", "ttft-feasible", bound=6.0, workers=1)
    assert yes.status is Status.FEASIBLE and yes.objective == 6.0


def test_decision_needing_reorder():
    # FCFS (q0 first) misses T = 4; serving q1's prefix family together meets it.
    inst = SeqInstance.simple([(9, 9, 9), (1, 2, 3, 4), (1, 2, 3, 5)], [0, 0, 0])
    res = solve_cpsat(inst, "prev", "ttft-feasible", bound=8.0, workers=1)
    assert res.status is Status.FEASIBLE and res.objective <= 8.0
    res = solve_cpsat(inst, "prev", "ttft-feasible", bound=7.5, workers=1)
    assert res.status is Status.INFEASIBLE


# ---------------------------------------------------------------------------------------------
# agreement with brute force on random tiny instances


@st.composite
def tiny_instances(draw, max_n: int = 6):
    n = draw(st.integers(1, max_n))
    stems = [(), (1,), (1, 2), (1, 2, 3), (4,), (4, 5)]
    prompts = []
    for _ in range(n):
        stem = draw(st.sampled_from(stems))
        suffix = tuple(draw(st.lists(st.integers(6, 8), min_size=0 if stem else 1, max_size=3)))
        prompts.append(stem + suffix)
    arrivals = sorted(draw(st.lists(st.integers(0, 14), min_size=n, max_size=n)))
    c_attn = draw(st.sampled_from([0.0, 0.0, 0.5, 0.25]))
    return SeqInstance.simple(prompts, arrivals, c_attn=c_attn)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=tiny_instances(), model=st.sampled_from(["prev", "radix"]), objective=st.sampled_from(OPT_OBJECTIVES))
def test_cpsat_matches_brute_force(inst, model, objective):
    ref = _brute(inst, model, objective)
    res = solve_cpsat(inst, model, objective, workers=1, time_limit=20)
    assert res.status is Status.OPTIMAL and res.gap == 0.0
    assert res.objective == pytest.approx(ref.objective, abs=1e-9)
    assert res.bound == pytest.approx(ref.objective, abs=1e-9)
    _check_replay(inst, res, model, objective)
    assert lower_bound(inst, model, objective) <= ref.objective + 1e-9


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=tiny_instances(), model=st.sampled_from(["prev", "radix"]), slack=st.sampled_from([-0.5, 0.0, 1.0]))
def test_decision_matches_brute_force(inst, model, slack):
    opt = _brute(inst, model, "max-ttft").objective
    T = opt + slack
    if T < 0:
        return
    res = solve_cpsat(inst, model, "ttft-feasible", bound=T, workers=1, time_limit=20)
    if slack < 0:
        assert res.status is Status.INFEASIBLE
    else:
        assert res.status is Status.FEASIBLE and res.objective <= T + 1e-9


# ---------------------------------------------------------------------------------------------
# timeouts and status discipline


def _shared_prefix_instance(n: int, seed: int) -> SeqInstance:
    rng = random.Random(seed)
    prompts, arrivals = [], []
    t = 0
    for k in range(n):
        user = rng.randrange(max(2, n // 4))
        prompts.append(tuple([100 + user] * 6) + (1000 + k, 1000 + k))
        t += rng.randrange(0, 5)
        arrivals.append(t)
    return SeqInstance.simple(prompts, arrivals)


@pytest.mark.parametrize("strengthen", [True, False])
def test_timeout_never_claims_unproven_optimum(strengthen):
    inst = _shared_prefix_instance(40, seed=3)
    for model in ("prev", "radix"):
        res = solve_cpsat(inst, model, "max-ttft", time_limit=0.05, workers=1, strengthen=strengthen)
        assert res.status in (Status.OPTIMAL, Status.FEASIBLE)
        assert res.bound is not None and res.bound <= res.objective + 1e-9
        if res.status is Status.OPTIMAL:
            assert res.gap == 0.0 and res.bound == res.objective
        else:
            assert res.proof is None
        _check_replay(inst, res, model, "max-ttft")
    plain = solve_cpsat(inst, "prev", "mean-ttft", time_limit=0.05, workers=1, strengthen=False)
    assert plain.status is Status.FEASIBLE and plain.gap > 0


def test_anytime_curve_is_monotone():
    inst = _shared_prefix_instance(12, seed=1)
    res = solve_cpsat(inst, "prev", "mean-ttft", workers=1, time_limit=5, strengthen=False)
    objs = [o for _, o in res.anytime]
    assert objs, "an improving solution must be recorded"
    assert objs == sorted(objs, reverse=True)
    assert res.objective <= objs[-1] + 1e-9


def test_deterministic_with_one_worker():
    inst = _shared_prefix_instance(10, seed=7)
    a = solve_cpsat(inst, "radix", "max-ttft", workers=1, seed=5, time_limit=20)
    b = solve_cpsat(inst, "radix", "max-ttft", workers=1, seed=5, time_limit=20)
    assert a.status is Status.OPTIMAL
    assert a.to_dict(include_wall=False) == b.to_dict(include_wall=False)


# ---------------------------------------------------------------------------------------------
# interface and refusals


def test_dispatcher_and_refusals():
    inst = SeqInstance.simple([(1, 2), (1, 3)], [0, 1])
    res = solve(inst, model="radix", objective="max-ttft", solver="cpsat", time_limit=5, workers=1)
    assert res.solver == "cpsat" and res.status is Status.OPTIMAL
    with pytest.raises(SolverLimitError, match="dp"):
        solve_cpsat(inst, "fair", "max-ttft", delta=10.0)
    big = SeqInstance.simple([(k,) for k in range(MAX_N + 1)])
    with pytest.raises(SolverLimitError, match=str(MAX_N)):
        solve_cpsat(big, "prev", "max-ttft")
    with pytest.raises(InputError):
        solve_cpsat(inst, "prev", "ttft-feasible")
    with pytest.raises(InputError):
        solve_cpsat(inst, "prev", "max-ttft", bound=3.0)
    with pytest.raises(InputError):
        solve_cpsat(inst, "prev", "max-ttft", time_limit=0)
    with pytest.raises(InputError):
        solve_cpsat(inst, "prev", "max-ttft", workers=0)
    with pytest.raises(InputError):
        solve_cpsat(inst, "prev", "max-ttft", hint_orders=[("q0",)])


def test_hint_orders_are_used_as_incumbents():
    inst = SeqInstance.simple([(9, 9, 9), (1, 2, 3, 4), (1, 2, 3, 5)], [0, 0, 0])
    res = solve_cpsat(inst, "prev", "makespan", workers=1, hint_orders=[("q1", "q2", "q0")])
    assert res.status is Status.OPTIMAL and res.objective == 8.0
