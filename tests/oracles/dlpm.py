"""DLPM oracle: dlpm.md §2, Algorithm 1 (Cao et al., arXiv:2501.14312v1 §4.1).

::

     CHECK_REFILL(l, Queue):                                  # lines 3-8
    1    if ANY client that owns a request in Queue has q_i > 0: return
    2    for every client i in l with q_i <= 0: q_i += Q_u
     ON_ARRIVAL(r from client i):                             # lines 10-13
    3    if i not in l: q_i = 0; l.add(i)
    4    Queue.append(r)
     SCHEDULER LOOP, once per continuous-batching step:       # lines 15-27
    5    Queue = SORT_BY_PREFIX(Queue)
    6    for r in Queue (in LPM order):
    7        i = client(r)
    8        if q_i <= 0: CHECK_REFILL(l, Queue)
    9        if q_i > 0 and CAN_ADD(r):
   10            B.add(r); Queue.remove(r)
   11            q_i -= w_e * extend_length(r)
   12    FORWARD_STEP(B)
   13    for each client i: q_i -= w_q * |{r in B : client(r) = i}|
   14    B = remove_finished(B)

The numbers in the comments below are these (dlpm.md's) line numbers.

DECISIONS followed (``policies/dlpm.py`` docstring, dlpm.md §8; implemented here without the
reference's counters of credited clients and of requests left to visit):

- §8.2 active list: a client joins ``l`` with ``q = 0`` when a request of it arrives and it is
  not in ``l`` (also on rejoin); after every step, every client of ``l`` with nothing waiting and
  nothing running leaves ``l`` (its ``q`` is forgotten). A client with running requests only stays
  in ``l`` and is refilled.
- §8.3 one pass per step; a refill in the middle of the pass continues the pass. CHECK_REFILL
  repeats line 2 (one *round* each time, every client of ``l`` with ``q <= 0``) until line 1
  returns; ``rounds`` counts rounds, ``refills[i]`` the rounds client i got (cumulative, kept
  across leave/rejoin).
- The pass ends as soon as the step's batch is full (the simulator's ``BatchBuilder.full``:
  "refill rounds are triggered only by requests visited while admission is still possible",
  ``reference/simulator.py``); CAN_ADD is the batch's ``try_add``.
- §8.5 ``extend_length`` is the entry's ``extend_tokens`` at decision time.
- §8.12 weights: a refill gives ``Q_u * weight_i`` (unlisted: 1); charges are not weighted.
"""

from __future__ import annotations

from typing import Any

from oracles._common import by_prefix, client, rid, waiting


class DLPM:
    def __init__(self, quantum: float = 8000.0, weights: dict[str, float] | None = None) -> None:
        self.Q_u = float(quantum)
        self.weight = dict(weights or {})
        self.l: list[str] = []  # active clients
        self.q: dict[str, float] = {}  # deficits of the active clients
        self.refills: dict[str, int] = {}
        self.rounds = 0

    def on_arrival(self, request: Any, now: float, snap: Any) -> None:
        i = request.client
        if i not in self.l:  # 3
            self.q[i] = 0.0
            self.l.append(i)
            if i not in self.refills:
                self.refills[i] = 0
        # 4: the engine appends r to the queue

    def check_refill(self, Queue: list[Any]) -> None:
        while True:  # DECISION §8.3: rounds until line 1 returns
            if any([self.q[client(r)] > 0 for r in Queue]):  # 1
                return
            for i in self.l:  # 2
                if self.q[i] <= 0:
                    self.q[i] = self.q[i] + self.Q_u * (self.weight[i] if i in self.weight else 1.0)
                    self.refills[i] = self.refills[i] + 1
            self.rounds = self.rounds + 1

    def decide(self, snap: Any) -> tuple[str, ...]:
        Queue = by_prefix(waiting(snap))  # 5
        B = snap.batch()
        w_e = snap.weights.w_e
        admitted: list[str] = []
        for r in list(Queue):  # 6
            if B.full:  # DECISION: the pass ends when nothing can be added any more
                break
            i = client(r)  # 7
            if self.q[i] <= 0:  # 8
                self.check_refill(Queue)
            if self.q[i] > 0 and B.try_add(r):  # 9
                admitted.append(rid(r))  # 10
                Queue.remove(r)
                self.q[i] = self.q[i] - w_e * r.extend_tokens  # 11
        return tuple(admitted)

    def on_step_end(self, decoded: Any, finished: Any, snap: Any) -> None:
        w_q = snap.weights.w_q
        for i in decoded:  # 13
            self.q[i] = self.q[i] - w_q * decoded[i]
        queued = [client(e) for e in waiting(snap)]
        for i in list(self.l):  # DECISION §8.2: leave l when nothing waits and nothing runs
            if i not in queued and snap.running_count(i) == 0:
                self.l.remove(i)
                del self.q[i]

    def state(self) -> dict[str, Any]:
        return {"deficits": dict(self.q), "refills": dict(self.refills), "rounds": self.rounds}
