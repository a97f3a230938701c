"""The synthetic workloads' generator toolkit: seeded streams, inter-arrival gaps, the
block allocator of shared contexts, the duration / request-count window, and the parameter
readers (the field-naming errors of :mod:`prefixsched.validation`).

Shared by :mod:`prefixsched.reference.workloads` (the registry and the built-in families) and
the paper families (:mod:`~prefixsched.reference.workloads_dlpm`,
:mod:`~prefixsched.reference.workloads_papers`), which import it instead of the registry so that
the registry can import them (no import cycle; ``tests/test_layers.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefixsched import validation as _v
from prefixsched.errors import InputError
from prefixsched.theory.model import BlockPrompt, Request


class _Alloc:
    """Block-id allocator of one build (ids are renumbered at the end)."""

    __slots__ = ("next",)

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> tuple[int, ...]:
        start = self.next
        self.next += n
        return tuple(range(start, start + n))


@dataclass(frozen=True)
class _Ctx:
    """A token context: block ids and a length in tokens (the last block may be partial)."""

    blocks: tuple[int, ...]
    length: int

    def extend(self, n: int, alloc: _Alloc, bs: int, *, fork: bool) -> "_Ctx":
        """Append ``n`` fresh tokens. ``fork``: the context has several continuations, so the
        partial last block is re-issued under a fresh id (module docstring)."""
        blocks = self.blocks
        length = self.length
        room = len(blocks) * bs - length
        if room and fork:
            blocks = blocks[:-1] + alloc.take(1)
        take = min(room, n)
        length += take
        n -= take
        if n:
            blocks = blocks + alloc.take(-(-n // bs))
            length += n
        return _Ctx(blocks, length)


_EMPTY = _Ctx((), 0)


@dataclass(frozen=True)
class _Raw:
    arrival: float
    client: int
    seq: int
    rid: str
    ctx: _Ctx
    output_len: int


def _gap(rng: np.random.Generator, rate: float, cv: float) -> float:
    """One Gamma inter-arrival time (seconds): mean 1/rate, coefficient of variation cv."""
    if cv == 0:
        return 1.0 / rate
    shape = 1.0 / (cv * cv)
    return float(rng.gamma(shape, 1.0 / (rate * shape)))


def _streams(seed: int, n: int) -> list[np.random.Generator]:
    """``n`` independent generators spawned from ``default_rng(seed)``'s seed sequence."""
    root = np.random.default_rng(seed)
    return [np.random.default_rng(s) for s in root.bit_generator.seed_seq.spawn(n)]  # type: ignore[attr-defined]


def _window(
    gen: Callable[[float], list[_Raw]], duration_s: float, n_requests: int | None, bs: int
) -> list[Request]:
    """Cut the endless stream ``gen(horizon)`` to the window (module docstring) and materialise it."""
    key = lambda r: (r.arrival, r.client, r.seq)  # noqa: E731
    if n_requests is None:
        raw = sorted((r for r in gen(duration_s) if r.arrival <= duration_s), key=key)
        if not raw:
            raise InputError("duration_s", f"no request arrives within {duration_s} s; make it longer")
    else:
        horizon = max(duration_s / 16.0, 1.0)
        for _ in range(40):
            raw = [r for r in gen(horizon) if r.arrival <= horizon]
            if len(raw) >= n_requests:
                break
            del raw  # not alive while the next, larger stream is drawn
            horizon *= 2.0
        else:  # pragma: no cover - only with absurd rates
            raise InputError("n_requests", f"could not generate {n_requests} requests; raise the rates")
        raw.sort(key=key)  # in place, then cut: no second list of the (up to 2N) drawn requests
        del raw[n_requests:]
    remap: dict[int, int] = {}
    names: dict[int, str] = {}  # one client-name string per client, not one per request
    out = []
    for i in range(len(raw)):
        r = raw[i]
        raw[i] = None  # type: ignore[call-overload]  # free the drawn context as it is materialised
        blocks = []
        for b in r.ctx.blocks:
            nb = remap.get(b)
            if nb is None:
                nb = remap[b] = len(remap)
            blocks.append(nb)
        name = names.get(r.client)
        if name is None:
            name = names[r.client] = f"c{r.client}"
        out.append(
            Request(
                id=r.rid,
                client=name,
                arrival=r.arrival,
                prompt=BlockPrompt(blocks, r.ctx.length, bs),
                output_len=r.output_len,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# parameter checks


def _num(name: str, v: Any, *, lo: float = 0.0, strict: bool = True) -> float:
    # the common validation layer: finite (an int of any size compared exactly, never an
    # OverflowError), > lo (>= lo unless strict), at most 1e12 like every time of an instance
    return _v.number(v, name, lo=lo, lo_open=strict, hi=_v.MAX_ARRIVAL)


def _int(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(name, f"must be an integer, got {v!r}")
    if v < lo:
        raise InputError(name, f"must be >= {lo}, got {v!r}")
    return v


def _range(name: str, lo: Any, hi: Any, min_lo: int = 1) -> tuple[int, int]:
    lo = _int(f"{name}_min", lo, min_lo)
    hi = _int(f"{name}_max", hi, min_lo)
    if hi < lo:
        raise InputError(f"{name}_max", f"must be >= {name}_min = {lo}, got {hi}")
    return lo, hi


def _lognormal_len(rng: np.random.Generator, median: float, sigma: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, round(float(rng.lognormal(math.log(median), sigma))))))


# ---------------------------------------------------------------------------------------------
# workloads
