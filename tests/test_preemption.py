"""Preemption in the ``sglang`` engine: drop and swap modes, the host KV pool, the link, the
engine errors, the checker's replay of preemptions and the switch metrics.

Expected values are derived by hand from the rules in prefixsched/reference/engine/preemption.py
(and SGLang's, for drop mode) on a clock of one second per prefilled token and per decode step;
copy times come from the switch-cost formula, recomputed here from its definition.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixsched.errors import IllegalDecisionError
from prefixsched.reference.engine.preemption import (
    HostKVError, HostMemoryError, PlainHostPool, PreemptionConfig, TreeHostPool,
)
from prefixsched.reference.policies import create
from prefixsched.reference.policies.base import Decision, Policy
from prefixsched.reference.simulator import Worker, simulate
from prefixsched.testing.strategies import instances
from prefixsched.theory.cost import CostModel
from prefixsched.theory.metrics import latency_tails, switch_metrics, token_gaps
from prefixsched.theory.model import Instance, Limits, Request
from prefixsched.theory.schedule import check_trace
from prefixsched.theory.switch_cost import SwitchCostModel

STEPPED = CostModel(prefill_base_s=0.0, prefill_per_token_s=1.0, c_attn=0.0, decode_base_s=1.0,
                    decode_per_request_s=0.0, decode_per_context_token_s=0.0)
DROP = PreemptionConfig(mode="drop")
SYNC = PreemptionConfig(mode="swap")
ASYNC = PreemptionConfig(mode="swap", sync=False, reuse=True)


def R(rid: str, client: str, t: float, prompt: tuple[int, ...], out: int) -> Request:
    return Request(id=rid, client=client, arrival=t, prompt=prompt, output_len=out)


def toks(start: int, n: int) -> tuple[int, ...]:
    return tuple(range(start, start + n))


class Script(Policy):
    """FCFS admission; preempts ``victim`` once, when ``trigger`` waits and the victim has produced
    ``after`` tokens (``victims`` lists several such rules, applied in order)."""

    name = "script"

    def __init__(self, rules=(("a", "b", 3),)):
        self.rules = list(rules)

    def decide(self, snap):
        running = {v.request.id: v for v in snap.running()} if getattr(snap, "preemption", None) else {}
        waiting = {e.request.id for e in snap.queue()}
        if self.rules:
            victim, trigger, after = self.rules[0]
            v = running.get(victim)
            if trigger in waiting and v is not None and v.produced >= after:
                self.rules.pop(0)
                return Decision(preempt=(victim,))
        b = snap.batch()
        for e in snap.queue():
            if not b.try_add(e):
                break
        return Decision(tuple(b.admitted))


def two(kv: int = 1000) -> Instance:
    # a (10 prompt, 6 out) runs alone (max_running_requests 1); b arrives at t=1
    return Instance((R("a", "A", 0, toks(0, 10), 6), R("b", "B", 1, toks(100, 10), 3)), STEPPED,
                    Limits(kv_capacity_tokens=kv, max_prefill_tokens=1000, max_running_requests=1, page_size=1,
                           chunked_prefill_size=None))


def rec(tr, rid):
    return next(r for r in tr.requests if r.id == rid)


def copy_s(tokens: int, cfg: PreemptionConfig = SYNC) -> float:
    # the switch-cost formula from its definition: Llama-3-8B, PCIe 5 x16, per-block copies
    bpt = 2 * 32 * 8 * 128 * 2
    blocks = -(-tokens // 16)
    copies = 2 * 32 * blocks
    n = tokens * bpt
    s = n / copies
    bw = 55e9 * s / (s + 32 * 1024)
    return copies * 3.5e-6 + n / bw


# --------------------------------------------------------------------------------------------
# the three modes on one hand-made instance


def test_drop_mode_recomputes_reusing_the_radix_cache():
    # a: prefill step 0 (token 1), decode steps 1, 2 (tokens 2, 3); at t=12 the policy preempts a
    # for b (one running slot). Drop: a's KV is freed (its prompt pages stay in the tree), b
    # prefills in step 3 and decodes in 4, 5; a re-prefills prompt + 3 outputs = 13 tokens with its
    # 10 prompt tokens cached (extend 3) in step 6 (token 4), then decodes in 7, 8.
    i = two()
    tr = simulate(i, Script(), engine="sglang", preemption=DROP)
    assert check_trace(i, tr).ok
    assert tr.step_kinds == "PDDPDDPDD"
    a = rec(tr, "a")
    r0, r1 = a.runs
    assert (r0.chunks, r0.end_step, r0.end) == (((0, 10),), 2, "preempt")
    assert (r1.admit_step, r1.cached_tokens, r1.chunks, r1.end_step, r1.end, r1.swapped_in) == (6, 10, ((6, 3),), 8, "finish", None)
    assert (a.cached_tokens, a.extend_tokens) == (0, 13)
    assert tr.switches is None and tr.meta["preemption"]["preemptions"] == 1
    assert tr.step_start[3] == 12.0  # drop costs no copy time
    m = switch_metrics(tr)
    assert (m["mode"], m["preemptions"], m["recomputed_tokens"], m["swap_outs"]) == ("drop", 1, 3, 0)


def test_sync_swap_stalls_for_each_copy_and_resumes_without_prefill():
    # swap: a's 12 KV tokens (prompt + 3 outputs - the last one) go out at t=12; b's prefill starts
    # when the copy ends. At b's finish a is admitted again: the tree still holds its 10 prompt
    # tokens, so 13 - 1 - 10 = 2 tokens come back; the GPU stalls for that copy and a decodes in
    # the next decode step, producing its 3 remaining tokens in steps 6, 7, 8 with no prefill.
    i = two()
    tr = simulate(i, Script(), engine="sglang", preemption=SYNC)
    assert check_trace(i, tr).ok
    assert tr.step_kinds == "PDDPDDDDD"
    out, back = tr.switches
    assert (out.kind, out.request, out.kv_tokens, out.tokens, out.copies, out.step) == ("out", "a", 12, 12, 64, 3)
    assert (back.kind, back.kv_tokens, back.tokens, back.step) == ("in", 12, 2, 6)
    assert out.t_start == 12.0 and out.t_end == pytest.approx(12.0 + copy_s(12), rel=1e-12)
    assert tr.step_start[3] == out.t_end  # the GPU waited for the copy
    assert back.t_end - back.t_start == pytest.approx(copy_s(2), rel=1e-12)
    assert tr.step_start[6] == back.t_end
    r1 = rec(tr, "a").runs[1]
    assert (r1.admit_step, r1.cached_tokens, r1.chunks, r1.swapped_in, r1.end_step) == (6, 10, (), 2, 8)
    assert rec(tr, "a").extend_tokens == 10  # nothing recomputed
    m = switch_metrics(tr)
    assert m["gpu_stall_s"] == pytest.approx(copy_s(12) + copy_s(2), rel=1e-9)
    assert (m["tokens_out"], m["tokens_in"], m["bytes_out"]) == (12, 2, 12 * 131072)


def test_async_swap_overlaps_compute_and_a_request_is_not_runnable_until_its_copy_ends():
    i = two()
    tr = simulate(i, Script(), engine="sglang", preemption=ASYNC)
    assert check_trace(i, tr).ok
    out, back = tr.switches
    # the swap-out overlaps b's prefill (no stall); the swap-in is waited for: nothing else runs
    assert tr.step_start[3] == 12.0 and out.t_start == 12.0 and out.t_end < tr.step_end[3]
    assert tr.step_start[6] == back.t_end > back.t_start == tr.step_end[5]
    m = switch_metrics(tr)
    assert m["gpu_stall_s"] == pytest.approx(back.t_end - back.t_start, rel=1e-9)


def test_token_gaps_and_tails_by_hand():
    # sync swap trace above: a's tokens end at 10, 11, 12, then (after 2 copies) 25+e, 26+e, 27+e;
    # b's at 22+d, 23+d, 24+d: gaps 1, 1 | 1, 1 | 1, 1 and one gap of 13 + e across the swap
    i = two()
    tr = simulate(i, Script(), engine="sglang", preemption=SYNC)
    g = sorted(token_gaps(tr).tolist())
    e = copy_s(12) + copy_s(2)
    assert g[:6] == pytest.approx([1.0] * 6) and g[6] == pytest.approx(13.0 + e)
    t = latency_tails(tr)
    assert t["n_gaps"] == 7 and t["tbt_max"] == pytest.approx(13.0 + e) and t["tbt_p50"] == pytest.approx(1.0)
    # without preemption the same instance has 5 + 2 gaps of one decode step each
    base = simulate(i, create("fcfs"), engine="sglang")
    assert sorted(token_gaps(base).tolist()) == pytest.approx([1.0] * 7)


# --------------------------------------------------------------------------------------------
# the host pool as a cache


def three(host: int | None = None, reuse: bool = True, out: int = 12) -> tuple[Instance, PreemptionConfig]:
    # a is preempted twice (for b, then for c): with reuse the second swap-out sends only the
    # tokens a produced since its first one
    reqs = (R("a", "A", 0, toks(0, 10), out), R("b", "B", 1, toks(100, 10), 2), R("c", "C", 13, toks(200, 10), 2))
    i = Instance(reqs, STEPPED, Limits(kv_capacity_tokens=1000, max_prefill_tokens=1000, max_running_requests=1,
                                        page_size=1, chunked_prefill_size=None))
    return i, PreemptionConfig(mode="swap", reuse=reuse, host_capacity_tokens=host)


def test_reuse_sends_only_new_tokens_on_a_second_swap_out():
    rules = (("a", "b", 3), ("a", "c", 5))
    for reuse in (True, False):
        i, cfg = three(reuse=reuse)
        tr = simulate(i, Script(rules), engine="sglang", preemption=cfg)
        assert check_trace(i, tr).ok
        outs = [e for e in tr.switches if e.kind == "out"]
        assert [e.kv_tokens for e in outs] == [12, 14]
        # first: 12 (nothing on host); second: with reuse only the 2 tokens produced since
        assert [e.tokens for e in outs] == ([12, 2] if reuse else [12, 14])
        m = switch_metrics(tr)
        assert m["reuse_saved_tokens"] == (12 if reuse else 0)


def test_a_request_whose_host_copy_was_evicted_recomputes():
    # host pool of 13 tokens: a's 12-token copy, then b's swap-out would not fit beside it...
    # here: a is swapped out (12), b runs, then b is preempted for a? Simpler: two victims.
    reqs = (R("a", "A", 0, toks(0, 10), 8), R("b", "B", 0.5, toks(100, 10), 8), R("c", "C", 1, toks(200, 10), 2))
    i = Instance(reqs, STEPPED, Limits(kv_capacity_tokens=1000, max_prefill_tokens=1000, max_running_requests=2,
                                        page_size=1, chunked_prefill_size=None))

    class TwoVictims(Script):
        def decide(self, snap):
            running = {v.request.id: v for v in snap.running()}
            if self.rules and "c" in {e.request.id for e in snap.queue()} and {"a", "b"} <= set(running) \
                    and running["b"].produced >= 2:
                self.rules = []
                return Decision(preempt=("a",))
            if not self.rules and getattr(self, "second", True) and "b" in running and "a" in {
                    e.request.id for e in snap.queue()}:
                self.second = False
                return Decision(preempt=("b",))
            return super().decide(snap)

    cfg = PreemptionConfig(mode="swap", host_capacity_tokens=14, reuse=False)
    tr = simulate(i, TwoVictims(), engine="sglang", preemption=cfg)
    assert check_trace(i, tr).ok
    ev = [e.kind for e in tr.switches]
    assert "evict" in ev  # b's swap-out evicted a's copy
    a = rec(tr, "a")
    assert a.runs[0].end == "swap" and a.runs[1].swapped_in is None and a.runs[1].chunks  # recomputed
    assert tr.meta["preemption"]["recomputes_after_host_eviction"] == 1
    assert switch_metrics(tr)["recomputes_after_swap"] == 1


# --------------------------------------------------------------------------------------------
# engine errors


class Bad(Policy):
    name = "bad"

    def __init__(self, decision):
        self.decision = decision

    def decide(self, snap):
        return self.decision(snap)


def _admit_all(snap):
    b = snap.batch()
    for e in snap.queue():
        if not b.try_add(e):
            break
    return list(b.admitted)


@pytest.mark.parametrize("make, msg", [
    (lambda snap: Decision(preempt=("b",)), r"request 'b': cannot preempt: it has not arrived"),
    (lambda snap: Decision(preempt=("b",)) if snap.waiting_count("B") else Decision(tuple(_admit_all(snap))),
     r"request 'b': cannot preempt: it is waiting; only running \(decoding\) requests"),
    (lambda snap: Decision(preempt=("zz",)), r"'zz': cannot preempt: no such request"),
    (lambda snap: Decision(preempt=("a", "a")) if snap.running_count() else Decision(tuple(_admit_all(snap))),
     r"'a': preempted twice in one decision"),
    (lambda snap: Decision(admit=("a",), preempt=("a",)) if snap.running_count() else Decision(tuple(_admit_all(snap))),
     r"'a': admitted in the step it is preempted in"),
])
def test_illegal_preemptions_name_the_request(make, msg):
    with pytest.raises(IllegalDecisionError, match=msg):
        simulate(two(), Bad(make), engine="sglang", preemption=SYNC)


def test_preempting_on_an_engine_without_preemption_is_illegal():
    def make(snap):
        return Decision(preempt=("a",)) if snap.running_count() else Decision(tuple(_admit_all(snap)))
    i = two()
    roomy = dataclasses.replace(i, limits=dataclasses.replace(i.limits, max_running_requests=2))
    with pytest.raises(IllegalDecisionError, match="runs without preemption"):
        simulate(roomy, Bad(make), engine="sglang")
    with pytest.raises(IllegalDecisionError, match="ideal engine never preempts"):
        simulate(roomy, Bad(make), engine="ideal")


def _preempt_a_twice(later: bool):
    state = {}

    def make(snap):
        if "first" not in state and snap.running_count() and snap.waiting_count():
            state["first"] = snap.step
            return Decision(preempt=("a",))
        if "first" in state and "again" not in state and (snap.step > state["first"] or not later):
            state["again"] = True
            return Decision(preempt=("a",))
        return Decision(tuple(_admit_all(snap)))
    return Bad(make)


def test_preempting_a_request_twice_in_a_step_or_while_it_is_swapped_out_is_illegal():
    with pytest.raises(IllegalDecisionError, match="'a': cannot preempt: already preempted in this step"):
        simulate(two(), _preempt_a_twice(later=False), engine="sglang", preemption=SYNC)
    # async with a very slow link: a's swap-out is still in flight in the next pass
    slow = PreemptionConfig(mode="swap", sync=False, switch=SwitchCostModel(granularity="block").with_(
        link=dataclasses.replace(SwitchCostModel().link, peak_bytes_per_s=1e3)))
    i, _ = three()  # c arrives at 13 and waits while b runs: the policy is asked again
    with pytest.raises(IllegalDecisionError, match="'a': cannot preempt: it is being swapped out"):
        simulate(i, _preempt_a_twice(later=True), engine="sglang", preemption=slow)


def test_host_exhaustion_is_an_engine_error():
    cfg = PreemptionConfig(mode="swap", host_capacity_tokens=5)
    with pytest.raises(HostMemoryError, match=r"swap-out of request 'a' needs 12 tokens.*capacity 5"):
        simulate(two(), Script(), engine="sglang", preemption=cfg)
    cfg = PreemptionConfig(mode="swap", host_capacity_tokens=5, reuse=True)
    with pytest.raises(HostMemoryError, match=r"request 'a' needs 12 tokens"):
        simulate(two(), Script(), engine="sglang", preemption=cfg)


@pytest.mark.parametrize("pool", [TreeHostPool, PlainHostPool])
def test_host_pools_refuse_a_swap_in_without_a_copy(pool):
    p = pool(100, 1)
    with pytest.raises(HostKVError, match="'x': its KV is not in host memory"):
        p.swap_in(7, (1, 2, 3), "x")
    assert p.swap_out(7, (1, 2, 3), 3, "x") == 3
    p.unlock(7)
    p.swap_in(7, (1, 2, 3), "x")
    if pool is PlainHostPool:  # no reuse: the copy is gone after its swap-in
        with pytest.raises(HostKVError):
            p.swap_in(7, (1, 2, 3), "x")
        assert p.used_tokens == 0
    else:  # reuse: the pages stay, a new swap-out of the same prefix sends only what is new
        assert p.swap_out(7, (1, 2, 3, 4), 4, "x") == 1


def test_tree_pool_evicts_lru_and_invalidates_the_cut_copy():
    p = TreeHostPool(6, 1)
    p.swap_out(1, (1, 2, 3), 3)
    p.unlock(1)
    p.swap_out(2, (9, 8, 7), 3)
    p.unlock(2)
    assert p.valid(1) and p.valid(2)
    p.swap_out(3, (5, 5, 5), 3)  # evicts the least recently used copy (1)
    assert not p.valid(1) and p.valid(2) and p.valid(3)
    p.tree.check_invariants()
    with pytest.raises(HostMemoryError):
        p.swap_out(4, (4, 4, 4, 4, 4, 4, 4), 7)  # larger than the pool


def test_a_trace_that_swaps_in_a_dropped_request_is_rejected():
    i = two()
    tr = simulate(i, Script(), engine="sglang", preemption=SYNC)
    a = rec(tr, "a")
    lied = dataclasses.replace(a, runs=(a.runs[0]._replace(end="preempt"), a.runs[1]))
    bad = dataclasses.replace(tr, requests=[lied if r.id == "a" else r for r in tr.requests])
    rep = check_trace(i, bad, strict=False)
    assert any("a dropped request must recompute" in v for v in rep.violations)


# --------------------------------------------------------------------------------------------
# the checker's replay catches tampering


def _kinds(rep):
    return {v.split("]")[0][1:] for v in rep.violations}


def test_checker_catches_tampered_switch_events():
    i = two()
    tr = simulate(i, Script(), engine="sglang", preemption=ASYNC)
    assert check_trace(i, tr).ok
    out, back = tr.switches

    def with_events(evs):
        return dataclasses.replace(tr, switches=list(evs))

    early = back._replace(t_end=back.t_end + 5.0, t_start=back.t_start + 5.0)  # still copying while a runs
    cases = {
        "late swap-in": with_events([out, early]),
        "missing swap-out": with_events([back]),
        "too many tokens": with_events([out._replace(tokens=13), back]),
        "wrong duration": with_events([out._replace(t_end=out.t_end * 1.5), back]),
        "wrong copies": with_events([out._replace(copies=3), back]),
        "before the swap-out": with_events([out._replace(t_start=30.0, t_end=30.0 + (out.t_end - out.t_start)), back]),
    }
    for name, bad in cases.items():
        rep = check_trace(i, bad, strict=False)
        assert "switch" in _kinds(rep), name
    tiny = dataclasses.replace(tr, meta={**tr.meta, "preemption": {**tr.meta["preemption"], "host_capacity_tokens": 5}})
    assert any("host_capacity_tokens 5" in v for v in check_trace(i, tiny, strict=False).violations)
    synced = dataclasses.replace(tr, meta={**tr.meta, "preemption": {**tr.meta["preemption"], "sync": True}})
    assert any("the GPU must stall" in v for v in check_trace(i, synced, strict=False).violations)


def test_checker_catches_a_swap_in_run_that_does_not_add_up():
    i = two()
    tr = simulate(i, Script(), engine="sglang", preemption=SYNC)
    a = rec(tr, "a")
    more = dataclasses.replace(a, runs=(a.runs[0], a.runs[1]._replace(swapped_in=3)))
    bad = dataclasses.replace(tr, requests=[more if r.id == "a" else r for r in tr.requests])
    assert {"tokens", "switch"} <= _kinds(check_trace(i, bad, strict=False))
    in_p = dataclasses.replace(a, runs=(a.runs[0], a.runs[1]._replace(admit_step=3)))
    bad = dataclasses.replace(tr, requests=[in_p if r.id == "a" else r for r in tr.requests])
    assert not check_trace(i, bad, strict=False).ok


def test_trace_json_round_trips_and_old_traces_are_unchanged():
    from prefixsched.theory.trace import Trace

    i = two()
    tr = simulate(i, Script(), engine="sglang", preemption=ASYNC)
    d = json.loads(json.dumps(tr.to_dict()))
    assert Trace.from_dict(d).to_dict() == tr.to_dict()
    assert len(d["requests"][0]["runs"][1]) == 6 and "switches" in d
    plain = simulate(i, create("fcfs"), engine="sglang").to_dict()
    assert "switches" not in plain and all(len(x) == 5 for r in plain["requests"] for x in r.get("runs", []))


# --------------------------------------------------------------------------------------------
# lock_ref stays exact; every preemptive policy and mode passes the checker


def _final_state_is_clean(w) -> None:
    cache = w.cache
    cache.check_invariants()
    assert cache.locked_tokens == 0, "a lock_ref leaked through preemption"
    assert cache.reserved_tokens == 0, "private KV leaked"
    assert all(n.lock_ref == 0 for n in cache.iter_nodes())
    pre = w.pre
    assert not pre.held and not pre.ready and not pre.heap and not pre.out_pending
    pool = pre.pool
    if isinstance(pool, TreeHostPool):
        pool.tree.check_invariants()
        assert pool.tree.locked_tokens == 0 and not pool.locks
    elif isinstance(pool, PlainHostPool):
        assert not pool.locked


MODES = {"drop": DROP, "sync": SYNC, "async": ASYNC,
         "async-plain": PreemptionConfig(mode="swap", sync=False),
         "group-reuse": PreemptionConfig.fastswitch(sync=True)}


@settings(deadline=None, max_examples=25)
@given(inst=instances(max_clients=3, max_requests_per_client=6, engine="sglang", max_output=24, cost=("default",)),
       pol=st.sampled_from(("vtc-preempt:1", "fastswitch", "sglang-priority:0", "vtc")),
       mode=st.sampled_from(sorted(MODES)), running=st.sampled_from((2, 4, 256)))
def test_property_preemptive_runs_pass_the_checker_and_leave_no_locks(inst, pol, mode, running):
    tight = dataclasses.replace(inst, limits=dataclasses.replace(inst.limits, max_running_requests=running))
    kw = {"update_prob": 0.3} if pol == "fastswitch" else {"margin": 0.0} if pol.startswith("vtc-") else {}
    w = Worker(tight, create(pol, **kw), engine="sglang", preemption=MODES[mode])
    w.run(final=True)
    tr = w.trace()
    rep = check_trace(tight, tr, strict=False)
    assert rep.ok, rep.violations[:5]
    _final_state_is_clean(w)
    assert all(r.finish >= r.first_token >= r.arrival for r in tr.requests)
    again = simulate(tight, create(pol, **kw), engine="sglang", preemption=MODES[mode])
    assert json.dumps(again.to_dict(), sort_keys=True) == json.dumps(tr.to_dict(), sort_keys=True)


def test_online_worker_with_preemption_equals_the_whole_instance_run():
    i, cfg = three()
    whole = simulate(i, Script((("a", "b", 3), ("a", "c", 5))), engine="sglang", preemption=cfg)
    w = Worker(i, Script((("a", "b", 3), ("a", "c", 5))), engine="sglang", preemption=cfg, requests=())
    for r in i.requests:
        w.run(r.arrival)
        w.submit(r)
    w.run(final=True)
    assert json.dumps(w.trace().to_dict(), sort_keys=True) == json.dumps(whole.to_dict(), sort_keys=True)


def test_a_swap_in_that_the_decode_batch_needs_the_pages_of_is_aborted():
    # found by hypothesis: a 35-token pool where an admitted, still-copying swap-in holds the pages
    # the only running request needs for its next token. The engine gives the swap-in's pages back
    # (an "abort" event; the request waits again) instead of failing to decode.
    outs = [20, 23, 29, 22, 20, 20, 20]
    reqs = tuple(R(f"r{k}", "c0", 0.0, (10000,), o) for k, o in enumerate(outs))
    reqs += tuple(R(f"r{7 + k}", "c1", 0.0, (20000,), 20) for k in range(4))
    i = Instance(reqs, CostModel.token_units(), Limits(kv_capacity_tokens=35, max_prefill_tokens=1, max_running_requests=2,
                                                        page_size=1, chunked_prefill_size=None))
    w = Worker(i, create("vtc-preempt", interval=1, margin=0.0), engine="sglang", preemption=PreemptionConfig.fastswitch())
    w.run(final=True)
    tr = w.trace()
    assert tr.meta["preemption"]["aborted_swap_ins"] >= 1
    assert any(e.kind == "abort" for e in tr.switches)
    assert check_trace(i, tr).ok
    _final_state_is_clean(w)


def test_preemption_config_is_validated_and_round_trips():
    from prefixsched.errors import InputError

    for bad, field in (({"mode": "evict"}, "preemption.mode"), ({"host_capacity_tokens": -1}, "host_capacity_tokens"),
                       ({"sync": 1}, "preemption.sync"), ({"reuse": "yes"}, "preemption.reuse")):
        with pytest.raises(InputError, match=field):
            PreemptionConfig(**bad).validate()
    with pytest.raises(InputError, match=r"preemption\.nope: unknown field"):
        PreemptionConfig.from_dict({"nope": 1})
    with pytest.raises(InputError, match=r"switch\.granularity"):
        PreemptionConfig.from_dict({"switch": {"granularity": "page"}})
    cfg = PreemptionConfig.fastswitch(host_capacity_tokens=123)
    assert PreemptionConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert (cfg.mode, cfg.sync, cfg.reuse, cfg.switch.granularity) == ("swap", False, True, "group")
    with pytest.raises(InputError, match="preemption"):
        simulate(two(), create("fcfs"), engine="sglang", preemption={"mode": "drop"})


@settings(deadline=None, max_examples=15)
@given(inst=instances(max_clients=3, max_requests_per_client=5, engine="sglang", max_output=20, cost=("default",)),
       mode=st.sampled_from(sorted(MODES)))
def test_property_radix_and_host_trees_stay_consistent_after_every_step(inst, mode):
    # lock_ref path-monotone, evictable/locked sums, waiters exact: after every engine step
    tight = dataclasses.replace(inst, limits=dataclasses.replace(inst.limits, max_running_requests=2))
    w = Worker(tight, create("vtc-preempt:1", margin=0.0), engine="sglang", preemption=MODES[mode])
    guard = 0
    while w.done < len(tight.requests):
        w.run(w.now + 1e-9, final=True)
        w.cache.check_invariants()
        pool = w.pre.pool
        if isinstance(pool, TreeHostPool):
            pool.tree.check_invariants()
            assert pool.used_tokens <= pool.capacity_tokens
        elif isinstance(pool, PlainHostPool):
            assert 0 <= pool.used_tokens <= pool.capacity_tokens
        guard += 1
        assert guard < 100_000
    _final_state_is_clean(w)
    assert check_trace(tight, w.trace()).ok
