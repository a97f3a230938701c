"""VTC oracle: vtc_fastswitch_preble.md §A.2 (Sheng et al., OSDI'24), the artifact's
``VTCReqQueue`` (§A.5) where the paper is silent.

::

     on arrival of request r from client u:                     # "monitoring stream"
    1    if u has no request in Q:                              # u is (re)joining the backlog
    2        if Q is empty:  c_u = max(c_u, c_l)                # l = last client to leave Q
    3        else:           c_u = max(c_u, min{c_i : i has requests in Q})
    4    Q.append(r)
     loop:                                                      # "execution stream"
    5    if can_add_new_request():
    6        new = []
    7        repeat:
    8            k = argmin_{i with requests in Q} c_i ; r = oldest queued request of k
    9            if r does not fit: break                      # head-of-line stop, no skipping
   10            c_k += w_p * r.input_len                      # prefill charged at admission
   11            move r from Q to new
   12        prefill(new); B += new
   13    decode_step(B)
   14    for each client i: c_i += w_q * (tokens generated for i in this step)
   15    drop finished requests from B

DECISIONS followed (``policies/vtc.py`` docstring):

- a client's counter starts at 0 the first time it is seen (artifact ``served[c] = 0``), before
  the lift of lines 1-3; ``l`` is the client whose last waiting request was admitted most
  recently, and ``c_l`` is read at the time of the rejoin; ``lifts`` counts arrivals that raised
  a counter;
- line 8 ties: the client that appeared first in the instance;
- line 10 charges the full prompt (``charge="prompt"``) or only the uncached tokens
  (``charge="extend"``); line 14 charges every output token, the first one (made by the prefill
  step) included; every charge is divided by the client's weight (weighted VTC, §A.3; unlisted
  clients weigh 1).
"""

from __future__ import annotations

from typing import Any

from oracles._common import by_arrival, client, rid, waiting


class VTC:
    def __init__(self, charge: str = "prompt", weights: dict[str, float] | None = None) -> None:
        self.charge = charge
        self.weight = dict(weights or {})
        self.c: dict[str, float] = {}  # virtual token counters
        self.seen: list[str] = []  # clients in order of first appearance (line 8 ties)
        self.last_left: str | None = None  # l of line 2
        self.lifts = 0

    def _w(self, u: str) -> float:
        return self.weight[u] if u in self.weight else 1.0

    def on_arrival(self, request: Any, now: float, snap: Any) -> None:
        u = request.client
        if u not in self.seen:
            self.seen.append(u)
            self.c[u] = 0.0
        Q = waiting(snap)  # the queue before r joins it
        in_Q = [client(e) for e in Q]
        if u in in_Q:  # line 1: u is already backlogged
            return
        old = self.c[u]
        if len(Q) == 0:  # line 2
            if self.last_left is not None:
                self.c[u] = max(self.c[u], self.c[self.last_left])
        else:  # line 3
            self.c[u] = max(self.c[u], min([self.c[i] for i in in_Q]))
        if self.c[u] > old:
            self.lifts = self.lifts + 1
        # line 4: the engine appends r to Q

    def decide(self, snap: Any) -> tuple[str, ...]:
        Q = by_arrival(waiting(snap))
        adder = snap.batch()  # line 5's can_add_new_request and line 9's fit test
        w_e = snap.weights.w_e
        new: list[str] = []  # line 6
        while True:  # line 7
            left = [e for e in Q if rid(e) not in new]
            backlogged = [u for u in self.seen if u in [client(e) for e in left]]
            if not backlogged:
                break
            k = backlogged[0]  # line 8: argmin c, ties by first appearance
            for u in backlogged:
                if self.c[u] < self.c[k]:
                    k = u
            r = [e for e in left if client(e) == k][0]  # its oldest queued request
            if not adder.try_add(r):  # line 9
                break
            tokens = r.request.prompt_len if self.charge == "prompt" else r.extend_tokens
            self.c[k] = self.c[k] + w_e * tokens / self._w(k)  # line 10
            new.append(rid(r))  # line 11
            if [e for e in left if client(e) == k and rid(e) != rid(r)] == []:
                self.last_left = k  # k's last waiting request left Q
        return tuple(new)

    def on_step_end(self, decoded: Any, finished: Any, snap: Any) -> None:
        w_q = snap.weights.w_q
        for i in decoded:  # line 14
            self.c[i] = self.c[i] + w_q * decoded[i] / self._w(i)

    def state(self) -> dict[str, Any]:
        return {"counters": dict(self.c), "last_left": self.last_left, "lifts": self.lifts}
