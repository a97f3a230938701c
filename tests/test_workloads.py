"""Synthetic workloads (prefixsched.reference.workloads)."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

import pytest

from prefixsched.errors import InputError
from prefixsched.instance_io import load_any, load_instance, save_instance
from prefixsched.reference.workloads import (
    DEFAULT_BLOCK_SIZE,
    WORKLOADS,
    make_workload,
    program_of,
    workload_params,
)
from prefixsched.theory.cost import CostModel
from prefixsched.theory.profiles import default_limits, default_profile
from prefixsched.theory.model import BlockPrompt, Limits, lcp, page_keys

NAMES = sorted(WORKLOADS)
BS = DEFAULT_BLOCK_SIZE


@pytest.fixture(scope="module")
def default_full():
    return make_workload("default")


def _by_program(inst):
    out = defaultdict(list)
    for r in inst.requests:
        out[program_of(r.id)].append(r)
    return out


# ---------------------------------------------------------------------------------------------
# registry, determinism, windows


def test_registry_entries():
    assert {"default", "shared-prefix", "s1", "s2"} <= set(WORKLOADS)
    for name, (builder, desc) in WORKLOADS.items():
        assert callable(builder) and isinstance(desc, str) and desc and "\n" not in desc
        assert "duration_s" in workload_params(name)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_instance_other_seed_differs(name):
    a = make_workload(name, seed=3, n_requests=150)
    b = make_workload(name, seed=3, n_requests=150)
    c = make_workload(name, seed=4, n_requests=150)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict() != c.to_dict()
    assert len(a.requests) == 150
    assert all(isinstance(r.prompt, BlockPrompt) and r.prompt.block_size == BS for r in a.requests)
    assert a.limits == default_limits(page_size=BS) and a.cost_model == default_profile().cost_model


@pytest.mark.parametrize("name", NAMES)
def test_n_requests_is_a_prefix_of_the_stream(name):
    small = make_workload(name, n_requests=60).to_dict()["requests"]
    big = make_workload(name, n_requests=240).to_dict()["requests"]
    assert small == big[:60]


@pytest.mark.parametrize("name", NAMES)
def test_duration_window(name):
    inst = make_workload(name, duration_s=15.0)
    assert inst.requests and all(0 <= r.arrival <= 15.0 for r in inst.requests)
    # the window is the same stream: its requests are the first ones of a longer window
    longer = make_workload(name, duration_s=30.0).to_dict()["requests"]
    assert longer[: len(inst.requests)] == inst.to_dict()["requests"]


@pytest.mark.parametrize("name", NAMES)
def test_json_round_trip_via_instance_io(tmp_path, name):
    inst = make_workload(name, n_requests=80, seed=1)
    p = tmp_path / f"{name}.json"
    save_instance(p, inst)
    assert load_instance(p).to_dict() == inst.to_dict()
    assert load_any(p) == inst
    q = tmp_path / "again.json"
    save_instance(q, make_workload(name, n_requests=80, seed=1))
    assert q.read_bytes() == p.read_bytes()


def test_limits_and_cost_model_are_passed_through():
    lim = Limits(page_size=16, kv_capacity_tokens=100_000)
    inst = make_workload("shared-prefix", n_requests=10, limits=lim, cost_model=CostModel.token_units(), block_size=64)
    assert inst.limits is lim and inst.cost_model == CostModel.token_units()
    assert all(r.prompt.block_size == 64 for r in inst.requests)


# ---------------------------------------------------------------------------------------------
# default


def test_default_heavy_client_is_heavier(default_full):
    counts = Counter(r.client for r in default_full.requests)
    assert set(counts) == {f"c{i}" for i in range(8)}
    others = [counts[f"c{i}"] for i in range(1, 8)]
    assert counts["c0"] > 2.5 * statistics.mean(others)
    assert counts["c0"] > 1.8 * max(others)
    assert 1500 <= len(default_full.requests) <= 3000
    assert 60 <= default_full.requests[-1].arrival <= 120


def test_default_turns_extend_previous_prompt(default_full):
    conversations = _by_program(default_full)
    multi = [c for c in conversations.values() if len(c) >= 3]
    assert len(multi) > 50
    for conv in multi[:40]:
        for prev, cur in zip(conv, conv[1:]):
            assert prev.client == cur.client and prev.arrival <= cur.arrival
            grow = cur.prompt_len - prev.prompt_len
            assert prev.output_len + 32 <= grow <= prev.output_len + 256
            # exact token extension: same blocks, the partial last block continued in place
            assert cur.prompt.blocks[: len(prev.prompt.blocks)] == prev.prompt.blocks
            assert cur.prompt[: prev.prompt_len] == tuple(prev.prompt)


def test_default_system_prompts_shared_within_client_only(default_full):
    firsts = [c[0] for c in _by_program(default_full).values() if c[0].id.endswith(".t0")]
    per_client = defaultdict(list)
    for r in firsts:
        per_client[r.client].append(page_keys(r.prompt, BS))
    sys_pages = {}
    for client, keys in per_client.items():
        shared = min(lcp(keys[0], k) for k in keys[1:])
        assert 1024 // BS <= shared <= 4096 // BS  # the system prompt, whole blocks
        sys_pages[client] = keys[0][0]
    assert len(set(sys_pages.values())) == len(sys_pages)  # no page shared across clients


# ---------------------------------------------------------------------------------------------
# shared-prefix


def test_shared_prefix_structure():
    inst = make_workload("shared-prefix", clients=4, groups=6, prefix_len=512, question_len=100, output_len=40, n_requests=300)
    groups = defaultdict(list)
    for r in inst.requests:
        g = int(r.id.split(".")[0][1:])
        groups[g].append(r)
        assert r.client == f"c{g % 4}"
        assert r.prompt_len == 612 and r.output_len == 40
    assert set(groups) == set(range(6))
    firsts = {}
    for g, rs in groups.items():
        keys = [page_keys(r.prompt, BS) for r in rs]
        # the group's prefix (16 pages) is shared, the question's pages are not
        assert all(lcp(keys[0], k) == 512 // BS for k in keys[1:])
        firsts[g] = keys[0][0]
    assert len(set(firsts.values())) == 6


def test_gamma_arrivals_rate_and_cv():
    def gaps(cv):
        inst = make_workload("shared-prefix", clients=1, groups=1, rate=10.0, cv=cv, n_requests=3000, prefix_len=32)
        t = [r.arrival for r in inst.requests]
        return [b - a for a, b in zip(t, t[1:])]

    for cv in (0.5, 1.0, 2.0):
        g = gaps(cv)
        m = statistics.mean(g)
        assert m == pytest.approx(0.1, rel=0.12)
        assert statistics.stdev(g) / m == pytest.approx(cv, rel=0.15)
    even = gaps(0.0)
    assert max(even) - min(even) < 1e-5 and even[0] == pytest.approx(0.1, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# S1 / S2


def _complete_programs(inst, duration, depth=3, gap=2.0):
    """Programs whose whole tree arrives inside the window."""
    progs = _by_program(inst)
    return {p: rs for p, rs in progs.items() if rs[0].arrival <= duration - depth * 1.5 * gap - 1e-9}


def test_s1_shape():
    inst = make_workload("s1", duration_s=40.0)
    progs = _complete_programs(inst, 40.0)
    sizes = defaultdict(set)
    for p, rs in progs.items():
        sizes[rs[0].client].add(len(rs))
    assert sizes["c0"] == {4 + 16 + 64}
    assert all(sizes[f"c{i}"] == {2 + 4 + 8} for i in range(1, 8) if sizes[f"c{i}"])
    assert sum(1 for c in sizes if c != "c0") >= 5
    # tree shape: level-1 nodes share one prompt; every child = its parent's prompt + parent's thought
    heavy = next(rs for rs in progs.values() if rs[0].client == "c0")
    prompts = Counter(r.prompt for r in heavy)
    assert sorted(prompts.values()) == [4] * 21  # 1 root prompt + 4 + 16 inner nodes, 4 children each
    root_len = min(r.prompt_len for r in heavy)
    assert root_len == 192 + 128
    for r in heavy:
        if r.prompt_len == root_len:
            continue
        keys = page_keys(r.prompt, BS)
        parents = [
            q
            for q in heavy
            if r.prompt_len == q.prompt_len + q.output_len
            and keys[: q.prompt_len // BS] == page_keys(q.prompt, BS)
        ]
        assert parents, r.id


def test_s1_s2_same_program_process_for_well_behaved_clients():
    s1 = make_workload("s1", n_requests=800, program_rate=0.3)
    s2 = make_workload("s2", n_requests=800, program_rate=0.3)
    def sig(inst):
        return [(r.id, r.arrival, r.prompt_len, r.output_len) for r in inst.requests if r.client == "c3"]
    a, b = sig(s1), sig(s2)
    n = min(len(a), len(b))
    assert n > 50 and a[:n] == b[:n]


def test_s1_heavy_client_same_program_rate():
    inst = make_workload("s1", duration_s=400.0, depth=1)
    progs = Counter(rs[0].client for rs in _by_program(inst).values())
    others = [progs[f"c{i}"] for i in range(1, 8)]
    assert 0.7 * statistics.mean(others) <= progs["c0"] <= 1.3 * statistics.mean(others)
    reqs = Counter(r.client for r in inst.requests)
    assert reqs["c0"] == 4 * progs["c0"] and reqs["c1"] == 2 * progs["c1"]


def test_s2_shape():
    inst = make_workload("s2", duration_s=40.0)
    progs = _complete_programs(inst, 40.0)
    for rs in progs.values():
        assert len(rs) == 14
        root = min(r.prompt_len for r in rs)
        assert root == (192 + 1280 if rs[0].client == "c0" else 192 + 128)
    assert {rs[0].client for rs in progs.values()} >= {"c0", "c1"}
    # the template is shared by every client's programs
    firsts = [page_keys(rs[0].prompt, BS) for rs in progs.values()]
    assert all(lcp(firsts[0], k) >= 192 // BS for k in firsts[1:])


# ---------------------------------------------------------------------------------------------
# parameter validation


@pytest.mark.parametrize(
    "name,kw,field",
    [
        ("nope", {}, "workload"),
        ("default", {"colour": 1}, "colour"),
        ("default", {"conv_rate": -1.0}, "conv_rate"),
        ("default", {"cv": -0.5}, "cv"),
        ("default", {"system_min": 500, "system_max": 100}, "system_max"),
        ("default", {"max_turns": 0}, "max_turns"),
        ("default", {"duration_s": 0}, "duration_s"),
        ("default", {"clients": 1}, "clients"),
        ("default", {"seed": -1}, "seed"),
        ("default", {"seed": 1.5}, "seed"),
        ("default", {"n_requests": 0}, "n_requests"),
        ("default", {"block_size": 0}, "block_size"),
        ("shared-prefix", {"groups": 4}, "groups"),
        ("shared-prefix", {"rate": float("nan")}, "rate"),
        ("shared-prefix", {"prefix_len": True}, "prefix_len"),
        ("s1", {"branches": 0}, "branches"),
        ("s1", {"depth": 0}, "depth"),
        ("s2", {"heavy_question_factor": 0}, "heavy_question_factor"),
        ("s2", {"thought_min": 10, "thought_max": 5}, "thought_max"),
    ],
)
def test_bad_parameters_name_the_parameter(name, kw, field):
    with pytest.raises(InputError) as ei:
        make_workload(name, **{"n_requests": 10, **kw})
    assert ei.value.field == field
    if field in kw and field != "colour":  # a bad value is quoted; an unknown name has none
        assert repr(kw[field]) in str(ei.value) or str(kw[field]) in str(ei.value)
