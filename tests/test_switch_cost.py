"""The context-switch cost model (prefixsched/theory/switch_cost.py): numbers recomputed here
from the formulas' definitions and the spec's examples (vtc_fastswitch_preble.md §B.2, §B.5)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefixsched.errors import InputError
from prefixsched.theory.switch_cost import LINKS, MODELS, LinkProfile, ModelShape, SwitchCostModel


def test_bytes_per_token_from_the_model_shape():
    # spec §B.2: Llama-3-8B, 32 layers, 8 KV heads, head dim 128, bf16 -> 128 KiB per token and a
    # 16-token block of one layer of K is 32 KiB
    m = MODELS["llama3-8b"]
    assert m.bytes_per_token == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    assert 16 * m.bytes_per_token_layer == 32 * 1024
    assert MODELS["qwen2.5-32b"].bytes_per_token == 256 * 1024
    assert ModelShape("x", 2, 1, 4, 1).bytes_per_token == 16


def test_saturating_bandwidth_curve():
    link = LinkProfile("l", peak_bytes_per_s=10e9, half_size_bytes=1000, call_s=0.0)
    assert link.bandwidth(1000) == pytest.approx(5e9)  # half of peak at s_half
    assert link.bandwidth(9000) == pytest.approx(9e9)
    assert link.bandwidth(0) == 0.0
    xs = [link.bandwidth(2 ** k) for k in range(30)]
    assert all(a < b for a, b in zip(xs, xs[1:])) and xs[-1] < 10e9


def test_copies_per_granularity():
    m = SwitchCostModel.named(granularity="block")
    assert m.copies(0) == 0
    assert m.copies(1) == 64 and m.copies(16) == 64 and m.copies(17) == 128  # 2 * layers * blocks
    r = m.with_(granularity="request")
    assert r.copies(1) == r.copies(10 ** 6) == 64
    g = m.with_(granularity="group", group_blocks=64, fragmentation=0.5)
    # G(u) = floor(64 * (1 - 0.5 u)): 64 at u = 0, 32 at u = 1
    assert g.group_size(0.0) == 64 and g.group_size(1.0) == 32 and g.group_size(0.5) == 48
    assert g.copies(64 * 16, 0.0) == 64 and g.copies(64 * 16 + 1, 0.0) == 128
    assert g.copies(64 * 16, 1.0) == 128
    assert g.copy_bounds(64 * 16) == (64, 128)
    assert g.with_(fragmentation=1.0).group_size(1.0) == 1  # a full pool degenerates to blocks


def test_transfer_time_formula_on_the_gen4_profile():
    # 2,048 tokens of Llama-3-8B over PCIe 4.0: 268 MB; block copies: 8,192 copies of 32 KiB
    m = SwitchCostModel.named("llama3-8b", "pcie4-x16", granularity="block")
    t = m.transfer(2048)
    assert (t.tokens, t.bytes, t.copies, t.copy_bytes) == (2048, 2048 * 131072, 8192, 32768.0)
    bw = 26e9 * 32768 / (32768 + 32768)
    assert t.seconds == pytest.approx(8192 * 3.5e-6 + 2048 * 131072 / bw, rel=1e-12)
    g = m.with_(granularity="group").transfer(2048, util=0.0)  # 128 blocks in 2 groups of 64
    assert g.copies == 128
    req = m.with_(granularity="request").transfer(2048)
    assert t.seconds > g.seconds > req.seconds > 2048 * 131072 / 26e9  # never beats the peak
    # block groups: several times faster than block copies (FastSwitch reports up to 3.11x)
    assert 3.0 < t.seconds / g.seconds < 6.0


@given(tokens=st.integers(0, 200_000), util=st.floats(0, 1))
def test_granularities_order_and_volume(tokens, util):
    b = SwitchCostModel.named(granularity="block")
    g = b.with_(granularity="group")
    r = b.with_(granularity="request")
    tb, tg, tr = b.transfer(tokens, util), g.transfer(tokens, util), r.transfer(tokens, util)
    assert tb.bytes == tg.bytes == tr.bytes == tokens * 131072  # granularity never changes the volume
    assert tb.copies >= tg.copies >= tr.copies
    assert tb.seconds >= tg.seconds - 1e-15 and tg.seconds >= tr.seconds - 1e-15
    lo, hi = g.copy_bounds(tokens)
    assert lo <= tg.copies <= hi


def test_profiles_carry_sources_and_validate():
    for name, link in LINKS.items():
        assert link.name == name and "PCI-SIG" in link.source and link.peak_bytes_per_s < 64e9
        link.validate()
    assert LINKS["pcie5-x16"].peak_bytes_per_s > 2 * LINKS["pcie4-x16"].peak_bytes_per_s * 0.99
    for m in MODELS.values():
        m.validate()


def test_bad_input_names_the_field():
    with pytest.raises(InputError, match="switch.granularity"):
        SwitchCostModel(granularity="page").validate()
    with pytest.raises(InputError, match="switch.link"):
        SwitchCostModel.named(link="pcie9")
    with pytest.raises(InputError, match="switch.model"):
        SwitchCostModel.named(model="gpt-5")
    with pytest.raises(InputError, match="switch.fragmentation"):
        SwitchCostModel.named(fragmentation=1.5)
    with pytest.raises(InputError, match="switch.block_tokens"):
        SwitchCostModel.named(block_tokens=0)
    with pytest.raises(InputError, match="switch.link.peak_bytes_per_s"):
        SwitchCostModel.named().with_(link=LinkProfile(peak_bytes_per_s=-1.0))
    with pytest.raises(InputError, match="tokens"):
        SwitchCostModel.named().transfer(-1)
    with pytest.raises(InputError, match=r"switch\.nope"):
        SwitchCostModel.from_dict({"nope": 1})
    with pytest.raises(InputError, match=r"switch\.model\.nope"):
        SwitchCostModel.from_dict({"model": {"nope": 1}})


def test_json_round_trip():
    m = SwitchCostModel.named("qwen2.5-32b", "pcie4-x16", granularity="group", group_blocks=32, fragmentation=0.25)
    d = json.loads(json.dumps(m.to_dict()))
    assert SwitchCostModel.from_dict(d) == m
    assert math.isclose(SwitchCostModel.from_dict(d).transfer(999, 0.3).seconds, m.transfer(999, 0.3).seconds)
