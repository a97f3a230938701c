"""Radix trees against SGLang's: prefixsched's RadixCache, SGLang's RadixCache and its
production UnifiedRadixCache replay the same prompts and must agree on every match length
(prefixsched.integration.conformance.compare_radix_trees); plus the regression test of the LRU
stamp at a split, the one behaviour in which prefixsched's tree differed from SGLang's.

Tests marked ``sglang`` skip without SGLang (fail instead under PREFIXSCHED_REQUIRE_SGLANG=1);
the trace tests also need the Mooncake trace (../shared/data/mooncake/, or the path in
PREFIXSCHED_MOONCAKE_TRACE) and skip when it is absent.
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path

import pytest

from prefixsched.errors import InputError
from prefixsched.reference.radix_cache import RadixCache
from prefixsched.theory.model import Instance, Request

REPO = Path(__file__).resolve().parents[1]
TRACE = Path(os.environ.get("PREFIXSCHED_MOONCAKE_TRACE") or REPO.parent / "shared/data/mooncake/conversation_trace.jsonl")
ALL_TREES = ("prefixsched", "sglang_radix", "sglang_unified")


def _edges(c: RadixCache) -> list[tuple]:
    return [n.key for n in c.iter_nodes() if n is not c.root]


# ---------------------------------------------------------------------------------------------
# the split/LRU regression (no SGLang needed)


def test_touching_split_stamps_the_tail_as_sglang_does():
    # SGLang radix_cache.py::_match_prefix_helper stamps the partly matched child, then
    # _split_node cuts it: the tail keeps the new stamp. So (3, 4) is younger than (9,).
    c = RadixCache(6)
    c.insert((1, 2, 3, 4))  # clock 1
    c.insert((9,))  # clock 2
    m = c.match_prefix((1, 2, 5), split=True, touch=True)  # clock 3, splits (1,2,3,4) at 2
    assert m.pages == 2 and m.node.key == (1, 2)
    tail = m.node.children[3]
    assert tail.key == (3, 4) and tail.last_access == m.node.last_access == 3
    assert c.evict(1) == 1
    assert _edges(c) == [(1, 2), (3, 4)]  # (9,) was the LRU leaf
    c.check_invariants()


def test_split_inside_insert_stamps_the_tail():
    # SGLang radix_cache.py::_insert_helper stamps node before _split_node, as for a match
    c = RadixCache(10)
    c.insert((1, 2, 3, 4))  # clock 1
    c.insert((9,))  # clock 2
    r = c.insert((1, 2, 7))  # clock 3: split at 2, tail (3, 4) stamped 3
    tail = r.node.parent.children[3]
    assert tail.last_access == 3 and r.node.last_access == 3
    assert c.evict(1) == 1 and _edges(c) == [(1, 2), (3, 4), (7,)]
    c.check_invariants()


def test_split_without_touch_keeps_every_age():
    c = RadixCache(10)
    c.insert((1, 2, 3, 4))
    c.insert((9,))
    up = c.match_prefix((1, 2), split=True, touch=False).node
    assert up.last_access == 1 and up.children[3].last_access == 1
    assert c.evict(2) == 2 and _edges(c) == [(1, 2), (9,)]  # the old tail went first
    c.check_invariants()


def test_insert_evicting_the_split_tail_leaves_it_evicted():
    c = RadixCache(4)
    c.insert((1, 2, 3, 4))
    r = c.insert((1, 2, 9))  # needs one page: the unpinned tail (3, 4) goes before the stamp
    assert r.new_pages == 1 and _edges(c) == [(1, 2), (9,)]
    c.check_invariants()


# ---------------------------------------------------------------------------------------------
# input errors (no SGLang needed: checked before SGLang is loaded)


def _inst(prompts: list[tuple[int, ...]]) -> Instance:
    return Instance(requests=tuple(Request(id=f"r{i}", client="c0", arrival=float(i), prompt=p, output_len=1) for i, p in enumerate(prompts)))


def test_compare_radix_trees_input_errors():
    from prefixsched.integration.conformance import compare_radix_trees

    inst = _inst([(1, 2, 3)])
    with pytest.raises(InputError, match="page_size"):
        compare_radix_trees(inst, 0)
    with pytest.raises(InputError, match="trees"):
        compare_radix_trees(inst, 1, trees=("prefixsched", "nope"))
    with pytest.raises(InputError, match="reference"):
        compare_radix_trees(inst, 1, trees=("prefixsched",))
    with pytest.raises(InputError, match="capacity_tokens"):
        compare_radix_trees(inst, 1, 2)


# ---------------------------------------------------------------------------------------------
# against SGLang


@pytest.mark.sglang
def test_split_tail_case_on_sglang_radix_cache():
    # the regression scenario replayed on SGLang's own RadixCache: same survivor
    from prefixsched.integration import conformance as C

    m = C._sgl()
    rc, bp = m.radix_cache, m.base_prefix_cache
    import torch

    alloc = C._CountingAllocator(6, 1)
    with C._deterministic_clock():
        t = rc.RadixCache.create_simulated(mock_allocator=alloc, page_size=1)
        for seq in ((1, 2, 3, 4), (9,)):
            t.insert(bp.InsertParams(key=rc.RadixKey(array("q", seq)), value=torch.zeros(len(seq), dtype=torch.int64)))
        assert t.match_prefix(bp.MatchPrefixParams(key=rc.RadixKey(array("q", (1, 2, 5))))).device_prefix_len == 2
        assert t.evict(bp.EvictParams(num_tokens=1)).num_tokens_evicted == 1
        assert t.match_prefix(bp.MatchPrefixParams(key=rc.RadixKey(array("q", (9,))))).device_prefix_len == 0
        assert t.match_prefix(bp.MatchPrefixParams(key=rc.RadixKey(array("q", (1, 2, 3, 4))))).device_prefix_len == 4


@pytest.mark.sglang
@pytest.mark.parametrize("page_size", [1, 2, 4])
@pytest.mark.parametrize("capacity", [None, 10, 12, 40])
def test_small_instance_all_trees_agree(page_size, capacity):
    # shared prefixes, partial pages, splits inside edges and LRU eviction at tight capacities
    from prefixsched.integration.conformance import compare_radix_trees

    base = tuple(range(100, 106))
    prompts = [base + (1, 2), (7, 7, 7, 7, 7), base + (3,), base[:3] + (9, 9, 9), (7, 7, 7, 8), base + (1, 2, 4, 5), base[:4]]
    prompts = prompts * 3
    r = compare_radix_trees(_inst(prompts), page_size, capacity, trees=ALL_TREES)
    for name in ALL_TREES:
        assert r["trees"][name]["agree"] == len(prompts), r["trees"][name]["first_disagreements"]
        assert r["trees"][name]["evicted_tokens"] == r["trees"]["sglang_radix"]["evicted_tokens"]
        assert r["trees"][name]["tree_tokens"] == r["trees"]["sglang_radix"]["tree_tokens"]
    if capacity == 10:
        assert r["trees"]["sglang_radix"]["evicted_tokens"] > 0  # eviction did happen
    if capacity is None:
        assert r["trees"]["sglang_radix"]["hit_tokens"] > 0


@pytest.mark.sglang
def test_split_tail_sequence_all_trees_agree():
    # the eviction that told the trees apart before the fix: (3, 4) is younger than (9,)
    from prefixsched.integration.conformance import compare_radix_trees

    prompts = [(1, 2, 3, 4), (9,), (1, 2, 5), (8, 8), (1, 2, 3, 4)]
    r = compare_radix_trees(_inst(prompts), 1, 7, trees=ALL_TREES)
    assert r["trees"]["sglang_radix"]["evicted_tokens"] == 1  # only (9,) went
    for name in ALL_TREES:
        assert r["trees"][name]["agree"] == len(prompts), r["trees"][name]["first_disagreements"]
    assert r["trees"]["sglang_radix"]["hit_tokens"] == 2 + 4


@pytest.mark.sglang
def test_unified_radix_cache_is_constructible_on_cpu():
    from prefixsched.integration.conformance import unified_radix_cache_report

    rep = unified_radix_cache_report()
    assert rep["constructible"], rep["reason"]
    assert rep["smoke"] == {"matched": 3, "evicted": 4}


@pytest.fixture(scope="module")
def mooncake():
    if not TRACE.exists():
        pytest.skip(f"Mooncake trace not found at {TRACE}")
    from prefixsched.reference.traces import load_mooncake

    return load_mooncake(TRACE)


@pytest.mark.sglang
@pytest.mark.trace
@pytest.mark.parametrize("capacity_x", [None, 1, 4, 16], ids=["no-eviction", "1x", "4x", "16x"])
@pytest.mark.parametrize("page_size,n", [(512, None), (16, None), (1, 2000)], ids=["page512-all", "page16-all", "page1-2000"])
def test_mooncake_match_lengths_agree_exactly(mooncake, page_size, n, capacity_x):
    """Issue #8 section 2: page 1 on the first 2,000 requests, pages 16 and 512 on all 12,031,
    without eviction and with 1x, 4x and 16x the longest prompt; all three trees."""
    from prefixsched.integration.conformance import compare_radix_trees

    longest = max(len(r.prompt) for r in mooncake.requests)
    cap = None if capacity_x is None else capacity_x * longest
    r = compare_radix_trees(mooncake, page_size, cap, trees=ALL_TREES, max_requests=n)
    assert r["requests"] == (n or 12031)
    ref = r["trees"]["sglang_radix"]
    for name in ALL_TREES:
        t = r["trees"][name]
        assert t["agree"] == r["requests"], (name, t["first_disagreements"])
        assert (t["evicted_tokens"], t["tree_tokens"], t["hit_tokens"]) == (ref["evicted_tokens"], ref["tree_tokens"], ref["hit_tokens"])
    assert (ref["evicted_tokens"] > 0) == (cap is not None)
