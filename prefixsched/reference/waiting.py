"""The simulator's waiting-queue index: FCFS and LPM orders kept incrementally.

Every waiting request is registered with the radix cache as a *waiter*
(:meth:`~prefixsched.reference.radix_cache.RadixCache.watch`); when an insert, split or eviction
changes its prefix match, the cache calls :meth:`WaitingIndex.on_match_change` and the request is
moved in the LPM orders. Nothing is re-matched per step.

Orders (total, deterministic; ``seq`` = position of the request in the instance):

- FCFS: ``(arrival, seq)``. Instance arrivals are non-decreasing in ``seq``, so this is the order
  of ``seq`` alone and is kept as a :class:`sortedcontainers.SortedList` of ints.
- LPM: ``(-cached_tokens, arrival, seq)`` = ``(-cached_tokens, seq)``, kept as a SortedList of the
  single int ``-cached_tokens * N + seq`` (``N`` = number of requests), which sorts the same way.

Each order exists globally and per client. The index also keeps the smallest ``extend_tokens``
and the smallest ``extend_tokens + output_len`` over the queue and per client, so that a batch builder knows
when no waiting request can fit any more. Costs: join, leave and a match change are O(log n)
each; iteration is O(1) per entry.

:meth:`WaitingIndex.dfs_weight_order` gives SGLang's ``dfs-weight`` order (sglang.md §1.2).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING

from sortedcontainers import SortedList

from prefixsched.theory.model import Request, WKey

if TYPE_CHECKING:  # pragma: no cover
    from prefixsched.reference.radix_cache import RadixCache, TreeNode

__all__ = ["Entry", "WaitingIndex"]


class Entry:
    """A waiting request (implements :class:`~prefixsched.reference.policies.base.WaitingEntry`).

    Attributes
    ----------
    request, seq:
        The request and its position in the instance.
    cached_tokens:
        ``used * page_size``: the prefix hit if admitted now (tokens).
    extend_tokens:
        ``prompt_len - cached_tokens`` (tokens).
    pages:
        Matched prefix in pages (uncapped), as the cache reports it.
    used:
        Pages of the match the request would use and pin:
        ``min(pages, (prompt_len - 1) // page_size)``. As SGLang, only the first
        ``prompt_len - 1`` tokens are matched, so at least one token is prefilled and the cached
        prefix is page-aligned; with ``page_size == 1`` this is ``min(pages, prompt_len - 1)``.
    keys:
        Page keys of the fill (full pages only): the prompt, or on the ``sglang`` engine, for a
        retracted request, its prompt + the output tokens it had produced.
    ci:
        Index of the client in order of first appearance in the instance.
    fill_len:
        Tokens to prefill if nothing were cached: ``prompt_len``, or ``prompt_len + produced`` for
        a retracted request (SGLang re-prefills ``origin_input_ids + output_ids``).
    out_left:
        Output tokens it still has to produce (``output_len`` unless retracted).

    The simulator updates ``cached_tokens``/``extend_tokens``/``pages`` in place; policies must
    treat an entry as read-only.
    """

    __slots__ = (
        "request", "seq", "cached_tokens", "extend_tokens", "pages", "used", "keys", "ci", "lpm_key",
        "fill_len", "out_left", "cum", "cap", "ps",
    )

    def __init__(self, request: Request, seq: int, keys: tuple, ci: int, fill_len: int | None = None,
                 out_left: int | None = None) -> None:
        self.request = request
        self.seq = seq
        self.keys = keys
        self.ci = ci
        self.fill_len = request.prompt_len if fill_len is None else fill_len
        self.out_left = request.output_len if out_left is None else out_left
        self.pages = 0
        self.used = 0
        self.cached_tokens = 0
        self.extend_tokens = self.fill_len
        self.lpm_key = 0
        self.cum: list[int] | None = None  # token prefix sums of the keys (compressed page-1 keys)
        self.cap = -1  # most keys a match may use (tokens <= fill_len - 1); set by the index
        self.ps = 1  # page size; set by the index

    @property
    def match_tokens(self) -> int:
        """Tokens of the whole (uncapped) match of ``pages`` keys."""
        cum = self.cum
        return cum[self.pages] if cum is not None else self.pages * self.ps

    def __repr__(self) -> str:
        return (
            f"Entry(id={self.request.id!r}, client={self.request.client!r}, seq={self.seq}, "
            f"cached_tokens={self.cached_tokens}, extend_tokens={self.extend_tokens})"
        )


class WaitingIndex:
    """FCFS and LPM orders of the waiting requests, globally and per client.

    Parameters
    ----------
    n_requests:
        Number of requests in the instance (``seq`` < ``n_requests``).
    clients:
        Client names in order of first appearance (``ci`` indexes this).
    cache:
        The engine's radix cache; :meth:`add` registers each waiting request with
        ``cache.watch(seq, keys)``. The cache must have been built with
        ``on_match_change=index.on_match_change`` (use :meth:`attach`).
    page_size:
        Tokens per page.
    """

    def __init__(self, n_requests: int, clients: Sequence[str], page_size: int) -> None:
        self._n = max(1, n_requests)

        self.clients = tuple(clients)
        self.page_size = page_size
        self.cache: RadixCache | None = None
        self.entries: dict[int, Entry] = {}
        self.fcfs_all: SortedList = SortedList()
        self.lpm_all: SortedList = SortedList()
        nc = len(self.clients)
        self.fcfs_by: list[SortedList] = [SortedList() for _ in range(nc)]
        self.lpm_by: list[SortedList] = [SortedList() for _ in range(nc)]
        self.count_by: list[int] = [0] * nc
        self.clients_waiting: SortedList = SortedList()  # ci with count_by[ci] > 0
        self.by_lpm_key: dict[int, Entry] = {}
        # minimum extend and extend + output over the waiting requests (keys v * N + seq)
        self.ext_keys: SortedList = SortedList()
        self.need_keys: SortedList = SortedList()
        self.ext_by: list[SortedList] = [SortedList() for _ in range(nc)]
        self.need_by: list[SortedList] = [SortedList() for _ in range(nc)]
        self.match_changes = 0
        self.version = 0  # bumped whenever the set of waiting requests or a match changes

    @property
    def capacity(self) -> int:
        """The most requests this index can order (``seq`` must stay below it: LPM keys are
        ``-cached_tokens * capacity + seq``)."""
        return self._n

    def attach(self, cache: "RadixCache") -> None:
        self.cache = cache

    # ------------------------------------------------------------------ updates

    def _cached(self, e: Entry, pages: int) -> None:
        cap = e.cap
        used = pages if pages < cap else cap
        cum = e.cum
        c = cum[used] if cum is not None else used * self.page_size
        e.pages = pages
        e.used = used
        e.cached_tokens = c
        e.extend_tokens = e.fill_len - c
        e.lpm_key = -c * self._n + e.seq

    def min_extend(self, ci: int | None = None) -> int:
        """Smallest ``extend_tokens`` over the waiting requests (of client ``ci``); huge if none."""
        sl = self.ext_keys if ci is None else self.ext_by[ci]
        return sl[0] // self._n if sl else 1 << 62

    def min_need(self, ci: int | None = None) -> int:
        """Smallest ``extend_tokens + output_len`` over the waiting requests (of client ``ci``);
        huge if none."""
        sl = self.need_keys if ci is None else self.need_by[ci]
        return sl[0] // self._n if sl else 1 << 62

    def prepare(self, e: Entry) -> None:
        """Set the entry's page size, its cap (the most keys a match may use: SGLang matches only
        the first ``fill_len - 1`` tokens) and, for compressed page-1 keys
        (:class:`~prefixsched.theory.model.WKey`), its token prefix sums."""
        ps = self.page_size
        e.ps = ps
        keys = e.keys
        if ps == 1 and any(type(k) is WKey for k in keys):
            cum = [0]
            t = 0
            for k in keys:
                t += k[3] if type(k) is WKey else 1
                cum.append(t)
            e.cum = cum
            e.cap = bisect_right(cum, e.fill_len - 1) - 1
        else:
            e.cum = None
            e.cap = min(len(keys), (e.fill_len - 1) // ps)

    def capped_tokens(self, keys: Sequence[Hashable], pages: int, fill_len: int) -> int:
        """The prefix hit of a fill of ``fill_len`` tokens whose match is ``pages`` of ``keys``:
        the cached tokens :meth:`prepare` and ``_cached`` give a waiting entry."""
        e = Entry.__new__(Entry)
        e.keys = tuple(keys)
        e.fill_len = fill_len
        self.prepare(e)
        used = pages if pages < e.cap else e.cap
        return e.cum[used] if e.cum is not None else used * self.page_size

    def add(self, e: Entry) -> None:
        """A request joins the queue: watch its prompt and insert it in every order."""
        assert self.cache is not None
        self.prepare(e)
        pages = self.cache.watch(e.seq, e.keys)
        self._cached(e, pages)
        self.version += 1
        self.entries[e.seq] = e
        self.fcfs_all.add(e.seq)
        self.lpm_all.add(e.lpm_key)
        self.by_lpm_key[e.lpm_key] = e
        n = self._n
        ci = e.ci
        k1 = e.extend_tokens * n + e.seq
        k2 = (e.extend_tokens + e.out_left) * n + e.seq
        self.ext_keys.add(k1)
        self.need_keys.add(k2)
        self.ext_by[ci].add(k1)
        self.need_by[ci].add(k2)
        self.fcfs_by[ci].add(e.seq)
        self.lpm_by[ci].add(e.lpm_key)
        if self.count_by[ci] == 0:
            self.clients_waiting.add(ci)
        self.count_by[ci] += 1

    def remove(self, e: Entry) -> None:
        """A request leaves the queue (admitted): unwatch it and drop it from every order."""
        assert self.cache is not None
        self.cache.unwatch(e.seq)
        self.version += 1
        del self.entries[e.seq]
        self.fcfs_all.remove(e.seq)
        self.lpm_all.remove(e.lpm_key)
        del self.by_lpm_key[e.lpm_key]
        n = self._n
        ci = e.ci
        k1 = e.extend_tokens * n + e.seq
        k2 = (e.extend_tokens + e.out_left) * n + e.seq
        self.ext_keys.remove(k1)
        self.need_keys.remove(k2)
        self.ext_by[ci].remove(k1)
        self.need_by[ci].remove(k2)
        self.fcfs_by[ci].remove(e.seq)
        self.lpm_by[ci].remove(e.lpm_key)
        self.count_by[ci] -= 1
        if self.count_by[ci] == 0:
            self.clients_waiting.remove(ci)

    def on_match_change(self, wid: Hashable, new_pages: int) -> None:
        """Cache callback: waiter ``wid`` (a ``seq``) now matches ``new_pages`` pages."""
        e = self.entries.get(wid)  # type: ignore[arg-type]
        if e is None:  # pragma: no cover - the engine unwatches before removing
            return
        old = e.lpm_key
        old_ext = e.extend_tokens
        if new_pages != e.pages:
            self.version += 1
        self._cached(e, new_pages)
        if e.lpm_key != old:
            self.match_changes += 1
            self.lpm_all.remove(old)
            self.lpm_all.add(e.lpm_key)
            del self.by_lpm_key[old]
            self.by_lpm_key[e.lpm_key] = e
            sl = self.lpm_by[e.ci]
            sl.remove(old)
            sl.add(e.lpm_key)
            n = self._n
            out = e.out_left
            o1, k1 = old_ext * n + e.seq, e.extend_tokens * n + e.seq
            o2, k2 = (old_ext + out) * n + e.seq, (e.extend_tokens + out) * n + e.seq
            for a, b in ((self.ext_keys, self.need_keys), (self.ext_by[e.ci], self.need_by[e.ci])):
                a.remove(o1)
                a.add(k1)
                b.remove(o2)
                b.add(k2)

    # ------------------------------------------------------------------ reads

    def __len__(self) -> int:
        return len(self.entries)

    def iter_fcfs(self, ci: int | None = None) -> Iterator[Entry]:
        sl = self.fcfs_all if ci is None else self.fcfs_by[ci]
        return map(self.entries.__getitem__, sl)

    def iter_lpm(self, ci: int | None = None) -> Iterator[Entry]:
        sl = self.lpm_all if ci is None else self.lpm_by[ci]
        return map(self.by_lpm_key.__getitem__, sl)

    def dfs_weight_order(self, entries: Sequence[Entry], node_of: Callable[[Entry], "TreeNode"]) -> list[Entry]:
        """SGLang's ``dfs-weight`` order of ``entries`` (sglang.md §1.2, ``_sort_by_dfs_weight``).

        Each entry hangs at the tree position where its prefix match ends. SGLang splits a node
        there (``match_prefix`` splits); here the tree is not touched and a match ending inside an
        edge becomes a *virtual* cut node between the edge's start and its end. The weight of a
        node is the number of entries in its subtree. The order is a post-order walk from the
        root: children by descending weight (ties: smallest ``seq`` in the subtree, i.e. FCFS
        order of the subtree's oldest entry; SGLang uses dict insertion order), then the node's
        own entries in FCFS order. Entries with no match hang at the root and come last, as in
        SGLang. A later split of a node does not change the order (it only adds a virtual node
        with one child), so the order depends only on the entries' match positions.

        Cost: O(n) to group the entries by match position plus O(groups * depth).
        """
        if not entries:
            return []
        # group by match position (node, pages); pages == node.depth is the node itself
        groups: dict[tuple, list[Entry]] = {}
        for e in entries:
            k = (node_of(e), e.pages)
            g = groups.get(k)
            if g is None:
                groups[k] = [e]
            else:
                g.append(e)
        cuts: dict[int, list[int]] = {}
        for node, p in groups:
            if p != node.depth:
                cuts.setdefault(node.id, []).append(p)
        for nid in cuts:
            cuts[nid].sort()

        def parent_of(vk: tuple) -> tuple | None:
            node, p = vk
            cl = cuts.get(node.id)
            if p == node.depth:
                if node.parent is None:
                    return None
                if cl:
                    return (node, cl[-1])
            elif cl[0] != p:  # type: ignore[index]
                return (node, cl[cl.index(p) - 1])  # type: ignore[union-attr]
            par = node.parent
            return (par, par.depth)

        children: dict[tuple, list[tuple]] = {}
        seen: set[tuple] = set()
        root_vk = None
        for vk in groups:
            x: tuple | None = vk
            while x is not None and x not in seen:
                seen.add(x)
                par = parent_of(x)
                if par is None:
                    root_vk = x
                else:
                    children.setdefault(par, []).append(x)
                x = par
        assert root_vk is not None
        weight: dict[tuple, int] = {}
        first: dict[tuple, int] = {}
        stack: list[tuple[tuple, bool]] = [(root_vk, False)]
        while stack:
            vk, done = stack.pop()
            kids = children.get(vk, ())
            if not done:
                stack.append((vk, True))
                for c in kids:
                    stack.append((c, False))
                continue
            mine = groups.get(vk)
            if mine:
                w = len(mine)
                f = min(e.seq for e in mine)
            else:
                w, f = 0, 1 << 62
            for c in kids:
                w += weight[c]
                if first[c] < f:
                    f = first[c]
            weight[vk] = w
            first[vk] = f
        out: list[Entry] = []
        stack2: list[tuple[tuple, bool]] = [(root_vk, False)]
        while stack2:
            vk, done = stack2.pop()
            if done:
                mine = groups.get(vk)
                if mine:
                    out.extend(sorted(mine, key=_seq))
                continue
            stack2.append((vk, True))
            kids = children.get(vk)
            if kids:
                kids.sort(key=lambda c: (-weight[c], first[c]))
                for c in reversed(kids):
                    stack2.append((c, False))
        return out


def _seq(e: Entry) -> int:
    return e.seq
