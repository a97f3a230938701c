"""Tests of prefixsched.theory.metrics on hand-computed traces and against brute force."""

from __future__ import annotations

import itertools
import json
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixsched.errors import InputError
from prefixsched.theory import metrics
from prefixsched.theory.metrics import (
    backlog_intervals,
    hit_rate,
    jain_index,
    jain_over_active_window,
    max_service_gap,
    per_client_totals,
    percentiles,
    request_latencies,
    service_timeline,
    summarize,
    throughput,
)
from prefixsched.theory.model import ServiceWeights
from prefixsched.theory.trace import RequestRecord, Trace

W = ServiceWeights(w_e=1, w_q=2)
R = RequestRecord


def example() -> Trace:
    """Three clients, four steps: [0,2) [2,3) [3,4) idle [5,6).

    a1 (A): prefills 10 in step 0, decodes in 1, 2.
    b1 (B): waits [0,2), prefills 4 (4 cached) in 1, decodes in 2, 3.
    c1 (C): waits [0,5), prefills 2 in 3.
    a2 (A): waits [1,5), prefills 1 (5 cached) in 3.
    """
    #        id    cl   arr  admit first finish a  f  prompt cached ext out
    return Trace(
        policy={"name": "hand", "q": 1},
        requests=[
            R("a1", "A", 0.0, 0.0, 2.0, 4.0, 0, 2, 10, 0, 10, 3),
            R("b1", "B", 0.0, 2.0, 3.0, 6.0, 1, 3, 8, 4, 4, 3),
            R("c1", "C", 0.0, 5.0, 6.0, 6.0, 3, 3, 2, 0, 2, 1),
            R("a2", "A", 1.0, 5.0, 6.0, 6.0, 3, 3, 6, 5, 1, 1),
        ],
        step_start=[0.0, 2.0, 3.0, 5.0],
        step_end=[2.0, 3.0, 4.0, 6.0],
    )


def test_latencies_and_percentiles():
    lat = request_latencies(example())
    np.testing.assert_array_equal(lat["ttft"], [2.0, 3.0, 6.0, 5.0])
    np.testing.assert_array_equal(lat["e2e"], [4.0, 6.0, 6.0, 5.0])
    # (4-2)/2, (6-3)/2; one-token requests have no TPOT
    np.testing.assert_array_equal(lat["tpot"], [1.0, 1.5])
    # type-7 percentiles of [2,3,5,6]: h = 3p/100
    p = percentiles(lat["ttft"])
    assert p[50] == pytest.approx(4.0)
    assert p[90] == pytest.approx(5.7)
    assert p[99] == pytest.approx(5.97)
    assert percentiles(lat["tpot"], (50, 99)) == {50: pytest.approx(1.25), 99: pytest.approx(1.495)}
    assert percentiles([], (50,)) == {50: None}
    with pytest.raises(InputError, match="ps"):
        percentiles([1.0], (101,))
    only_a = request_latencies(example(), clients=["A"])
    np.testing.assert_array_equal(only_a["ttft"], [2.0, 5.0])
    np.testing.assert_array_equal(only_a["tpot"], [1.0])


def test_throughput_and_hit_rate():
    thr = throughput(example())
    assert thr["span_s"] == 6.0
    assert thr["tokens_per_s"] == pytest.approx((26 + 8) / 6)
    assert thr["output_tokens_per_s"] == pytest.approx(8 / 6)
    assert thr["extend_tokens_per_s"] == pytest.approx(17 / 6)
    assert hit_rate(example()) == pytest.approx(9 / 26)


def test_service_timeline_actual_and_client_view():
    times, clients, cum = service_timeline(example(), W, view="actual")
    np.testing.assert_array_equal(times, [2.0, 3.0, 4.0, 6.0])
    assert clients == ("A", "B", "C")
    np.testing.assert_array_equal(cum, [[12, 0, 0], [14, 6, 0], [16, 8, 0], [19, 10, 4]])
    _, _, cum_c = service_timeline(example(), W, view="client")
    np.testing.assert_array_equal(cum_c, [[12, 0, 0], [14, 10, 0], [16, 12, 0], [24, 14, 4]])
    with pytest.raises(InputError, match="view"):
        service_timeline(example(), W, view="system")
    # final row equals the per-client totals
    tot = per_client_totals(example(), W)
    assert [tot[c]["service_actual"] for c in clients] == [19, 10, 4]
    assert [tot[c]["service_client"] for c in clients] == [24, 14, 4]
    assert tot["A"] == {
        "requests": 2, "prompt_tokens": 16, "cached_tokens": 5, "extend_tokens": 11,
        "output_tokens": 4, "service_actual": 19.0, "service_client": 24.0,
    }


def test_service_timeline_two_clients_weights():
    tr = Trace({"name": "two"}, [R("x", "X", 0.0, 0.0, 1.0, 3.0, 0, 2, 5, 2, 3, 3),
                                 R("y", "Y", 0.0, 1.0, 2.0, 2.0, 1, 1, 4, 0, 4, 1)],
               [0.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    _, clients, cum = service_timeline(tr, ServiceWeights(w_e=0.5, w_q=3), view="actual")
    assert clients == ("X", "Y")
    np.testing.assert_array_equal(cum, [[1.5 + 3, 0], [7.5, 2 + 3], [10.5, 5]])


def test_backlog_intervals_merge_touching():
    bl = backlog_intervals(example())
    assert bl == {"A": [(1.0, 5.0)], "B": [(0.0, 2.0)], "C": [(0.0, 5.0)]}
    tr = Trace({"name": "t"}, [R("1", "A", 0.0, 1.0, 2.0, 2.0, 0, 0, 1, 0, 1, 1),
                               R("2", "A", 1.0, 2.0, 3.0, 3.0, 1, 1, 1, 0, 1, 1),
                               R("3", "A", 3.5, 4.0, 5.0, 5.0, 2, 2, 1, 0, 1, 1),
                               R("4", "B", 4.0, 4.0, 5.0, 5.0, 2, 2, 1, 0, 1, 1)],
               [1.0, 2.0, 4.0], [2.0, 3.0, 5.0])
    assert backlog_intervals(tr) == {"A": [(0.0, 2.0), (3.5, 4.0)], "B": []}


def test_max_service_gap_picks_pair_and_interval():
    g = max_service_gap(example(), W, view="actual", per_pair=True)
    # A and C are both backlogged on [1,5): D = W_A - W_C goes 0 (at t=1), 12, 14, 16 (t=4)
    assert g["value"] == 16.0
    assert g["pair"] == ("A", "C")
    assert g["interval"] == (1.0, 4.0)
    assert g["per_pair"] == {"A|B": 12.0, "A|C": 16.0, "B|C": 0.0}
    gc = max_service_gap(example(), W, view="client")
    assert gc["value"] == 16.0 and gc["pair"] == ("A", "C")


def test_max_service_gap_sign_and_none():
    # only one client: no pair
    tr = Trace({"name": "t"}, [R("1", "A", 0.0, 1.0, 2.0, 2.0, 0, 0, 1, 0, 1, 1)], [1.0], [2.0])
    assert max_service_gap(tr, W) == {"value": 0.0, "pair": None, "interval": None, "view": "actual"}
    # B gets served while A waits: the pair is ordered (more, less)
    tr = Trace({"name": "t"}, [R("a", "A", 0.0, 3.0, 4.0, 4.0, 1, 1, 2, 0, 2, 1),
                               R("b", "B", 0.0, 0.0, 3.0, 3.0, 0, 0, 3, 0, 3, 1),
                               R("b2", "B", 0.0, 4.0, 5.0, 5.0, 2, 2, 1, 0, 1, 1)],
               [0.0, 3.0, 4.0], [3.0, 4.0, 5.0])
    g = max_service_gap(tr, W)
    assert g["pair"] == ("B", "A") and g["value"] == 5.0 and g["interval"] == (0.0, 3.0)


def test_jain_index():
    assert jain_index([3, 3, 3]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0]) == pytest.approx(1 / 3)
    assert jain_index([3, 1]) == pytest.approx(16 / 20)
    assert jain_index([0, 0]) == 1.0
    with pytest.raises(InputError):
        jain_index([])
    with pytest.raises(InputError):
        jain_index([1, -1])


def test_jain_over_active_window():
    j = jain_over_active_window(example(), W, view="client")
    # first arrivals A 0, B 0, C 0 -> T_a = 0; last finishes 6, 6, 6 -> T_b = 6
    assert j["window"] == (0.0, 6.0)
    assert j["rates"] == {"A": 4.0, "B": pytest.approx(14 / 6), "C": pytest.approx(4 / 6)}
    assert j["jain"] == pytest.approx(42**2 / (3 * (24**2 + 14**2 + 4**2)))
    assert j["reason"] is None
    # B finishes before C arrives: no common window
    tr = Trace({"name": "t"}, [R("b", "B", 0.0, 0.0, 1.0, 1.0, 0, 0, 1, 0, 1, 1),
                               R("c", "C", 2.0, 2.0, 3.0, 3.0, 1, 1, 1, 0, 1, 1)],
               [0.0, 2.0], [1.0, 3.0])
    j = jain_over_active_window(tr, W)
    assert j["jain"] is None
    assert "'B' finishes at 1.0 before client 'C' first arrives at 2.0" in j["reason"]


def test_jain_window_counts_only_steps_inside():
    # A active [0,4], B active [1,4]: window [1,4]; A's step ending at 1 is outside
    tr = Trace({"name": "t"}, [R("a", "A", 0.0, 0.0, 1.0, 4.0, 0, 2, 3, 0, 3, 3),
                               R("b", "B", 1.0, 1.0, 2.0, 4.0, 1, 2, 1, 0, 1, 2)],
               [0.0, 1.0, 2.0], [1.0, 2.0, 4.0])
    j = jain_over_active_window(tr, W, view="actual")
    assert j["window"] == (1.0, 4.0)
    assert j["rates"] == {"A": pytest.approx(4 / 3), "B": pytest.approx(5 / 3)}


def test_summarize_is_json_and_consistent():
    tr = example()
    s = summarize(tr, W)
    json.dumps(s, allow_nan=False)
    assert s["policy"] == "hand" and s["n_requests"] == 4 and s["n_steps"] == 4
    assert s["hit_rate"] == pytest.approx(9 / 26)
    assert s["ttft_p50"] == pytest.approx(4.0) and s["tpot_p99"] == pytest.approx(1.495)
    assert s["e2e_p50"] == pytest.approx(5.5)
    assert s["max_service_gap"] == {"value": 16.0, "pair": ["A", "C"], "interval": [1.0, 4.0]}
    assert s["jain"] == pytest.approx(jain_over_active_window(tr, W)["jain"])
    assert s["per_client"]["C"]["service_actual"] == 4.0


def test_bad_step_indices_raise_input_error():
    tr = example()
    tr.requests[0] = RequestRecord(**{**tr.requests[0].__dict__, "finish_step": 7})
    with pytest.raises(InputError, match="requests\\[0\\]"):
        service_timeline(tr, W)


# ---------------------------------------------------------------------------------------------
# brute force


def _brute_W(tr: Trace, w: ServiceWeights, view: str, client: str, t: float) -> float:
    tot = 0.0
    for r in tr.requests:
        if r.client != client:
            continue
        if tr.step_end[r.admit_step] <= t:
            tot += w.w_e * (r.extend_tokens if view == "actual" else r.prompt_len)
        tot += w.w_q * sum(1 for s in range(r.admit_step, r.finish_step + 1) if tr.step_end[s] <= t)
    return tot


def _backlogged(tr: Trace, client: str, t: float) -> bool:
    return any(r.client == client and r.arrival <= t < r.admit for r in tr.requests)


def brute_gap(tr: Trace, w: ServiceWeights, view: str) -> float:
    cands = sorted({r.arrival for r in tr.requests} | {r.admit for r in tr.requests} | set(tr.step_end))
    clients = sorted({r.client for r in tr.requests})
    best = 0.0
    for f, g in itertools.combinations(clients, 2):
        for i, t1 in enumerate(cands):
            for t2 in cands[i + 1 :]:
                inside = [t for t in cands if t1 <= t < t2]
                if not all(_backlogged(tr, f, t) and _backlogged(tr, g, t) for t in inside):
                    break  # longer intervals from t1 fail too
                df = _brute_W(tr, w, view, f, t2) - _brute_W(tr, w, view, f, t1)
                dg = _brute_W(tr, w, view, g, t2) - _brute_W(tr, w, view, g, t1)
                best = max(best, abs(df - dg))
    return best


@st.composite
def random_traces(draw):
    S = draw(st.integers(1, 7))
    t = 0.0
    start, end = [], []
    for _ in range(S):
        t += draw(st.sampled_from([0.0, 0.0, 1.0, 2.0]))  # idle gaps
        start.append(t)
        t += draw(st.sampled_from([0.0, 1.0, 1.0, 3.0]))  # zero-length steps too
        end.append(t)
    recs = []
    for i in range(draw(st.integers(1, 7))):
        a = draw(st.integers(0, S - 1))
        out = draw(st.integers(1, S - a))
        arr = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, start[a]]))
        arr = min(arr, start[a])
        prompt = draw(st.integers(1, 6))
        cached = draw(st.integers(0, prompt - 1))
        recs.append(R(f"r{i}", draw(st.sampled_from("ABC")), arr, start[a], end[a], end[a + out - 1],
                      a, a + out - 1, prompt, cached, prompt - cached, out))
    recs.sort(key=lambda r: r.arrival)
    return Trace({"name": "random"}, recs, start, end)


@settings(deadline=None)
@given(tr=random_traces(), w_e=st.sampled_from([0, 1, 3]), w_q=st.sampled_from([0, 1, 2]),
       view=st.sampled_from(["actual", "client"]))
def test_max_service_gap_equals_brute_force(tr, w_e, w_q, view):
    w = ServiceWeights(w_e=w_e, w_q=w_q)
    g = max_service_gap(tr, w, view, per_pair=True)
    assert g["value"] == pytest.approx(brute_gap(tr, w, view))
    with mock.patch.object(metrics, "_SLICE_MAX_PERIODS", -1):  # the gather + reduceat path
        assert max_service_gap(tr, w, view, per_pair=True) == g
    if g["value"] > 0:
        f, h = g["pair"]
        t1, t2 = g["interval"]
        assert t1 < t2
        gain = (_brute_W(tr, w, view, f, t2) - _brute_W(tr, w, view, f, t1)) - (
            _brute_W(tr, w, view, h, t2) - _brute_W(tr, w, view, h, t1)
        )
        assert gain == pytest.approx(g["value"])  # attained, and f is the one ahead
        assert all(_backlogged(tr, c, t1) for c in (f, h))


@settings(deadline=None)
@given(tr=random_traces(), view=st.sampled_from(["actual", "client"]))
def test_service_timeline_equals_brute_force(tr, view):
    times, clients, cum = service_timeline(tr, W, view)
    for s, t in enumerate(times):
        for k, c in enumerate(clients):
            # zero-length steps share an end time: the row after step s counts steps <= s only
            want = _brute_W(tr, W, view, c, t) if s == len(times) - 1 or times[s + 1] != t else None
            if want is not None:
                assert cum[s, k] == pytest.approx(want)
    assert cum[-1].sum() == pytest.approx(
        sum(W.w_e * (r.extend_tokens if view == "actual" else r.prompt_len) + W.w_q * r.output_len
            for r in tr.requests)
    )
