"""The preemptive policies (prefixsched/reference/policies/preemptive.py): preemptive VTC's
re-ranking interval and margin, the priority sources, FastSwitch-style and SGLang's
``preempt_to_schedule`` rules. Expected steps are derived by hand from the rules."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings

from prefixsched.errors import InputError
from prefixsched.reference.engine.preemption import PreemptionConfig
from prefixsched.reference.engine.sglang import SGLangConfig
from prefixsched.reference.policies import create
from prefixsched.reference.policies.preemptive import FastSwitchPriority, PrioritySource, SGLangPriority
from prefixsched.reference.simulator import simulate
from prefixsched.testing.strategies import instances
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request
from prefixsched.theory.schedule import check_trace

STEPPED = CostModel(prefill_base_s=0.0, prefill_per_token_s=1.0, c_attn=0.0, decode_base_s=1.0,
                    decode_per_request_s=0.0, decode_per_context_token_s=0.0)
EXACT = SGLangConfig(ignore_eos=True)  # reservations at ratio 1: admission is exact


def R(rid, client, t, prompt, out):
    return Request(id=rid, client=client, arrival=t, prompt=prompt, output_len=out)


def toks(start, n):
    return tuple(range(start, start + n))


def _records(tr):
    return [(r.id, r.admit_step, r.finish_step, r.cached_tokens) for r in tr.requests], tr.step_start, tr.step_kinds


# --------------------------------------------------------------------------------------------
# preemptive VTC


def hog() -> Instance:
    # A's long request fills the pool (10 + 100 reserved + a page of 120); B's request (16 needed)
    # cannot be admitted beside it
    return Instance((R("a", "A", 0, toks(0, 10), 100), R("b", "B", 1, toks(500, 10), 5)), STEPPED,
                    Limits(kv_capacity_tokens=120, max_prefill_tokens=1000, max_running_requests=8, page_size=1,
                           chunked_prefill_size=None))


@pytest.mark.parametrize("interval, step", [(1, 12), (4, 13), (8, 17)])
def test_vtc_preempt_fires_on_the_first_rerank_step_past_the_margin(interval, step):
    # after step 0 c_A = 10 + 2 = 12; B joins at the pass of step 1 with the counter lift from the
    # last client to leave the queue (A): c_B = 12. A decodes 2 per step: at the pass of step s,
    # c_A - c_B = 2(s - 1). Re-ranks happen at steps 1, 1 + K, 1 + 2K, ... (B's head is blocked
    # from step 1 on); the first with a gap > margin = 20 preempts A: s = 12 (K=1), 13 (K=4), 17 (K=8).
    i = hog()
    p = create("vtc-preempt", interval=interval, margin=20.0)
    tr = simulate(i, p, engine="sglang", sglang=EXACT, preemption=PreemptionConfig(mode="drop"))
    assert check_trace(i, tr).ok
    a = next(r for r in tr.requests if r.id == "a")
    assert a.runs[0].end == "preempt" and a.runs[0].end_step == step - 1
    b = next(r for r in tr.requests if r.id == "b")
    assert b.admit_step == step  # the freed room is used in the same pass
    assert p.state()["preemptions"] == 1


def test_vtc_preempt_default_margin_is_the_longest_prompt_times_w_e():
    i = hog()
    p = create("vtc-preempt", interval=1)
    tr = simulate(i, p, engine="sglang", sglang=EXACT, preemption=PreemptionConfig(mode="drop"))
    a = next(r for r in tr.requests if r.id == "a")
    # margin 10 (both prompts are 10 tokens): the first gap 2(s-1) > 10 is at s = 7
    assert a.runs[0].end_step == 6
    assert p.current_margin(type("S", (), {"weights": i.weights})()) == 10.0


def test_vtc_preempt_swap_resumes_a_by_swap_in_and_charges_it_nothing():
    i = hog()
    p = create("vtc-preempt", interval=1, margin=20.0)
    tr = simulate(i, p, engine="sglang", sglang=EXACT, preemption=PreemptionConfig(mode="swap"))
    assert check_trace(i, tr).ok
    a = next(r for r in tr.requests if r.id == "a")
    assert a.runs[1].swapped_in is not None
    # client view: A is charged its prompt once and 2 per token; no recharge at the swap-in
    assert p.state()["counters"]["A"] == pytest.approx(10 + 2 * 100)


@settings(deadline=None, max_examples=20)
@given(inst=instances(max_clients=3, max_requests_per_client=6, max_output=12))
def test_vtc_preempt_on_the_ideal_engine_is_vtc(inst):
    a = simulate(inst, create("vtc"), engine="ideal")
    b = simulate(inst, create("vtc-preempt"), engine="ideal")
    assert _records(a) == _records(b)


def test_parameters_are_validated():
    for bad in ({"interval": 0}, {"margin": -1.0}, {"charge": "x"}):
        with pytest.raises(InputError):
            create("vtc-preempt", **bad)
    for bad in ({"source": "oracle"}, {"update_prob": 1.5}, {"levels": 0}, {"margin": -1}):
        with pytest.raises(InputError):
            create("fastswitch", **bad)
    with pytest.raises(InputError, match="threshold"):
        create("sglang-priority", threshold=-2)
    assert create("vtc-preempt:4").interval == 4 and create("fastswitch:0.02").update_prob == 0.02
    assert create("sglang-priority:3").threshold == 3.0


# --------------------------------------------------------------------------------------------
# priority sources


def test_priority_source_epochs_follow_the_update_probability_and_are_fixed_ahead():
    src = PrioritySource("random", 0.04, 8, seed=3)
    for k in range(100_000):
        src.on_step(k)
    assert abs(src.updates - 4000) < 5 * (100_000 * 0.04 * 0.96) ** 0.5
    again = PrioritySource("random", 0.04, 8, seed=3)
    for k in range(100_000):
        again.on_step(k)
    assert again.updates == src.updates and [again.level(q) for q in range(50)] == [src.level(q) for q in range(50)]
    levels = [src.level(q) for q in range(8000)]
    assert set(levels) == set(range(8)) and max(levels.count(v) for v in range(8)) < 1200


def test_markov_source_moves_one_level_per_epoch():
    src = PrioritySource("markov", 1.0, 5, seed=1)
    prev = [src.level(q) for q in range(200)]
    for k in range(30):
        src.on_step(k)
        cur = [src.level(q) for q in range(200)]
        assert all(abs(x - y) == 1 and 0 <= y < 5 for x, y in zip(prev, cur))
        prev = cur
    frozen = PrioritySource("markov", 0.0, 5, seed=1)
    first = [frozen.level(q) for q in range(20)]
    for k in range(100):
        frozen.on_step(k)
    assert [frozen.level(q) for q in range(20)] == first


# --------------------------------------------------------------------------------------------
# FastSwitch-style and SGLang's rule, on fixed priorities


class Fixed:
    def __init__(self, prio):
        self.p = prio

    def prio(self, seq, request):
        return self.p[request.id]


class FixedFS(Fixed, FastSwitchPriority):
    name = "fixed-fs"

    def __init__(self, prio, **kw):
        Fixed.__init__(self, prio)
        FastSwitchPriority.__init__(self, **kw)


class FixedSG(Fixed, SGLangPriority):
    name = "fixed-sg"

    def __init__(self, prio, **kw):
        Fixed.__init__(self, prio)
        SGLangPriority.__init__(self, **kw)


def slots_inst() -> Instance:
    # two low-priority requests fill both running slots; a high-priority one arrives
    reqs = (R("lo1", "A", 0, toks(0, 4), 20), R("lo2", "B", 0, toks(100, 4), 20), R("hi", "C", 2, toks(200, 4), 3))
    return Instance(reqs, STEPPED, Limits(kv_capacity_tokens=10_000, max_prefill_tokens=1000, max_running_requests=2,
                                          page_size=1, chunked_prefill_size=None))


def test_fastswitch_preempts_the_lowest_priority_newest_first():
    i = slots_inst()
    tr = simulate(i, FixedFS({"lo1": 1, "lo2": 0, "hi": 5}), engine="sglang", preemption=PreemptionConfig())
    assert check_trace(i, tr).ok
    by = {r.id: r for r in tr.requests}
    assert by["lo2"].runs is not None and by["lo2"].runs[0].end == "swap"  # lowest priority goes
    assert by["lo1"].runs is None
    # a margin larger than the gap stops it
    tr = simulate(i, FixedFS({"lo1": 1, "lo2": 0, "hi": 5}, margin=6), engine="sglang", preemption=PreemptionConfig())
    assert all(r.runs is None for r in tr.requests)


def test_sglang_rule_preempts_for_slots_past_the_threshold_only():
    i = slots_inst()
    pr = {"lo1": 0, "lo2": 0, "hi": 20}
    tr = simulate(i, FixedSG(pr, threshold=10), engine="sglang", preemption=PreemptionConfig(mode="drop"))
    assert check_trace(i, tr).ok
    ends = {r.id: [x.end for x in r.all_runs()] for r in tr.requests}
    # equal priorities: the newest running request (lo2, queued after lo1) goes first
    assert ends["lo2"] == ["preempt", "finish"] and ends["lo1"] == ["finish"]
    tr = simulate(i, FixedSG(pr, threshold=20), engine="sglang", preemption=PreemptionConfig(mode="drop"))
    assert all(r.runs is None for r in tr.requests)  # a gap of 20 does not exceed 20


def test_sglang_rule_never_preempts_for_kv_memory():
    # one slot is free but the pool is full: SGLang breaks on NO_TOKEN without preempting;
    # FastSwitch's rule preempts for memory too
    reqs = (R("lo", "A", 0, toks(0, 10), 100), R("hi", "C", 1, toks(500, 10), 5))
    i = Instance(reqs, STEPPED, Limits(kv_capacity_tokens=120, max_prefill_tokens=1000, max_running_requests=8,
                                       page_size=1, chunked_prefill_size=None))
    pr = {"lo": 0, "hi": 30}
    sg = simulate(i, FixedSG(pr), engine="sglang", sglang=EXACT, preemption=PreemptionConfig(mode="drop"))
    assert all(r.runs is None for r in sg.requests)
    fs = simulate(i, FixedFS(pr), engine="sglang", sglang=EXACT, preemption=PreemptionConfig(mode="drop"))
    assert next(r for r in fs.requests if r.id == "lo").runs[0].end == "preempt"


def test_priority_policies_are_deterministic_and_pass_the_checker():
    i = slots_inst()
    for name in ("fastswitch", "sglang-priority"):
        for src in ("random", "markov", "vtc"):
            kw = dict(source=src, update_prob=0.5, seed=4)
            a = simulate(i, create(name, **kw), engine="sglang", preemption=PreemptionConfig.fastswitch())
            b = simulate(i, create(name, **kw), engine="sglang", preemption=PreemptionConfig.fastswitch())
            assert check_trace(i, a).ok
            assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)


def test_without_preemption_the_priority_policies_only_order_admissions():
    i = slots_inst()
    roomy = dataclasses.replace(i, limits=dataclasses.replace(i.limits, max_running_requests=1))
    tr = simulate(roomy, FixedFS({"lo1": 1, "lo2": 0, "hi": 5}), engine="sglang")
    assert all(r.runs is None for r in tr.requests)
    order = [r.id for r in sorted(tr.requests, key=lambda r: r.admit_step)]
    assert order == ["lo1", "hi", "lo2"]  # priority order once lo1 finishes
