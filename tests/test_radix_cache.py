"""Tests of the radix prefix cache (prefixsched.reference.radix_cache).

Unit tests on hand examples, then a harness that checks the cache against a trivially correct
model (a prefix-closed set of stored page-key prefixes + the held locks + the watched waiters),
driven both by a plain hypothesis property test and by a RuleBasedStateMachine (issue #4).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from prefixsched.errors import InputError, PrefixschedError
from prefixsched.reference.radix_cache import (
    CapacityError,
    InsertResult,
    LockRefError,
    MatchResult,
    RadixCache,
    TreeNode,
)
from prefixsched.theory.model import BlockPrompt, Request, page_keys, sequence_page_keys


def edges(cache: RadixCache) -> list[tuple]:
    """Edge labels of all non-root nodes, pre-order."""
    return [n.key for n in cache.iter_nodes() if n is not cache.root]


# ---------------------------------------------------------------------------------- match/insert


def test_insert_and_match_page_size_1():
    c = RadixCache(100)
    r = c.insert((1, 2, 3, 4))
    assert isinstance(r, InsertResult) and r.new_pages == 4 and r.node.depth == 4
    assert c.total_tokens == 4
    assert c.match_prefix((1, 2, 3, 4, 5)).pages == 4
    assert c.match_prefix((1, 2, 9)).pages == 2
    assert c.match_prefix((7,)) == MatchResult(0, c.root)
    assert c.match_prefix(()).pages == 0
    # inserting a diverging sequence splits the edge (1,2,3,4) at 2
    r2 = c.insert((1, 2, 5))
    assert r2.new_pages == 1
    assert edges(c) == [(1, 2), (3, 4), (5,)]
    assert c.total_tokens == 5
    # inserting an existing prefix adds nothing but splits so that the node ends exactly there
    r3 = c.insert((1, 2, 3))
    assert r3.new_pages == 0 and r3.node.depth == 3 and r3.node.key == (3,)
    assert edges(c) == [(1, 2), (3,), (4,), (5,)]
    assert c.total_tokens == 5
    c.check_invariants()


def test_match_without_split_returns_node_containing_end():
    c = RadixCache(100)
    leaf = c.insert((1, 2, 3, 4)).node
    m = c.match_prefix((1, 2, 9), touch=False)
    assert m.pages == 2 and m.node is leaf  # end lies inside leaf's edge, no split
    assert edges(c) == [(1, 2, 3, 4)]
    m = c.match_prefix((1, 2, 9), split=True)
    assert m.pages == 2 and m.node.depth == 2 and m.node is not leaf
    assert edges(c) == [(1, 2), (3, 4)]
    c.check_invariants()


def test_split_keeps_original_object_as_lower_part():
    c = RadixCache(100)
    leaf = c.insert((1, 2, 3, 4)).node
    c.inc_lock_ref(leaf)
    old_id, old_access = leaf.id, leaf.last_access
    upper = c.match_prefix((1, 2), split=True, touch=False).node
    assert leaf.id == old_id and leaf.key == (3, 4) and leaf.parent is upper
    assert upper.key == (1, 2) and upper.lock_ref == 1 and upper.last_access == old_access
    assert upper.id > old_id
    # the caller's reference still unlocks the whole path
    c.dec_lock_ref(leaf)
    assert leaf.lock_ref == 0 and upper.lock_ref == 0
    assert c.evictable_tokens == 4 and c.locked_tokens == 0
    c.check_invariants()


def test_page_size_4_with_page_keys():
    c = RadixCache(1000, page_size=4)
    a = tuple(range(10))  # 2 full pages + 2 tokens
    b = tuple(range(8)) + (99,) * 5  # shares the first 2 pages, then 1 more full page
    ka, kb = page_keys(a, 4), page_keys(b, 4)
    assert len(ka) == 2 and len(kb) == 3
    r = c.insert(ka)
    assert r.new_pages == 2 and c.total_tokens == 8
    assert c.match_prefix(kb).pages == 2
    r = c.insert(kb)
    assert r.new_pages == 1 and c.total_tokens == 12
    # first page differs in its last token: no match
    other = page_keys((0, 1, 2, 7, 4, 5, 6, 7), 4)
    assert c.match_prefix(other).pages == 0
    c.check_invariants()


def test_block_prompts_and_output_pages():
    c = RadixCache(100_000, page_size=512)
    p1 = BlockPrompt([0, 1, 2], 1500, 512)
    p2 = BlockPrompt([0, 1, 7], 1100, 512)
    c.insert(page_keys(p1, 512))
    assert c.match_prefix(page_keys(p2, 512)).pages == 2
    req = Request("r0", "c", 0.0, p2, 600)
    keys = sequence_page_keys(req, 512, with_output=True)
    r = c.insert(keys)
    assert r.new_pages == len(keys) - 2 == 1  # (1100 + 600) // 512 = 3 pages, 2 shared
    assert c.total_tokens == 3 * 512  # p1 holds only 2 full pages (1500 // 512)
    c.check_invariants()


# ---------------------------------------------------------------------------------- lock refs


def test_lock_ref_path_semantics():
    c = RadixCache(100)
    c.insert((1, 2, 3, 4))
    n5 = c.insert((1, 2, 5)).node
    n4 = c.match_prefix((1, 2, 3, 4)).node
    top = n5.parent
    assert top.key == (1, 2)
    assert c.inc_lock_ref(n4) == 4  # (1,2) and (3,4) become locked
    assert top.lock_ref == 1 and n4.lock_ref == 1 and n5.lock_ref == 0
    assert c.locked_tokens == 4 and c.evictable_tokens == 1
    assert c.inc_lock_ref(n5) == 1  # only (5,) moves; (1,2) already locked
    assert top.lock_ref == 2
    assert c.dec_lock_ref(n4) == 2
    assert top.lock_ref == 1 and c.locked_tokens == 3
    assert c.dec_lock_ref(n5) == 3
    assert c.locked_tokens == 0 and c.evictable_tokens == 5
    with pytest.raises(LockRefError):
        c.dec_lock_ref(n5)
    assert c.inc_lock_ref(c.root) == 0 and c.dec_lock_ref(c.root) == 0
    c.check_invariants()


def test_path_helpers():
    c = RadixCache(100, page_size=2)
    c.insert((1, 2, 3, 4))
    n5 = c.insert((1, 2, 5)).node
    top = n5.parent
    n4 = c.match_prefix((1, 2, 3, 4)).node
    assert c.node_depth_pages(n4) == 4 and c.node_depth_pages(top) == 2
    assert c.path_node_ids(n4) == (top.id, n4.id)
    assert c.path_node_ids(c.root) == ()
    assert c.path_unlocked_tokens(n4) == 8
    assert c.path_unlocked_tokens(n4, upto_pages=3) == 6
    assert c.path_unlocked_tokens(n4, exclude={top.id}) == 4
    c.inc_lock_ref(n5)
    assert c.path_unlocked_tokens(n4) == 4  # (1,2) is locked now
    assert c.path_unlocked_tokens(n5) == 0
    ids = [n.id for n in c.iter_nodes()]
    assert ids[0] == 0 and sorted(ids) == sorted(set(ids)) and len(ids) == c.num_nodes == 4


# ---------------------------------------------------------------------------------- eviction


def test_lru_eviction_order_and_cascade():
    c = RadixCache(100)
    a = c.insert((1, 1)).node
    b = c.insert((2, 2)).node
    d = c.insert((3, 3)).node
    c.match_prefix((1, 1))  # a is now the most recent
    assert c.evict(1) == 2
    assert not b.alive and a.alive and d.alive
    assert c.evict(2) == 2
    assert not d.alive and a.alive
    # cascade: after the leaf goes, its parent becomes an evictable leaf
    c2 = RadixCache(100)
    c2.insert((1, 2, 3))
    c2.insert((1, 2, 4))
    c2.insert((9,))
    c2.match_prefix((9,))
    assert c2.evict(3) == 4  # (3,), (4,), then parent (1,2) (2 tokens) before the newer (9,)
    assert edges(c2) == [(9,)]
    assert c2.stats.evicted_tokens == 4
    c2.check_invariants()


def test_split_preserves_lru_age():
    c = RadixCache(100)
    c.insert((5,))  # clock 1
    c.insert((7, 8))  # clock 2
    up = c.match_prefix((7,), split=True, touch=False).node
    assert up.last_access == 2 and up.children[8].last_access == 2
    c.insert((6,))  # clock 3
    assert c.evict(1) == 1 and c.match_prefix((5,)).pages == 0
    c2_edges = edges(c)
    assert c2_edges == [(7,), (8,), (6,)]
    assert c.evict(1) == 1 and edges(c) == [(7,), (6,)]  # (8,) is older than (6,)
    assert c.evict(1) == 1 and edges(c) == [(6,)]  # then its parent, also clock 2


def test_locked_nodes_never_evicted():
    c = RadixCache(100)
    n = c.insert((1, 2, 3)).node
    c.insert((1, 2, 4))
    c.inc_lock_ref(n)
    assert c.evict(100) == 1  # only (4,)
    assert c.total_tokens == 3 and n.alive
    assert c.evict(100) == 0
    c.dec_lock_ref(n)
    assert c.evict(100) == 3 and c.total_tokens == 0
    assert c.evict(5) == 0
    c.check_invariants()


def test_evict_rejects_bad_input():
    c = RadixCache(10)
    with pytest.raises(InputError):
        c.evict(-1)
    with pytest.raises(InputError):
        c.evict(1.5)  # type: ignore[arg-type]
    assert c.evict(0) == 0


# ---------------------------------------------------------------------------------- capacity


def test_reserve_release_and_free():
    c = RadixCache(10, page_size=2)
    c.insert((1, 2))
    assert c.free_tokens == 6
    c.reserve(5)
    assert c.reserved_tokens == 5 and c.free_tokens == 1
    with pytest.raises(CapacityError):
        c.reserve(2)
    assert c.reserved_tokens == 5
    c.release(3)
    assert c.free_tokens == 4
    with pytest.raises(InputError):
        c.release(3)
    with pytest.raises(InputError):
        c.reserve(-1)
    assert issubclass(CapacityError, PrefixschedError)


def test_insert_evicts_lru_but_not_its_own_path():
    c = RadixCache(6)
    c.insert((1, 2, 3))
    c.insert((9, 9))
    c.match_prefix((1, 2, 3))  # (9,9) is LRU
    r = c.insert((1, 2, 3, 4, 5))  # needs 2, free is 1 -> evicts (9,9)
    assert r.new_pages == 2 and c.total_tokens == 5
    assert c.match_prefix((9, 9)).pages == 0
    # now the only evictable content is the path itself: the extension cannot fit
    c.reserve(1)
    with pytest.raises(CapacityError):
        c.insert((1, 2, 3, 4, 5, 6))
    assert c.total_tokens == 5 and c.match_prefix((1, 2, 3, 4, 5)).pages == 5
    c.check_invariants()


def test_insert_capacity_error_leaves_cache_unchanged():
    c = RadixCache(4)
    a = c.insert((1, 2, 3)).node
    c.inc_lock_ref(a)
    before = (edges(c), c.total_tokens, c.stats)
    with pytest.raises(CapacityError):
        c.insert((1, 5, 6))  # needs 2, free 1, nothing unlocked
    assert (edges(c), c.total_tokens) == before[:2]
    assert c.stats.evicted_tokens == 0
    c.check_invariants()


def test_insert_can_evict_the_tail_of_a_split_edge():
    c = RadixCache(4)
    c.insert((1, 2, 3, 4))
    r = c.insert((1, 2, 9))  # needs 1, free 0: split, then evict (3,4)
    assert r.new_pages == 1 and c.total_tokens == 3
    assert edges(c) == [(1, 2), (9,)]
    c.check_invariants()


def test_stats():
    c = RadixCache(100, page_size=4)
    c.insert((1, 2))
    c.match_prefix((1, 2, 3), count_hit=True)
    c.match_prefix((1,))  # not counted
    assert c.stats.hit_tokens == 8
    c.insert((1, 3))
    assert c.stats.inserted_tokens == 12
    c.evict(100)
    assert c.stats.evicted_tokens == 12


def test_constructor_validation():
    with pytest.raises(InputError):
        RadixCache(-1)
    with pytest.raises(InputError):
        RadixCache(10, page_size=0)
    with pytest.raises(InputError):
        RadixCache(10, page_size=True)  # type: ignore[arg-type]


def test_check_invariants_detects_corruption():
    c = RadixCache(100)
    n = c.insert((1, 2, 3)).node
    n.lock_ref = 1  # behind the cache's back: locked sums are now wrong
    with pytest.raises(AssertionError):
        c.check_invariants()


# ---------------------------------------------------------------------------------- waiters


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, wid, pages) -> None:
        self.calls.append((wid, pages))


def test_watch_insert_split_evict():
    rec = Recorder()
    c = RadixCache(100, on_match_change=rec)
    assert c.watch("a", (1, 2, 3, 4)) == 0
    assert c.watch("b", (1, 2, 9)) == 0
    assert c.watch("e", ()) == 0
    c.insert((1, 2, 3))
    assert rec.calls == [("a", 3), ("b", 2)]
    assert c.watched_node("a") is c.watched_node("b")  # both inside edge (1,2,3)
    rec.calls.clear()
    c.insert((1, 2, 9, 9))  # splits (1,2,3) at 2; b follows the new leaf
    assert rec.calls == [("b", 3)]
    assert c.watched_pages("a") == 3 and c.watched_node("a").key == (3,)
    rec.calls.clear()
    c.insert((1, 2, 3, 4, 5))
    assert rec.calls == [("a", 4)]
    rec.calls.clear()
    n = c.match_prefix((1, 2, 3)).node
    c.match_prefix((1, 2, 9, 9))
    assert c.evict(1) == 2  # leaf (4,5) was LRU
    assert rec.calls == [("a", 3)]
    rec.calls.clear()
    c.evict(100)
    assert rec.calls == [("a", 0), ("b", 0)]  # registration order
    assert not n.alive
    c.check_invariants()
    c.unwatch("a")
    assert not c.is_watched("a") and c.num_waiters == 2
    c.insert((1, 2, 3, 4))
    assert rec.calls[-1] == ("b", 2)
    with pytest.raises(InputError):
        c.unwatch("a")
    with pytest.raises(InputError):
        c.watch("b", (1,))
    c.check_invariants()


def test_watch_split_on_match_moves_waiters_without_callbacks():
    rec = Recorder()
    c = RadixCache(100, on_match_change=rec)
    c.insert((1, 2, 3, 4, 5))
    assert c.watch("x", (1, 2, 7)) == 2
    assert c.watch("y", (1, 2, 3, 4, 8)) == 4
    leaf = c.watched_node("x")
    up = c.match_prefix((1, 2, 3), split=True).node
    assert c.watched_node("x") is up and up.depth == 3  # moved to the upper part
    assert c.watched_node("y") is leaf and leaf.depth == 5  # stays in the lower (original) part
    assert c.watched_pages("x") == 2 and c.watched_pages("y") == 4
    assert rec.calls == []
    c.check_invariants()


def test_callbacks_fire_after_mutation_in_registration_order():
    rec = Recorder()
    c = RadixCache(3, on_match_change=rec)
    c.insert((1, 2))
    c.watch("w", (1, 2, 3))
    c.insert((5,))
    c.watch("v", (5,))
    c.match_prefix((5,))
    c.match_prefix((1, 2))
    # full pool: inserting (1,2,3) evicts (5,) (v: 1 -> 0) then extends the path (w: 2 -> 3)
    c.insert((1, 2, 3))
    assert rec.calls == [("w", 3), ("v", 0)]


def test_callback_may_reenter_the_cache():
    c = RadixCache(100)
    seen = []

    def cb(wid, pages):
        seen.append((wid, pages, c.match_prefix(c_keys[wid], touch=False).pages))

    c_keys = {"a": (1, 2), "b": (1, 3)}
    c.on_match_change = cb
    for k, v in c_keys.items():
        c.watch(k, v)
    c.insert((1, 2))
    c.insert((1, 3))
    assert seen == [("a", 2, 2), ("b", 1, 1), ("b", 2, 2)]


def test_list_keys_behave_like_tuples():
    c = RadixCache(100)
    c.insert([1, 2, 3])
    c.insert([1, 2, 3, 4])
    assert c.match_prefix([1, 2, 3, 4, 5]).pages == 4
    assert c.watch("w", [1, 2, 3, 4]) == 4
    assert c.insert([1, 2, 3, 4]).new_pages == 0
    c.check_invariants()


def test_only_affected_waiters_are_visited():
    c = RadixCache(10_000)
    visits = []
    orig = c._reattach

    def spy(w, node, p):
        visits.append(w.wid)
        orig(w, node, p)

    c._reattach = spy  # type: ignore[method-assign]
    for i in range(500):
        c.watch(("a", i), (0, 0, i % 7))
    c.watch("b", (1, 2))
    c.insert((1, 2, 3))
    assert visits == ["b"]
    visits.clear()
    c.insert((0, 0, 3))  # 500 waiters start with 0, but only those whose match grows are visited
    assert sorted(visits) == sorted(("a", i) for i in range(500))  # all grow: 0 -> 2 or 3
    visits.clear()
    c.insert((0, 0, 5))  # splits (0,0,3) at 2; only the waiters continuing with 5 are re-walked
    assert sorted(visits) == sorted(("a", i) for i in range(500) if i % 7 == 5)
    visits.clear()
    c.match_prefix((1, 2, 3))
    c.match_prefix((0, 0, 5))
    assert c.evict(1) == 1  # LRU leaf (3,): only its waiters drop
    assert sorted(visits) == sorted(("a", i) for i in range(500) if i % 7 == 3)
    c.check_invariants()


def test_lru_heap_stays_bounded_without_evictions():
    c = RadixCache(100)
    for i in range(5):
        c.insert((i, i))
    for _ in range(5000):
        c.match_prefix((3, 3))
    assert len(c._heap) <= 2 * c.num_nodes + 1025
    assert c.evict(2) == 2 and c.match_prefix((0, 0)).pages == 0  # LRU order intact
    c.check_invariants()


def test_deterministic():
    def run():
        calls = []
        c = RadixCache(12, page_size=2, on_match_change=lambda w, p: calls.append((w, p)))
        for i, seq in enumerate([(1, 2), (1, 3), (2,), (1, 2, 4), (3, 3, 3)]):
            c.watch(i, seq + (9,))
        for seq in [(1, 2), (1, 3), (2,), (1, 2, 4), (3, 3, 3), (2, 5), (1, 3, 3)]:
            c.insert(seq)
        return calls, [(n.id, n.key, n.last_access) for n in c.iter_nodes()], c.stats

    assert run() == run()


# ---------------------------------------------------------------------------------- model check

ALPHABET = st.integers(0, 2)
SEQ = st.lists(ALPHABET, min_size=0, max_size=6).map(tuple)


def prefixes(seq: tuple) -> set[tuple]:
    return {seq[:i] for i in range(1, len(seq) + 1)}


def node_path(node: TreeNode) -> tuple:
    parts = []
    while node.parent is not None:
        parts.append(node.key)
        node = node.parent
    return tuple(k for part in reversed(parts) for k in part)


class Harness:
    """The cache next to a trivially correct model.

    Model: ``stored`` = set of stored page-key prefixes (prefix-closed), ``locks`` = list of
    (node, locked prefix) held, ``waiters`` = wid -> keys and last reported pages.
    """

    def __init__(self, capacity_pages: int, page_size: int) -> None:
        self.ps = page_size
        self.calls: list[tuple] = []
        self.cache = RadixCache(capacity_pages * page_size, page_size, on_match_change=self._cb)
        self.stored: set[tuple] = set()
        self.locks: list[tuple[TreeNode, tuple]] = []
        self.waiters: dict[int, tuple] = {}
        self.reported: dict[int, int] = {}
        self.next_wid = 0
        self.reserved = 0

    def _cb(self, wid, pages) -> None:
        self.calls.append((wid, pages))

    # naive queries
    def naive_match(self, keys: tuple) -> int:
        p = 0
        while p < len(keys) and keys[: p + 1] in self.stored:
            p += 1
        return p

    def locked_prefixes(self) -> set[tuple]:
        out: set[tuple] = set()
        for _, pre in self.locks:
            out |= prefixes(pre)
        return out

    def cache_stored(self) -> set[tuple]:
        out: set[tuple] = set()
        for n in self.cache.iter_nodes():
            if n is not self.cache.root:
                out |= {node_path(n)[:i] for i in range(n.start + 1, n.depth + 1)}
        return out

    # operations
    def insert(self, keys: tuple) -> None:
        c = self.cache
        before = set(self.stored)
        m = self.naive_match(keys)
        need = (len(keys) - m) * self.ps
        free = c.free_tokens
        unlocked_off_path = len(self.stored - self.locked_prefixes() - prefixes(keys[:m])) * self.ps
        feasible = need <= free + unlocked_off_path
        ev0 = c.stats.evicted_tokens
        if not feasible:
            with pytest.raises(CapacityError):
                c.insert(keys)
            assert self.cache_stored() == before
            assert c.stats.evicted_tokens == ev0
        else:
            r = c.insert(keys)
            assert r.new_pages == len(keys) - m
            assert r.node.depth == len(keys) and node_path(r.node) == keys
            now = self.cache_stored()
            assert prefixes(keys) <= now
            assert now <= before | prefixes(keys)
            assert self.locked_prefixes() <= now
            if need <= free:
                assert before <= now and c.stats.evicted_tokens == ev0
            assert (c.stats.evicted_tokens - ev0) == len(before - now) * self.ps
            self.stored = now
        self.after()

    def match(self, keys: tuple, split: bool, touch: bool, lock: bool) -> None:
        c = self.cache
        r = c.match_prefix(keys, split=split or lock, touch=touch)
        assert r.pages == self.naive_match(keys)
        if r.pages == 0:
            assert r.node is c.root
        else:
            assert r.node.start < r.pages <= r.node.depth
            assert node_path(r.node)[: r.pages] == keys[: r.pages]
        if split or lock:
            assert r.node.depth == r.pages
        if lock and r.pages:
            unl = c.path_unlocked_tokens(r.node)
            ev = c.evictable_tokens
            assert c.inc_lock_ref(r.node) == unl
            assert c.evictable_tokens == ev - unl
            self.locks.append((r.node, keys[: r.pages]))
        assert self.cache_stored() == self.stored
        self.after()

    def unlock(self, i: int) -> None:
        if not self.locks:
            return
        node, _ = self.locks.pop(i % len(self.locks))
        self.cache.dec_lock_ref(node)
        self.after()

    def evict(self, n_pages: int) -> None:
        c = self.cache
        leaves_before = {
            n.id: n.last_access
            for n in c.iter_nodes()
            if n is not c.root and n.lock_ref == 0
        }
        nodes_before = {n.id: n for n in c.iter_nodes()}
        before = set(self.stored)
        got = c.evict(n_pages * self.ps)
        now = self.cache_stored()
        assert now <= before and self.locked_prefixes() <= now
        assert got == len(before - now) * self.ps
        assert got >= n_pages * self.ps or c.evictable_tokens == 0
        # LRU: nothing evicted was touched more recently than an unlocked leaf that survived
        gone = [i for i, n in nodes_before.items() if not n.alive]
        assert all(i in leaves_before for i in gone)
        survivors = [n for n in c.iter_nodes() if n is not c.root and n.lock_ref == 0 and not n.children]
        if gone and survivors:
            assert max(leaves_before[i] for i in gone) <= min(n.last_access for n in survivors)
        self.stored = now
        self.after()

    def reserve(self, n: int) -> None:
        c = self.cache
        if n > c.free_tokens:
            with pytest.raises(CapacityError):
                c.reserve(n)
        else:
            c.reserve(n)
            self.reserved += n
        self.after()

    def release(self, n: int) -> None:
        n = min(n, self.reserved)
        self.cache.release(n)
        self.reserved -= n
        self.after()

    def watch(self, keys: tuple) -> None:
        wid = self.next_wid
        self.next_wid += 1
        pages = self.cache.watch(wid, keys)
        assert pages == self.naive_match(keys)
        self.waiters[wid] = keys
        self.reported[wid] = pages
        self.after()

    def unwatch(self, i: int) -> None:
        if not self.waiters:
            return
        wid = sorted(self.waiters)[i % len(self.waiters)]
        self.cache.unwatch(wid)
        del self.waiters[wid], self.reported[wid]
        self.after()

    def after(self) -> None:
        c = self.cache
        c.check_invariants()
        assert c.total_tokens == len(self.stored) * self.ps
        assert c.reserved_tokens == self.reserved
        assert c.free_tokens == c.capacity_tokens - c.total_tokens - c.reserved_tokens >= 0
        assert c.evictable_tokens + c.locked_tokens == c.total_tokens
        assert c.locked_tokens == len(self.locked_prefixes()) * self.ps
        # lock_ref of each node = number of held locks whose prefix covers it
        for n in c.iter_nodes():
            if n is c.root:
                continue
            path = node_path(n)
            want = sum(1 for _, pre in self.locks if len(pre) >= n.depth and pre[: n.depth] == path)
            assert n.lock_ref == want
        # waiters: exact match, callbacks exactly for the changes, in registration order
        fired = [w for w, _ in self.calls]
        assert fired == sorted(fired) and len(set(fired)) == len(fired)
        got = dict(self.calls)
        self.calls.clear()
        for wid, keys in self.waiters.items():
            fresh = c.match_prefix(keys, touch=False).pages
            assert fresh == self.naive_match(keys) == c.watched_pages(wid)
            if fresh != self.reported[wid]:
                assert got.pop(wid) == fresh
                self.reported[wid] = fresh
        assert not got, f"callbacks without a change: {got}"


OPS = st.one_of(
    st.tuples(st.just("insert"), SEQ),
    st.tuples(st.just("match"), SEQ, st.booleans(), st.booleans(), st.booleans()),
    st.tuples(st.just("unlock"), st.integers(0, 50)),
    st.tuples(st.just("evict"), st.integers(0, 6)),
    st.tuples(st.just("reserve"), st.integers(0, 5)),
    st.tuples(st.just("release"), st.integers(0, 5)),
    st.tuples(st.just("watch"), SEQ),
    st.tuples(st.just("unwatch"), st.integers(0, 50)),
)


@settings(deadline=None)
@given(st.sampled_from([1, 4]), st.integers(4, 14), st.lists(OPS, max_size=40))
def test_against_naive_model(page_size, capacity_pages, ops):
    h = Harness(capacity_pages, page_size)
    for op in ops:
        getattr(h, op[0])(*op[1:])
    # release everything: every lock and reservation can be undone and the tree emptied
    while h.locks:
        h.unlock(0)
    h.release(h.reserved)
    h.evict(10**6)
    assert h.cache.total_tokens == 0 and h.cache.num_nodes == 1
    assert all(h.cache.watched_pages(w) == 0 for w in h.waiters)


class RadixCacheMachine(RuleBasedStateMachine):
    """The radix cache against a trivially correct model (issue #4): locked nodes never evicted,
    size accounting, match = longest stored prefix, waiters = fresh matches."""

    h: Harness

    @initialize(page_size=st.sampled_from([1, 4]), capacity_pages=st.integers(4, 14))
    def setup(self, page_size, capacity_pages):
        self.h = Harness(capacity_pages, page_size)

    @rule(keys=SEQ)
    def insert(self, keys):
        self.h.insert(keys)

    @rule(keys=SEQ, split=st.booleans(), touch=st.booleans(), lock=st.booleans())
    def match(self, keys, split, touch, lock):
        self.h.match(keys, split, touch, lock)

    @precondition(lambda self: bool(self.h.locks))
    @rule(i=st.integers(0, 50))
    def unlock(self, i):
        self.h.unlock(i)

    @rule(n=st.integers(0, 6))
    def evict(self, n):
        self.h.evict(n)

    @rule(n=st.integers(0, 5))
    def reserve(self, n):
        self.h.reserve(n)

    @rule(n=st.integers(0, 5))
    def release(self, n):
        self.h.release(n)

    @rule(keys=SEQ)
    def watch(self, keys):
        self.h.watch(keys)

    @precondition(lambda self: bool(self.h.waiters))
    @rule(i=st.integers(0, 50))
    def unwatch(self, i):
        self.h.unwatch(i)

    @invariant()
    def consistent(self):
        if hasattr(self, "h"):
            self.h.cache.check_invariants()


RadixCacheMachine.TestCase.settings = settings(stateful_step_count=30, deadline=None)
TestRadixCacheMachine = RadixCacheMachine.TestCase
