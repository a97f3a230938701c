"""FCFS oracle: SGLang's ``PrefillAdder`` loop over the queue in arrival order (sglang.md
§1.5-1.6): add requests oldest first and stop at the first one that does not fit."""

from __future__ import annotations

from typing import Any

from oracles._common import by_arrival, rid, waiting


class FCFS:
    def __init__(self) -> None:
        pass

    def on_arrival(self, request: Any, now: float, snap: Any) -> None:
        pass

    def decide(self, snap: Any) -> tuple[str, ...]:
        queue = by_arrival(waiting(snap))  # waiting queue sorted by (arrival, seq)
        adder = snap.batch()  # PrefillAdder: the step's budget
        admitted: list[str] = []
        for r in queue:  # for req in waiting_queue:
            if not adder.try_add(r):  # res = adder.add_one_req(req); if res != CONTINUE: break
                break
            admitted.append(rid(r))
        return tuple(admitted)

    def on_step_end(self, decoded: Any, finished: Any, snap: Any) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {}
