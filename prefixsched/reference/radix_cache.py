"""Radix prefix cache over page keys (RadixAttention, as SGLang's ``RadixCache``).

Source: SGLang 0.5.23 ``mem_cache/radix_cache.py`` (``/work/shared/specs/sglang.md`` §1.3):
a radix tree with compressed edges whose children are keyed by the first page of their edge;
``match_prefix`` finds the longest stored prefix (and splits the node where a match ends inside
an edge), ``insert`` stores a whole sequence, ``evict`` removes least-recently-used unlocked
*leaves*, and ``inc_lock_ref`` / ``dec_lock_ref`` pin a node and all its ancestors.

The cache never walks tokens: it works on *page keys* (one hashable key per full page of
``page_size`` tokens, see :func:`prefixsched.theory.model.page_keys` and
:func:`~prefixsched.theory.model.sequence_page_keys`). Lengths returned by the tree are in
**pages** (keys: ``pages``, ``new_pages``) where the name says so and in **tokens** everywhere
else. A key stands for ``page_size`` tokens, except a compressed
:class:`~prefixsched.theory.model.WKey` (page size 1 over block prompts), which stands for its
``n`` tokens: every node keeps the tokens of its edge (``ntok``) and every count is in tokens
(:func:`~prefixsched.theory.model.key_tokens`).

KV pool. The engine shares one pool of ``capacity_tokens`` between the tree and the private
tokens of running requests (``reserve`` / ``release``): ``free_tokens = capacity_tokens -
total_tokens - reserved_tokens``.

Waiters. The simulator keeps thousands of waiting requests and must know each one's current
prefix match without re-walking the tree. :meth:`RadixCache.watch` registers a waiter; after
every mutating operation (insert, split, evict) every waiter's match equals what a fresh
``match_prefix(keys, touch=False)`` returns, and ``on_match_change(wid, new_pages)`` fires once
per waiter whose match changed during that operation (net change; fired after the mutation
completes, in registration order). Only waiters attached to the nodes an operation touches are
visited, so the cost is proportional to the affected waiters, not to all of them.

Decisions where SGLang leaves a choice open or differs for simulation purposes (documented here):

- Logical clock: every touching call (``match_prefix(touch=True)``, ``insert``) advances an
  integer clock by one; every node on its path gets that value as ``last_access``. LRU order is
  ``(last_access, id)`` ascending, so ties are broken by creation order (deterministic).
- Split convention: the *original* node object stays the lower part (keeps its children,
  ``lock_ref`` and ``id``); a *new* node becomes the upper part and copies ``lock_ref`` and
  ``last_access``. Node references held by callers stay valid.
- LRU at a split, as SGLang: ``_match_prefix_helper`` and ``_insert_helper`` stamp the partly
  matched child's ``last_access_time`` *before* ``_split_node`` cuts it, so after a touching
  split (``match_prefix(split=True, touch=True)``, or ``insert`` ending inside an edge) the lower
  part, too, carries the operation's clock. In ``insert`` the lower part is stamped after the
  operation's own eviction (SGLang allocates, and may evict, before it inserts), so a tail that
  this eviction removed stays removed. A split without touch keeps every age.
- ``match_prefix`` without ``split`` returns the node whose edge contains the end of the match
  (root for an empty match); with ``split=True`` that node ends exactly at the match.
- Single-child chains are never merged (SGLang does not merge either).
- ``insert`` may evict unlocked LRU leaves itself to make room; the matched path is pinned
  meanwhile. It checks feasibility *before* touching anything, so a ``CapacityError`` leaves the
  cache unchanged.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from prefixsched.errors import InputError, PrefixschedError
from prefixsched.theory.model import key_tokens

__all__ = [
    "CapacityError",
    "LockRefError",
    "TreeNode",
    "MatchResult",
    "InsertResult",
    "CacheStats",
    "RadixCache",
]


class CapacityError(PrefixschedError):
    """The KV pool cannot hold the requested tokens (even after evicting every unlocked leaf
    that the operation may evict). The message gives the numbers in tokens."""


class LockRefError(PrefixschedError, ValueError):
    """``dec_lock_ref`` below zero, or a lock operation on a node that is no longer in the tree."""


class TreeNode:
    """One node of the radix tree.

    Attributes
    ----------
    key:
        Edge label: tuple of page keys (empty only for the root).
    children:
        ``first page key -> child``.
    parent:
        Parent node (``None`` for the root).
    lock_ref:
        Number of holders pinning this node (through itself or a descendant). Path-monotone.
    last_access:
        Logical clock of the last touch (LRU).
    id:
        Creation counter (root is 0); deterministic.
    depth:
        Pages from the root to the *end* of this node's edge.
    alive:
        False once evicted.
    """

    __slots__ = ("key", "children", "parent", "lock_ref", "last_access", "id", "depth", "alive", "_open", "_closed", "ntok")

    def __init__(self, key: tuple, parent: "TreeNode | None", node_id: int, depth: int, last_access: int,
                 ntok: int = 0) -> None:
        self.key: tuple = key
        self.ntok = ntok  # tokens of the edge
        self.children: dict[Hashable, TreeNode] = {}
        self.parent = parent
        self.lock_ref = 0
        self.last_access = last_access
        self.id = node_id
        self.depth = depth
        self.alive = True
        # Waiters whose match ends at this node's end and could continue (next key -> wids).
        self._open: dict[Hashable, dict[Hashable, None]] | None = None
        # Every other waiter attached here (match inside the edge or fully matched): pages -> wids.
        self._closed: dict[int, dict[Hashable, None]] | None = None

    @property
    def start(self) -> int:
        """Pages from the root to the *start* of this node's edge."""
        return self.depth - len(self.key)

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def waiter_ids(self) -> tuple[Hashable, ...]:
        """Ids of the waiters attached to this node (match ends inside its edge)."""
        out: list[Hashable] = []
        if self._closed:
            for b in self._closed.values():
                out.extend(b)
        if self._open:
            for b in self._open.values():
                out.extend(b)
        return tuple(out)

    def __repr__(self) -> str:
        return (
            f"TreeNode(id={self.id}, pages={len(self.key)}, depth={self.depth}, lock_ref={self.lock_ref}, "
            f"last_access={self.last_access}, children={len(self.children)}{'' if self.alive else ', evicted'})"
        )


class MatchResult(NamedTuple):
    """Result of :meth:`RadixCache.match_prefix`: matched ``pages`` and the ``node`` whose edge
    contains the end of the match (root if ``pages == 0``)."""

    pages: int
    node: TreeNode


class InsertResult(NamedTuple):
    """Result of :meth:`RadixCache.insert`: ``new_pages`` added to the tree and the ``node`` where
    the inserted sequence ends (exactly at its boundary; root for an empty sequence)."""

    new_pages: int
    node: TreeNode


@dataclass
class CacheStats:
    """Cumulative counters, all in tokens.

    hit_tokens: tokens returned by ``match_prefix(..., count_hit=True)`` calls.
    inserted_tokens: tokens added to the tree by ``insert``.
    evicted_tokens: tokens evicted (by ``evict`` and by ``insert`` making room).
    """

    hit_tokens: int = 0
    inserted_tokens: int = 0
    evicted_tokens: int = 0


class _Waiter:
    __slots__ = ("wid", "keys", "node", "pages", "seq")

    def __init__(self, wid: Hashable, keys: tuple, seq: int) -> None:
        self.wid = wid
        self.keys = keys
        self.node: TreeNode | None = None
        self.pages = 0
        self.seq = seq


def _check_count(name: str, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise InputError(name, f"must be an integer, got {n!r}")
    if n < 0:
        raise InputError(name, f"must be >= 0, got {n}")
    return n


class RadixCache:
    """Radix prefix cache with LRU leaf eviction, lock refs, pool accounting and waiters.

    Parameters
    ----------
    capacity_tokens:
        KV pool size in tokens (tree + reserved private tokens), >= 0.
    page_size:
        Tokens per page (>= 1). Every page key stands for ``page_size`` tokens.
    on_match_change:
        Optional ``callback(wid, new_pages)`` for watched waiters (see :meth:`watch`).
    on_evict:
        Optional ``callback(leaf, parent)`` called once per evicted leaf, right after it is unlinked
        and before anything else changes: ``parent``'s path is still intact, so the callee can read
        which pages went (D²LPM's ON_EVICT stream). It must not mutate the cache.

    Raises
    ------
    InputError
        If ``capacity_tokens`` < 0 or ``page_size`` < 1 or either is not an int.
    """

    def __init__(
        self,
        capacity_tokens: int,
        page_size: int = 1,
        *,
        on_match_change: Callable[[Hashable, int], None] | None = None,
        on_evict: Callable[[TreeNode, TreeNode], None] | None = None,
    ) -> None:
        _check_count("capacity_tokens", capacity_tokens)
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise InputError("page_size", f"must be an integer >= 1, got {page_size!r}")
        self.capacity_tokens = capacity_tokens
        self.page_size = page_size
        self.on_match_change = on_match_change
        self.on_evict = on_evict
        self.stats = CacheStats()
        self._next_id = 1
        self._clock = 0
        self._root = TreeNode((), None, 0, 0, 0)
        self._num_nodes = 1
        self._total_tok = 0
        self._evictable_tok = 0
        self._locked_tok = 0
        self._reserved = 0
        self._heap: list[tuple[int, int, TreeNode]] = []
        self._waiters: dict[Hashable, _Waiter] = {}
        self._waiter_seq = 0
        self._pending: dict[Hashable, int] = {}

    # ------------------------------------------------------------------ properties

    @property
    def root(self) -> TreeNode:
        return self._root

    @property
    def total_tokens(self) -> int:
        """Tokens stored in the tree."""
        return self._total_tok

    @property
    def reserved_tokens(self) -> int:
        """Private tokens of running requests (see :meth:`reserve`)."""
        return self._reserved

    @property
    def free_tokens(self) -> int:
        """``capacity_tokens - total_tokens - reserved_tokens``."""
        return self.capacity_tokens - self._total_tok - self._reserved

    @property
    def evictable_tokens(self) -> int:
        """Tokens in tree nodes with ``lock_ref == 0`` (all of them can be evicted, leaves first)."""
        return self._evictable_tok

    @property
    def locked_tokens(self) -> int:
        """Tokens in tree nodes with ``lock_ref > 0``."""
        return self._locked_tok

    @property
    def num_nodes(self) -> int:
        """Nodes in the tree, root included."""
        return self._num_nodes

    # ------------------------------------------------------------------ walking

    def _walk(self, keys: tuple, node: TreeNode, p: int) -> tuple[TreeNode, int]:
        """Continue matching ``keys`` (a tuple) from ``node`` whose end is at page ``p == node.depth``.

        Returns the node whose edge contains the end of the match, and the matched pages.
        """
        n = len(keys)
        while p < n:
            child = node.children.get(keys[p])
            if child is None:
                break
            ck = child.key
            m = len(ck)
            if keys[p : p + m] == ck:
                p += m
                node = child
                continue
            lim = min(m, n - p)
            j = 1
            while j < lim and ck[j] == keys[p + j]:
                j += 1
            return child, p + j
        return node, p

    def _touch(self, node: TreeNode) -> None:
        t = self._clock
        x = node
        root = self._root
        while x is not root:
            x.last_access = t
            x = x.parent  # type: ignore[assignment]
        if node is not root and not node.children and node.lock_ref == 0:
            self._push(node)

    def _stamp(self, node: TreeNode) -> None:
        """Give ``node`` (the lower part of a touching split) the current clock, as SGLang
        stamps the partly matched child before splitting it (module docstring)."""
        node.last_access = self._clock
        if not node.children and node.lock_ref == 0:
            self._push(node)

    def _push(self, node: TreeNode) -> None:
        """Offer ``node`` to the lazy LRU heap (entries are validated when popped)."""
        heap = self._heap
        if len(heap) > 2 * self._num_nodes + 1024:
            self._heap = heap = [e for e in heap if self._valid_leaf(e)]
            heapq.heapify(heap)
        heapq.heappush(heap, (node.last_access, node.id, node))

    # ------------------------------------------------------------------ match / insert

    def match_prefix(
        self,
        keys: Sequence[Hashable],
        *,
        split: bool = False,
        touch: bool = True,
        count_hit: bool = False,
    ) -> MatchResult:
        """Longest stored prefix of ``keys`` (page keys), in pages.

        Parameters
        ----------
        keys:
            Page keys of the sequence.
        split:
            If the match ends inside an edge, split that node so that the returned node ends
            exactly at the match (SGLang splits on match). Matches of waiters do not change.
        touch:
            Update ``last_access`` of the nodes on the matched path (LRU). ``False`` is a pure
            read (with ``split=False`` the tree is not modified at all).
        count_hit:
            Add the matched tokens to ``stats.hit_tokens``.

        Returns
        -------
        MatchResult
            ``(pages, node)``: ``node`` is the node whose edge contains the end of the match
            (root if ``pages == 0``); with ``split=True`` it ends exactly at ``pages``.
        """
        if type(keys) is not tuple:
            keys = tuple(keys)
        node, p = self._walk(keys, self._root, 0)
        lower = None
        if split and p < node.depth:
            lower = node
            node = self._split(node, p - node.start)
        if touch and p > 0:
            self._clock += 1
            self._touch(node)
            if lower is not None:
                self._stamp(lower)
        if count_hit:
            self.stats.hit_tokens += key_tokens(keys[:p], self.page_size)
        return MatchResult(p, node)

    def insert(self, keys: Sequence[Hashable]) -> InsertResult:
        """Insert the whole sequence ``keys`` (page keys); touch its path.

        New nodes start with ``lock_ref == 0``. If the new pages do not fit in ``free_tokens``,
        unlocked LRU leaves off the sequence's path are evicted first (the path is pinned).
        A finishing request's private tokens are still counted in ``reserved_tokens``: release
        them first if they are to become tree tokens (SGLang hands the same KV slots over).

        Returns
        -------
        InsertResult
            ``(new_pages, node)``: pages added and the node where the sequence ends (exactly at
            its boundary, after splitting if needed; root for an empty sequence).

        Raises
        ------
        CapacityError
            If the new pages do not fit even after evicting every unlocked node off the path.
            The cache is left unchanged.
        """
        if type(keys) is not tuple:
            keys = tuple(keys)
        ps = self.page_size
        node, p = self._walk(keys, self._root, 0)
        new_pages = len(keys) - p
        need = key_tokens(keys[p:], ps)
        free = self.free_tokens
        if need > free:
            avail = self.evictable_tokens - self.path_unlocked_tokens(node, upto_pages=p)
            if need > free + avail:
                raise CapacityError(
                    f"insert needs {need} new tokens; free {free}, evictable off the path {avail} "
                    f"(capacity {self.capacity_tokens}, in tree {self.total_tokens}, reserved {self._reserved})"
                )
        lower = None
        if p < node.depth:
            lower = node
            node = self._split(node, p - node.start)
        if need > free:
            self.inc_lock_ref(node)
            try:
                self._evict(need - free)
            finally:
                self._dec_lock_ref_nopush(node)
        self._clock += 1
        t = self._clock
        if new_pages:
            parent = node
            leaf = TreeNode(keys[p:], parent, self._next_id, len(keys), t, need)
            self._next_id += 1
            self._num_nodes += 1
            first = keys[p]
            parent.children[first] = leaf
            self._total_tok += need
            self._evictable_tok += need
            self.stats.inserted_tokens += need
            if parent._open:
                bucket = parent._open.pop(first, None)
                if bucket:
                    ws = self._waiters
                    for wid in bucket:
                        w = ws[wid]
                        self._reattach(w, *self._walk(w.keys, parent, p))
            node = leaf
        self._touch(node)
        if lower is not None and lower.alive:
            self._stamp(lower)
        self._flush()
        return InsertResult(new_pages, node)

    def _split(self, node: TreeNode, j: int) -> TreeNode:
        """Split ``node`` after ``j`` pages of its edge (0 < j < len(key)); return the new upper
        node. The original object stays the lower part (module docstring)."""
        parent = node.parent
        assert parent is not None and 0 < j < len(node.key)
        ut = key_tokens(node.key[:j], self.page_size)
        upper = TreeNode(node.key[:j], parent, self._next_id, node.start + j, node.last_access, ut)
        node.ntok -= ut
        self._next_id += 1
        self._num_nodes += 1
        upper.lock_ref = node.lock_ref
        node.key = node.key[j:]
        node.parent = upper
        upper.children[node.key[0]] = node
        parent.children[upper.key[0]] = upper
        closed = node._closed
        if closed:
            cut = upper.depth
            ws = self._waiters
            for pg in [pg for pg in closed if pg <= cut]:
                bucket = closed.pop(pg)
                if pg < cut:
                    if upper._closed is None:
                        upper._closed = {}
                    upper._closed[pg] = bucket
                    for wid in bucket:
                        ws[wid].node = upper
                else:
                    for wid in bucket:
                        self._attach(ws[wid], upper, pg)
            if not closed:
                node._closed = None
        return upper

    # ------------------------------------------------------------------ eviction

    def evict(self, n_tokens: int) -> int:
        """Evict LRU unlocked leaves until at least ``n_tokens`` are evicted or none is left.

        Order: ``(last_access, id)`` ascending; after a leaf goes its parent may become an
        evictable leaf. Never evicts a locked node or the root.

        Returns
        -------
        int
            Tokens evicted (a multiple of ``page_size``; may exceed ``n_tokens`` by less than
            one node).

        Raises
        ------
        InputError
            If ``n_tokens`` is negative or not an int.
        """
        _check_count("n_tokens", n_tokens)
        out = self._evict(n_tokens)
        self._flush()
        return out

    def _valid_leaf(self, entry: tuple[int, int, TreeNode]) -> bool:
        x = entry[2]
        return x.alive and not x.children and x.lock_ref == 0 and x.last_access == entry[0]

    def _evict(self, n_tokens: int) -> int:
        heap = self._heap
        evicted = 0
        root = self._root
        while evicted < n_tokens and heap:
            entry = heapq.heappop(heap)
            if not self._valid_leaf(entry):
                continue
            x = entry[2]
            parent = x.parent
            assert parent is not None
            del parent.children[x.key[0]]
            x.alive = False
            size = x.ntok
            self._num_nodes -= 1
            self._total_tok -= size
            self._evictable_tok -= size
            evicted += size
            self._drop_waiters(x, parent)
            if self.on_evict is not None:
                self.on_evict(x, parent)
            if parent is not root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access, parent.id, parent))  # heap is self._heap
        self.stats.evicted_tokens += evicted
        return evicted

    # ------------------------------------------------------------------ lock refs

    def inc_lock_ref(self, node: TreeNode) -> int:
        """Pin ``node`` and every ancestor (root excluded): ``lock_ref += 1`` on each.

        Returns
        -------
        int
            Tokens that moved from evictable to locked.

        Raises
        ------
        LockRefError
            If ``node`` has been evicted.
        """
        if not node.alive:
            raise LockRefError(f"inc_lock_ref on evicted node {node.id}")
        moved = 0
        root = self._root
        x = node
        while x is not root:
            if x.lock_ref == 0:
                moved += x.ntok
            x.lock_ref += 1
            x = x.parent  # type: ignore[assignment]
        self._evictable_tok -= moved
        self._locked_tok += moved
        return moved

    def dec_lock_ref(self, node: TreeNode) -> int:
        """Unpin ``node`` and every ancestor (root excluded): ``lock_ref -= 1`` on each.

        Returns
        -------
        int
            Tokens that moved from locked to evictable.

        Raises
        ------
        LockRefError
            If ``node.lock_ref`` is already 0 (or the node was evicted). Nothing changes then.
        """
        moved = self._dec_lock_ref_nopush(node)
        if node is not self._root and node.lock_ref == 0 and not node.children:
            self._push(node)
        return moved

    def _dec_lock_ref_nopush(self, node: TreeNode) -> int:
        if node is self._root:
            return 0
        if not node.alive or node.lock_ref <= 0:
            raise LockRefError(f"dec_lock_ref below 0 on node {node.id} (lock_ref {node.lock_ref})")
        moved = 0
        root = self._root
        x = node
        while x is not root:
            x.lock_ref -= 1
            if x.lock_ref == 0:
                moved += x.ntok
            x = x.parent  # type: ignore[assignment]
        self._evictable_tok += moved
        self._locked_tok -= moved
        return moved

    # ------------------------------------------------------------------ pool

    def reserve(self, n: int) -> None:
        """Reserve ``n`` private tokens (a running request's extend + output KV).

        Raises
        ------
        CapacityError
            If ``n > free_tokens`` (the caller evicts first; nothing is evicted here).
        InputError
            If ``n`` is negative or not an int.
        """
        _check_count("n", n)
        if n > self.free_tokens:
            raise CapacityError(f"reserve {n} tokens > free {self.free_tokens}")
        self._reserved += n

    def release(self, n: int) -> None:
        """Release ``n`` reserved tokens.

        Raises
        ------
        InputError
            If ``n`` is negative, not an int, or more than ``reserved_tokens``.
        """
        _check_count("n", n)
        if n > self._reserved:
            raise InputError("n", f"release {n} tokens > reserved {self._reserved}")
        self._reserved -= n

    # ------------------------------------------------------------------ read-only helpers

    def node_depth_pages(self, node: TreeNode) -> int:
        """Pages from the root to the end of ``node``'s edge."""
        return node.depth

    def path_node_ids(self, node: TreeNode) -> tuple[int, ...]:
        """Ids of the nodes on the path root..node, top-down, root excluded."""
        out = []
        root = self._root
        x = node
        while x is not root:
            out.append(x.id)
            x = x.parent  # type: ignore[assignment]
        out.reverse()
        return tuple(out)

    def path_unlocked_tokens(
        self, node: TreeNode, upto_pages: int | None = None, exclude: set[int] | frozenset[int] | None = None
    ) -> int:
        """Tokens on the path root..node with ``lock_ref == 0`` whose node id is not in ``exclude``.

        With ``upto_pages`` only the first ``upto_pages`` pages of the path count (a match that
        ends inside ``node``'s edge). This is what locking the match would take away from
        ``evictable_tokens``. O(unlocked part of the path): lock refs are path-monotone, so the
        walk stops at the first locked node.
        """
        upto = node.depth if upto_pages is None else upto_pages
        tokens = 0
        root = self._root
        x = node
        while x is not root and x.lock_ref == 0:
            if exclude is None or x.id not in exclude:
                hi = x.depth if x.depth < upto else upto
                lo = x.depth - len(x.key)
                if hi > lo:
                    tokens += self.edge_tokens(x, hi - lo)
            x = x.parent  # type: ignore[assignment]
        return tokens

    def edge_tokens(self, node: TreeNode, pages: int) -> int:
        """Tokens of the first ``pages`` pages (keys) of ``node``'s edge."""
        if pages >= len(node.key):
            return node.ntok
        ps = self.page_size
        if ps != 1:
            return pages * ps
        return key_tokens(node.key[:pages], 1)

    def iter_nodes(self) -> Iterator[TreeNode]:
        """All nodes, root first, depth-first pre-order, children in insertion order."""
        stack = [self._root]
        while stack:
            x = stack.pop()
            yield x
            stack.extend(reversed(list(x.children.values())))

    # ------------------------------------------------------------------ waiters

    def watch(self, wid: Hashable, keys: Sequence[Hashable]) -> int:
        """Register waiter ``wid`` for page-key sequence ``keys``; return its match in pages.

        From now on the waiter's match is kept equal to ``match_prefix(keys, touch=False).pages``
        and ``on_match_change(wid, new_pages)`` fires whenever an operation changes it.

        Raises
        ------
        InputError
            If ``wid`` is already watched.
        """
        if wid in self._waiters:
            raise InputError("wid", f"waiter {wid!r} is already watched")
        if type(keys) is not tuple:
            keys = tuple(keys)
        w = _Waiter(wid, keys, self._waiter_seq)
        self._waiter_seq += 1
        self._waiters[wid] = w
        node, p = self._walk(keys, self._root, 0)
        self._attach(w, node, p)
        return p

    def unwatch(self, wid: Hashable) -> None:
        """Forget waiter ``wid``. Raises :class:`InputError` if it is not watched."""
        w = self._waiters.pop(wid, None)
        if w is None:
            raise InputError("wid", f"waiter {wid!r} is not watched")
        self._detach(w)
        self._pending.pop(wid, None)

    def is_watched(self, wid: Hashable) -> bool:
        return wid in self._waiters

    @property
    def num_waiters(self) -> int:
        return len(self._waiters)

    def watched_pages(self, wid: Hashable) -> int:
        """Current match of waiter ``wid`` in pages (KeyError if not watched)."""
        return self._waiters[wid].pages

    def watched_node(self, wid: Hashable) -> TreeNode:
        """Node whose edge contains the end of waiter ``wid``'s match (root if 0 pages)."""
        node = self._waiters[wid].node
        assert node is not None
        return node

    def _attach(self, w: _Waiter, node: TreeNode, p: int) -> None:
        w.node = node
        w.pages = p
        if p == node.depth and p < len(w.keys):
            if node._open is None:
                node._open = {}
            b = node._open.get(w.keys[p])
            if b is None:
                node._open[w.keys[p]] = {w.wid: None}
            else:
                b[w.wid] = None
        else:
            if node._closed is None:
                node._closed = {}
            b = node._closed.get(p)
            if b is None:
                node._closed[p] = {w.wid: None}
            else:
                b[w.wid] = None

    def _detach(self, w: _Waiter) -> None:
        node = w.node
        assert node is not None
        p = w.pages
        if p == node.depth and p < len(w.keys):
            assert node._open is not None
            k = w.keys[p]
            b = node._open[k]
            del b[w.wid]
            if not b:
                del node._open[k]
        else:
            assert node._closed is not None
            b = node._closed[p]
            del b[w.wid]
            if not b:
                del node._closed[p]

    def _reattach(self, w: _Waiter, node: TreeNode, p: int) -> None:
        """Attach a waiter already removed from its old bucket; record the change."""
        if p != w.pages and w.wid not in self._pending:
            self._pending[w.wid] = w.pages
        self._attach(w, node, p)

    def _drop_waiters(self, x: TreeNode, parent: TreeNode) -> None:
        """Leaf ``x`` was evicted: its waiters now match exactly ``parent.depth`` pages."""
        ws = self._waiters
        pd = parent.depth
        for buckets in (x._closed, x._open):
            if buckets:
                for b in buckets.values():
                    for wid in b:
                        self._reattach(ws[wid], parent, pd)
        x._closed = None
        x._open = None

    def _flush(self) -> None:
        if not self._pending:
            return
        pending = self._pending
        self._pending = {}
        cb = self.on_match_change
        if cb is None:
            return
        ws = self._waiters
        changed = [
            ws[wid] for wid, old in pending.items() if wid in ws and ws[wid].pages != old
        ]
        changed.sort(key=lambda w: w.seq)
        for w in changed:
            cb(w.wid, w.pages)

    # ------------------------------------------------------------------ invariants

    def check_invariants(self) -> None:
        """Assert internal consistency (raises AssertionError): parent/child links, children keyed
        by first page, no empty non-root edge, depths, non-negative and path-monotone lock refs,
        total/evictable/locked sums, pool bounds, heap coverage of evictable leaves, and waiter
        attachment (each waiter's pages equal a fresh match and it sits in the right bucket)."""
        root = self._root
        assert root.key == () and root.parent is None and root.depth == 0 and root.lock_ref == 0
        total = ev = lk = count = 0
        valid_heap = {e[2].id for e in self._heap if self._valid_leaf(e)}
        for x in self.iter_nodes():
            count += 1
            assert x.alive
            for k, c in x.children.items():
                assert c.parent is x, f"node {c.id}: bad parent link"
                assert c.key and c.key[0] == k, f"node {c.id}: keyed by {k!r}, edge starts {c.key[:1]!r}"
                assert c.depth == x.depth + len(c.key), f"node {c.id}: depth {c.depth}"
                assert c.lock_ref <= x.lock_ref or x is root, f"node {c.id}: lock_ref above parent's"
            if x is root:
                continue
            assert x.lock_ref >= 0
            n = x.ntok
            assert n == key_tokens(x.key, self.page_size), f"node {x.id}: ntok {n} != its edge's tokens"
            total += n
            if x.lock_ref == 0:
                ev += n
                if not x.children:
                    assert x.id in valid_heap, f"evictable leaf {x.id} missing from the LRU heap"
            else:
                lk += n
        assert count == self._num_nodes, (count, self._num_nodes)
        assert total == self._total_tok, (total, self._total_tok)
        assert ev == self._evictable_tok, (ev, self._evictable_tok)
        assert lk == self._locked_tok, (lk, self._locked_tok)
        assert 0 <= self._reserved
        assert self.total_tokens + self._reserved <= self.capacity_tokens, "pool over capacity"
        n_attached = 0
        for x in self.iter_nodes():
            for pg, b in (x._closed or {}).items():
                assert b
                for wid in b:
                    w = self._waiters[wid]
                    assert w.node is x and w.pages == pg
                    assert not (pg == x.depth and pg < len(w.keys))
                    n_attached += 1
            for k, b in (x._open or {}).items():
                assert b
                assert k not in x.children, f"open waiters at node {x.id} for an existing child"
                for wid in b:
                    w = self._waiters[wid]
                    assert w.node is x and w.pages == x.depth and w.keys[x.depth] == k
                    n_attached += 1
        assert n_attached == len(self._waiters)
        for w in self._waiters.values():
            node, p = self._walk(w.keys, root, 0)
            assert (node, p) == (w.node, w.pages), f"waiter {w.wid!r}: stored {w.pages}, fresh {p}"
