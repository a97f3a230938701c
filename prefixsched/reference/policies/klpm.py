"""k-LPM (klpm.md §3, Algorithm 1): one oldest request, then k-1 longest-prefix-match picks.

Algorithm 1's box order is used: a cycle serves the **oldest** waiting request first, then k-1
LPM picks (klpm.md §3 treats the box as authoritative over the prose). Mapping onto continuous
batching (klpm.md §7.6): each admission into the prefill batch is one "step" of the cycle, so a
pass fills the batch by interleaving ``[oldest, LPM x (k-1)]``.

Decisions (klpm.md §7):

- LPM score (§7.3): ``cached_tokens`` against the whole radix cache (SGLang's LPM, tokens, not a
  ratio), not the theory's "previous query only" overlap. Requests admitted earlier in the same
  pass are not in the cache yet, so they do not raise the score of later picks.
- Ties (§7.4): by arrival, then instance position (the Snapshot orders).
- Cycle counter (§7.5): persists across passes and is **not** reset when the queue empties or
  when the oldest request is also the best LPM match; it advances by one per admission.
- Non-fitting requests: an *oldest* slot whose request does not fit ends the pass (head-of-line,
  exactly FCFS), an *LPM* slot skips non-fitting requests like :mod:`.lpm`; the slot is consumed
  only by an admission. Hence ``k = 1`` is exactly :mod:`.fcfs` and ``k = inf`` is exactly
  :mod:`.lpm` (the first pick of a run is the oldest request, which is also LPM's first pick since
  the cache is empty then).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from prefixsched.errors import InputError
from prefixsched.reference.policies import register
from prefixsched.reference.policies.base import Decision, Policy, Snapshot

__all__ = ["KLPM"]


@register
class KLPM(Policy):
    """k-LPM: oldest request, then k-1 LPM picks, repeated (klpm.md Algorithm 1).

    Parameters
    ----------
    k:
        Cycle length, an int >= 1 or ``math.inf`` (also accepted: the strings ``"inf"``,
        ``"infinity"``). k = 1 is FCFS, k = inf is LPM. Default 2 (the paper's best).

    Raises
    ------
    InputError
        If ``k`` is not an int >= 1 or infinity.
    """

    name: ClassVar[str] = "k-lpm"
    description: ClassVar[str] = "k-LPM: serve the oldest request, then k-1 longest-prefix-match picks"
    primary_param: ClassVar[str | None] = "k"

    def __init__(self, k: Any = 2) -> None:
        if isinstance(k, str) and k.strip().lower() in ("inf", "infinity"):
            k = math.inf
        if isinstance(k, float) and k.is_integer():
            k = int(k)
        ok = (isinstance(k, int) and not isinstance(k, bool) and k >= 1) or k == math.inf
        if not ok:
            raise InputError("k", f"must be an integer >= 1 or inf, got {k!r}")
        self.k = k
        self._pos = 0  # 0: next admission is the oldest-request slot
        self._cycles = 0

    def _advance(self) -> None:
        if self.k == math.inf:
            self._pos = 1
            return
        self._pos += 1
        if self._pos >= self.k:
            self._pos = 0
            self._cycles += 1

    def decide(self, snap: Snapshot) -> Decision:
        b = snap.batch()
        oldest = snap.fcfs()
        best = snap.lpm()
        taken: set[str] = set()
        while not b.full:
            if self._pos == 0:
                e = next((x for x in oldest if x.request.id not in taken), None)
                if e is None or not b.try_add(e):
                    break
            else:
                e = None
                for x in best:
                    if x.request.id in taken:
                        continue
                    if b.try_add(x):
                        e = x
                        break
                    if b.full:  # a builder that stops at the first misfit (the sglang engine's)
                        break
                if e is None:
                    break
            taken.add(e.request.id)
            self._advance()
        return Decision(tuple(b.admitted))

    def params(self) -> dict[str, Any]:
        return {"k": "inf" if self.k == math.inf else self.k}

    def state(self) -> dict[str, Any]:
        return {"position": self._pos, "cycles": self._cycles}
