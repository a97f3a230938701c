"""The independent checker of sequential schedules (prefixsched.theory.sequential)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixsched.errors import CheckerError, InputError
from prefixsched.theory.cost import CostModel
from prefixsched.theory.exact.result import Status
from prefixsched.theory.model import BlockPrompt, Instance, Request, ServiceWeights
from prefixsched.theory.sequential import (
    MODELS,
    OBJECTIVES,
    SeqInstance,
    SeqQuery,
    check_fair,
    cost,
    evaluate,
    lcp_tokens,
    objective_value,
    service_gap,
    to_result,
)

# Example B (used in test_exact too): users' prefixes A = 1111 and B = 2222.
#   a1 = A+3 (len 5) at t=0, b1 = B+4 (len 5) at t=0, a2 = A+5 (len 5) at t=1.
EX_B = SeqInstance.simple([[1, 1, 1, 1, 3], [2, 2, 2, 2, 4], [1, 1, 1, 1, 5]], [0, 0, 1])


def test_constants():
    assert MODELS == ("prev", "radix", "fair")
    assert OBJECTIVES == ("max-ttft", "mean-ttft", "makespan", "ttft-feasible")


def test_lcp_tokens_matches_naive():
    cases = [((), ()), ((1,), (2,)), ((1, 2, 3), (1, 2, 3)), ((1, 2, 3), (1, 2)), ((1, 2, 3, 4), (1, 2, 5, 4))]
    for a, b in cases:
        naive = 0
        while naive < min(len(a), len(b)) and a[naive] == b[naive]:
            naive += 1
        assert lcp_tokens(a, b) == naive


@given(st.lists(st.integers(0, 2), max_size=12), st.lists(st.integers(0, 2), max_size=12))
def test_lcp_tokens_property(a, b):
    k = lcp_tokens(tuple(a), tuple(b))
    assert tuple(a[:k]) == tuple(b[:k])
    assert k == min(len(a), len(b)) or a[k] != b[k]


def test_cost_definition_2():
    # (1 + c*|x|) * (|x| - reuse): |x| = 10, reuse 4, c = 0.5 -> 6 * 6 = 36
    assert cost(10, 4, 0.5) == 36.0
    assert cost((1, 2, 3), 1, 0.0) == 2.0
    with pytest.raises(InputError):
        cost(3, 4, 0.0)
    with pytest.raises(InputError):
        cost(3, 1, -1.0)


def test_prev_hand_example():
    # order b1, a1, a2 under "prev":
    #   b1: 0 -> 5 (no predecessor), a1: reuse LCP(a1, b1) = 0, 5 -> 10,
    #   a2: reuse LCP(a2, a1) = 4, extend 1, 10 -> 11.  TTFT 5, 10, 10 (a2 arrived at 1).
    s = evaluate(EX_B, ["q1", "q0", "q2"], "prev")
    assert s.start == {"q1": 0.0, "q0": 5.0, "q2": 10.0}
    assert s.finish == {"q1": 5.0, "q0": 10.0, "q2": 11.0}
    assert s.ttft == {"q1": 5.0, "q0": 10.0, "q2": 10.0}
    assert s.extend == {"q1": 5, "q0": 5, "q2": 1}
    assert (s.makespan, s.max_ttft, s.mean_ttft) == (11.0, 10.0, 25 / 3)
    assert objective_value(s, "ttft-feasible") == 10.0
    assert objective_value(s, "mean-ttft") == 25 / 3
    assert objective_value(s, "makespan") == 11.0
    # FCFS a1, b1, a2: a2 follows b1 and reuses nothing: 10 -> 15, TTFT 14.
    f = evaluate(EX_B, ["q0", "q1", "q2"], "prev")
    assert f.ttft["q2"] == 14.0 and f.max_ttft == 14.0


def test_radix_reuses_any_earlier_query():
    # FCFS under radix: a2 finds A = 1111 held by a1 although b1 ran in between: 10 -> 11.
    s = evaluate(EX_B, ["q0", "q1", "q2"], "radix")
    assert s.reuse == {"q0": 0, "q1": 0, "q2": 4}
    assert s.finish["q2"] == 11.0 and s.max_ttft == 10.0


def test_idle_time_and_semi_active():
    inst = SeqInstance.simple([[1, 2], [3]], [0, 10])
    s = evaluate(inst, ["q0", "q1"], "prev")
    assert s.start["q1"] == 10.0 and s.finish["q1"] == 11.0 and s.makespan == 11.0
    assert s.total_work == 3.0


def test_c_attn_scales_uncached_tokens():
    inst = SeqInstance.simple([[1, 1, 1, 1], [1, 1, 2, 2]], c_attn=0.25)
    s = evaluate(inst, ["q0", "q1"], "prev")
    # q0: (1 + 0.25*4) * 4 = 8; q1: reuse 2, (1 + 1) * 2 = 4 -> finish 12
    assert s.finish == {"q0": 8.0, "q1": 12.0}


def test_explicit_starts_are_verified():
    s = evaluate(EX_B, ["q1", "q0", "q2"], "prev", start={"q1": 0, "q0": 6, "q2": 12})
    assert s.finish["q2"] == 13.0 and s.ttft["q2"] == 12.0
    with pytest.raises(CheckerError, match="before its arrival"):
        evaluate(EX_B, ["q2", "q0", "q1"], "prev", start={"q2": 0.5, "q0": 6, "q1": 11})
    with pytest.raises(CheckerError, match="predecessor"):
        evaluate(EX_B, ["q1", "q0", "q2"], "prev", start={"q1": 0, "q0": 4, "q2": 12})
    with pytest.raises(CheckerError, match="missing"):
        evaluate(EX_B, ["q1", "q0", "q2"], "prev", start={"q1": 0, "q0": 5})


def test_order_must_be_a_permutation():
    for bad in (["q0", "q1"], ["q0", "q1", "q1"], ["q0", "q1", "zz"]):
        with pytest.raises(CheckerError, match="permutation"):
            evaluate(EX_B, bad, "prev")
    with pytest.raises(InputError, match="model"):
        evaluate(EX_B, ["q0", "q1", "q2"], "lru")
    with pytest.raises(InputError, match="objective"):
        objective_value(evaluate(EX_B, ["q0", "q1", "q2"], "prev"), "p99")


def test_instance_validation():
    with pytest.raises(InputError):
        SeqInstance(())
    with pytest.raises(InputError, match="duplicate"):
        SeqInstance((SeqQuery("a", "c", 0, (1,)), SeqQuery("a", "c", 0, (2,))))
    with pytest.raises(InputError, match="arrival"):
        SeqInstance((SeqQuery("a", "c", -1, (1,)),))
    with pytest.raises(InputError, match="tokens"):
        SeqInstance((SeqQuery("a", "c", 0, ()),))
    with pytest.raises(InputError, match="c_attn"):
        SeqInstance((SeqQuery("a", "c", 0, (1,)),), c_attn=-0.1)


def test_from_instance_reads_arrivals_as_token_units():
    reqs = (
        Request("r0", "u", 0.0, BlockPrompt([0, 1], 6, 4), 3),
        Request("r1", "v", 2.5, BlockPrompt([0, 2], 5, 4), 2),
    )
    inst = Instance(reqs, cost_model=CostModel(c_attn=0.5), weights=ServiceWeights(1, 3))
    si = SeqInstance.from_instance(inst)
    assert si.arrivals == (0.0, 2.5)
    assert si.lengths == (6, 5)
    assert si.c_attn == 0.5 and si.weights == ServiceWeights(1, 3)
    assert si.overlap("r0", "r1") == 4  # block 0 shared (4 tokens), then blocks 1 vs 2 differ
    assert si.queries[0].tokens == (0, 1, 2, 3, 4, 5)


# ------------------------------------------------------------------------------------------
# fairness

# Example F: clients a (a1 = 111, a2 = 112) and b (b1 = 555), all at t = 0, output 1 each,
# w_e = 1, w_q = 2. Under radix: a1 first costs 3 -> service 3 + 2 = 5; a2 after a1 extends 1
# -> service 1 + 2 = 3; b1 extends 3 -> service 5.
EX_F = SeqInstance.simple([[1, 1, 1], [1, 1, 2], [5, 5, 5]], clients=["a", "a", "b"])


def test_service_gap_hand_example():
    # a1, a2, b1: both backlogged before pick 0 and after it (a2, b1 wait); after pick 1 only b
    # waits. Windows: {0}: 5, {0,1}: 5 + 3 = 8, {1}: 3; {2}: b alone. Gap 8.
    s = evaluate(EX_F, ["q0", "q1", "q2"], "fair")
    assert s.service == {"q0": 5.0, "q1": 3.0, "q2": 5.0}
    assert service_gap(EX_F, s) == 8.0
    # a1, b1, a2: {0}: +5, {0,1}: 5 - 5 = 0 (after pick 1 only a waits), {1}: -5. Gap 5.
    s2 = evaluate(EX_F, ["q0", "q2", "q1"], "fair")
    assert service_gap(EX_F, s2) == 5.0
    assert check_fair(EX_F, s2, 5.0) == 5.0
    with pytest.raises(CheckerError, match="service gap"):
        check_fair(EX_F, s, 7.9)


def test_service_gap_needs_continuous_backlog():
    # b's only query arrives at 100: a and b are never backlogged together -> gap 0.
    inst = SeqInstance.simple([[1], [2], [3]], [0, 0, 100], clients=["a", "a", "b"])
    s = evaluate(inst, ["q0", "q1", "q2"], "fair")
    assert service_gap(inst, s) == 0.0
    # b arrives at 1 while a's second query waits: window {1}: a2 (service 1 + 2 = 3) vs b: 3.
    inst2 = SeqInstance.simple([[1], [2], [3]], [0, 0, 1], clients=["a", "a", "b"])
    s2 = evaluate(inst2, ["q0", "q1", "q2"], "fair")
    # pick 0 at t=0: b not yet arrived; pick 1 at t=1: both wait; after it only b -> window {1}: 3;
    # pick 2: only b.
    assert service_gap(inst2, s2) == 3.0


def test_service_gap_brute_definition():
    """service_gap equals a direct enumeration of all (t1, t) pairs over the event times.

    Every prompt ends in a token of its own, so every query extends >= 1 token, takes positive
    time and the start times are distinct: the picks in ``[t1, t)`` for ``t`` a finish time are
    then exactly a window of positions.
    """
    inst = SeqInstance.simple(
        [[1, 2, 7], [1, 3, 8], [4, 9], [4, 5, 10], [1, 2, 6]], [0, 0, 1, 2, 3], clients=["a", "b", "a", "c", "b"],
        output_lens=[1, 2, 1, 3, 1],
    )
    for order in itertools.permutations(inst.ids):
        s = evaluate(inst, order, "fair")
        times = sorted(set(s.start.values()) | set(s.finish.values()))
        by_id = {q.id: q for q in inst.queries}

        def backlogged(c, t):
            return any(q.client == c and q.arrival <= t and s.start[q.id] >= t for q in inst.queries)

        def cont(c, t1, t2):
            # backlogged at t1, at every event in (t1, t2) and just after each (arrivals only at events)
            pts = [x for x in sorted(set(times) | {q.arrival for q in inst.queries}) if t1 <= x <= t2]
            for x in pts:
                if not backlogged(c, x):
                    return False
                if x < t2 and not any(
                    q.client == c and q.arrival <= x and s.start[q.id] > x for q in inst.queries
                ):
                    return False
            return True

        best = 0.0
        for t1 in s.start.values():
            for t in s.finish.values():
                if t < t1:
                    continue
                last_start = max(v for v in s.start.values() if v < t)
                for f, g in itertools.combinations(inst.clients, 2):
                    if cont(f, t1, last_start) and cont(g, t1, last_start):
                        wf = sum(s.service[q] for q in s.order if by_id[q].client == f and t1 <= s.start[q] < t)
                        wg = sum(s.service[q] for q in s.order if by_id[q].client == g and t1 <= s.start[q] < t)
                        best = max(best, abs(wf - wg))
        assert service_gap(inst, s) == pytest.approx(best), order


# ------------------------------------------------------------------------------------------
# to_result: the funnel


def test_to_result_replays_and_refuses_false_claims():
    s = evaluate(EX_B, ["q1", "q0", "q2"], "prev")
    r = to_result(EX_B, s, "prev", "max-ttft", Status.OPTIMAL, 10.0, 0.1, "test", "hand")
    assert r.optimal and r.objective == 10.0 and r.order == ("q1", "q0", "q2") and r.ttft["q2"] == 10.0
    with pytest.raises(CheckerError, match="OPTIMAL"):
        to_result(EX_B, s, "prev", "max-ttft", Status.OPTIMAL, 9.0, 0.1, "test", "hand")
    with pytest.raises(CheckerError, match="bound"):
        to_result(EX_B, s, "prev", "max-ttft", Status.FEASIBLE, 10.5, 0.1, "test", None)
    r2 = to_result(EX_B, s, "prev", "max-ttft", Status.FEASIBLE, 8.0, 0.1, "test", None)
    assert r2.status is Status.FEASIBLE and r2.gap == pytest.approx(0.2)
    # a schedule claiming a value its replay does not give
    forged = type(s)(**{**s.__dict__, "max_ttft": 9.0})
    with pytest.raises(CheckerError, match="claimed"):
        to_result(EX_B, forged, "prev", "max-ttft", Status.FEASIBLE, None, 0.1, "test", None)
    # decision: a witness above T is a bug; a witness is FEASIBLE
    with pytest.raises(CheckerError, match="witness"):
        to_result(EX_B, s, "prev", "ttft-feasible", Status.FEASIBLE, None, 0.1, "t", None, ttft_bound=9.0)
    r3 = to_result(EX_B, s, "prev", "ttft-feasible", Status.FEASIBLE, None, 0.1, "t", None, ttft_bound=10.0)
    assert r3.status is Status.FEASIBLE and r3.objective == 10.0
    # status / schedule consistency
    with pytest.raises(CheckerError):
        to_result(EX_B, None, "prev", "max-ttft", Status.OPTIMAL, 10.0, 0.1, "t", "x")
    with pytest.raises(CheckerError):
        to_result(EX_B, None, "prev", "ttft-feasible", Status.INFEASIBLE, None, 0.1, "t", None, ttft_bound=1)
    with pytest.raises(CheckerError):
        to_result(EX_B, s, "prev", "max-ttft", Status.INFEASIBLE, None, 0.1, "t", "x")
    # fair schedules must meet delta
    sf = evaluate(EX_F, ["q0", "q1", "q2"], "fair")
    with pytest.raises(CheckerError, match="service gap"):
        to_result(EX_F, sf, "fair", "makespan", Status.FEASIBLE, None, 0.1, "t", None, delta=5.0)


# ------------------------------------------------------------------------------------------
# radix: total work does not depend on the order when c_attn = 0

prompt_st = st.lists(st.integers(0, 2), min_size=1, max_size=5)


@given(st.lists(prompt_st, min_size=1, max_size=7), st.randoms(use_true_random=False))
def test_radix_total_work_is_trie_size(prompts, rnd):
    inst = SeqInstance.simple(prompts)
    trie = {tuple(p[:k]) for p in prompts for k in range(1, len(p) + 1)}
    ids = list(inst.ids)
    for _ in range(3):
        rnd.shuffle(ids)
        s = evaluate(inst, ids, "radix")
        assert sum(s.extend.values()) == len(trie)
        assert s.total_work == len(trie)


def test_radix_total_work_depends_on_order_when_c_attn_positive():
    # 0001 and 00 with c = 0.5: long first: 3*4 + 0 = 12; short first: 2*2 + 3*2 = 10.
    inst = SeqInstance.simple([[0, 0, 0, 1], [0, 0]], c_attn=0.5)
    assert evaluate(inst, ["q0", "q1"], "radix").total_work == 12.0
    assert evaluate(inst, ["q1", "q0"], "radix").total_work == 10.0


@settings(deadline=None)
@given(st.lists(prompt_st, min_size=1, max_size=6), st.lists(st.integers(0, 6), min_size=6, max_size=6))
def test_schedule_invariants(prompts, arrivals):
    inst = SeqInstance.simple(prompts, sorted(arrivals[: len(prompts)]))
    for model in MODELS:
        s = evaluate(inst, inst.ids[::-1], model)
        prev_f = 0.0
        for q in s.order:
            a = inst.queries[inst.index[q]].arrival
            assert s.start[q] == max(prev_f, a)  # semi-active
            assert s.ttft[q] == s.finish[q] - a >= 0
            prev_f = s.finish[q]
        # replaying with its own start times gives the same schedule
        assert evaluate(inst, s.order, model, start=s.start) == s
        if model == "prev":
            assert all(s.reuse[q] <= evaluate(inst, s.order, "radix").reuse[q] for q in s.order)
