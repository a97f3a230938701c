"""Scenarios: offered load and arrival rescaling, client strategies, DLPM's S1/S2 as transforms."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from prefixsched.errors import InputError
from prefixsched.reference import scenarios as sc
from prefixsched.reference.traces import load_mooncake
from prefixsched.reference.workloads import make_workload
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import BlockPrompt, Instance, Limits, Request, lcp, page_keys


def _tiny(cost: CostModel | None = None) -> Instance:
    reqs = (
        Request("a", "c0", 0.0, (1, 2, 3, 4), 3),
        Request("b", "c1", 2.0, (1, 2, 3, 5, 6, 7), 2),
        Request("c", "c0", 4.0, (1, 2, 3, 4, 9), 1),
    )
    cm = cost or CostModel(prefill_base_s=0.4, prefill_per_token_s=1.0, c_attn=0.1, decode_base_s=0.6,
                           decode_per_request_s=0.5, decode_per_context_token_s=0.01)
    return Instance(reqs, cost_model=cm, limits=Limits(kv_capacity_tokens=20, max_prefill_tokens=4, max_running_requests=8,
                                                       chunked_prefill_size=None, page_size=1))


def test_offered_load_matches_a_hand_computation():
    inst = _tiny()
    ol = sc.offered_load(inst, workers=2)
    # prefill per token (1 + 0.1 |x|) * b + a / B, B = 4; no cache: every prompt token
    pre = sum((1 + 0.1 * n) * n + 0.4 * n / 4 for n in (4, 6, 5))
    # an unbounded cache of earlier prompts serves b: [1,2,3] (3), c: [1,2,3,4] (4)
    ideal = (1 + 0.4) * 4 + 0.1 * 4 + (1 + 0.6) * 3 + 0.1 * 3 + (1 + 0.5) * 1 + 0.1 * 1
    # decode: n = out - 1 steps; N = kv // mean(prompt + out) = 20 // 7 = 2 (no cache),
    # 20 // mean(4+3, 3+2, 1+1) = 20 // 4.67 = 4 (unbounded cache)
    reads = 0.01 * (2 * 4 + 3) + 0.5 * 2 + 0.01 * (1 * 6 + 1) + 0.5 * 1
    dec, dec_ideal = reads + 3 * 0.6 / 2, reads + 3 * 0.6 / 4
    assert ol["decode_batch"] == {"no_cache": 2, "unbounded_cache": 4}
    assert ol["work_s"]["prefill_no_cache"] == pytest.approx(pre)
    assert ol["work_s"]["prefill_unbounded_cache"] == pytest.approx(ideal)
    assert ol["work_s"]["decode_no_cache"] == pytest.approx(dec)
    assert ol["work_s"]["decode_unbounded_cache"] == pytest.approx(dec_ideal)
    assert ol["span_s"] == 4.0 and ol["request_rate_per_s"] == pytest.approx(3 / 4)
    assert ol["rho"] == pytest.approx((pre + dec) / (4 * 2))
    assert ol["rho"] == pytest.approx(ol["rho_prefill"] + ol["rho_decode"])
    assert ol["rho_unbounded_cache"] == pytest.approx((ideal + dec_ideal) / 8)
    assert ol["prefill_capacity_tokens_per_s"] == pytest.approx(15 / pre * 2)
    with pytest.raises(InputError, match="workers"):
        sc.offered_load(inst, workers=0)


def test_scale_to_load_rate_and_time_scale():
    inst = make_workload("shared-prefix", clients=2, n_requests=80)
    for rho in (0.5, 0.9, 2.0):
        for workers in (1, 3):
            out = sc.scale_to_load(inst, rho, workers)
            assert sc.offered_load(out, workers)["rho"] == pytest.approx(rho)
            assert [r.id for r in out.requests] == [r.id for r in inst.requests]
            assert out.requests[0].arrival == inst.requests[0].arrival
    out = sc.scale_to_rate(inst, 3.0)
    span = out.requests[-1].arrival - out.requests[0].arrival
    assert len(out.requests) / span == pytest.approx(3.0)
    slow = sc.rescale_arrivals(inst, 2.0)
    assert [b.arrival - slow.requests[0].arrival for b in slow.requests] == pytest.approx(
        [2 * (a.arrival - inst.requests[0].arrival) for a in inst.requests]
    )
    assert slow.cost_model == inst.cost_model and slow.limits == inst.limits
    for bad in (0, -1.0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(InputError):
            sc.scale_to_load(inst, bad)
        with pytest.raises(InputError):
            sc.rescale_arrivals(inst, bad)
    at_once = Instance(tuple(Request(f"r{i}", "c0", 1.0, (i + 1,), 1) for i in range(3)))
    with pytest.raises(InputError, match="same time"):
        sc.scale_to_load(at_once, 0.9)
    with pytest.raises(InputError, match="same time"):
        sc.scale_to_rate(at_once, 2.0)
    assert sc.offered_load(at_once)["rho"] is None


def _write_trace(path, families: int, per_family: int = 3) -> str:
    lines, t = [], 0
    for turn in range(per_family):
        for f in range(families):
            n = 512 * (2 + turn) + 100  # root, family block, one block per earlier turn, a fresh last block
            lines.append({"timestamp": t, "input_length": n, "output_length": 5 + f % 7,
                          "hash_ids": [0, 1000 + f] + [10_000 * (k + 1) + f for k in range(turn)] + [900_000 + t]})
            t += 7
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(path)


def test_family_strategy_is_the_loaders_and_families_stay_whole(tmp_path):
    p = _write_trace(tmp_path / "t.jsonl", families=40)
    loaded = load_mooncake(p, clients=5)
    again = sc.assign_clients(load_mooncake(p, clients=5, strategy="round-robin"), "family", 5)
    assert [r.client for r in again.requests] == [r.client for r in loaded.requests]
    for strategy in ("zipf:1.5", "heavy:2:0.6", "family"):
        out = sc.assign_clients(loaded, strategy, 5)
        by_family = defaultdict(set)
        for r in out.requests:
            by_family[sc.request_family(r)].add(r.client)
        assert all(len(v) == 1 for v in by_family.values()), strategy
        assert {r.client for r in out.requests} <= {f"c{k}" for k in range(5)}
    rr = sc.assign_clients(loaded, "round-robin", 3)
    assert [r.client for r in rr.requests][:6] == ["c0", "c1", "c2", "c0", "c1", "c2"]
    assert sc.assign_clients(loaded, "field", 3) is loaded


def _shares(inst: Instance) -> dict[str, float]:
    d: Counter = Counter()
    for r in inst.requests:
        d[r.client] += sc.client_demand(r, inst)
    tot = sum(d.values())
    return {c: v / tot for c, v in d.items()}


def test_heavy_clients_carry_the_requested_share():
    inst = make_workload("default", clients=8, n_requests=1500)  # ~400 conversations
    fam_demand: Counter = Counter()
    for r in inst.requests:
        fam_demand[sc.request_family(r)] += sc.client_demand(r, inst)
    largest = max(fam_demand.values()) / sum(fam_demand.values())
    for k, share in ((1, 0.5), (2, 0.5), (3, 0.8)):
        out = sc.assign_clients(inst, f"heavy:{k}:{share}", 8)
        s = _shares(out)
        heavy = sum(s.get(f"c{i}", 0.0) for i in range(k))
        assert abs(heavy - share) <= largest / 2 + 1e-12
        # even within each group
        hv = [s[f"c{i}"] for i in range(k)]
        lt = [s[f"c{i}"] for i in range(k, 8)]
        assert max(hv) - min(hv) <= largest + 1e-12 and max(lt) - min(lt) <= largest + 1e-12
        assert min(hv) > max(lt)
    with pytest.raises(InputError, match="K < clients"):
        sc.assign_clients(inst, "heavy:8:0.5", 8)


def test_zipf_skews_family_counts_by_rank():
    reqs = tuple(Request(f"f{i}.t0", "x", float(i), (1, i + 2), 1) for i in range(4000))
    inst = Instance(reqs)
    counts = Counter(r.client for r in sc.assign_clients(inst, "zipf:1.0", 4).requests)
    expect = [1 / k for k in range(1, 5)]
    for k in range(4):
        assert counts[f"c{k}"] / 4000 == pytest.approx(expect[k] / sum(expect), abs=0.03)
    flat = Counter(r.client for r in sc.assign_clients(inst, "zipf:0", 4).requests)
    assert all(abs(v / 4000 - 0.25) < 0.03 for v in flat.values())


@pytest.mark.parametrize(
    "spec", ["zipf", "zipf:-1", "zipf:x", "heavy:2", "heavy:0:0.5", "heavy:2:1.0", "heavy:2:0", "heavy:1.5:0.5", "lifo", 3],
)
def test_bad_client_strategies_are_input_errors(spec):
    with pytest.raises(InputError) as e:
        sc.parse_client_strategy(spec)
    assert e.value.field == "client_strategy"


def test_s1_copies_every_request_of_the_misbehaving_client():
    inst = make_workload("default", clients=3, n_requests=90)
    out = sc.misbehave_s1(inst, "c1", copies=3)
    n1 = sum(r.client == "c1" for r in inst.requests)
    assert len(out.requests) == len(inst.requests) + 2 * n1
    by_id = {r.id: r for r in out.requests}
    for r in inst.requests:
        if r.client == "c1":
            for k in (1, 2):
                c = by_id[f"{r.id}~s1.{k}"]
                assert (c.prompt, c.arrival, c.output_len, c.client) == (r.prompt, r.arrival, r.output_len, "c1")
    assert sc.misbehave_s1(inst).requests != inst.requests  # default client c0
    with pytest.raises(InputError, match="copies"):
        sc.misbehave_s1(inst, copies=0)
    with pytest.raises(InputError, match="no client"):
        sc.misbehave_s1(inst, "c9")


def test_s2_lengthens_the_misbehaving_clients_private_prefix(tmp_path):
    inst = load_mooncake(_write_trace(tmp_path / "t.jsonl", families=6), clients=2)
    out = sc.misbehave_s2(inst, "c0", factor=3.0)
    old = {r.id: r for r in inst.requests}
    firsts: dict = {}
    for r in out.requests:
        o = old[r.id]
        if r.client != "c0":
            assert r == o
            continue
        assert isinstance(r.prompt, BlockPrompt) and r.prompt.blocks[0] == o.prompt.blocks[0]  # the root stays shared
        fam = sc.request_family(o)
        first = firsts.setdefault(fam, o)
        own = first.prompt_len - 512
        assert r.prompt_len - o.prompt_len == -(-2 * own // 512) * 512  # (factor - 1) x own part, whole blocks
        # the family's turns still share their prefix, now including the inserted blocks
        a, b = page_keys(firsts[fam].prompt, 512), page_keys(o.prompt, 512)
        na = page_keys(next(x for x in out.requests if x.id == firsts[fam].id).prompt, 512)
        assert lcp(na, page_keys(r.prompt, 512)) == lcp(a, b) + (r.prompt_len - o.prompt_len) // 512
    tok = Instance((Request("a", "c0", 0.0, (1, 2, 3), 1), Request("b", "c0", 1.0, (1, 2, 3, 4), 1),
                    Request("c", "c1", 1.0, (1, 5), 1)))
    t2 = sc.misbehave_s2(tok, "c0", factor=2.0, family_of=lambda r: "one")
    assert t2.requests[0].prompt == (1, 6, 7, 2, 3) and t2.requests[1].prompt == (1, 6, 7, 2, 3, 4)
    assert t2.requests[2] == tok.requests[2]
    with pytest.raises(InputError, match="factor"):
        sc.misbehave_s2(tok, factor=0.5)
    with pytest.raises(InputError, match="can never fit"):
        sc.misbehave_s2(Instance(tok.requests, limits=Limits(kv_capacity_tokens=6)), "c0", 4.0)


def test_parse_misbehave():
    assert sc.parse_misbehave("s1") == ("s1", 4, None)
    assert sc.parse_misbehave("s1:6:c3") == ("s1", 6, "c3")
    assert sc.parse_misbehave("s2:1.5") == ("s2", 1.5, None)
    for bad in ("s3", "s1:x", "s2:2:c0:extra", ""):
        with pytest.raises(InputError):
            sc.parse_misbehave(bad)
