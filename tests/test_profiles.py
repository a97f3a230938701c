"""Cost profiles: SGLang's memory rules, the built-in profiles, the JSON format, applying a profile."""

from __future__ import annotations

import dataclasses

import json
from dataclasses import asdict

import pytest

from prefixsched.errors import InputError
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request
from prefixsched.theory.profiles import (
    DEFAULT_PROFILE,
    PROFILE_ALIASES,
    PROFILES,
    CostProfile,
    default_limits,
    default_profile,
    get_profile,
    load_profile,
    sglang_chunked_prefill_size,
    sglang_decode_max_bs,
    sglang_kv_capacity_tokens,
    sglang_max_running_requests,
    with_profile,
)


@pytest.mark.parametrize(
    "mib, size", [(16_000, 2048), (20 * 1024 - 1, 2048), (20 * 1024, 4096), (23_028, 4096), (60 * 1024, 8192),
                  (81_559, 8192), (140_000, 8192), (160 * 1024, 16384), (190_000, 16384)],
)
def test_chunked_prefill_size_follows_sglangs_gpu_memory_rule(mib, size):
    assert sglang_chunked_prefill_size(mib) == size


def test_kv_capacity_matches_a_hand_computation():
    # H100 (81,559 MiB), Llama-3.1-8B: reserved = 512 + 1.5*8192 + 1/8*1024 + 2*256 = 13,440 MiB
    # (above the 10 GiB floor); weights 16.06e9 B; KV 131,072 B per token.
    free = 81_559 - 13_440 - 16.06e9 / 2**20
    assert sglang_kv_capacity_tokens(81_559, 16.06e9, 131_072) == int(free * 2**20 // 131_072)
    # A10 (23,028 MiB), below 60 GiB: no floor; decode graphs 48 x 2 MiB
    free = 23_028 - (512 + 1.5 * 4096 + 128 + 96) - 6.43e9 / 2**20
    assert sglang_kv_capacity_tokens(23_028, 6.43e9, 114_688) == int(free * 2**20 // 114_688)
    # tensor parallelism splits both the weights and the per-token KV over the GPUs
    tp8 = sglang_kv_capacity_tokens(81_920, 16.06e9, 131_072, tp=8)
    assert tp8 > 8 * sglang_kv_capacity_tokens(81_920, 16.06e9, 131_072)
    assert sglang_decode_max_bs(81_920, 8) == 512 and sglang_decode_max_bs(23_028, 1) == 48
    with pytest.raises(InputError, match="weight_bytes"):
        sglang_kv_capacity_tokens(23_028, 40e9, 131_072)
    with pytest.raises(InputError, match="tp"):
        sglang_kv_capacity_tokens(81_920, 16e9, 131_072, tp=0)


def test_max_running_requests_rule():
    assert sglang_max_running_requests(422_423, 131_072) == 2048  # clamped up to 2048
    assert sglang_max_running_requests(4_170_079, 131_072) == 4096  # clamped down to 4096
    assert sglang_max_running_requests(3000, 131_072) == 1500  # at most half the pool


def test_builtin_profiles_have_attention_and_kv_read_terms_and_valid_limits():
    assert DEFAULT_PROFILE in PROFILES and default_profile() is PROFILES[DEFAULT_PROFILE]
    for name, p in PROFILES.items():
        p.cost_model.validate()
        p.limits.validate()
        assert p.name == name and p.source
        if name != "linear":
            assert p.cost_model.c_attn > 0 and p.cost_model.decode_per_context_token_s > 0, name
            assert "ratio" in p.source or "nothing to compare" in p.source, name
    assert PROFILES["linear"].cost_model == CostModel() and PROFILES["linear"].limits == Limits()
    for alias, target in PROFILE_ALIASES.items():
        assert get_profile(alias) is PROFILES[target]
    # the default profile is SGLang-configured: chunking by the GPU-memory rule, KV from the memory
    h = default_profile()
    assert h.limits.chunked_prefill_size == 8192 and h.limits.kv_capacity_tokens == sglang_kv_capacity_tokens(
        81_559, 16.06e9, 131_072
    )
    assert get_profile("vtc-a10g").limits.kv_capacity_tokens == 10_000  # the artifact's pool
    # the pool is floored to whole pages, as SGLang's pool_configurator does
    assert default_limits(512) == Limits(**{**asdict(h.limits), "page_size": 512, "kv_capacity_tokens": 422_400})
    assert default_limits(1) == h.limits and default_limits(32).kv_capacity_tokens == 422_400


def test_profile_json_round_trip_and_file_loading(tmp_path):
    for p in PROFILES.values():
        assert CostProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    fitted = CostProfile("fit", CostModel(c_attn=1e-5), Limits(kv_capacity_tokens=1000), "live run", {"r2": 0.98})
    path = tmp_path / "fit.json"
    fitted.save(path)
    assert load_profile(str(path)) == fitted
    # partial objects take the dataclass defaults
    path.write_text(json.dumps({"name": "mini", "cost_model": {"prefill_per_token_s": 1e-5}}))
    mini = load_profile(str(path))
    assert mini.cost_model == CostModel(prefill_per_token_s=1e-5) and mini.limits == Limits() and mini.fitted is None


@pytest.mark.parametrize(
    "doc, field",
    [
        ([], "cost_profile"),
        ({"cost_model": {}}, "cost_profile.name"),
        ({"name": "x"}, "cost_profile.cost_model"),
        ({"name": "", "cost_model": {}}, "cost_profile.name"),
        ({"name": "x", "cost_model": {}, "extra": 1}, "cost_profile.extra"),
        ({"name": "x", "cost_model": {"c_attn": -1}}, "cost_profile.cost_model.c_attn"),
        ({"name": "x", "cost_model": {"speed": 1}}, "cost_profile.cost_model.speed"),
        ({"name": "x", "cost_model": {}, "limits": {"kv_capacity_tokens": 0}}, "cost_profile.limits.kv_capacity_tokens"),
        ({"name": "x", "cost_model": {}, "fitted": [1]}, "cost_profile.fitted"),
        ({"name": "x", "cost_model": {}, "source": 3}, "cost_profile.source"),
    ],
)
def test_bad_profiles_name_the_field(doc, field):
    with pytest.raises(InputError) as e:
        CostProfile.from_dict(doc)
    assert e.value.field == field


def test_load_profile_errors(tmp_path):
    with pytest.raises(InputError, match="unknown cost profile 'h200'"):
        load_profile("h200")
    with pytest.raises(InputError, match="cannot read profile"):
        load_profile(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_profile(str(bad))
    bad.write_text(json.dumps({"name": "x", "cost_model": {"c_attn": "big"}}))
    with pytest.raises(InputError) as e:
        load_profile(str(bad))
    assert e.value.where == str(bad) and e.value.field == "cost_profile.cost_model.c_attn"


def _inst(kv: int = 1000) -> Instance:
    reqs = (Request("a", "c0", 0.0, (1, 2, 3, 4), 3), Request("b", "c1", 1.0, (1, 2, 5), 2))
    return Instance(reqs, limits=Limits(kv_capacity_tokens=kv, page_size=2))


def test_with_profile_keeps_page_size_and_applies_overrides():
    inst = _inst()
    out = with_profile(inst, get_profile("a10-llama3.2-3b"))
    assert out.cost_model == get_profile("a10-llama3.2-3b").cost_model
    kv = get_profile("a10-llama3.2-3b").limits.kv_capacity_tokens
    assert out.limits.page_size == 2 and out.limits.kv_capacity_tokens == kv // 2 * 2  # floored to whole pages
    # the profile's pool is floored to the instance's pages (SGLang's pool_configurator), e.g. the
    # default profile's 422,423 tokens at 512-token pages; an explicit pool is kept as given
    big = dataclasses.replace(inst, limits=dataclasses.replace(inst.limits, page_size=512))
    assert with_profile(big, default_profile()).limits.kv_capacity_tokens == 422_400
    assert with_profile(big, default_profile(), kv_capacity_tokens=422_423).limits.kv_capacity_tokens == 422_423
    assert out.requests == inst.requests and out.weights == inst.weights
    out = with_profile(inst, default_profile(), kv_capacity_tokens=500, chunked_prefill_size=None, max_running_requests=None)
    assert out.limits.kv_capacity_tokens == 500 and out.limits.chunked_prefill_size is None
    assert out.limits.max_running_requests == default_profile().limits.max_running_requests  # None = keep
    assert with_profile(inst, default_profile(), keep_page_size=False).limits.page_size == 1
    with pytest.raises(InputError, match="unknown limit"):
        with_profile(inst, default_profile(), kv=5)
    with pytest.raises(InputError, match="limits.max_prefill_tokens"):
        with_profile(inst, default_profile(), max_prefill_tokens=0)
    with pytest.raises(InputError, match="can never fit"):
        with_profile(inst, default_profile(), kv_capacity_tokens=6)
