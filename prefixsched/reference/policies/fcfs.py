"""FCFS: first come, first served, with head-of-line blocking (SGLang's default ``fcfs``).

Order: ``(arrival, seq)`` (:meth:`Snapshot.fcfs`). The pass admits requests in that order and
**stops at the first request that does not fit** (prefill budget, running slots or KV memory),
as SGLang's ``PrefillAdder`` loop breaks on anything but ``CONTINUE`` (sglang.md §1.5-1.6). No
request overtakes an older one.
"""

from __future__ import annotations

from typing import ClassVar

from prefixsched.reference.policies import register
from prefixsched.reference.policies.base import Decision, Policy, Snapshot

__all__ = ["FCFS"]


@register
class FCFS(Policy):
    """First come, first served; head-of-line stop at the first request that does not fit."""

    name: ClassVar[str] = "fcfs"
    description: ClassVar[str] = "first come first served; stops at the first request that does not fit"

    def decide(self, snap: Snapshot) -> Decision:
        b = snap.batch()
        for e in snap.fcfs():
            if b.full or not b.try_add(e):
                break
        return Decision(tuple(b.admitted))
