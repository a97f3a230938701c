"""Mooncake JSONL loader (prefixsched.reference.traces) and instance_io."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from prefixsched.errors import InputError
from prefixsched.instance_io import load_any, load_instance, save_instance
from prefixsched.theory.cost import CostModel
from prefixsched.theory.profiles import default_limits, default_profile
from prefixsched.theory.model import BlockPrompt, Instance, Limits, Request, lcp, page_keys
from prefixsched.reference.traces import (
    CLIENT_STRATEGIES,
    family_id,
    load_mooncake,
    trace_stats,
    unbounded_reuse,
)

REAL_TRACE = Path(__file__).resolve().parents[2] / "shared/data/mooncake/conversation_trace.jsonl"


def _line(ts=0, n_in=600, n_out=10, ids=(0, 1), **extra):
    d = {"timestamp": ts, "input_length": n_in, "output_length": n_out, "hash_ids": list(ids)}
    d.update(extra)
    return json.dumps(d)


def _write(tmp_path: Path, lines: list[str], name: str = "t.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return p


# ---------------------------------------------------------------------------------------------
# good input


def test_load_basic_fields(tmp_path):
    p = _write(
        tmp_path,
        [
            _line(0, 600, 10, (0, 1)),
            _line(1500, 1024, 3, (0, 1)),
            _line(2500.5, 1, 7, (9,)),
        ],
    )
    inst = load_mooncake(p, clients=4)
    assert [r.id for r in inst.requests] == ["0", "1", "2"]
    assert [r.arrival for r in inst.requests] == [0.0, 1.5, 2.5005]
    r0 = inst.requests[0]
    assert r0.prompt == BlockPrompt((0, 1), 600, 512)
    assert r0.output_len == 10 and r0.prompt_len == 600
    assert inst.requests[2].prompt == BlockPrompt((9,), 1, 512)
    # default limits and cost model: the default cost profile's, with whole 512-token pages
    assert inst.limits == default_limits(page_size=512)
    assert inst.cost_model == default_profile().cost_model and inst.cost_model.c_attn > 0
    # pages shared as the hash ids say: r0 and r1 share block 0 (their only common full pages)
    k0 = page_keys(inst.requests[0].prompt, 512)
    k1 = page_keys(inst.requests[1].prompt, 512)
    assert len(k0) == 1 and len(k1) == 2 and lcp(k0, k1) == 1


def test_family_clients_use_crc32(tmp_path):
    ids = [(0, 5, 6), (0, 5, 7), (0, 8), (3,)]
    p = _write(tmp_path, [_line(i, 512 * len(h), 1, h) for i, h in enumerate(ids)])
    inst = load_mooncake(p, clients=5)
    fams = [5, 5, 8, 3]
    assert [family_id(list(h)) for h in ids] == fams
    want = [f"c{zlib.crc32(str(f).encode()) % 5}" for f in fams]
    assert [r.client for r in inst.requests] == want
    # same family -> same client, by construction
    assert inst.requests[0].client == inst.requests[1].client


def test_round_robin_and_field_strategies(tmp_path):
    lines = [_line(i, 600, 1, (0, i + 1), client=name) for i, name in enumerate(["alice", "bob", 7, "alice"])]
    p = _write(tmp_path, lines)
    rr = load_mooncake(p, clients=3, strategy="round-robin")
    assert [r.client for r in rr.requests] == ["c0", "c1", "c2", "c0"]
    fld = load_mooncake(p, strategy="field")
    assert [r.client for r in fld.requests] == ["alice", "bob", "7", "alice"]
    assert set(CLIENT_STRATEGIES) == {"family", "round-robin", "field"}


def test_max_requests_and_blank_lines(tmp_path):
    lines = [_line(i, 600, 1, (0, i + 1)) for i in range(5)]
    lines.insert(2, "   ")
    p = _write(tmp_path, lines)
    inst = load_mooncake(p)
    # ids are the 0-based physical line index: the blank line 3 is skipped, not renumbered
    assert [r.id for r in inst.requests] == ["0", "1", "3", "4", "5"]
    assert [r.id for r in load_mooncake(p, max_requests=3).requests] == ["0", "1", "3"]
    # reading stops at max_requests: a bad line after it is never seen
    p2 = _write(tmp_path, lines[:2] + ["{broken"], "t2.jsonl")
    assert len(load_mooncake(p2, max_requests=2).requests) == 2


def test_custom_limits_and_block_size(tmp_path):
    p = _write(tmp_path, [_line(0, 40, 2, (4, 5, 6))])
    lim = Limits(page_size=4, kv_capacity_tokens=1000)
    inst = load_mooncake(p, block_size=16, limits=lim, cost_model=CostModel.token_units())
    assert inst.limits is lim and inst.cost_model == CostModel.token_units()
    assert inst.requests[0].prompt == BlockPrompt((4, 5, 6), 40, 16)
    assert len(page_keys(inst.requests[0].prompt, 4)) == 10


# ---------------------------------------------------------------------------------------------
# bad input: every case names file:line and the field


BAD_LINES = [
    ("{not json", "line"),
    ("[1, 2, 3]", "line"),
    ('"text"', "line"),
    (json.dumps({"input_length": 5, "output_length": 1, "hash_ids": [0]}), "timestamp"),
    (json.dumps({"timestamp": 0, "output_length": 1, "hash_ids": [0]}), "input_length"),
    (json.dumps({"timestamp": 0, "input_length": 5, "hash_ids": [0]}), "output_length"),
    (json.dumps({"timestamp": 0, "input_length": 5, "output_length": 1}), "hash_ids"),
    (_line(ts="5"), "timestamp"),
    (_line(ts=True), "timestamp"),
    (_line(ts=-1), "timestamp"),
    (_line(n_in=600.5), "input_length"),
    (_line(n_in="600"), "input_length"),
    (_line(n_in=0, ids=()), "input_length"),
    (_line(n_in=-3), "input_length"),
    (_line(n_out=0), "output_length"),
    (_line(n_out=-1), "output_length"),
    (_line(n_out=None), "output_length"),
    (_line(ids="0,1"), "hash_ids"),
    (_line(ids=(0, "1")), "hash_ids"),
    (_line(ids=(0, 1.5)), "hash_ids"),
    (_line(ids=(0, -2)), "hash_ids"),
    (_line(n_in=600, ids=(0,)), "hash_ids"),  # 600 tokens need 2 blocks
    (_line(n_in=600, ids=(0, 1, 2)), "hash_ids"),
    (_line(n_in=512, ids=(0, 1)), "hash_ids"),  # exactly one block
]


@pytest.mark.parametrize("bad,field", BAD_LINES)
def test_bad_line_names_file_line_field(tmp_path, bad, field):
    p = _write(tmp_path, [_line(0), _line(0, ids=(0, 2)), bad, _line(5, ids=(0, 3))])
    with pytest.raises(InputError) as ei:
        load_mooncake(p)
    assert str(ei.value).startswith(f"{p}:3: {field}: "), str(ei.value)
    assert ei.value.field == field and ei.value.where == f"{p}:3"


def test_unsorted_timestamps(tmp_path):
    p = _write(tmp_path, [_line(0), _line(20, ids=(0, 2)), _line(10, ids=(0, 3))])
    with pytest.raises(InputError) as ei:
        load_mooncake(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:3: timestamp: ") and "sorted" in msg and "line 2" in msg


def test_field_strategy_needs_client(tmp_path):
    p = _write(tmp_path, [_line(0, client="a"), _line(1, ids=(0, 2))])
    with pytest.raises(InputError, match=r":2: client: missing"):
        load_mooncake(p, strategy="field")
    p2 = _write(tmp_path, [_line(0, client=True)], "t2.jsonl")
    with pytest.raises(InputError, match=r":1: client: "):
        load_mooncake(p2, strategy="field")


def test_request_larger_than_kv_pool(tmp_path):
    p = _write(tmp_path, [_line(0), _line(1, n_in=1000, n_out=100, ids=(0, 2))])
    with pytest.raises(InputError) as ei:
        load_mooncake(p, limits=Limits(page_size=512, kv_capacity_tokens=1024))
    assert str(ei.value).startswith(f"{p}:2: input_length: ") and "1100" in str(ei.value)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_trace(tmp_path, text):
    p = tmp_path / "empty.jsonl"
    p.write_text(text)
    with pytest.raises(InputError) as ei:
        load_mooncake(p)
    assert str(ei.value) == f"{p}: trace: the trace is empty"


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="^path: cannot read trace"):
        load_mooncake(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"clients": 0}, "clients"),
        ({"clients": True}, "clients"),
        ({"strategy": "random"}, "strategy"),
        ({"block_size": 0}, "block_size"),
        ({"max_requests": 0}, "max_requests"),
        ({"max_requests": 2.0}, "max_requests"),
    ],
)
def test_bad_parameters(tmp_path, kw, field):
    p = _write(tmp_path, [_line(0)])
    with pytest.raises(InputError) as ei:
        load_mooncake(p, **kw)
    assert ei.value.field == field


# ---------------------------------------------------------------------------------------------
# statistics


def test_unbounded_reuse_is_prefix_based(tmp_path):
    # block_size 4, page_size 4: A [0,1] 8 tok, B [0,1,2] 12 tok, C [0,3] 7 tok, D [5,1] 8 tok
    lines = [
        _line(0, 8, 1, (0, 1)),
        _line(1, 12, 1, (0, 1, 2)),
        _line(2, 7, 1, (0, 3)),
        _line(3, 8, 1, (5, 1)),
    ]
    inst = load_mooncake(_write(tmp_path, lines), block_size=4)
    reused, pages, extend = unbounded_reuse(inst)
    # A: 2 pages, 0 hit; B: 3 pages, 2 hit; C: 1 full page, 1 hit; D: 2 pages, 0 hit (block 1
    # follows block 5 here, so it is not the cached page [0,1]'s second page)
    assert (reused, pages) == (3, 8)
    assert extend == 8 + 4 + 3 + 8
    s = trace_stats(inst)
    assert s["requests"] == 4 and s["reuse_fraction"] == pytest.approx(3 / 8)
    assert s["duration_s"] == pytest.approx(0.003)
    assert s["prompt_tokens_max"] == 12 and s["output_tokens_total"] == 4
    assert s["extend_tokens_unbounded_cache"] == extend
    cm = inst.cost_model  # attention-weighted: (1 + c_attn*|x|) per extend token
    b, c = cm.prefill_per_token_s, cm.c_attn
    assert s["prefill_s_unbounded_cache"] == pytest.approx(
        b * ((1 + 8 * c) * 8 + (1 + 12 * c) * 4 + (1 + 7 * c) * 3 + (1 + 8 * c) * 8)
    )
    assert s["prefill_s_no_cache"] == pytest.approx(b * ((1 + 8 * c) * 16 + (1 + 12 * c) * 12 + (1 + 7 * c) * 7))
    assert sum(s["requests_per_client"].values()) == 4


# ---------------------------------------------------------------------------------------------
# instance_io


def _small_instance() -> Instance:
    reqs = (
        Request("a", "x", 0.0, (1, 2, 3), 2),
        Request("b", "y", 0.5, (1, 2, 4, 5), 1),
    )
    return Instance(requests=reqs, limits=Limits(kv_capacity_tokens=100))


def test_instance_json_round_trip(tmp_path):
    inst = _small_instance()
    p = tmp_path / "i.json"
    save_instance(p, inst)
    first = p.read_bytes()
    back = load_instance(p)
    assert back == inst and back.to_dict() == inst.to_dict()
    save_instance(p, back)
    assert p.read_bytes() == first  # canonical: same instance, same bytes
    assert load_any(p) == inst


def test_load_instance_json_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{\n "requests": [\n   {"id": "a",, }\n ]\n}\n')
    with pytest.raises(InputError) as ei:
        load_instance(p)
    assert str(ei.value).startswith(f"{p}:3: json: ")


def test_load_instance_schema_error_names_file_and_field(tmp_path):
    d = _small_instance().to_dict()
    d["requests"][1]["output_len"] = 0
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(InputError) as ei:
        load_instance(p)
    assert str(ei.value).startswith(f"{p}: requests[1].output_len: ")


def test_load_any_dispatch_and_options(tmp_path):
    jl = _write(tmp_path, [_line(0), _line(1, ids=(0, 2)), _line(2, ids=(0, 3))])
    inst = load_any(jl, clients=2, strategy="round-robin", max_requests=2, block_size=None)
    assert [r.client for r in inst.requests] == ["c0", "c1"]
    js = tmp_path / "i.json"
    save_instance(js, _small_instance())
    lim = Limits(kv_capacity_tokens=50, page_size=2)
    assert load_any(js, limits=lim).limits == lim
    # unset options pass through; Mooncake-only options on an instance file are an error, never
    # silently ignored (issue #7); max_requests keeps the first M requests of either format
    assert load_any(js, clients=None, strategy=None, max_requests=None) == _small_instance()
    for kw in ({"clients": 4}, {"strategy": "family"}, {"block_size": 16}):
        with pytest.raises(InputError) as ei:
            load_any(js, **kw)
        assert ei.value.field == next(iter(kw)) and "does not apply" in str(ei.value)
    assert [r.id for r in load_any(js, max_requests=1).requests] == ["a"]
    with pytest.raises(InputError) as ei:
        load_any(jl, colour="red")
    assert ei.value.field == "colour"
    other = tmp_path / "i.csv"
    other.write_text("x")
    with pytest.raises(InputError) as ei:
        load_any(other)
    assert ei.value.field == "path" and ".csv" in str(ei.value)


# ---------------------------------------------------------------------------------------------
# the real trace


needs_trace = pytest.mark.skipif(not REAL_TRACE.exists(), reason=f"real Mooncake trace not found at {REAL_TRACE}")


@pytest.fixture(scope="module")
def real():
    return load_mooncake(REAL_TRACE)


@pytest.fixture(scope="module")
def real_lines():
    with open(REAL_TRACE) as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.trace
@needs_trace
def test_real_trace_shape(real, real_lines):
    reqs = real.requests
    assert len(reqs) == 12_031 == len(real_lines)
    arrivals = [r.arrival for r in reqs]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0.0
    assert arrivals[-1] == pytest.approx(real_lines[-1]["timestamp"] / 1000)
    assert real.limits.page_size == 512
    assert len(real.clients) == 8 and set(real.clients) == {f"c{i}" for i in range(8)}
    families = {(d["hash_ids"][1] if len(d["hash_ids"]) > 1 else d["hash_ids"][0]) for d in real_lines}
    by_family: dict[int, set[str]] = {}
    for d, r in zip(real_lines, reqs):
        by_family.setdefault(family_id(d["hash_ids"]), set()).add(r.client)
    assert set(by_family) == families
    assert all(len(c) == 1 for c in by_family.values())  # a family never spans two clients
    assert sum(r.prompt_len for r in reqs) == sum(d["input_length"] for d in real_lines)


@pytest.mark.trace
@needs_trace
def test_real_trace_page_keys_follow_hash_ids(real, real_lines):
    reqs = real.requests
    checked = 0
    for i in range(0, 3000, 7):
        a, b = reqs[i], reqs[i + 1]
        ha, hb = real_lines[i]["hash_ids"], real_lines[i + 1]["hash_ids"]
        full_a, full_b = a.prompt_len // 512, b.prompt_len // 512
        want = lcp(ha[:full_a], hb[:full_b])
        assert lcp(page_keys(a.prompt, 512), page_keys(b.prompt, 512)) == want
        checked += want > 0
    assert checked > 100  # every request shares block 0 with its neighbour


@pytest.mark.trace
@needs_trace
def test_real_trace_reuse_matches_block_id_reuse(real, real_lines):
    # Mooncake ids are prefix hashes, so "full block id seen before" counts the same pages as the
    # radix-tree walk; the README's 36.6 % also counts the partial last blocks.
    seen: set[int] = set()
    reused = total = 0
    for d in real_lines:
        full = d["hash_ids"][: d["input_length"] // 512]
        reused += sum(1 for h in full if h in seen)
        total += len(full)
        seen.update(full)
    r, pages, _ = unbounded_reuse(real)
    assert (r, pages) == (reused, total)
    assert 0.36 < r / pages < 0.40


@pytest.mark.trace
@needs_trace
def test_real_trace_max_requests_and_strategies():
    first = load_mooncake(REAL_TRACE, max_requests=100, strategy="round-robin", clients=3)
    assert len(first.requests) == 100
    assert [r.client for r in first.requests[:4]] == ["c0", "c1", "c2", "c0"]
    with pytest.raises(InputError, match=r"conversation_trace.jsonl:1: client: missing"):
        load_mooncake(REAL_TRACE, strategy="field", max_requests=5)
