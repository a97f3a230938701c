"""random: admit waiting requests in a seeded random order (SGLang's ``random`` policy).

Each pass shuffles the waiting queue (taken in FCFS order, so the result depends only on the
seed and the queue) with a ``numpy.random.Generator`` seeded once from ``seed``; the generator
advances across passes. Admission uses the shared skip rule of :mod:`.lpm` (skip non-fitting,
keep filling); SGLang breaks at the first non-fitting request instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from prefixsched.errors import InputError
from prefixsched.reference.policies import register
from prefixsched.reference.policies.base import Decision, Policy, Snapshot
from prefixsched.reference.policies.lpm import fill_skipping

__all__ = ["RandomPolicy"]


@register
class RandomPolicy(Policy):
    """Seeded random order; skips non-fitting.

    Parameters
    ----------
    seed:
        Seed of the policy's ``numpy.random.Generator`` (int >= 0).
    """

    name: ClassVar[str] = "random"
    description: ClassVar[str] = "seeded random order of the waiting queue"

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError("seed", f"must be an integer >= 0, got {seed!r}")
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def decide(self, snap: Snapshot) -> Decision:
        entries = list(snap.fcfs())
        perm = self._rng.permutation(len(entries))
        return fill_skipping(snap.batch(), (entries[i] for i in perm))

    def params(self) -> dict[str, Any]:
        return {"seed": self.seed}
