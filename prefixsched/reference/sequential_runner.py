"""Run the real policy objects in the sequential theory models (one query at a time).

The exact solvers of :mod:`prefixsched.theory.exact` work in the k-LPM paper's sequential model
(klpm.md §1): one query at a time, non-preemptive, prefill only, time in token units. To measure a
policy's distance from the optimum (``prefixsched gap``), the *same* policy classes that run in the
continuous-batching simulator are driven here through a :class:`Snapshot` of that model:

- decision points: whenever the server is free and some query has arrived (the server idles only
  when nothing is waiting, so every policy is work-conserving here);
- ``cached_tokens`` of a waiting query = its reuse in the model: the LCP with the previous query
  (``prev``) or the longest LCP with any processed query (``radix``/``fair``); uncapped (a prompt
  identical to the previous one costs 0 in Definition 2);
- the batch budget admits exactly one query; the first id of the decision is served;
- after each query, ``on_step_end`` reports ``output_len`` output tokens for its client (the
  sequential model has no decode phase; charging the whole output at completion makes VTC's and
  DLPM's counters follow the fair model's service charge ``w_e*extend + w_q*output``).

The returned order is evaluated by the independent checker :func:`prefixsched.theory.sequential.evaluate`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterator, Sequence

from prefixsched.errors import IllegalDecisionError, InputError
from prefixsched.reference.policies.base import Decision, FinishedInfo, Policy
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request, ServiceWeights, lcp

__all__ = ["run_sequential"]


@dataclass(frozen=True)
class _Entry:
    request: Request
    seq: int
    cached_tokens: int
    extend_tokens: int


class _OneSlotBatch:
    def __init__(self) -> None:
        self._ids: list[str] = []

    def fits(self, entry: _Entry) -> bool:
        return not self._ids

    def try_add(self, entry: _Entry) -> bool:
        if self._ids:
            return False
        self._ids.append(entry.request.id)
        return True

    @property
    def admitted(self) -> Sequence[str]:
        return tuple(self._ids)

    @property
    def full(self) -> bool:
        return bool(self._ids)


class _Cache:
    def __init__(self, snap: "_SeqSnapshot") -> None:
        self._snap = snap

    def match_tokens(self, request: Request) -> int:
        return self._snap._reuse(request)

    def dfs_weight_order(self, entries):  # pragma: no cover - not meaningful in this model
        raise InputError("policy", "dfs-weight needs a radix tree; it is not available in the sequential models")


class _SeqSnapshot:
    def __init__(self, inst: Instance, model: str, tokens: list[tuple[int, ...]]) -> None:
        self._inst = inst
        self._model = model
        self._tokens = tokens
        self._index = {r.id: i for i, r in enumerate(inst.requests)}
        self.limits = Limits(
            kv_capacity_tokens=max(1, sum(len(t) + r.output_len for t, r in zip(tokens, inst.requests))),
            max_prefill_tokens=max(len(t) for t in tokens),
            max_running_requests=1,
            page_size=1,
        )
        self.weights: ServiceWeights = inst.weights
        self.cost_model: CostModel = CostModel.token_units(inst.cost_model.c_attn)
        self.cache = _Cache(self)
        self.now = 0.0
        self.step = 0
        self.waiting: list[int] = []  # instance indices, FCFS order
        self.processed: list[int] = []

    def _reuse(self, request: Request) -> int:
        x = self._tokens[self._index[request.id]]
        if not self.processed:
            return 0
        if self._model == "prev":
            return lcp(x, self._tokens[self.processed[-1]])
        return max(lcp(x, self._tokens[j]) for j in self.processed)

    def _entry(self, i: int) -> _Entry:
        r = self._inst.requests[i]
        c = self._reuse(r)
        return _Entry(r, i, c, len(self._tokens[i]) - c)

    def entry(self, request_id: str) -> _Entry:
        return self._entry(self._index[request_id])

    def waiting_count(self, client: str | None = None) -> int:
        if client is None:
            return len(self.waiting)
        return sum(1 for i in self.waiting if self._inst.requests[i].client == client)

    def waiting_clients(self) -> Sequence[str]:
        present = {self._inst.requests[i].client for i in self.waiting}
        return [c for c in self._inst.clients if c in present]

    def running_count(self, client: str | None = None) -> int:
        return 0

    def running_clients(self) -> Sequence[str]:
        return []

    def fcfs(self, client: str | None = None) -> Iterator[_Entry]:
        for i in self.waiting:
            if client is None or self._inst.requests[i].client == client:
                yield self._entry(i)

    def queue(self) -> Iterator[_Entry]:
        """The sequential models' queue order is FCFS."""
        return self.fcfs()

    def lpm(self, client: str | None = None) -> Iterator[_Entry]:
        entries = list(self.fcfs(client))
        entries.sort(key=lambda e: (-e.cached_tokens, e.request.arrival, e.seq))
        return iter(entries)

    def batch(self) -> _OneSlotBatch:
        return _OneSlotBatch()


def run_sequential(instance: Instance, policy: Policy, *, model: str) -> tuple[str, ...]:
    """Serve ``instance`` one query at a time in ``model`` ("prev", "radix" or "fair") with ``policy``.

    Returns the service order (request ids). Time is in token units (arrivals read as such), the
    service time of a query is Definition 2's ``(1 + c_attn*|x|) * (|x| - reuse)``.

    Raises
    ------
    InputError
        Unknown model.
    IllegalDecisionError
        The policy admitted nothing although queries were waiting, or admitted one that is not waiting.
    """
    if model not in ("prev", "radix", "fair"):
        raise InputError("model", f"must be one of prev, radix, fair; got {model!r}")
    reqs = instance.requests
    tokens = [tuple(r.prompt) for r in reqs]
    snap = _SeqSnapshot(instance, model, tokens)
    c_attn = instance.cost_model.c_attn
    n = len(reqs)
    nxt = 0  # next arrival to admit into the queue
    t = 0.0
    order: list[str] = []
    while len(order) < n:
        if not snap.waiting and nxt < n and reqs[nxt].arrival > t:
            t = reqs[nxt].arrival
        while nxt < n and reqs[nxt].arrival <= t:
            snap.now = t
            policy.on_arrival(reqs[nxt], t, snap)
            bisect.insort(snap.waiting, nxt)
            nxt += 1
        snap.now = t
        decision: Decision = policy.decide(snap)
        if not decision.admit:
            raise IllegalDecisionError(
                f"policy {policy.name!r} admitted nothing at t={t} with {len(snap.waiting)} queries waiting "
                "(the sequential model is work-conserving)"
            )
        rid = decision.admit[0]
        i = snap._index.get(rid)
        if i is None or i not in snap.waiting:
            raise IllegalDecisionError(f"policy {policy.name!r} admitted {rid!r}, which is not waiting")
        e = snap._entry(i)
        t = t + (1.0 + c_attn * len(tokens[i])) * e.extend_tokens
        snap.waiting.remove(i)
        snap.processed.append(i)
        order.append(rid)
        snap.step += 1
        snap.now = t
        policy.on_step_end({reqs[i].client: reqs[i].output_len}, [FinishedInfo(rid, reqs[i].client)], snap)
    return tuple(order)
