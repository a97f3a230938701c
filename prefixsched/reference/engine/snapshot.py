"""The read-only view a policy gets of an engine: :class:`EngineSnapshot` and its cache view.

Both engines hand policies the same :class:`~prefixsched.reference.policies.base.Snapshot`; what
differs is the admission budget ``snap.batch()`` returns (the engine's BatchBuilder) and the
order of ``snap.queue()``:

- ``ideal``: ``queue()`` is the FCFS order ``(arrival, seq)``;
- ``sglang``: ``queue()`` is SGLang's ``waiting_queue`` list as it stands when the adder walks it:
  arrival (append) order, retracted requests appended at their re-queue time, and, for the
  policies that run on SGLang's own ``--schedule-policy`` (FCFS, LPM), sorted in place by
  ``SchedulePolicy.calc_priority`` first (:mod:`prefixsched.reference.engine.native`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prefixsched.theory.model import Request

if TYPE_CHECKING:  # pragma: no cover
    from prefixsched.reference.engine.core import EngineBase

__all__ = ["EngineSnapshot", "CacheViewImpl"]


def _seq_of(e: Any) -> int:
    return e.seq


class CacheViewImpl:
    """Read-only view of the engine's radix cache (``CacheView`` protocol)."""

    __slots__ = ("_engine", "_dfs_key", "_dfs_order")

    def __init__(self, engine: "EngineBase") -> None:
        self._engine = engine
        self._dfs_key: Any = None
        self._dfs_order: list[Any] = []

    def match_tokens(self, request: Request) -> int:
        eng = self._engine
        seq = eng.seq_of.get(request.id)
        if seq is not None:
            e = eng.index.entries.get(seq)
            if e is not None:
                return e.cached_tokens
        keys = eng.keymaker.keys(request.prompt)
        pages = eng.cache.match_prefix(keys, split=False, touch=False).pages
        return eng.index.capped_tokens(keys, pages, request.prompt_len)

    def dfs_weight_order(self, entries: Sequence[Any]) -> list[Any]:
        """SGLang's dfs-weight order (:meth:`WaitingIndex.dfs_weight_order`). The last result is
        reused while the waiting index is unchanged (same version, same entries)."""
        eng = self._engine
        entries = list(entries)
        key = (eng.index.version, tuple(map(_seq_of, entries)))
        if key == self._dfs_key:
            return list(self._dfs_order)
        wn = eng.cache.watched_node
        order = eng.index.dfs_weight_order(entries, lambda e: wn(e.seq))
        self._dfs_key = key
        self._dfs_order = order
        return list(order)

    @property
    def free_tokens(self) -> int:
        return self._engine.cache.free_tokens

    @property
    def evictable_tokens(self) -> int:
        return self._engine.cache.evictable_tokens


class EngineSnapshot:
    """The engines' :class:`~prefixsched.reference.policies.base.Snapshot` (read-only view).

    One object per run; ``now`` and ``step`` are updated by the engine. Iterators over the
    waiting queue must not be held across engine calls. ``engine`` names the engine
    (``"ideal"`` or ``"sglang"``).
    """

    def __init__(self, engine: "EngineBase") -> None:
        inst = engine.instance
        self._engine = engine
        self.engine = engine.name
        self.now = 0.0
        self.step = 0
        self.limits = inst.limits
        self.weights = inst.weights
        self.cost_model = inst.cost_model
        self.cache = CacheViewImpl(engine)

    def _ci(self, client: str) -> int | None:
        return self._engine.ci_of.get(client)

    def waiting_count(self, client: str | None = None) -> int:
        idx = self._engine.index
        if client is None:
            return len(idx.entries)
        ci = self._ci(client)
        return 0 if ci is None else idx.count_by[ci]

    def waiting_clients(self) -> Sequence[str]:
        names = self._engine.clients
        return [names[ci] for ci in self._engine.index.clients_waiting]

    def running_count(self, client: str | None = None) -> int:
        eng = self._engine
        if client is None:
            return eng.n_running
        ci = self._ci(client)
        return 0 if ci is None else eng.run_by[ci]

    def running_clients(self) -> Sequence[str]:
        names = self._engine.clients
        return [names[ci] for ci in sorted(self._engine.run_clients)]

    def fcfs(self, client: str | None = None) -> Iterator[Any]:
        idx = self._engine.index
        if client is None:
            return idx.iter_fcfs()
        ci = self._ci(client)
        return iter(()) if ci is None else idx.iter_fcfs(ci)

    def lpm(self, client: str | None = None) -> Iterator[Any]:
        idx = self._engine.index
        if client is None:
            return idx.iter_lpm()
        ci = self._ci(client)
        return iter(()) if ci is None else idx.iter_lpm(ci)

    def queue(self) -> Iterator[Any]:
        """The waiting queue in the engine's list order (module docstring)."""
        return self._engine.queue_order()

    def entry(self, request_id: str) -> Any:
        """The waiting entry of ``request_id``; KeyError if it is not waiting."""
        eng = self._engine
        seq = eng.seq_of.get(request_id)
        e = None if seq is None else eng.index.entries.get(seq)
        if e is None:
            raise KeyError(f"request {request_id!r} is not waiting")
        return e

    def batch(self) -> Any:
        return self._engine.new_builder()
