"""Decode-OOM retraction and the new_token_ratio tracker, replayed on SGLang's own code
(prefixsched.integration.conformance: replay_retraction_order, replay_retract_decode,
replay_new_token_ratio). Tests marked ``sglang`` skip without SGLang (fail instead under
PREFIXSCHED_REQUIRE_SGLANG=1); input errors are checked before SGLang is loaded.
"""

from __future__ import annotations

import pytest

from prefixsched.errors import InputError
from prefixsched.integration.conformance import replay_new_token_ratio, replay_retract_decode, replay_retraction_order


def b(rid, inp, out, **kw):
    return {"id": rid, "input_len": inp, "output_len": out, **kw}


BATCH = [b("a", 100, 5, max_new_tokens=1000), b("b", 50, 5, max_new_tokens=1000), b("c", 10, 50, max_new_tokens=1000), b("d", 10, 1, max_new_tokens=1000)]


@pytest.mark.parametrize(
    "batch,field",
    [
        ("x", "batch"),
        ([{"id": "a", "input_len": 0, "output_len": 1}], "batch[0].input_len"),
        ([{"id": "a", "input_len": 1}], "batch[0].output_len"),
        ([b("a", 1, 5, max_new_tokens=4)], "batch[0].output_len"),
        ([b("a", 1, 1), b("a", 2, 1)], "batch[1].id"),
        ([b("a", 1, 1, priority="high")], "batch[0].priority"),
        ([b("a", 1, 1, colour=3)], "batch[0].colour"),
    ],
)
def test_retraction_input_errors(batch, field):
    with pytest.raises(InputError) as ei:
        replay_retraction_order(batch)
    assert ei.value.field == field


def test_retract_decode_input_errors():
    with pytest.raises(InputError, match="available_tokens"):
        replay_retract_decode(BATCH, 3, page_size=2)
    with pytest.raises(InputError, match="batch"):
        replay_retract_decode([], 0)
    with pytest.raises(InputError, match="kv_len"):
        replay_retract_decode([b("a", 4, 1, kv_len=0)], 0)
    with pytest.raises(InputError, match="retraction_policy"):
        replay_retraction_order(BATCH, "age")


def test_new_token_ratio_input_errors():
    with pytest.raises(InputError, match="schedule_conservativeness"):
        replay_new_token_ratio([], 0)
    with pytest.raises(InputError, match=r"events\[1\]"):
        replay_new_token_ratio(["decay", "grow"])
    with pytest.raises(InputError, match=r"events\[0\].retract\[0\]"):
        replay_new_token_ratio([{"retract": [{"output_len": 1}]}])


@pytest.mark.sglang
def test_length_policy_retracts_fewest_outputs_then_longest_prompt_first():
    # schedule_batch.py::_get_decode_retraction_order: sort by (len(output_ids),
    # -len(origin_input_ids)) descending; retract_decode pops from the end
    assert replay_retraction_order(BATCH) == ["d", "a", "b", "c"]


@pytest.mark.sglang
def test_full_ties_retract_the_later_request_first():
    # stable sort with reverse=True keeps equal keys in batch order; the pop takes the last
    assert replay_retraction_order([b("x", 10, 3), b("y", 10, 3), b("z", 10, 3)]) == ["z", "y", "x"]


@pytest.mark.sglang
def test_priority_policy_retracts_lowest_priority_first():
    # retraction_policy "priority": priority first (larger = more important by default); None last
    batch = [b("hi", 10, 1, priority=5), b("lo", 10, 50, priority=1), b("none", 10, 50), b("mid", 10, 1, priority=3)]
    assert replay_retraction_order(batch, "priority") == ["none", "lo", "mid", "hi"]


@pytest.mark.sglang
def test_retract_decode_frees_one_request_when_that_suffices():
    # page 1: the next decode needs one token per request (4); 2 free -> retract d (frees 10)
    r = replay_retract_decode(BATCH, 2)
    assert r["needs_retraction"] and r["retracted"] == ["d"] and r["aborted"] == []
    assert r["kept"] == ["c", "b", "a"]  # filter_batch keeps the retraction order's survivors
    assert r["available_tokens_before"] == 2 and r["available_tokens_after"] == 12
    # NewTokenRatioTracker.estimate_new_token_ratio_after_retract over the kept requests
    assert r["new_token_ratio"] == pytest.approx((60 + 20 * 3) / (3000 + 1))


@pytest.mark.sglang
def test_retract_decode_counts_pages_and_keeps_going_until_it_fits():
    # page 4, kv_len 8 (= input 8 + output 1 - 1): every request starts a new page next step
    batch = [b(f"r{i}", 8, 1, max_new_tokens=100) for i in range(4)]
    r = replay_retract_decode(batch, 0, page_size=4)
    assert r["retracted"] == ["r3", "r2"] and r["kept"] == ["r0", "r1"]  # 16 needed; 8, then 16 freed
    # a request in the middle of a page needs no new page: nothing to retract
    r = replay_retract_decode([b("x", 9, 1, max_new_tokens=100)] * 1 + [b("y", 10, 1, max_new_tokens=100)], 0, page_size=4)
    assert r["needs_retraction"] is False and r["retracted"] == [] and r["new_token_ratio"] is None


@pytest.mark.sglang
def test_retract_decode_evicts_the_cache_before_retracting():
    r = replay_retract_decode(BATCH, 0, evictable_tokens=10)
    assert r["needs_retraction"] is False and r["evicted_tokens"] == 10


@pytest.mark.sglang
def test_retract_decode_aborts_the_last_request_when_even_it_does_not_fit():
    r = replay_retract_decode([b("only", 16, 1)], 0)
    assert r["retracted"] == [] and r["aborted"] == ["only"] and r["kept"] == []


@pytest.mark.sglang
def test_new_token_ratio_schedule():
    # new_token_ratio_tracker.py: init min(0.7 c, 1), min init * 0.14, decay (init - min) / 600
    r = replay_new_token_ratio(["decay"] * 601 + ["reset", {"retract": [{"output_len": 10, "max_new_tokens": 100}]}, "decay"])
    assert (r["init"], r["min"]) == (pytest.approx(0.7), pytest.approx(0.098))
    assert r["decay"] == pytest.approx((0.7 - 0.098) / 600)
    v = r["values"]
    assert v[0] == pytest.approx(0.7 - r["decay"]) and v[599] == pytest.approx(0.098) and v[600] == pytest.approx(0.098)
    assert v[601] == pytest.approx(0.7)
    assert v[602] == pytest.approx((10 + 20) / 101)  # re-estimated after a retraction
    assert v[603] == pytest.approx(v[602] - r["decay"])
    assert replay_new_token_ratio([], 2.0)["init"] == 1.0  # capped at 1
    assert replay_new_token_ratio([], 0.5)["init"] == pytest.approx(0.35)
