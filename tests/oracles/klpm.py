"""k-LPM oracle: klpm.md §3, Algorithm 1.

::

    Input: queue Q of (x_i, t_i)
    1  loop forever:
    2      serve the oldest waiting query (i = argmin_j t_j)          # 1 FCFS step
    3      repeat k-1 times:
    4          serve the waiting query with the highest prefix-cache hit   # LPM steps

DECISIONS followed (``policies/klpm.py`` docstring, klpm.md §7):

- a "step" of the cycle is one admission into the prefill batch, and a scheduling pass keeps
  walking the cycle until it cannot serve the slot it is at (§7.6);
- the cycle position persists across passes and only an admission advances it (§7.5);
- the oldest slot (line 2) serves the oldest request or nothing (head-of-line: the pass ends);
  an LPM slot (line 4) serves the best-matching request *that fits*, or nothing (the pass ends);
- the LPM score is ``cached_tokens`` against the whole radix cache, ties by arrival (§7.3-7.4);
- ``k = inf``: the first admission of the run is the oldest-request slot, every later one an
  LPM slot.
"""

from __future__ import annotations

import math
from typing import Any

from oracles._common import by_arrival, by_prefix, rid, waiting


class KLPM:
    def __init__(self, k: Any = 2) -> None:
        if isinstance(k, str):
            k = math.inf
        self.k = k
        self.position = 0  # where in the cycle of lines 2-4 the next admission is (0 = line 2)
        self.cycles = 0  # completed cycles (times the position wrapped to 0)

    def on_arrival(self, request: Any, now: float, snap: Any) -> None:
        pass

    def decide(self, snap: Any) -> tuple[str, ...]:
        queue = waiting(snap)
        adder = snap.batch()
        served: list[str] = []
        while True:  # line 1, for as long as this pass can serve a slot
            left = [e for e in queue if rid(e) not in served]
            pick = None
            if self.position == 0:  # line 2: the oldest waiting query
                oldest = by_arrival(left)
                if oldest and adder.try_add(oldest[0]):
                    pick = oldest[0]
            else:  # line 4: the highest prefix-cache hit (that fits)
                for e in by_prefix(left):
                    if adder.try_add(e):
                        pick = e
                        break
            if pick is None:
                return tuple(served)
            served.append(rid(pick))
            # advance the cycle: line 2 -> line 4 (k-1 times) -> line 2
            if self.k == math.inf:
                self.position = 1
            else:
                self.position = self.position + 1
                if self.position == self.k:
                    self.position = 0
                    self.cycles = self.cycles + 1

    def on_step_end(self, decoded: Any, finished: Any, snap: Any) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {"position": self.position, "cycles": self.cycles}
