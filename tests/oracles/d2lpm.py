"""D²LPM dispatcher oracle: dlpm.md §3, Algorithm 2 (the global scheduler).

::

     SELECT_WORKER(G, i):                     # G = workers holding r's longest matched prefix
    1    G_avail = { w in W : q_{i,w} > 0 }
    2    while G_avail is empty:
    3        for w in W: q_{i,w} += Q_w
    4        (recompute G_avail)
    5    G_cand = G ∩ G_avail
    6    if G_cand empty: return argmin_{w in G_avail} s_w
    7    return argmin_{w in G_cand} s_w
     ON_ARRIVAL(r from client i):
    8    G = R.LONGEST_MATCH_WORKERS(r)
    9    w = SELECT_WORKER(G, i)
   10    DISPATCH(w, r); s_w += 1
   11    q_{i,w} -= w_e * r.input_tokens          # full input length
   12    R.INSERT(r.input_tokens, w)
     ON_FINISH(r of client i at worker w):
   13    q_{i,w} -= w_q * r.output_tokens; s_w -= 1
     ON_EVICT(prefix P at worker w):
   14    R.EVICT(P, w)

The approximate global radix tree ``R`` is modelled naively: per worker, the *set of prompt
prefixes* (tuples of page keys) it is believed to hold. INSERT adds every prefix of the prompt;
EVICT(P, w) removes, for the evicted pages ``keys[start:]`` of the path ``keys``, the prefixes
``keys[:j]`` with ``j > start``; worker w matches ``m_w`` = the largest ``m`` with every
``keys[:j]``, ``j <= m``, held by w (a contiguous run from the root).

DECISIONS followed (``cluster.py`` ``D2LPMDispatcher`` docstring, dlpm.md §8.9-8.11):
``q_{i,w} = 0`` for every worker when client i first arrives, never reset; ``G`` = the workers
with the exact longest match, empty when nothing matches; ties of ``argmin s_w`` go to the lowest
worker index; ``s_w`` counts requests dispatched and not finished; ``refills[i]`` counts line-3
rounds; ``Q_w = inf`` is allowed (one round gives ``inf`` credit). The reference's
``tree_nodes`` is a property of its tree representation, not of Algorithm 2, and is not modelled.
"""

from __future__ import annotations

from typing import Any

from oracles._common import jsonable


class D2LPM:
    def __init__(self, q_w: float = 16000.0) -> None:
        self.Q_w = float(q_w)

    def bind(self, instance: Any, workers: int) -> None:
        self.W = list(range(workers))
        self.w_e = instance.weights.w_e
        self.w_q = instance.weights.w_q
        self.q: dict[str, list[float]] = {}
        self.s = [0 for _ in self.W]
        self.refills: dict[str, int] = {}
        self.held: list[set[tuple]] = [set() for _ in self.W]  # R, per worker
        self.evict_events = 0
        self.last_match: tuple[int, list[int]] = (0, [])

    def longest_match_workers(self, keys: tuple) -> tuple[int, list[int]]:  # R.LONGEST_MATCH_WORKERS
        m = []
        for w in self.W:
            j = 0
            while j < len(keys) and tuple(keys[: j + 1]) in self.held[w]:
                j = j + 1
            m.append(j)
        best = max(m)
        if best == 0:
            return 0, []
        return best, [w for w in self.W if m[w] == best]

    def select(self, request: Any, keys: tuple, now: float, loads: Any) -> int:
        i = request.client
        if i not in self.q:
            self.q[i] = [0.0 for _ in self.W]
            self.refills[i] = 0
        pages, G = self.longest_match_workers(keys)  # 8
        self.last_match = (pages, G)
        G_avail = [w for w in self.W if self.q[i][w] > 0]  # 1
        while G_avail == []:  # 2
            for w in self.W:  # 3
                self.q[i][w] = self.q[i][w] + self.Q_w
            self.refills[i] = self.refills[i] + 1
            G_avail = [w for w in self.W if self.q[i][w] > 0]  # 4
        G_cand = [w for w in G if w in G_avail]  # 5
        pool = G_avail if G_cand == [] else G_cand  # 6, 7
        return min(pool, key=lambda w: (self.s[w], w))

    def on_dispatch(self, request: Any, keys: tuple, worker: int, now: float) -> None:
        self.s[worker] = self.s[worker] + 1  # 10
        self.q[request.client][worker] = self.q[request.client][worker] - self.w_e * request.prompt_len  # 11
        for j in range(1, len(keys) + 1):  # 12
            self.held[worker].add(tuple(keys[:j]))

    def on_finish(self, request: Any, worker: int, now: float) -> None:
        self.q[request.client][worker] = self.q[request.client][worker] - self.w_q * request.output_len  # 13
        self.s[worker] = self.s[worker] - 1

    def on_evict(self, worker: int, keys: tuple, start_pages: int, now: float) -> None:
        self.evict_events = self.evict_events + 1
        for j in range(start_pages + 1, len(keys) + 1):  # 14
            self.held[worker].discard(tuple(keys[:j]))

    def state(self) -> dict[str, Any]:
        return {
            "deficits": {c: [jsonable(x) for x in v] for c, v in self.q.items()},
            "loads": list(self.s),
            "refills": dict(self.refills),
            "evict_events": self.evict_events,
        }
