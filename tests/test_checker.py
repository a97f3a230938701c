"""Tests of the independent checker (prefixsched.theory.schedule).

Traces are built by hand (literal numbers) or by the tiny scalar engine below, which is written
independently of the checker: it follows the trace contract step by step with
``CostModel.step_time`` and running counters, and claims cached tokens from a brute-force
page-key prefix search (``model.page_keys`` + ``model.lcp``), never from the checker's trie.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import deque
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixsched.errors import CheckerError
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import BlockPrompt, Instance, Limits, Request, page_keys
from prefixsched.theory.schedule import IdleGap, check_trace, idle_with_waiting
from prefixsched.theory.trace import RequestRecord, Trace

TRACE_PATH = Path(__file__).resolve().parents[2] / "shared/data/mooncake/conversation_trace.jsonl"


# ---------------------------------------------------------------------------------------------
# a tiny independent engine


class MiniEngine:
    """Steps a schedule forward with scalar bookkeeping (not the checker's vectorised formulas)."""

    def __init__(self, instance: Instance) -> None:
        self.inst = instance
        self.cm = instance.cost_model
        self.t = 0.0
        self.step_start: list[float] = []
        self.step_end: list[float] = []
        self.rec: dict[str, dict] = {}
        self.decoding: dict[str, tuple[Request, int]] = {}  # id -> (request, admit_step)
        self.ctx = 0  # context tokens of the decoding requests before the next step
        self.reserved = 0  # prompt + output of every request in flight (conservative KV)

    def busy(self) -> bool:
        return bool(self.decoding)

    def run_step(self, admitted: list[tuple[Request, int]]) -> None:
        s = len(self.step_start)
        t0 = max([self.t] + [r.arrival for r, _ in admitted])
        E = sum(self.cm.weighted_extend(r.prompt_len - c, r.prompt_len) for r, c in admitted)
        dur = self.cm.step_time(E, len(self.decoding), self.ctx)
        t1 = t0 + dur
        self.step_start.append(t0)
        self.step_end.append(t1)
        self.t = t1
        # decoding requests produced one token each
        self.ctx += len(self.decoding)
        for rid, (r, a) in list(self.decoding.items()):
            if a + r.output_len - 1 == s:
                del self.decoding[rid]
                self.ctx -= r.prompt_len + (s + 1 - a)
                self.reserved -= r.prompt_len + r.output_len
                self.rec[rid]["finish"] = t1
        for r, c in admitted:
            self.rec[r.id] = dict(
                id=r.id, client=r.client, arrival=r.arrival, admit=t0, first_token=t1, finish=t1,
                admit_step=s, finish_step=s + r.output_len - 1, prompt_len=r.prompt_len,
                cached_tokens=c, extend_tokens=r.prompt_len - c, output_len=r.output_len,
            )
            if r.output_len > 1:
                self.decoding[r.id] = (r, s)
                self.ctx += r.prompt_len + 1
                self.reserved += r.prompt_len + r.output_len

    def trace(self, name: str = "mini") -> Trace:
        return Trace(
            policy={"name": name},
            requests=[RequestRecord(**self.rec[r.id]) for r in self.inst.requests if r.id in self.rec],
            step_start=list(self.step_start),
            step_end=list(self.step_end),
        )


def trace_from_plan(instance: Instance, plan: list[list[tuple[str, int]]]) -> Trace:
    """Admit ``plan[s]`` = [(id, cached), ...] in step s, then decode until everything finished."""
    by_id = instance.by_id()
    eng = MiniEngine(instance)
    for adm in plan:
        eng.run_step([(by_id[i], c) for i, c in adm])
    while eng.busy():
        eng.run_step([])
    return eng.trace()


def plan_of(trace: Trace) -> list[list[tuple[str, int]]]:
    plan: list[list[tuple[str, int]]] = [[] for _ in range(trace.n_steps)]
    for r in trace.requests:
        plan[r.admit_step].append((r.id, r.cached_tokens))
    while plan and not plan[-1]:
        plan.pop()
    return plan


def token_pages(r: Request, page_size: int) -> tuple:
    """Full pages of the prompt as tuples of token ids (token-level ground truth; block prompts are
    expanded, so prompts of different block sizes compare correctly)."""
    toks = tuple(r.prompt)
    return tuple(toks[k * page_size : (k + 1) * page_size] for k in range(len(toks) // page_size))


def brute_bound(r: Request, earlier: list[Request], page_size: int) -> int:
    """Max cached tokens: longest page-aligned prefix shared with an earlier-prefilled prompt."""
    mine = token_pages(r, page_size)
    best = 0
    for q in earlier:
        other = token_pages(q, page_size)
        k = 0
        while k < min(len(mine), len(other)) and mine[k] == other[k]:
            k += 1
        best = max(best, k)
    return min(best * page_size, r.prompt_len - 1)


def fcfs_trace(instance: Instance, claim: str = "max") -> Trace:
    """Greedy FCFS: admit arrived requests in order while slots, prefill budget and conservative KV
    (sum of prompt + output, no sharing) allow; claim the brute-force bound (or 0)."""
    lim = instance.limits
    eng = MiniEngine(instance)
    reqs = list(instance.requests)
    i = 0
    waiting: deque[Request] = deque()
    prefilled: list[Request] = []
    while i < len(reqs) or waiting or eng.busy():
        while i < len(reqs) and reqs[i].arrival <= eng.t:
            waiting.append(reqs[i])
            i += 1
        if not waiting and not eng.busy():
            eng.t = reqs[i].arrival
            continue
        admitted: list[tuple[Request, int]] = []
        ext_sum = 0
        kv = eng.reserved
        while waiting and len(eng.decoding) + len(admitted) < lim.max_running_requests:
            r = waiting[0]
            c = brute_bound(r, prefilled, lim.page_size) if claim == "max" else 0
            e = r.prompt_len - c
            if admitted and ext_sum + e > lim.max_prefill_tokens:
                break
            if kv + r.prompt_len + r.output_len > lim.kv_capacity_tokens:
                break
            waiting.popleft()
            admitted.append((r, c))
            ext_sum += e
            kv += r.prompt_len + r.output_len
        eng.run_step(admitted)
        prefilled.extend(r for r, _ in admitted)
    return eng.trace("fcfs")


def brute_peak_kv(instance: Instance, trace: Trace) -> int:
    ps = instance.limits.page_size
    by_id = instance.by_id()
    peak = 0
    for s in range(trace.n_steps):
        live = [by_id[r.id] for r in trace.requests if r.admit_step <= s <= r.finish_step]
        pages = set()
        private = 0
        for r in live:
            keys = token_pages(r, ps)
            pages.update(tuple(keys[: k + 1]) for k in range(len(keys)))
            private += r.prompt_len - len(keys) * ps + r.output_len
        peak = max(peak, len(pages) * ps + private)
    return peak


def kinds(report) -> set[str]:
    return set(report.stats["violation_counts"])


# ---------------------------------------------------------------------------------------------
# the hand-made example (token units: prefill costs 1 per extend token, decoding is free)

TU = CostModel.token_units()


def small_instance(**limits) -> Instance:
    lim = dict(kv_capacity_tokens=100, max_prefill_tokens=8, max_running_requests=3, page_size=1)
    lim.update(limits)
    return Instance(
        requests=(
            Request("r0", "A", 0.0, (1, 2, 3, 4), 2),
            Request("r1", "B", 0.0, (1, 2, 3, 5, 6), 1),
            Request("r2", "A", 1.0, (1, 2, 3, 4, 7), 3),
        ),
        cost_model=TU,
        limits=Limits(**lim),
    )


def literal_trace() -> Trace:
    # step 0 [0,4): r0 prefills 4 tokens. step 1 [4,7): r1 (3 cached from r0) and r2 (4 cached)
    # prefill 2 + 1 tokens, r0 decodes its last token. steps 2, 3 [7,7): r2 decodes (free).
    R = RequestRecord
    return Trace(
        policy={"name": "hand"},
        requests=[
            R("r0", "A", 0.0, 0.0, 4.0, 7.0, 0, 1, 4, 0, 4, 2),
            R("r1", "B", 0.0, 4.0, 7.0, 7.0, 1, 1, 5, 3, 2, 1),
            R("r2", "A", 1.0, 4.0, 7.0, 7.0, 1, 3, 5, 4, 1, 3),
        ],
        step_start=[0.0, 4.0, 7.0, 7.0],
        step_end=[4.0, 7.0, 7.0, 7.0],
    )


def test_literal_trace_passes_and_matches_engine():
    inst = small_instance()
    tr = literal_trace()
    rep = check_trace(inst, tr)
    assert rep.ok and rep.violations == []
    assert rep.stats["n_steps"] == 4 and rep.stats["peak_running"] == 3
    # step 1 holds r0, r1, r2: trie pages {1,2,3,4,5,6,7} + private outputs 2+1+3
    assert rep.stats["peak_kv_tokens"] == 13 and rep.stats["peak_kv_step"] == 1
    assert rep.stats["cached_tokens"] == 7 and rep.stats["cached_tokens_bound"] == 7
    # the independent engine rebuilds the same trace from the plan
    rebuilt = trace_from_plan(inst, [[("r0", 0)], [("r1", 3), ("r2", 4)]])
    assert rebuilt.requests == tr.requests
    assert (rebuilt.step_start, rebuilt.step_end) == (tr.step_start, tr.step_end)
    # greedy FCFS with maximal claims finds the same schedule here
    assert fcfs_trace(inst).requests == tr.requests


def test_strict_raises_checker_error():
    inst = small_instance()
    tr = literal_trace()
    tr.requests[1] = dataclasses.replace(tr.requests[1], cached_tokens=4, extend_tokens=1)
    with pytest.raises(CheckerError, match="r1"):
        check_trace(inst, tr)


def test_admit_before_arrival():
    inst = small_instance()
    late = Instance(
        requests=inst.requests[:2] + (dataclasses.replace(inst.requests[2], arrival=5.0),),
        cost_model=TU, limits=inst.limits,
    )
    tr = literal_trace()
    tr.requests[2] = dataclasses.replace(tr.requests[2], arrival=5.0)
    rep = check_trace(late, tr, strict=False)
    assert kinds(rep) == {"causality"}
    assert any("'r2'" in v and "before its arrival" in v for v in rep.violations)


def test_wrong_step_duration():
    inst = small_instance()
    tr = literal_trace()
    tr.step_end[3] = 8.0
    tr.requests[2] = dataclasses.replace(tr.requests[2], finish=8.0)
    rep = check_trace(inst, tr, strict=False)
    assert kinds(rep) == {"duration"}
    assert rep.violations == [
        "[duration] step 3: duration 1.0 s but the cost model gives 0.0 s "
        "(weighted extend 0, decode batch 1, context 0)"
    ]


def test_wrong_cost_model_flags_every_prefill_step():
    inst = small_instance()
    slower = Instance(inst.requests, CostModel.token_units(c_attn=0.5), inst.limits)
    rep = check_trace(slower, literal_trace(), strict=False)
    assert rep.stats["violation_counts"] == {"duration": 2}


def test_over_claimed_cached_tokens():
    inst = small_instance()
    # r1 claims 4 cached tokens but shares only (1,2,3) with r0; times rebuilt consistently
    tr = trace_from_plan(inst, [[("r0", 0)], [("r1", 4), ("r2", 4)]])
    rep = check_trace(inst, tr, strict=False)
    assert kinds(rep) == {"cache"}
    assert "request 'r1' (step 1): claims 4 cached tokens" in rep.violations[0]
    assert "at most 3" in rep.violations[0]


def test_same_step_requests_do_not_share():
    inst = small_instance()
    # r0 and r2 in the same step: r2 may not reuse r0's prompt
    tr = trace_from_plan(inst, [[("r0", 0), ("r2", 4)], [("r1", 3)]])
    rep = check_trace(inst, tr, strict=False)
    assert kinds(rep) == {"cache"}
    assert "'r2'" in rep.violations[0] and "at most 0" in rep.violations[0]


def test_cache_cap_leaves_one_token_to_prefill():
    inst = Instance(
        (Request("a", "A", 0.0, (1, 2, 3), 1), Request("b", "A", 0.0, (1, 2, 3), 1)),
        cost_model=TU, limits=Limits(page_size=1),
    )
    ok = trace_from_plan(inst, [[("a", 0)], [("b", 2)]])
    assert check_trace(inst, ok).ok
    bad = trace_from_plan(inst, [[("a", 0)], [("b", 3)]])  # extend 0 as well
    rep = check_trace(inst, bad, strict=False)
    assert kinds(rep) == {"cache", "tokens"}


def test_over_max_running():
    inst = small_instance(max_running_requests=2)
    rep = check_trace(inst, literal_trace(), strict=False)
    assert kinds(rep) == {"limits"}
    assert rep.violations == [
        "[limits] step 1: 3 requests in flight (2 admitted + 1 decoding) > max_running_requests 2"
    ]


def test_prefill_cap_allows_a_lone_request():
    inst = small_instance(max_prefill_tokens=2)
    rep = check_trace(inst, literal_trace(), strict=False)
    # step 0 admits r0 alone with 4 > 2 extend tokens: allowed; step 1 admits two with 3 > 2
    assert rep.violations == [
        "[limits] step 1: 2 requests admitted with 3 extend tokens > max_prefill_tokens 2"
    ]


def test_over_kv_capacity():
    inst = small_instance(kv_capacity_tokens=12)
    rep = check_trace(inst, literal_trace(), strict=False)
    assert kinds(rep) == {"kv"}
    assert "step 1" in rep.violations[0] and "at least 13 KV tokens" in rep.violations[0]
    assert check_trace(small_instance(kv_capacity_tokens=13), literal_trace()).ok


def test_mismatched_ids():
    inst = small_instance()
    tr = literal_trace()
    tr.requests[1] = dataclasses.replace(tr.requests[1], id="zz")
    rep = check_trace(inst, tr, strict=False)
    assert "records" in kinds(rep)
    assert any("'zz'" in v and "not in the instance" in v for v in rep.violations)
    assert any("'r1' has no record" in v for v in rep.violations)


def test_duplicate_and_mismatched_fields():
    inst = small_instance()
    tr = literal_trace()
    tr.requests.append(tr.requests[0])
    tr.requests[1] = dataclasses.replace(tr.requests[1], client="A")
    rep = check_trace(inst, tr, strict=False)
    assert any("'r0' has more than one record" in v for v in rep.violations)
    assert any("'r1': record client = 'A', instance says 'B'" in v for v in rep.violations)


def test_causality_step_indices():
    inst = small_instance()
    tr = literal_trace()
    tr.requests[2] = dataclasses.replace(tr.requests[2], finish_step=2, finish=7.0)
    rep = check_trace(inst, tr, strict=False)
    assert any("finish_step 2 != admit_step 1 + output_len 3 - 1" in v for v in rep.violations)
    tr = literal_trace()
    tr.requests[0] = dataclasses.replace(tr.requests[0], first_token=3.0)
    rep = check_trace(inst, tr, strict=False)
    assert rep.violations == ["[causality] request 'r0': first_token 3.0 != step_end[0] = 4.0"]
    tr = literal_trace()
    tr.requests[0] = dataclasses.replace(tr.requests[0], finish_step=9)
    rep = check_trace(inst, tr, strict=False)
    assert any("not within 0 <= admit_step <= finish_step < n_steps = 4" in v for v in rep.violations)


def test_tokens_must_add_up():
    inst = small_instance()
    tr = literal_trace()
    tr.requests[0] = dataclasses.replace(tr.requests[0], cached_tokens=1)
    rep = check_trace(inst, tr, strict=False)
    assert "tokens" in kinds(rep)
    assert any("cached_tokens 1 + extend_tokens 4 != prompt_len 4" in v for v in rep.violations)


def test_step_order_and_empty_steps():
    inst = small_instance()
    tr = literal_trace()
    tr.step_start[1], tr.step_end[1] = 3.0, 6.0
    rep = check_trace(inst, tr, strict=False)
    assert any("step 1: starts at 3.0 before step 0 ends at 4.0" in v for v in rep.violations)
    tr = literal_trace()
    tr.step_start.append(7.0)
    tr.step_end.append(7.0)
    rep = check_trace(inst, tr, strict=False)
    assert rep.violations == [
        "[steps] step 4: no request is admitted or running in it (empty steps are not recorded)"
    ]


def test_duration_with_overheads_attention_and_context():
    cm = CostModel(
        prefill_base_s=1.0, prefill_per_token_s=1.0, c_attn=0.5,
        decode_base_s=2.0, decode_per_request_s=1.0, decode_per_context_token_s=0.25,
    )
    inst = Instance((Request("a", "A", 0.0, (1, 2, 3, 4), 3),), cost_model=cm)
    # step 0: 1 + (1 + 0.5*4)*4 = 13; step 1: 2 + 1 + 0.25*(4+1) = 4.25; step 2: context 6 -> 4.5
    R = RequestRecord
    tr = Trace({"name": "hand"}, [R("a", "A", 0.0, 0.0, 13.0, 21.75, 0, 2, 4, 0, 4, 3)],
               [0.0, 13.0, 17.25], [13.0, 17.25, 21.75])
    assert check_trace(inst, tr).ok
    tr.step_end[2] = 21.5
    tr.requests[0] = dataclasses.replace(tr.requests[0], finish=21.5)
    rep = check_trace(inst, tr, strict=False)
    assert kinds(rep) == {"duration"} and "step 2" in rep.violations[0]


def test_json_round_trip_still_checks():
    inst = small_instance()
    tr = Trace.from_dict(json.loads(json.dumps(literal_trace().to_dict())))
    assert check_trace(inst, tr).ok


def test_violation_messages_are_capped_but_counted():
    inst = small_instance()
    slower = Instance(inst.requests, CostModel.token_units(c_attn=0.5), inst.limits)
    rep = check_trace(slower, literal_trace(), strict=False, max_per_kind=1)
    assert rep.stats["violation_counts"] == {"duration": 2}  # steps 0 and 1
    assert len(rep.violations) == 2 and rep.violations[0].startswith("[duration] step 0:")
    assert rep.violations[-1] == "[duration] ... and 1 more"


# ---------------------------------------------------------------------------------------------
# idle_with_waiting


def test_idle_with_waiting_reports_the_gap():
    inst = Instance(
        (Request("a", "A", 0.0, (1, 2), 1), Request("b", "B", 1.0, (3, 4), 1)),
        cost_model=TU,
    )
    # a runs [0,2); b arrives at 1 but the server idles until 5
    R = RequestRecord
    tr = Trace({"name": "lazy"}, [R("a", "A", 0.0, 0.0, 2.0, 2.0, 0, 0, 2, 0, 2, 1),
                                  R("b", "B", 1.0, 5.0, 7.0, 7.0, 1, 1, 2, 0, 2, 1)],
               [0.0, 5.0], [2.0, 7.0])
    assert check_trace(inst, tr).ok  # not a violation
    assert idle_with_waiting(inst, tr) == [IdleGap(2.0, 5.0, 1, "b")]
    # a late first step is idle from the first arrival
    late = [
        dataclasses.replace(tr.requests[0], admit=0.5, first_token=2.5, finish=2.5),
        dataclasses.replace(tr.requests[1], admit=2.5, first_token=4.5, finish=4.5),
    ]
    tr2 = Trace({"name": "late"}, late, [0.5, 2.5], [2.5, 4.5])
    assert idle_with_waiting(inst, tr2) == [IdleGap(0.0, 0.5, 0, "a")]


def test_no_idle_when_jumping_to_the_next_arrival():
    inst = Instance(
        (Request("a", "A", 0.0, (1, 2), 1), Request("b", "B", 5.0, (3, 4), 1)),
        cost_model=TU,
    )
    tr = fcfs_trace(inst)
    assert tr.step_start == [0.0, 5.0]
    assert check_trace(inst, tr).ok
    assert idle_with_waiting(inst, tr) == []


# ---------------------------------------------------------------------------------------------
# properties: engine-built traces pass; tampering is caught; KV/cache bounds equal brute force


@st.composite
def instances(draw):
    block_kind = draw(st.booleans())
    block_size = draw(st.sampled_from([2, 4]))  # one block size per instance (Instance.validate)
    page_size = draw(st.sampled_from([1, 2, 3, 4, 8]))
    n = draw(st.integers(1, 7))
    reqs = []
    t = 0.0
    for i in range(n):
        t += draw(st.sampled_from([0.0, 0.0, 1.0, 3.0, 10.0]))
        if block_kind:
            bs = block_size
            nb = draw(st.integers(1, 4))
            blocks = draw(st.lists(st.integers(0, 3), min_size=nb, max_size=nb))
            length = draw(st.integers((nb - 1) * bs + 1, nb * bs))
            prompt = BlockPrompt(blocks, length, bs)
        else:
            prompt = tuple(draw(st.lists(st.integers(0, 2), min_size=1, max_size=12)))
        reqs.append(Request(f"r{i}", draw(st.sampled_from("AB")), t, prompt, draw(st.integers(1, 4))))
    cm = draw(st.sampled_from([
        CostModel.token_units(),
        CostModel(prefill_base_s=0.5, prefill_per_token_s=0.25, c_attn=0.125, decode_base_s=1.0,
                  decode_per_request_s=0.5, decode_per_context_token_s=0.0625),
        CostModel(),
    ]))
    lim = Limits(
        kv_capacity_tokens=draw(st.integers(24, 60)),
        max_prefill_tokens=draw(st.integers(1, 20)),
        max_running_requests=draw(st.integers(1, 4)),
        page_size=page_size,
    )
    return Instance(tuple(reqs), cost_model=cm, limits=lim)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances(), data=st.data())
def test_engine_traces_pass_and_tampering_is_caught(inst, data):
    tr = fcfs_trace(inst)
    rep = check_trace(inst, tr, strict=False)
    assert rep.ok, rep.violations
    assert rep.stats["peak_kv_tokens"] == brute_peak_kv(inst, tr)
    assert rep.stats["cached_tokens_bound"] == rep.stats["cached_tokens"]  # engine claims the max
    assert check_trace(inst, fcfs_trace(inst, claim="zero")).ok

    # over-claim one request by one token (when it still prefills >= 1 token): only "cache" fires
    cands = [r for r in tr.requests if r.cached_tokens + 1 <= r.prompt_len - 1]
    if cands:
        victim = data.draw(st.sampled_from(cands))
        plan = [[(i, c + 1 if i == victim.id else c) for i, c in step] for step in plan_of(tr)]
        bad = trace_from_plan(inst, plan)
        rep = check_trace(inst, bad, strict=False)
        assert kinds(rep) == {"cache"}, rep.violations
        assert f"'{victim.id}'" in rep.violations[0]

    # shrink the KV capacity just below the peak: only "kv" fires
    peak = rep_peak = brute_peak_kv(inst, tr)
    need = max(r.prompt_len + r.output_len for r in inst.requests)
    if rep_peak - 1 >= need:
        tight = Instance(inst.requests, inst.cost_model,
                         dataclasses.replace(inst.limits, kv_capacity_tokens=peak - 1))
        rep = check_trace(tight, tr, strict=False)
        assert kinds(rep) == {"kv"}, rep.violations


# ---------------------------------------------------------------------------------------------
# the real trace


def _mooncake_instance(page_size: int) -> Instance:
    reqs = []
    with open(TRACE_PATH) as fh:
        for i, line in enumerate(fh):
            d = json.loads(line)
            reqs.append(Request(
                f"m{i}", f"c{i % 4}", d["timestamp"] / 1000.0,
                BlockPrompt(d["hash_ids"], d["input_length"], 512), d["output_length"],
            ))
    return Instance(tuple(reqs), cost_model=CostModel(),
                    limits=Limits(kv_capacity_tokens=2_000_000, page_size=page_size))


@pytest.mark.trace
@pytest.mark.slow
@pytest.mark.skipif(not TRACE_PATH.exists(), reason=f"real trace absent: {TRACE_PATH}")
def test_real_mooncake_trace_checks():
    inst512 = _mooncake_instance(512)
    tr = fcfs_trace_fast_claims(inst512)
    rep = check_trace(inst512, tr, strict=False)
    assert rep.ok, rep.violations[:5]
    assert rep.stats["cached_tokens"] == rep.stats["cached_tokens_bound"] > 0
    # page size 1: a finer cache can only allow more, so the same claims still pass
    inst1 = dataclasses.replace(inst512, limits=dataclasses.replace(inst512.limits, page_size=1))
    assert check_trace(inst1, tr, strict=False).ok
    # one over-claimed token is caught
    k = next(i for i, r in enumerate(tr.requests) if 0 < r.cached_tokens < r.prompt_len - 1)
    r = tr.requests[k]
    tr.requests[k] = dataclasses.replace(
        r, cached_tokens=r.cached_tokens + 1, extend_tokens=r.extend_tokens - 1
    )
    rep = check_trace(inst512, tr, strict=False)
    assert f"'{r.id}'" in " ".join(v for v in rep.violations if v.startswith("[cache]"))


def fcfs_trace_fast_claims(instance: Instance) -> Trace:
    """:func:`fcfs_trace` with claims from a set of prefix tuples (block keys, page_size 512)."""
    lim = instance.limits
    eng = MiniEngine(instance)
    reqs = list(instance.requests)
    i = 0
    waiting: deque[Request] = deque()
    seen: set[tuple] = set()
    ps = lim.page_size
    while i < len(reqs) or waiting or eng.busy():
        while i < len(reqs) and reqs[i].arrival <= eng.t:
            waiting.append(reqs[i])
            i += 1
        if not waiting and not eng.busy():
            eng.t = reqs[i].arrival
            continue
        admitted: list[tuple[Request, int]] = []
        ext_sum = 0
        kv = eng.reserved
        while waiting and len(eng.decoding) + len(admitted) < lim.max_running_requests:
            r = waiting[0]
            keys = page_keys(r.prompt, ps)
            k = 0
            while k < len(keys) and keys[: k + 1] in seen:
                k += 1
            c = min(k * ps, r.prompt_len - 1)
            e = r.prompt_len - c
            if admitted and ext_sum + e > lim.max_prefill_tokens:
                break
            if kv + r.prompt_len + r.output_len > lim.kv_capacity_tokens:
                break
            waiting.popleft()
            admitted.append((r, c))
            ext_sum += e
            kv += r.prompt_len + r.output_len
        eng.run_step(admitted)
        for r, _ in admitted:
            keys = page_keys(r.prompt, ps)
            seen.update(keys[: k + 1] for k in range(len(keys)))
    return eng.trace("fcfs")


def test_instance_refuses_mixed_block_sizes():
    """Block 1 at block_size 2 and at block_size 4 would share the page key ('B', 1, 0)."""
    from prefixsched.errors import InputError

    a = Request("a", "A", 0.0, BlockPrompt([1], 2, 2), 1)
    b = Request("b", "A", 0.0, BlockPrompt([1], 4, 4), 1)
    with pytest.raises(InputError, match="block sizes"):
        Instance((a, b))
