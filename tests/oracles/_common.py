"""The little the oracles share: reading the waiting queue out of a Snapshot as a plain list,
and the two orders of the Snapshot contract (``policies/base.py`` module docstring), re-derived
from the entries' fields rather than taken from the engine's index.
"""

from __future__ import annotations

import math
from typing import Any


def waiting(snap: Any) -> list[Any]:
    """Every waiting entry, as a plain list (the engine's iteration order is not trusted: the
    callers sort it themselves)."""
    return [e for e in snap.fcfs()]


def by_arrival(entries: list[Any]) -> list[Any]:
    """FCFS order: ``(arrival, seq)``."""
    return sorted(entries, key=lambda e: (e.request.arrival, e.seq))


def by_prefix(entries: list[Any]) -> list[Any]:
    """LPM order: longest cached prefix first, ties by ``(arrival, seq)``."""
    return sorted(entries, key=lambda e: (-e.cached_tokens, e.request.arrival, e.seq))


def rid(e: Any) -> str:
    return e.request.id


def client(e: Any) -> str:
    return e.request.client


def jsonable(x: float) -> Any:
    """``inf`` as the string ``"inf"``, as the reference dispatcher's ``state()`` writes it."""
    if math.isfinite(x):
        return x
    return "nan" if x != x else ("inf" if x > 0 else "-inf")
