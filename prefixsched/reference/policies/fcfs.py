"""FCFS: first come, first served, with head-of-line blocking (SGLang's default ``fcfs``).

Order: the engine's waiting queue (:meth:`Snapshot.queue`): ``(arrival, seq)`` on the ``ideal``
engine; on the ``sglang`` engine SGLang's ``waiting_queue`` list, which ``--schedule-policy fcfs``
never sorts (arrival order, a retracted request re-appended at the end). The pass admits requests in
that order and **stops at the first request that does not fit** (prefill budget, running slots or
KV memory), as SGLang's ``PrefillAdder`` loop breaks on anything but ``CONTINUE`` (sglang.md
§1.5-1.6). No request overtakes an older one. On the ``sglang`` engine it is SGLang's own policy
(:meth:`native_policy`): the engine applies ``calc_priority``'s LRU refreshes of waiting prefixes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from prefixsched.reference.policies import register
from prefixsched.reference.policies.base import Decision, Policy, Snapshot

__all__ = ["FCFS"]


@register
class FCFS(Policy):
    """First come, first served; head-of-line stop at the first request that does not fit."""

    name: ClassVar[str] = "fcfs"
    description: ClassVar[str] = "first come first served; stops at the first request that does not fit"

    def native_policy(self) -> tuple[str, dict[str, Any]] | None:
        return ("fcfs", {})

    def decide(self, snap: Snapshot) -> Decision:
        b = snap.batch()
        for e in snap.queue():
            if b.full or not b.try_add(e):
                break
        return Decision(tuple(b.admitted))
