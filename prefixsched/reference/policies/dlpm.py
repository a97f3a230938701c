"""DLPM: Deficit Longest Prefix Match (Cao et al., "Locality-aware Fair Scheduling in LLM
Serving", arXiv:2501.14312v1, §4.1 Algorithm 1; spec dlpm.md §1-2, §8).

LPM order gated by a deficit-round-robin credit ``q_i`` per client (cost units):

- admission of r (line 11): ``q_i -= w_e * extend_tokens(r)`` (uncached tokens only, as matched
  at decision time);
- after each step (line 13): ``q_i -= w_q * (output tokens client i produced in the step)``,
  the first token of a request admitted in the step included (one token per running request);
- CHECK_REFILL (lines 3-8): if no client with a queued request has ``q > 0``, every *active*
  client with ``q <= 0`` gets ``+Q_u`` (one round; a client may need several rounds).

One pass per step (Algorithm 1 lines 5-11): walk the waiting queue in LPM order; for a request
whose client has ``q <= 0`` run CHECK_REFILL; admit it iff then ``q > 0`` and it fits.

Open questions of dlpm.md §8, settled here:

1. **Q_u default = 8000 cost units.** The paper only sweeps Q_u over 1k-32k; 8000 sits in the
   middle of that sweep on a log scale and is "a few times the typical extend+decode cost of one
   request" (§8.1): about 2x a Mooncake conversation request with half its prompt cached
   (~6000 extend + 2*340 output ~= 3700 units) and ~10x a 256-in/256-out VTC request (768).
2. **Active list**: a client joins on the arrival of a request when it is not active, with
   ``q = 0`` (also on *rejoin*: unused credit and unpaid debt are both forgotten, Thm A.2's
   assumption); it leaves at the end of a step in which its last running request finished and
   it has nothing queued. A client with only *running* requests stays active and **is** refilled
   (it is in ``l``; Algorithm 1 never prunes ``l``; the refill still only lifts ``q <= 0`` to at
   most ``Q_u``, so the invariant ``q in (-U, Q_u]`` holds).
3. **Loop structure**: exactly one LPM-ordered pass per scheduling step; a mid-pass refill
   **continues the pass** from the current request (requests skipped earlier in the pass are not
   revisited until the next step). CHECK_REFILL repeats refill rounds until some client with a
   queued request has ``q > 0``: a client in debt by more than ``Q_u`` needs several rounds, which
   the paper's ``while Queue`` loop would grant by revisiting the queue; doing them at once keeps
   one pass per step and guarantees that a pass on an idle server admits a request (the first
   credited client's request comes after the triggering one in LPM order and fits an empty
   batch). Each round is a full round (every active client with ``q <= 0`` gets ``+Q_u``), so
   Thm 4.1's "equal number of rounds" argument is unchanged.
4. **Work-conservation corner case**: Algorithm 1 literally: a credited client whose requests do
   not fit blocks the refill, and uncredited clients' requests are skipped even if they fit. The
   run cannot deadlock: the running batch drains (outputs are reserved in full) and a request
   always fits into an empty batch, so the credited client's request is eventually admitted.
5. **extend_length**: computed at decision time from the current radix match (the snapshot's
   ``extend_tokens``). Two requests of one batch sharing an uncached prefix are both charged for
   it; the simulator also prefills it twice, so the charge equals the work done. Eviction between
   decision and admission cannot happen (the engine pins the whole batch before evicting).
6. **Decode granularity**: per generated token, per request, charged in ``on_step_end``. No
   chunked prefill is modelled (all at admission).
7. **Preemption/retraction**: not modelled by the simulator (full output reserved), so no refund.
8. **Cross-client shared prefixes**: "first one to compute pays": later requests see the prefix
   as cached and are charged only their extend tokens.
9-11. D²LPM questions: not applicable to the single-worker policy.
12. **Per-client weights** (not in the paper): optional ``weights``; client i is refilled by
   ``Q_u * weight_i`` (weighted DRR). With all weights 1 (default) this is the paper's DLPM.
13-14. Metric and workload questions: out of scope of the policy (see ``theory.metrics`` and
   the workload generators).

Admission rule (shared with :mod:`.lpm`): a request that does not fit is skipped and the pass
goes on. Invariant (Thm A.1): ``-U < q_i <= Q_u`` (times the weight) with
``U = w_e * L_input + w_q * M`` and ``M`` = the output tokens one running batch can still produce,
:func:`prefixsched.theory.bounds.batch_output_capacity` (``min(kv_capacity_tokens, sum of the
max_running_requests largest outputs)``), the default ``M`` of every DLPM check in
:mod:`prefixsched.theory.bounds`: ``M`` only has to bound the decode charge of the requests already
running, and this engine reserves every running request's full output. The literal
``M = kv_capacity_tokens`` gives a larger ``U``, so the invariant holds with it too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from prefixsched.errors import InputError
from prefixsched.reference.policies import register
from prefixsched.reference.policies.base import Decision, FinishedInfo, Policy, Snapshot, client_weights
from prefixsched.theory.model import Request

__all__ = ["DLPM", "DEFAULT_QUANTUM"]

DEFAULT_QUANTUM = 8000.0


@register
class DLPM(Policy):
    """Deficit Longest Prefix Match (DLPM Algorithm 1; decisions in the module docstring).

    Parameters
    ----------
    quantum:
        ``Q_u`` in cost units (> 0, finite). Default 8000.
    weights:
        Optional ``{client: weight > 0}``; refill is ``quantum * weight``. Unlisted: 1.

    Raises
    ------
    InputError
        If ``quantum`` is not a finite number > 0 or a weight is not a finite number > 0.
    """

    name: ClassVar[str] = "dlpm"
    description: ClassVar[str] = "DLPM: LPM order gated by per-client deficit round robin (quantum Q_u)"
    primary_param: ClassVar[str | None] = "quantum"

    def __init__(self, quantum: float = DEFAULT_QUANTUM, weights: Mapping[str, float] | None = None) -> None:
        if isinstance(quantum, bool) or not isinstance(quantum, (int, float)) or not math.isfinite(quantum) or quantum <= 0:
            raise InputError("quantum", f"must be a finite number > 0, got {quantum!r}")
        self.quantum = float(quantum)
        self.weights = client_weights(weights)
        self.deficits: dict[str, float] = {}  # active clients only (the list l)
        self.refills: dict[str, int] = {}  # refill rounds received, per client (cumulative)
        self.rounds = 0

    # ------------------------------------------------------------------ Algorithm 1

    def on_arrival(self, request: Request, now: float, snap: Snapshot) -> None:
        u = request.client
        if u not in self.deficits:  # join or rejoin: q = 0 (Thm A.2)
            self.deficits[u] = 0.0
            self.refills.setdefault(u, 0)

    def _refill(self) -> None:
        self.rounds += 1
        q = self.deficits
        for u in q:
            if q[u] <= 0:
                q[u] += self.quantum * self.weights.get(u, 1.0)
                self.refills[u] += 1

    def decide(self, snap: Snapshot) -> Decision:
        """One LPM-ordered pass (Algorithm 1 lines 5-11), stopped as soon as the rest of it is
        provably a no-op: every remaining request belongs to a client without credit (skipped
        while some queued client has credit) or to a credited client none of whose requests can
        fit any more (``BatchBuilder.client_full``, when the builder offers it). Same decisions
        and counters as :meth:`decide_literal`, which visits every request."""
        b = snap.batch()
        if b.full:  # nothing can be admitted: the pass would stop at its first request
            return Decision(())
        cfull = getattr(b, "client_full", None)
        q = self.deficits
        w_e = snap.weights.w_e
        total = {u: snap.waiting_count(u) for u in snap.waiting_clients()}
        remaining = dict(total)
        seen = dict.fromkeys(total, 0)
        n_pos = sum(1 for u in remaining if q[u] > 0)  # queued clients with credit

        def live_todo() -> tuple[set[str], int]:
            # credited clients whose requests may still fit; their requests not yet visited
            live = {
                u for u, k in remaining.items() if k > 0 and q[u] > 0 and (cfull is None or not cfull(u))
            }
            return live, sum(total[u] - seen[u] for u in live)

        live, todo = live_todo()
        if n_pos and not todo:
            return Decision(())
        try_add = b.try_add
        for e in snap.lpm():
            u = e.request.client
            seen[u] += 1
            qu = q[u]
            if qu <= 0:
                if n_pos:  # CHECK_REFILL returns at line 1: skip the request
                    continue
                # CHECK_REFILL: rounds until some client with queued requests has credit
                while n_pos == 0:
                    self._refill()
                    n_pos = sum(1 for v, k in remaining.items() if k > 0 and q[v] > 0)
                live, todo = live_todo()
                qu = q[u]
                if qu <= 0:
                    if not todo:
                        break
                    continue
            elif u in live:
                todo -= 1
            else:  # credited, but none of its requests fits any more
                continue
            if try_add(e):
                new = qu - w_e * e.extend_tokens
                q[u] = new
                remaining[u] -= 1
                if new <= 0 or remaining[u] == 0:
                    n_pos -= 1
                if b.full:
                    break
                live, todo = live_todo()
            elif b.full:  # a builder that stops at the first misfit (the sglang engine's)
                break
            if n_pos and not todo:
                break
        return Decision(tuple(b.admitted))

    def decide_literal(self, snap: Snapshot) -> Decision:
        """Reference pass: visits every waiting request in LPM order (Algorithm 1 as printed,
        one pass, multi-round CHECK_REFILL). Used by the tests to check :meth:`decide`."""
        b = snap.batch()
        q = self.deficits
        w_e = snap.weights.w_e
        remaining = {u: snap.waiting_count(u) for u in snap.waiting_clients()}
        n_pos = sum(1 for u in remaining if q[u] > 0)
        for e in snap.lpm():
            if b.full:
                break
            u = e.request.client
            qu = q[u]
            if qu <= 0:
                if n_pos > 0:
                    continue
                while n_pos == 0:
                    self._refill()
                    n_pos = sum(1 for v, k in remaining.items() if k > 0 and q[v] > 0)
                qu = q[u]
                if qu <= 0:
                    continue
            if b.try_add(e):
                new = qu - w_e * e.extend_tokens
                q[u] = new
                remaining[u] -= 1
                if new <= 0 or remaining[u] == 0:
                    n_pos -= 1
        return Decision(tuple(b.admitted))

    def on_step_end(self, decoded: Mapping[str, int], finished: Sequence[FinishedInfo], snap: Snapshot) -> None:
        q = self.deficits
        w_q = snap.weights.w_q
        for u, k in decoded.items():
            q[u] -= w_q * k
        for f in finished:
            u = f.client
            if u in q and snap.waiting_count(u) == 0 and snap.running_count(u) == 0:
                del q[u]  # leaves the active list; q resets to 0 on rejoin

    # ------------------------------------------------------------------ introspection

    def params(self) -> dict[str, Any]:
        return {"quantum": self.quantum, "weights": dict(sorted(self.weights.items()))}

    def state(self) -> dict[str, Any]:
        return {"deficits": dict(self.deficits), "refills": dict(self.refills), "rounds": self.rounds}
