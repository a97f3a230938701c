"""VTC: Virtual Token Counter (Sheng et al., "Fairness in Serving Large Language Models",
OSDI'24; vtc_fastswitch_preble.md §A.2, artifact §A.5).

Per-client counters ``c_u`` (cost units divided by the client's weight):

- admission of request r: ``c_u += w_e * prompt_len(r) / weight_u`` (``charge="prompt"``, the
  default: VTC ignores the prefix cache) or ``w_e * extend_tokens(r) / weight_u``
  (``charge="extend"``, DLPM's actual-service charge);
- after each step: ``c_u += w_q * decoded_u / weight_u`` for the output tokens the client's
  running requests produced, **including the first token produced by the prefill step** (the
  paper charges every generated token; the artifact never charges the first token and charges
  twice in steps with a finish — neither quirk is replicated).
- Counter lift when client u (re)joins the backlog (it has no waiting request when one arrives):
  if other clients wait, ``c_u = max(c_u, min{c_i : i has waiting requests})``; if the queue is
  empty, the paper's rule ``c_u = max(c_u, c_l)`` with ``l`` the *last client to leave the
  queue* (its last waiting request was admitted most recently; the artifact has no lift in this
  case). ``c_l`` is read at the time of the rejoin. A brand-new client starts at 0 before the
  lift.

Scheduling pass (artifact ``generate_new_batch``): repeatedly take the client with the smallest
counter among those with waiting requests (ties: first appearance in the instance), and admit its
oldest waiting request, charging at once (so the next pick sees the new counter); **stop at the
first request that does not fit** (head-of-line, no skipping, as the artifact's ``break``).

Weights (§A.3, weighted VTC): ``weights`` maps client -> weight > 0; unlisted clients weigh 1.
Service weights ``w_e`` (= VTC's w_p) and ``w_q`` come from the instance (1 and 2 by default).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any, Callable, ClassVar

from prefixsched.errors import InputError
from prefixsched.reference.policies import register
from prefixsched.reference.policies.base import Decision, FinishedInfo, Policy, Snapshot, client_weights
from prefixsched.theory.model import Request

__all__ = ["VTC", "vtc_pass"]


def vtc_pass(
    snap: Any, c: dict[str, float], charge: Callable[[Any], float]
) -> tuple[Any, list[tuple[Any, float]], Any, str | None]:
    """VTC's scheduling pass (module docstring): the client with the smallest counter first (ties:
    first appearance), its oldest waiting request, charged at once into ``c`` (mutated: pass a
    copy to keep the counters), stop at the first request that does not fit.

    ``charge(entry)`` is the admission charge in cost units / weight. Returns ``(builder,
    [(entry, charge)] in admission order, the entry the pass stopped at (a misfit, or the next
    pick when the batch is full) or None, the last client whose last waiting request was
    admitted or None)``. Shared by :class:`VTC` and the preemptive policies
    (:mod:`.preemptive`)."""
    b = snap.batch()
    heap: list[tuple[float, int, str]] = []
    remaining: dict[str, int] = {}
    iters = {}
    for pos, u in enumerate(snap.waiting_clients()):
        heap.append((c[u], pos, u))
        remaining[u] = snap.waiting_count(u)
        iters[u] = snap.fcfs(u)
    heapq.heapify(heap)
    taken: list[tuple[Any, float]] = []
    blocked = None
    left = None
    while heap and not b.full:
        _, pos, u = heap[0]
        e = next(iters[u])
        if not b.try_add(e):
            blocked = e
            break
        heapq.heappop(heap)
        ch = charge(e)
        c[u] += ch
        taken.append((e, ch))
        remaining[u] -= 1
        if remaining[u] > 0:
            heapq.heappush(heap, (c[u], pos, u))
        else:
            left = u
    if blocked is None and heap and b.full:
        _, _, u = heap[0]
        blocked = next(iters[u], None)
    return b, taken, blocked, left


@register
class VTC(Policy):
    """Virtual Token Counter fair scheduling (least counter first with the VTC counter lift).

    Parameters
    ----------
    charge:
        ``"prompt"`` (default, charge the full prompt) or ``"extend"`` (charge uncached tokens).
    weights:
        Optional ``{client: weight}``, weights > 0 and finite; charges are divided by the weight.

    Raises
    ------
    InputError
        For an unknown ``charge`` or a non-positive / non-finite weight.
    """

    name: ClassVar[str] = "vtc"
    description: ClassVar[str] = "VTC (OSDI'24): least virtual token counter first, with counter lift"

    def __init__(self, charge: str = "prompt", weights: Mapping[str, float] | None = None) -> None:
        if charge not in ("prompt", "extend"):
            raise InputError("charge", f"must be 'prompt' or 'extend', got {charge!r}")
        self.charge = charge
        self.weights = client_weights(weights)
        self.counters: dict[str, float] = {}
        self.last_left: str | None = None
        self.lifts = 0

    def _w(self, client: str) -> float:
        return self.weights.get(client, 1.0)

    def on_arrival(self, request: Request, now: float, snap: Snapshot) -> None:
        u = request.client
        c = self.counters
        if u not in c:
            c[u] = 0.0
        if snap.waiting_count(u) > 0:
            return
        if snap.waiting_count() > 0:
            floor = min(c[i] for i in snap.waiting_clients())
        elif self.last_left is not None:
            floor = c[self.last_left]
        else:
            return
        if floor > c[u]:
            c[u] = floor
            self.lifts += 1

    def decide(self, snap: Snapshot) -> Decision:
        w_e = snap.weights.w_e
        prompt = self.charge == "prompt"
        b, _, _, left = vtc_pass(
            snap, self.counters,
            lambda e: w_e * (e.request.prompt_len if prompt else e.extend_tokens) / self._w(e.request.client),
        )
        if left is not None:
            self.last_left = left
        return Decision(tuple(b.admitted))

    def on_step_end(self, decoded: Mapping[str, int], finished: Sequence[FinishedInfo], snap: Snapshot) -> None:
        w_q = snap.weights.w_q
        c = self.counters
        for u, k in decoded.items():
            c[u] += w_q * k / self._w(u)

    def params(self) -> dict[str, Any]:
        return {"charge": self.charge, "weights": dict(sorted(self.weights.items()))}

    def state(self) -> dict[str, Any]:
        return {"counters": dict(self.counters), "last_left": self.last_left, "lifts": self.lifts}
