"""LPM oracle: sort the waiting queue by matched-prefix length against the whole radix cache
(SGLang ``SchedulePolicy._sort_by_longest_prefix``, sglang.md §1.2), then fill the batch.

DECISIONS followed (``policies/lpm.py`` docstring): ties go to the older request; a request
that does not fit is *skipped* (not SGLang's stop); with ``fcfs_fallback = N`` the order is FCFS
when more than N requests wait (SGLang's ``_determine_active_policy``, N = 128 there), counted
in ``fallback_steps``.
"""

from __future__ import annotations

from typing import Any

from oracles._common import by_arrival, by_prefix, rid, waiting


class LPM:
    def __init__(self, fcfs_fallback: int | None = None) -> None:
        self.fcfs_fallback = fcfs_fallback
        self.fallback_steps = 0

    def on_arrival(self, request: Any, now: float, snap: Any) -> None:
        pass

    def decide(self, snap: Any) -> tuple[str, ...]:
        queue = waiting(snap)
        if self.fcfs_fallback is not None and len(queue) > self.fcfs_fallback:
            self.fallback_steps = self.fallback_steps + 1  # _determine_active_policy: lpm -> fcfs
            order = by_arrival(queue)
        else:
            order = by_prefix(queue)  # _sort_by_longest_prefix (stable: ties by arrival)
        adder = snap.batch()
        admitted: list[str] = []
        for r in order:  # every request is tried; one that does not fit is skipped
            if adder.try_add(r):
                admitted.append(rid(r))
        return tuple(admitted)

    def on_step_end(self, decoded: Any, finished: Any, snap: Any) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {"fallback_steps": self.fallback_steps}
