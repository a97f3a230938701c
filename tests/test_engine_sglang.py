"""The ``sglang`` engine: SGLang 0.5.23's scheduling rules on hand-made instances, and its traces
replayed by the checker on generated ones.

Expected values are derived by hand from SGLang's source (paths in
prefixsched/reference/engine/sglang.py's docstring), not read off the engine.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixsched.errors import IllegalDecisionError, InputError
from prefixsched.reference.engine import native
from prefixsched.reference.engine.sglang import PassRecord, SGLangConfig
from prefixsched.reference.policies import create
from prefixsched.reference.policies.base import Decision, Policy
from prefixsched.reference.simulator import Worker, simulate
from prefixsched.testing.strategies import instances
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request
from prefixsched.theory.schedule import check_trace

TOK = CostModel.token_units()
# one time unit per prefilled token and per decode step: decode steps take time
STEPPED = CostModel(prefill_base_s=0.0, prefill_per_token_s=1.0, c_attn=0.0, decode_base_s=1.0,
                    decode_per_request_s=0.0, decode_per_context_token_s=0.0)


def R(rid: str, client: str, t: float, prompt: tuple[int, ...], out: int) -> Request:
    return Request(id=rid, client=client, arrival=t, prompt=prompt, output_len=out)


def inst(reqs, cost=TOK, **lim) -> Instance:
    return Instance(tuple(reqs), cost, Limits(**lim))


def toks(start: int, n: int) -> tuple[int, ...]:
    return tuple(range(start, start + n))


def passes(instance: Instance, policy: str, **kw) -> tuple[object, list[PassRecord]]:
    recs: list[PassRecord] = []
    tr = simulate(instance, create(policy), engine="sglang", on_pass=recs.append, **kw)
    check_trace(instance, tr)
    return tr, recs


# --------------------------------------------------------------------------------------------
# chunked prefill


def test_chunking_the_specs_verified_example():
    # sglang.md §1.5: chunk budget 64, requests of 40 and 50 tokens -> the first CONTINUE, the
    # second chunked to 24 tokens (the budget left), the loop stops (OTHER). The next pass resumes
    # the chunked request first with its 26 remaining tokens.
    i = inst([R("a", "c", 0, toks(0, 40), 3), R("b", "c", 0, toks(1000, 50), 2)],
             kv_capacity_tokens=10_000, max_prefill_tokens=10_000, chunked_prefill_size=64, page_size=1)
    tr, recs = passes(i, "fcfs")
    assert recs[0].admitted == ("a", "b") and recs[0].extend == {"a": 40, "b": 24}
    assert recs[0].chunked == ("b", 24) and recs[0].stop == "OTHER"
    assert recs[1].admitted == ("b",) and recs[1].extend == {"b": 26} and recs[1].chunked is None
    # steps: P (a 40, b 24), P (b 26; a does not decode in a prefill step), then decode steps:
    # a has 1 token after step 0, b 1 after step 1; b finishes in the first decode step, a in the second
    assert tr.step_kinds == "PPDD"
    a, b = tr.requests
    assert a.runs is None and (a.admit_step, a.finish_step) == (0, 3)
    assert b.runs is not None and b.runs[0].chunks == ((0, 24), (1, 26)) and b.finish_step == 2
    assert (b.cached_tokens, b.extend_tokens) == (0, 50)
    assert b.first_token == tr.step_end[1]  # the last chunk's step produces the first token
    assert tr.meta["chunks"] == 3


def test_chunk_cut_is_page_aligned_and_the_budget_is_charged_in_pages():
    # page 16, chunk budget 40: a 100-token prompt is cut at 40 // 16 * 16 = 32 tokens; the
    # continuation then resumes with min(40, pool) = 40 tokens, then the last 28.
    i = inst([R("a", "c", 0, toks(0, 100), 2)], kv_capacity_tokens=10_000, max_prefill_tokens=10_000,
             chunked_prefill_size=40, page_size=16)
    tr, recs = passes(i, "fcfs")
    assert tr.requests[0].runs[0].chunks == ((0, 32), (1, 40), (2, 28))
    # the chunk budget is charged with page-rounded extends: after a 20-token request (32 charged)
    # a second request finds 8 tokens left, less than a page: it is not admitted (extend 0, OTHER)
    i2 = inst([R("a", "c", 0, toks(0, 20), 2), R("b", "c", 0, toks(500, 30), 2)], kv_capacity_tokens=10_000,
              max_prefill_tokens=10_000, chunked_prefill_size=40, page_size=16)
    _, recs2 = passes(i2, "fcfs")
    assert recs2[0].admitted == ("a",) and recs2[0].stop == "OTHER"


def test_a_chunk_enters_the_tree_at_the_next_pass():
    # Scheduler.get_next_batch_to_run -> stash_chunked_request: the chunk a prefill computed is
    # inserted into the radix tree when the *next* pass starts, not in that prefill's results, so
    # the tree after each chunk's step holds only the earlier chunks (pool and tree sizes as SGLang
    # reports them; the twin comparison checks the same against SGLang itself). Page 16, chunk
    # budget 40, a 100-token prompt: chunks of 32, 40, 28 tokens.
    i = inst([R("a", "c", 0, toks(0, 100), 2)], kv_capacity_tokens=10_000, max_prefill_tokens=10_000,
             chunked_prefill_size=40, page_size=16)
    _, recs = passes(i, "fcfs")
    pre = [r for r in recs if r.kind == "prefill"]
    assert [r.chunked for r in pre] == [("a", 32), ("a", 40), None]
    # tree tokens (total) after each prefill step: nothing, then chunk 1 (32), then the prompt's
    # 6 full pages (96: the finished prefill is cached in its own results)
    assert [r.cache_after[2] for r in pre] == [0, 32, 96]
    # the pool holds the computed KV all along: free = 10,000 - allocated pages
    assert [r.cache_after[0] for r in pre] == [10_000 - 32, 10_000 - 80, 10_000 - 112]


def test_a_pass_that_admits_nothing_still_matches_the_requests_it_visits():
    # SGLang runs req.init_next_round_input (match_prefix: split and LRU touch) for every request
    # its admission loop visits, before add_one_req decides, so a pass that admits nothing still
    # refreshes the visited prefixes. Here that keeps r4's prefix [16..19] (r2's, LRU-touched by
    # the passes in which r4 waited) ahead of eviction: r4 hits 4 tokens. Found by hypothesis
    # against the mutant that skips those matches (r4 then hits 0 and its first token comes 4
    # time units later); the twin run against SGLang 0.5.23's classes agrees with the engine on
    # this instance at every step (6 steps, 0 mismatches in admitted, hits, pool and tree sizes).
    reqs = [R("r0", "c0", 0, toks(1, 6), 1), R("r1", "c0", 0, toks(1, 6), 1),
            R("r2", "c0", 0, toks(16, 5) + (100000, 100000), 1), R("r3", "c0", 0, toks(1, 6), 2),
            R("r4", "c0", 0, toks(16, 5), 1)]
    i = inst(reqs, kv_capacity_tokens=13, max_prefill_tokens=1, max_running_requests=2, page_size=1,
             chunked_prefill_size=None)
    tr, _ = passes(i, "fcfs")
    assert [(r.id, r.cached_tokens) for r in tr.requests] == [("r0", 0), ("r1", 5), ("r2", 0), ("r3", 5), ("r4", 4)]
    assert tr.requests[4].first_token == 16.0 and tr.step_end == [6.0, 7.0, 14.0, 15.0, 15.0, 16.0]


def test_without_chunking_only_the_first_request_may_exceed_the_prefill_budget():
    # PrefillAdder: chunking off -> a later request is refused once its page-rounded extend
    # reaches rem_input_tokens (>=, not >), the first one may exceed it alone
    i = inst([R("a", "c", 0, toks(0, 30), 2), R("b", "c", 0, toks(100, 10), 2), R("c", "c", 0, toks(200, 10), 2)],
             kv_capacity_tokens=10_000, max_prefill_tokens=20, chunked_prefill_size=None, page_size=1)
    _, recs = passes(i, "fcfs")
    assert recs[0].admitted == ("a",) and recs[0].stop == "OTHER"  # rem_input 20 - 30 < 0
    i = inst([R("a", "c", 0, toks(0, 10), 2), R("b", "c", 0, toks(100, 10), 2)],
             kv_capacity_tokens=10_000, max_prefill_tokens=20, chunked_prefill_size=None, page_size=1)
    _, recs = passes(i, "fcfs")
    assert recs[0].admitted == ("a",)  # b: 10 >= rem_input 10 -> OTHER
    i = inst([R("a", "c", 0, toks(0, 10), 2), R("b", "c", 0, toks(100, 9), 2)],
             kv_capacity_tokens=10_000, max_prefill_tokens=20, chunked_prefill_size=None, page_size=1)
    _, recs = passes(i, "fcfs")
    assert recs[0].admitted == ("a", "b")


# --------------------------------------------------------------------------------------------
# the KV budget: reservation, stop at the first misfit, batch_is_full


def test_admission_reserves_extend_clipped_output_and_a_page_strictly_below_the_pool():
    # an empty pool of 72: a request of 10 + 60 output + one page = 71 < 72 fits; a pool of 71
    # cannot hold it ("total_tokens < remaining_total" is strict)
    ok = inst([R("a", "c", 0, toks(0, 10), 60)], kv_capacity_tokens=72, page_size=1)
    passes(ok, "fcfs")
    with pytest.raises(InputError, match="could never run"):
        Worker(inst([R("a", "c", 0, toks(0, 10), 60)], kv_capacity_tokens=71, page_size=1), create("fcfs"))


def test_stop_at_the_first_misfit_while_the_ideal_engine_skips_it():
    # 'big' does not fit next to the running request; 'small' would. SGLang's loop stops at
    # 'big' (NO_TOKEN, batch_is_full) so 'small' waits; the ideal engine skips 'big'.
    # at the second pass the pool has 200 - 10 (run's prompt) free and run's remaining 49 output
    # tokens are reserved at ratio 0.7 (34.3): 155.7 left; big needs 160 + 2 + a page = 163
    reqs = [R("run", "c0", 0, toks(0, 10), 50), R("big", "c1", 1, toks(1000, 160), 2), R("small", "c2", 1, toks(2000, 5), 2)]
    i = inst(reqs, cost=STEPPED, kv_capacity_tokens=200, max_prefill_tokens=10_000, page_size=1)
    tr, recs = passes(i, "lpm")
    by = {r.id: r for r in tr.requests}
    assert by["small"].admit_step > by["run"].finish_step  # held until the running request left
    second = next(p for p in recs if "big" in p.walk_order)
    assert second.stop == "NO_TOKEN" and second.admitted == () and second.batch_is_full
    ideal = simulate(i, create("lpm"), engine="ideal")
    iby = {r.id: r for r in ideal.requests}
    assert iby["small"].admit_step < iby["run"].finish_step


def test_batch_is_full_blocks_prefill_until_a_request_leaves():
    # after NO_TOKEN the scheduler forms no prefill batch (even for a request that would fit)
    # until a running request finishes: 'late' arrives while the flag is set
    reqs = [R("a", "c", 0, toks(0, 10), 30), R("b", "c", 0, toks(100, 60), 30), R("late", "c", 5, toks(300, 2), 2)]
    i = inst(reqs, cost=STEPPED, kv_capacity_tokens=100, max_prefill_tokens=10_000, page_size=1)
    tr, recs = passes(i, "fcfs")
    by = {r.id: r for r in tr.requests}
    assert by["late"].admit_step > by["a"].finish_step
    assert any(p.batch_is_full and p.kind == "decode" for p in recs)


def test_retraction_order_requeue_and_reprefill():
    # arrivals spread out so that each admission sees the running requests reserved at the
    # decaying new_token_ratio (not in full): the pool over-commits and a decode step retracts
    reqs = [R("a", "c0", 0, toks(0, 10), 80), R("b", "c1", 15, toks(100, 10), 80),
            R("c", "c2", 30, toks(200, 10), 80), R("d", "c3", 45, toks(300, 10), 80)]
    i = inst(reqs, cost=STEPPED, kv_capacity_tokens=230, max_prefill_tokens=10_000, page_size=1)
    tr, recs = passes(i, "fcfs")
    assert tr.meta["retractions"] >= 1
    retracting = [p for p in recs if p.retracted]
    first = retracting[0]
    running = first.state["running"]
    # SGLang retracts the request with the fewest output tokens (then the longest prompt) first
    fewest = min(running, key=lambda r: (r["output_len"], -10))
    assert first.retracted[0] == fewest["id"]
    rec = next(r for r in tr.requests if r.id == first.retracted[0])
    assert rec.runs is not None and rec.runs[0].end == "retract" and rec.runs[-1].end == "finish"
    # the re-prefill reuses its prompt (still in the tree): fill = prompt + outputs so far
    second = rec.runs[1]
    produced = 1 + sum(1 for s in range(rec.runs[0].chunks[-1][0] + 1, rec.runs[0].end_step + 1) if tr.step_kinds[s] == "D")
    assert second.cached_tokens + sum(t for _, t in second.chunks) == 10 + produced
    assert second.cached_tokens == 10
    # after a retraction SGLang re-estimates the ratio from the requests that stay
    stay = [r for r in running if r["id"] not in first.retracted]
    # every request still produces exactly output_len tokens (the checker verified the runs)
    assert all(r.output_len == 80 for r in tr.requests) and stay


def test_new_token_ratio_decays_per_decode_step_and_resets_when_idle():
    r = native.NewTokenRatio.from_config()
    assert r.init == pytest.approx(0.7) and r.min == pytest.approx(0.098)
    for _ in range(600):
        r.decay_step()
    assert r.current == pytest.approx(0.098)
    r.decay_step()
    assert r.current == pytest.approx(0.098)
    r.reset()
    assert r.current == pytest.approx(0.7)
    assert native.NewTokenRatio.after_retract([10, 30], [100, 100]) == pytest.approx((40 + 40) / 201)
    half = native.NewTokenRatio.from_config(schedule_conservativeness=2.0)
    assert half.init == 1.0  # min(0.7 * 2, 1)
    # the engine: a request arriving after an idle gap sees the initial ratio again
    reqs = [R("a", "c", 0, toks(0, 4), 5), R("b", "c", 1000, toks(50, 4), 2)]
    recs: list[PassRecord] = []
    simulate(inst(reqs, cost=STEPPED, kv_capacity_tokens=100, page_size=1), create("fcfs"), engine="sglang", on_pass=recs.append)
    dec = [p for p in recs if p.kind == "decode"]
    assert dec[3].state["new_token_ratio"] == pytest.approx(0.7 - 3 * (0.7 - 0.098) / 600)  # 3 decays before it
    last_prefill = [p for p in recs if p.kind == "prefill"][-1]
    assert last_prefill.state["new_token_ratio"] == pytest.approx(0.7)


# --------------------------------------------------------------------------------------------
# native LPM: calc_priority


def test_native_lpm_orders_by_hit_deprioritises_in_batch_duplicates_and_keeps_ties_stable():
    P = toks(0, 100)
    Q = toks(5000, 40)
    # 'seed' puts P in the tree; then hot (P+x), cold1 (Q+a), cold2 (Q+b, shares 40 cold tokens
    # with cold1), warm (P[:50]+y) arrive together while the seed decodes
    reqs = [R("seed", "s", 0, P + (9999,), 30),
            R("cold1", "c", 200, Q + (1,), 2), R("cold2", "c", 200, Q + (2,), 2),
            R("warm", "w", 200, P[:50] + (3, 4), 2), R("hot", "h", 200, P + (5,), 2)]
    i = inst(reqs, cost=STEPPED, kv_capacity_tokens=100_000, max_prefill_tokens=10_000, page_size=1)
    _, recs = passes(i, "lpm")
    p = next(r for r in recs if "hot" in r.queue_before)
    assert p.queue_before == ("cold1", "cold2", "warm", "hot")
    assert p.deprioritized == ("cold2",)
    assert p.walk_order == ("hot", "warm", "cold1", "cold2")


def test_lpm_sort_key_is_min_match_len_minus_one_not_the_page_aligned_prefix():
    # page 16: a fully cached 32-token prompt matches 32 tokens, its key is 31 (len - 1), while
    # its admission prefix is 16 (page-aligned len - 1); a 48-token prompt sharing 32 keys 32
    assert native.lpm_sort_key(32, 32) == 31
    assert native.lpm_sort_key(32, 48) == 32
    assert native.lpm_sort([("a", 31), ("b", 32)], lambda x: x[1], set()) == [("b", 32), ("a", 31)]


def test_lpm_falls_back_to_fcfs_above_128_waiting_and_keeps_the_last_order():
    # 130 waiting: no sort, no matching; the queue keeps whatever order it had
    assert native.active_policy("lpm", 129) == "fcfs" and native.active_policy("lpm", 128) == "lpm"
    assert native.active_policy("fcfs", 5) == "fcfs"
    reqs = [R("seed", "s", 0, toks(0, 50) + (7,), 40)]
    reqs += [R(f"q{k:03d}", "c", 100, (50_000 + k,) * 3, 2) for k in range(130)]
    reqs += [R("hot", "h", 100, toks(0, 50) + (8,), 2)]
    i = inst(reqs, cost=STEPPED, kv_capacity_tokens=1_000_000, max_prefill_tokens=10_000, max_running_requests=1000, page_size=1)
    _, recs = passes(i, "lpm")
    p = next(r for r in recs if "hot" in r.queue_before)
    assert len(p.queue_before) == 131 and p.walk_order == p.queue_before  # FCFS: no sort


def test_retraction_order_function():
    items = [("a", 5, 10), ("b", 2, 10), ("c", 2, 30), ("d", 5, 10)]
    order = native.decode_retraction_order(items, lambda x: x[1], lambda x: x[2])
    # most preferred to keep first: more outputs, then shorter prompt, ties in batch order;
    # retraction pops from the end: c (2 outputs, longest prompt) goes first, then b
    assert [x[0] for x in order] == ["a", "d", "b", "c"]


def test_in_batch_deprioritisation_function():
    q = [("x", 0, "L1"), ("y", 0, "L1"), ("z", 100, "L1"), ("w", 10, None), ("v", 0, "L2")]
    dep = native.in_batch_deprioritized(q, lambda e: e[1], lambda e: e[2])
    assert dep == {1}  # y duplicates x's lead; z is well cached (not checked); w is short
    assert native.in_batch_deprioritized(q, lambda e: e[1], lambda e: e[2], check_threshold=-1) == set()


# --------------------------------------------------------------------------------------------
# the engine's contract


class _Greedy(Policy):
    name = "test-greedy"

    def __init__(self, ids):
        self.ids = ids

    def decide(self, snap):
        return Decision(tuple(i for i in self.ids if i in {e.request.id for e in snap.queue()}))


def test_an_admission_after_the_pass_stopped_is_illegal():
    i = inst([R("a", "c", 0, toks(0, 40), 3), R("b", "c", 0, toks(1000, 50), 2), R("x", "c", 0, toks(3000, 3), 2)],
             kv_capacity_tokens=10_000, max_prefill_tokens=10_000, chunked_prefill_size=64, page_size=1)
    # b is chunked (the chunk budget is spent): SGLang's loop stops there, x cannot follow
    with pytest.raises(IllegalDecisionError, match="'x'.*the pass has stopped"):
        simulate(i, _Greedy(["a", "b", "x"]), engine="sglang")


def test_same_seed_same_bytes_and_online_equals_whole():
    reqs = [R(f"r{k}", f"c{k % 3}", k * 3.0, toks(100 * (k % 4), 20 + k % 7), 5 + k % 4) for k in range(30)]
    i = inst(reqs, cost=STEPPED, kv_capacity_tokens=400, max_prefill_tokens=64, chunked_prefill_size=32, page_size=4)
    for pol in ("fcfs", "lpm", "dlpm:200", "vtc", "k-lpm"):
        a = json.dumps(simulate(i, create(pol)).to_dict(), sort_keys=True)
        b = json.dumps(simulate(i, create(pol)).to_dict(), sort_keys=True)
        assert a == b
        w = Worker(i, create(pol), requests=())
        for r in i.requests:
            w.run(r.arrival)
            w.submit(r)
        w.run(final=True)
        assert json.dumps(w.trace().to_dict(), sort_keys=True) == a


def test_config_is_validated_and_recorded():
    with pytest.raises(InputError, match="sglang.clip_max_new_tokens"):
        SGLangConfig(clip_max_new_tokens=0).validate()
    with pytest.raises(InputError, match="sglang.bogus"):
        SGLangConfig.from_dict({"bogus": 1})
    i = inst([R("a", "c", 0, toks(0, 4), 2)], kv_capacity_tokens=100)
    tr = simulate(i, create("fcfs"), sglang=SGLangConfig(schedule_conservativeness=0.5))
    assert tr.meta["engine"] == "sglang" and tr.meta["sglang"]["schedule_conservativeness"] == 0.5
    with pytest.raises(InputError, match="unknown engine"):
        simulate(i, create("fcfs"), engine="vllm")


# --------------------------------------------------------------------------------------------
# generated instances: the checker replays every policy's trace


POLICIES = ("fcfs", "lpm", "dlpm:300", "vtc", "k-lpm:2", "dfs-weight", "random")


@settings(deadline=None)
@given(inst=instances(max_clients=3, max_requests_per_client=6, engine="sglang"), pol=st.sampled_from(POLICIES))
def test_property_checker_accepts_every_sglang_trace(inst: Instance, pol: str) -> None:
    tr = simulate(inst, create(pol), engine="sglang")
    rep = check_trace(inst, tr, strict=False)
    assert rep.ok, rep.violations[:5]
    assert sum(r.output_len for r in tr.requests) == tr.meta["output_tokens"]


@settings(deadline=None)
@given(inst=instances(max_clients=3, max_requests_per_client=6, engine="sglang", max_output=30,
                      cost=("default",)), pol=st.sampled_from(("fcfs", "lpm", "dlpm:300", "vtc")))
def test_property_tight_pools_retract_and_the_runs_stay_consistent(inst: Instance, pol: str) -> None:
    tight = dataclasses.replace(inst, limits=dataclasses.replace(inst.limits, max_running_requests=8))
    tr = simulate(tight, create(pol), engine="sglang", sglang=SGLangConfig(init_new_token_ratio=0.2))
    assert check_trace(tight, tr, strict=False).ok
    for r in tr.requests:
        runs = r.all_runs()
        assert [x.end for x in runs] == ["retract"] * (len(runs) - 1) + ["finish"]


# --------------------------------------------------------------------------------------------
# the checker catches sglang-engine traces that break SGLang's rules


def _chunk_example():
    i = inst([R("a", "c", 0, toks(0, 40), 3), R("b", "c", 0, toks(1000, 50), 2)],
             kv_capacity_tokens=10_000, max_prefill_tokens=10_000, chunked_prefill_size=64, page_size=1)
    return i, simulate(i, create("fcfs"), engine="sglang")


def _with_runs(tr, rid, runs):
    recs = [dataclasses.replace(r, runs=runs) if r.id == rid else r for r in tr.requests]
    return dataclasses.replace(tr, requests=recs)


def _kinds(rep):
    return {v.split("]")[0][1:] for v in rep.violations}


def test_checker_rejects_a_chunk_in_a_decode_step_and_a_gap_between_chunks():
    i, tr = _chunk_example()
    assert check_trace(i, tr).ok
    bad = dataclasses.replace(tr, step_kinds="PDDD")
    assert "steps" in _kinds(check_trace(i, bad, strict=False))
    run = tr.requests[1].runs[0]
    gap = _with_runs(tr, "b", (run._replace(chunks=((0, 24), (2, 26))),))
    assert "chunks" in _kinds(check_trace(i, gap, strict=False))


def test_checker_rejects_chunks_that_do_not_add_up_and_wrong_run_ends():
    i, tr = _chunk_example()
    run = tr.requests[1].runs[0]
    short = _with_runs(tr, "b", (run._replace(chunks=((0, 24), (1, 20))),))
    assert "tokens" in _kinds(check_trace(i, short, strict=False))
    ended = _with_runs(tr, "b", (run._replace(end="retract"),))
    assert "runs" in _kinds(check_trace(i, ended, strict=False))


def test_checker_rejects_chunking_when_it_is_off_and_two_requests_mid_prefill():
    i, tr = _chunk_example()
    off = dataclasses.replace(i, limits=dataclasses.replace(i.limits, chunked_prefill_size=None))
    assert "chunks" in _kinds(check_trace(off, tr, strict=False))
    a = tr.requests[0]
    two = _with_runs(tr, "a", (a.all_runs()[0]._replace(chunks=((0, 20), (1, 20))),))
    rep = check_trace(i, two, strict=False)
    assert "chunks" in _kinds(rep) or "duration" in _kinds(rep)


def test_checker_catches_an_engine_that_under_reserves_outputs():
    # run the engine with a clip of 1 output token (it reserves almost nothing for outputs and
    # over-admits) but claim SGLang's 4096 in the trace: the reservation bound must fire
    reqs = [R(f"r{k}", "c", 0, toks(1000 * k, 10), 60) for k in range(6)]
    i = inst(reqs, cost=STEPPED, kv_capacity_tokens=200, max_prefill_tokens=10_000, page_size=1)
    tr = simulate(i, create("fcfs"), engine="sglang", sglang=SGLangConfig(clip_max_new_tokens=1))
    honest = check_trace(i, tr, strict=False)
    assert honest.ok
    lied = dataclasses.replace(tr, meta={**tr.meta, "sglang": {**tr.meta["sglang"], "clip_max_new_tokens": 4096}})
    assert "reserve" in _kinds(check_trace(i, lied, strict=False))
