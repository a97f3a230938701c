"""State rules of the fairness policies, as invariants (issue #13; INV-23 to INV-27).

The fairness bounds (INV-7 to INV-12, INV-19) leave slack: a counter rule broken by less than
the slack goes unnoticed. These checks state each rule exactly, per event, from what a policy
exposes (``state()``, ``params()``) and the engine's snapshot; the checker wraps the policy
(:class:`RuleChecker`) or the dispatcher (:class:`RuleCheckingDispatcher`) and raises
:class:`RuleViolation` with the invariant's ID at the first violation:

- ``INV-23`` VTC lift: an arrival of a client with nothing waiting sets its counter to
  ``max(c_u, floor)``, ``floor`` = the smallest counter of the waiting clients, or the last
  leaver's counter when the queue is empty (none: no lift); an arrival of a backlogged client
  changes nothing, and no arrival changes another client's counter. The last leaver is tracked
  here from the decisions (the client whose last waiting request was admitted most recently).
- ``INV-24`` DLPM credit gate: within a pass, (a) a request whose client has no credit
  (``q <= 0``, counting the pass's earlier charges) is admitted only after a refill round in
  that pass, at a moment when no queued client had credit; (b) a waiting request of a client
  that held credit through the whole pass (``q > 0`` before and after, not refilled) was left
  waiting only if it does not fit next to the pass's admissions.
- ``INV-25`` DLPM refill rule: (a) a refill round happens only when no queued client has
  credit (checked at the latest moment the pass's admission order allows); (b) when the pass
  reaches a point with no queued client in credit, room in the batch and a waiting request
  still to visit in LPM order (its start, or right after an admission), it runs a refill round;
  (c) a client in credit that the pass did not admit is neither refilled nor charged (queued
  or only running); (d) every client's deficit moves by its rounds times ``Q_u * weight`` minus
  ``w_e * extend_tokens`` of its admissions.
- ``INV-8`` (per event, here): a step moves a DLPM deficit by ``-w_q`` per output token of the
  client in the step, and by nothing else.
- ``INV-29`` DLPM active list: after every step the clients with a deficit are exactly those
  with a waiting or running request; a request of a client with nothing waiting and nothing
  running starts it at ``q = 0``; an arrival changes no other deficit (and none of a client that
  is still active).
- ``INV-30`` VTC charges: a decision adds ``w_e * prompt_len / weight`` (``extend_tokens`` with
  ``charge="extend"``) per admitted request to its client's counter and nothing else; a step adds
  ``w_q * (output tokens of the client in the step) / weight``; counters move otherwise only by
  the lift (INV-23).
- ``INV-26`` k-LPM cycle: the cycle position advances by one per admission (mod k, wrapping
  counted in ``cycles``) and persists across passes; an admission at position 0 is the oldest
  request not yet admitted, one at another position the first request in LPM order that fits
  next to the pass's earlier admissions; and the pass stops only when its next slot cannot be
  served.
- ``INV-27`` D²LPM per-(client, worker) deficits: a refill round (+Q_w on every worker) happens
  only when the client has no credit on any worker, and stops as soon as it has some; the chosen
  worker is one where the client has credit; a dispatch charges exactly ``w_e * prompt_len`` to
  that (client, worker) and a finish exactly ``w_q * output_len``; ``s_w`` moves by one.

Each rule holds for the reference on lockstep instances, and fires on the broken policy of
:mod:`prefixsched.testing.broken` that breaks it (hand-made instances, then a hypothesis search).
"""

from __future__ import annotations

import functools

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from oracles import DISPATCHER_ORACLES, POLICY_ORACLES
from oracles.lockstep import Delegate, Divergence, LockstepDispatcher, LockstepPolicy
from prefixsched.errors import IllegalDecisionError
from prefixsched.reference.cluster import D2LPMDispatcher, Dispatcher, simulate_cluster as _simulate_cluster
from prefixsched.reference.policies import create
from prefixsched.reference.policies.base import Decision, FinishedInfo, Policy, Snapshot
from prefixsched.reference.simulator import simulate as _simulate
from prefixsched.testing import broken as Bk
from prefixsched.testing.strategies import lockstep_instances
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request

# The oracles state the papers' policies on the papers' idealised server (a policy may skip a
# request that does not fit). The SGLang engine's admission (stop at the first misfit, chunked
# prefill, SGLang's own LPM refinements) is proven against SGLang itself (tests/test_sglang_*,
# tests/test_twin*), so these tests pin engine="ideal"; test_lockstep_oracles also runs the
# policies whose rules the SGLang engine keeps on that engine.
simulate = functools.partial(_simulate, engine="ideal")
simulate_cluster = functools.partial(_simulate_cluster, engine="ideal")


class RuleViolation(AssertionError):
    """A state rule does not hold (the message starts with the invariant's ID)."""


def _num(x: Any) -> float:
    return float(x)  # "inf" -> inf


# ---------------------------------------------------------------------------------------------
# the checkers


class RuleChecker(Delegate, Policy):
    """Wraps a VTC-, DLPM- or k-LPM-like policy and checks its rules at every event: VTC
    (``state()`` has ``counters``) INV-23 and INV-30; DLPM (``deficits`` and ``rounds``) INV-24,
    INV-25, INV-29 and INV-8 per step; k-LPM (``position``) INV-26. ``checked`` counts the events
    at which a rule had something to check."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self.last_left: str | None = None
        self.checked: dict[str, int] = {k: 0 for k in ("INV-23", "INV-24", "INV-25", "INV-26", "INV-29", "INV-30")}

    # -- arrivals: the VTC lift (INV-23), the DLPM join (INV-29)

    def on_arrival(self, request: Request, now: float, snap: Snapshot) -> None:
        before = copy.deepcopy(self.inner.state())
        queue = [e.request.client for e in snap.fcfs()]
        idle = request.client not in queue and snap.running_count(request.client) == 0
        self.inner.on_arrival(request, now, snap)
        if "counters" in before:
            self._vtc_lift(request.client, queue, before["counters"], self.inner.state()["counters"])
        if "deficits" in before and "rounds" in before:
            self._dlpm_join(request.client, idle, before["deficits"], self.inner.state()["deficits"])

    # -- VTC charges (INV-30)

    def _vtc_weight(self, u: str) -> float:
        return (self.inner.params().get("weights") or {}).get(u, 1.0)

    def _vtc_charges(self, snap, admit, c0, c1) -> None:
        self.checked["INV-30"] += 1
        prompt = self.inner.params().get("charge", "prompt") == "prompt"
        w_e = snap.weights.w_e
        for u in c0:
            mine = [snap.entry(r) for r in admit if snap.entry(r).request.client == u]
            tokens = sum(e.request.prompt_len if prompt else e.extend_tokens for e in mine)
            want = c0[u] + w_e * tokens / self._vtc_weight(u)
            if not math.isclose(c1[u], want, rel_tol=1e-9, abs_tol=1e-9):
                raise RuleViolation(
                    f"INV-30: step {snap.step}: admitting {[e.request.id for e in mine]} should move {u!r}'s counter "
                    f"{c0[u]} -> {want} (w_e * {tokens} tokens / weight), the policy has {c1[u]}"
                )

    # -- DLPM active list

    def _dlpm_join(self, u: str, idle: bool, q0: Mapping[str, float], q1: Mapping[str, float]) -> None:
        where = f"INV-29: arrival of a request of {u!r}"
        self.checked["INV-29"] += 1
        for c in q0:
            if c != u and q1.get(c) != q0[c]:
                raise RuleViolation(f"{where} changed {c!r}'s deficit {q0[c]} -> {q1.get(c)}")
        if idle and (u in q0 or q1.get(u) != 0.0):
            raise RuleViolation(
                f"{where}, which had nothing waiting or running: it must (re)join the active list at q = 0 "
                f"(before: {q0.get(u, 'not active')}, after: {q1.get(u, 'not active')})"
            )
        if not idle and q1.get(u) != q0.get(u):
            raise RuleViolation(f"{where}, still active: its deficit moved {q0.get(u)} -> {q1.get(u)}")

    def _vtc_lift(self, u: str, queue: list[str], c0: Mapping[str, float], c1: Mapping[str, float]) -> None:
        where = f"INV-23: arrival of a request of {u!r}"
        for c in c0:
            if c != u and c1[c] != c0[c]:
                raise RuleViolation(f"{where} changed {c!r}'s counter {c0[c]} -> {c1[c]}")
        if u in queue:
            if c1[u] != c0[u]:
                raise RuleViolation(f"{where}, already backlogged, changed its counter {c0[u]} -> {c1[u]}")
            return
        self.checked["INV-23"] += 1
        base = c0.get(u, 0.0)
        if queue:
            floor: float | None = min(c0[c] for c in queue)
            why = f"the smallest waiting counter {floor}"
        elif self.last_left is not None:
            floor = c0[self.last_left]
            why = f"the last leaver {self.last_left!r}'s counter {floor}"
        else:
            floor, why = None, "no floor (first arrival of the run)"
        want = base if floor is None else max(base, floor)
        if c1[u] != want:
            raise RuleViolation(f"{where} joining the backlog: counter {base} -> {c1[u]}, expected {want} ({why})")

    # -- decisions

    def decide(self, snap: Snapshot) -> Decision:
        entries = list(snap.fcfs())
        before = copy.deepcopy(self.inner.state())
        full0 = snap.batch().full
        d = self.inner.decide(snap)
        after = self.inner.state()
        admit = list(d.admit) if isinstance(d, Decision) else []
        if "deficits" in before and "rounds" in before:
            self._dlpm(snap, entries, admit, before, after, full0)
        if "position" in before:
            self._klpm(snap, entries, admit, before, after)
        if "counters" in before:
            self._vtc_charges(snap, admit, before["counters"], after["counters"])
        # the last leaver (INV-23): the client whose last waiting request was admitted last
        left = {}
        for e in entries:
            left[e.request.client] = left.get(e.request.client, 0) + 1
        for rid in admit:
            u = snap.entry(rid).request.client
            left[u] -= 1
            if left[u] == 0:
                self.last_left = u
        return d

    def _dlpm(self, snap, entries, admit, before, after, full0) -> None:
        q0: dict[str, float] = before["deficits"]
        w_e = snap.weights.w_e
        rounds = after["rounds"] - before["rounds"]
        rem: dict[str, int] = {}
        for e in entries:
            rem[e.request.client] = rem.get(e.request.client, 0) + 1
        self.checked["INV-24"] += 1
        self.checked["INV-25"] += 1
        # walk the admissions in order with the pass's charges, up to the first refill
        order = sorted(entries, key=lambda e: (-e.cached_tokens, e.request.arrival, e.seq))
        at = {e.request.id: i for i, e in enumerate(order)}
        q = dict(q0)
        replay = snap.batch()
        taken: set[str] = set()

        def dry() -> bool:  # no queued client has credit
            return not any(rem[c] > 0 and q[c] > 0 for c in rem)

        def refill_due(after: int) -> bool:  # dry, room left, and a request still to visit
            return dry() and not replay.full and any(at[e.request.id] > after and e.request.id not in taken for e in entries)

        for rid in admit:
            e = snap.entry(rid)
            u = e.request.client
            if q[u] <= 0:
                if rounds == 0:
                    raise RuleViolation(
                        f"INV-24: step {snap.step}: admitted {rid!r} of {u!r} with q = {q[u]} <= 0 and no refill round in the pass"
                    )
                credited = {c: q[c] for c in rem if rem[c] > 0 and q[c] > 0}
                if credited:
                    raise RuleViolation(
                        f"INV-24: step {snap.step}: admitted {rid!r} of {u!r} (q = {q[u]} <= 0, after a refill) while "
                        f"queued clients still had credit: {credited}"
                    )
                break
            q[u] -= w_e * e.extend_tokens
            rem[u] -= 1
            replay.try_add(e)
            taken.add(rid)
            if rounds == 0 and refill_due(at[rid]):  # INV-25 (b), in the middle of the pass
                raise RuleViolation(
                    f"INV-25: step {snap.step}: after admitting {rid!r} no queued client has credit and the batch has "
                    "room, requests come after it in LPM order, but the pass ran no refill round"
                )
        else:
            if rounds:
                credited = {c: q[c] for c in rem if rem[c] > 0 and q[c] > 0}
                if credited:
                    raise RuleViolation(
                        f"INV-25: step {snap.step}: {rounds} refill round(s) although queued clients had credit "
                        f"after every admission of the pass: {credited}"
                    )
        # INV-25 (b): no queued credit and room in the batch -> a refill round in this pass
        if not full0 and all(q0[u] <= 0 for u in rem) and rounds == 0:
            raise RuleViolation(
                f"INV-25: step {snap.step}: no waiting client has credit ({ {u: q0[u] for u in rem} }) and the "
                "batch has room, but the pass ran no refill round"
            )
        admitted_clients = {snap.entry(r).request.client for r in admit}
        for u in q0:  # INV-25 (c): every active client, queued or only running
            if q0[u] > 0 and u not in admitted_clients:
                if after["refills"][u] != before["refills"][u] or after["deficits"][u] != q0[u]:
                    raise RuleViolation(
                        f"INV-25: step {snap.step}: {u!r} had credit {q0[u]} and was not admitted, but the pass moved "
                        f"its deficit to {after['deficits'][u]} (refills {before['refills'][u]} -> {after['refills'][u]})"
                    )
        # INV-25 (d): a round adds Q_u * weight; admissions charge w_e * extend_tokens
        p = self.inner.params()
        Q, wts = float(p["quantum"]), p.get("weights") or {}
        for u in q0:
            k = after["refills"][u] - before["refills"][u]
            charged = sum(w_e * snap.entry(r).extend_tokens for r in admit if snap.entry(r).request.client == u)
            want = q0[u] + k * Q * wts.get(u, 1.0) - charged
            if not math.isclose(after["deficits"][u], want, rel_tol=1e-9, abs_tol=1e-9):
                raise RuleViolation(
                    f"INV-25: step {snap.step}: {u!r}: deficit {q0[u]} + {k} round(s) of Q_u * weight "
                    f"{Q * wts.get(u, 1.0)} - charges {charged} = {want}, the policy has {after['deficits'][u]}"
                )
        b = snap.batch()
        for rid in admit:
            assert b.try_add(snap.entry(rid))
        for u in {e.request.client for e in entries}:
            if q0[u] <= 0:
                continue
            if after["refills"][u] == before["refills"][u] and after["deficits"][u] > 0:  # INV-24 (b)
                for e in entries:
                    if e.request.client == u and e.request.id not in admit and b.fits(e):
                        raise RuleViolation(
                            f"INV-24: step {snap.step}: {u!r} held credit through the pass (q {q0[u]} -> "
                            f"{after['deficits'][u]}) but its request {e.request.id!r} was left waiting although it fits"
                        )

    def _klpm(self, snap, entries, admit, before, after) -> None:
        k = self.inner.params()["k"]
        k = math.inf if k == "inf" else k
        pos, cycles = before["position"], before["cycles"]
        b = snap.batch()
        taken: set[str] = set()

        def untaken() -> list[Any]:
            return [e for e in entries if e.request.id not in taken]

        def fcfs_key(e: Any) -> tuple:
            return (e.request.arrival, e.seq)

        def lpm_key(e: Any) -> tuple:
            return (-e.cached_tokens, e.request.arrival, e.seq)

        self.checked["INV-26"] += 1
        for j, rid in enumerate(admit):
            e = snap.entry(rid)
            left = untaken()
            if pos == 0:
                oldest = min(left, key=fcfs_key)
                if oldest.request.id != rid:
                    raise RuleViolation(
                        f"INV-26: step {snap.step}: admission {j} is at the oldest-request slot but admits {rid!r}, "
                        f"not the oldest {oldest.request.id!r}"
                    )
            else:
                for x in sorted(left, key=lpm_key):
                    if x.request.id == rid:
                        break
                    if b.fits(x):
                        raise RuleViolation(
                            f"INV-26: step {snap.step}: admission {j} (LPM slot {pos}) admits {rid!r} although "
                            f"{x.request.id!r} comes first in LPM order and fits"
                        )
            assert b.try_add(e)
            taken.add(rid)
            if k == math.inf:
                pos = 1
            else:
                pos += 1
                if pos == k:
                    pos, cycles = 0, cycles + 1
        if (after["position"], after["cycles"]) != (pos, cycles):
            raise RuleViolation(
                f"INV-26: step {snap.step}: cycle (position, cycles) {before['position'], before['cycles']} + "
                f"{len(admit)} admissions should be {(pos, cycles)}, the policy has {(after['position'], after['cycles'])}"
            )
        left = untaken()
        if left:
            nxt = [min(left, key=fcfs_key)] if pos == 0 else left
            fit = [x.request.id for x in nxt if b.fits(x)]
            if fit:
                raise RuleViolation(
                    f"INV-26: step {snap.step}: the pass stopped at slot {pos} although {fit[0]!r} can serve it"
                )

    def on_step_end(self, decoded: Mapping[str, int], finished: Sequence[FinishedInfo], snap: Snapshot) -> None:
        before = copy.deepcopy(self.inner.state())
        self.inner.on_step_end(decoded, finished, snap)
        st = self.inner.state()
        if "counters" in st:  # INV-30: the decode charge
            self.checked["INV-30"] += 1
            w_q = snap.weights.w_q
            for u, c in before["counters"].items():
                want = c + w_q * decoded.get(u, 0) / self._vtc_weight(u)
                if not math.isclose(st["counters"][u], want, rel_tol=1e-9, abs_tol=1e-9):
                    raise RuleViolation(
                        f"INV-30: step {snap.step}: {decoded.get(u, 0)} output token(s) of {u!r} should move its counter "
                        f"{c} -> {want} (w_q * tokens / weight), the policy has {st['counters'][u]}"
                    )
        if "deficits" in st and "rounds" in st:
            w_q = snap.weights.w_q
            for u, q in st["deficits"].items():  # INV-8, per step: line 13's decode charge only
                want = before["deficits"][u] - w_q * decoded.get(u, 0)
                if u in before["deficits"] and not math.isclose(q, want, rel_tol=1e-9, abs_tol=1e-9):
                    raise RuleViolation(
                        f"INV-8: step {snap.step}: {decoded.get(u, 0)} output token(s) of {u!r} should move its deficit "
                        f"{before['deficits'][u]} -> {want} (w_q per token), the policy has {q}"
                    )
            self.checked["INV-29"] += 1
            active = set(snap.waiting_clients()) | set(snap.running_clients())
            if set(st["deficits"]) != active:
                raise RuleViolation(
                    f"INV-29: after step {snap.step} the active list is {sorted(st['deficits'])}, but the clients "
                    f"with a waiting or running request are {sorted(active)}"
                )


class RuleCheckingDispatcher(Delegate, Dispatcher):
    """Wraps a D²LPM-like dispatcher and checks INV-27 at every call."""

    name = "rule-checking"

    def __init__(self, inner: Dispatcher) -> None:
        self.inner = inner
        self.checked = 0

    def bind(self, instance: Instance, workers: int) -> None:
        super().bind(instance, workers)
        self.inner.bind(instance, workers)

    def _q(self, st: Mapping[str, Any], c: str) -> list[float]:
        v = st["deficits"].get(c)
        return [0.0] * self.workers if v is None else [_num(x) for x in v]

    def _others_unchanged(self, where: str, c: str, s0: Mapping[str, Any], s1: Mapping[str, Any]) -> None:
        for o, v in s0["deficits"].items():
            if o != c and s1["deficits"][o] != v:
                raise RuleViolation(f"INV-27: {where} changed {o!r}'s deficits {v} -> {s1['deficits'][o]}")

    def select(self, request: Request, keys: tuple, now: float, loads: Sequence[int]) -> int:
        c = request.client
        s0 = copy.deepcopy(self.inner.state())
        w = self.inner.select(request, keys, now, loads)
        s1 = self.inner.state()
        where = f"select({request.id!r} of {c!r}) at t={now}"
        self.checked += 1
        Q_w = _num(self.inner.params()["q_w"])
        q = self._q(s0, c)
        k = s1["refills"][c] - s0["refills"].get(c, 0)
        for r in range(k):
            if any(x > 0 for x in q):
                raise RuleViolation(f"INV-27: {where}: refill round {r + 1} of {k} while the client has credit {q}")
            q = [x + Q_w for x in q]
        if not any(x > 0 for x in q):
            raise RuleViolation(f"INV-27: {where}: no credit on any worker after {k} refill round(s): {q}")
        if self._q(s1, c) != q:
            raise RuleViolation(f"INV-27: {where}: deficits {self._q(s1, c)}, expected {q} after {k} round(s)")
        if not q[w] > 0:
            raise RuleViolation(f"INV-27: {where}: chose worker {w}, where the client has no credit ({q})")
        self._others_unchanged(where, c, s0, s1)
        return w

    def on_dispatch(self, request: Request, keys: tuple, worker: int, now: float) -> None:
        self._charged(f"dispatch of {request.id!r} to {worker}", request.client, worker,
                      lambda: self.inner.on_dispatch(request, keys, worker, now), self.w_e * request.prompt_len, +1)

    def on_finish(self, request: Request, worker: int, now: float) -> None:
        self._charged(f"finish of {request.id!r} on {worker}", request.client, worker,
                      lambda: self.inner.on_finish(request, worker, now), self.w_q * request.output_len, -1)

    def _charged(self, where: str, c: str, w: int, call: Any, charge: float, load: int) -> None:
        s0 = copy.deepcopy(self.inner.state())
        call()
        s1 = self.inner.state()
        want = list(self._q(s0, c))
        want[w] = want[w] - charge
        if self._q(s1, c) != want:
            raise RuleViolation(f"INV-27: {where}: deficits {self._q(s0, c)} -> {self._q(s1, c)}, expected {want}")
        loads = list(s0["loads"])
        loads[w] += load
        if s1["loads"] != loads:
            raise RuleViolation(f"INV-27: {where}: loads {s0['loads']} -> {s1['loads']}, expected {loads}")
        self._others_unchanged(where, c, s0, s1)

    def on_evict(self, worker: int, keys: tuple, start_pages: int, now: float) -> None:
        self.inner.on_evict(worker, keys, start_pages, now)


# ---------------------------------------------------------------------------------------------
# the reference keeps every rule


REFERENCE = [
    ("vtc", None), ("vtc", {"charge": "extend", "weights": {"c0": 2.0}}),
    ("dlpm", {"quantum": 2}), ("dlpm", {"quantum": 10}), ("dlpm", {"quantum": 40, "weights": {"c1": 2.0}}),
    ("k-lpm", None), ("k-lpm", {"k": 3}), ("k-lpm", {"k": "inf"}),
]


@settings(max_examples=4 * settings.default.max_examples)
@given(inst=lockstep_instances(), spec=st.sampled_from(REFERENCE))
def test_reference_policies_keep_their_state_rules(inst, spec):
    name, params = spec
    chk = RuleChecker(create(name, **(params or {})))
    simulate(inst, chk)
    rule = {"vtc": "INV-23", "dlpm": "INV-24", "k-lpm": "INV-26"}[name]
    assert chk.checked[rule] > 0 or name == "vtc"


@settings(max_examples=2 * settings.default.max_examples)
@given(inst=lockstep_instances(), workers=st.integers(1, 3), q_w=st.sampled_from([1.0, 6.0, 30.0, math.inf]))
def test_reference_d2lpm_keeps_its_deficit_rules(inst, workers, q_w):
    disp = RuleCheckingDispatcher(D2LPMDispatcher(q_w))
    simulate_cluster(inst, "dlpm:5", disp, workers=workers)
    assert disp.checked == len(inst.requests)


def test_the_vtc_lift_rule_is_exercised_in_both_cases():
    cases = {"empty": 0, "others waiting": 0}

    class Count(RuleChecker):
        def _vtc_lift(self, u, queue, c0, c1):
            super()._vtc_lift(u, queue, c0, c1)
            if u not in queue and c1[u] > c0.get(u, 0.0):
                cases["others waiting" if queue else "empty"] += 1

    @settings(max_examples=40, derandomize=True, database=None)
    @given(inst=lockstep_instances())
    def run(inst):
        simulate(inst, Count(create("vtc")))

    run()
    assert cases["empty"] > 0 and cases["others waiting"] > 0, cases


# ---------------------------------------------------------------------------------------------
# each rule fires on the policy that breaks it (hand-made instances)


TOK = CostModel.token_units()
DEC1 = CostModel(0.0, 1.0, 0.0, 1.0, 0.0, 0.0)  # prefill 1 s/token, decode 1 s per step


def _inst(spec, kv=30, running=2, prefill=30, cost=TOK) -> Instance:
    reqs = tuple(Request(f"r{i}", c, float(a), tuple(p), o) for i, (c, a, p, o) in enumerate(spec))
    return Instance(reqs, cost, Limits(kv_capacity_tokens=kv, max_prefill_tokens=prefill, max_running_requests=running))


def _fires(make, inst, inv) -> str:
    with pytest.raises(RuleViolation) as err:
        simulate(inst, RuleChecker(make()))
    assert str(err.value).startswith(inv), str(err.value)
    return str(err.value)


def _holds(make, inst) -> RuleChecker:
    chk = RuleChecker(make())
    simulate(inst, chk)
    return chk


def test_vtc_lift_to_the_last_leaver_fires_on_the_artifact_lift():
    # a is served alone (counter 1 + 2*2 = 5) and leaves the queue; b then arrives to an empty
    # queue: the paper lifts it to a's 5, the artifact leaves it at 0
    inst = _inst([("a", 0, (1,), 2), ("b", 5, (2,), 1)], cost=DEC1)
    msg = _fires(Bk.VTCArtifactLift, inst, "INV-23")
    assert "last leaver 'a'" in msg
    assert _holds(lambda: create("vtc"), inst).checked["INV-23"] == 2


def test_vtc_lift_of_a_returning_client_fires_when_only_newcomers_are_lifted():
    # b is lifted when it first joins; it drains, a keeps being served and pulls ahead, b returns
    # while a waits: b must be lifted to a's counter again
    flood = [("a", 0, (1,), 3) for _ in range(4)]
    inst = _inst(flood + [("b", 0, (2,), 1), ("b", 6, (3,), 1)], running=1, cost=DEC1)
    msg = _fires(Bk.VTCLiftsNewcomers, inst, "INV-23")
    assert "smallest waiting counter" in msg
    _holds(lambda: create("vtc"), inst)


def test_vtc_charges_fire_on_the_artifacts_double_decode_charge():
    # r0 decodes two tokens; in step 1 it finishes and the artifact charges that step twice
    inst = _inst([("a", 0, (1,), 2), ("b", 0, (2,), 3)], cost=DEC1)
    msg = _fires(Bk.VTCArtifactDoubleCharge, inst, "INV-30")
    assert "step 1" in msg and "w_q * tokens / weight" in msg
    chk = _holds(lambda: create("vtc", charge="extend", weights={"a": 2.0}), inst)
    assert chk.checked["INV-30"] > 3


def test_dlpm_refill_amounts_and_idle_credit_are_checked():
    from prefixsched.reference.policies.dlpm import DLPM

    class HalfRefill(DLPM):  # a round gives Q_u / 2
        def _refill(self):
            self.rounds += 1
            for u in self.deficits:
                if self.deficits[u] <= 0:
                    self.deficits[u] += self.quantum / 2
                    self.refills[u] += 1

    class TopsUpRunning(DLPM):  # a round also tops up clients with credit below Q_u
        def _refill(self):
            super()._refill()
            for u in self.deficits:
                if 0 < self.deficits[u] < self.quantum / 2:
                    self.deficits[u] += self.quantum / 2

    inst = _inst([("a", 0, (1, 2), 2), ("b", 0, (3,), 2)])
    assert "round(s) of Q_u * weight" in _fires(lambda: HalfRefill(quantum=10), inst, "INV-25")
    # a runs a long request with a little credit left; b's arrival triggers a round
    inst2 = _inst([("a", 0, (1, 2, 3, 4, 5, 6, 7), 4), ("b", 1, (8,), 1)], cost=DEC1)
    msg = _fires(lambda: TopsUpRunning(quantum=10), inst2, "INV-25")
    assert "had credit 1.0 and was not admitted" in msg
    _holds(lambda: create("dlpm", quantum=10), inst2)


def test_dlpm_decode_charge_is_checked_per_step():
    from prefixsched.reference.policies.dlpm import DLPM

    class PerClient(DLPM):  # line 13 read as one token per client and step
        def on_step_end(self, decoded, finished, snap):
            super().on_step_end({u: 1 for u in decoded}, finished, snap)

    inst = _inst([("a", 0, (1,), 2), ("a", 0, (2,), 2)])
    assert "2 output token(s) of 'a'" in _fires(lambda: PerClient(quantum=10), inst, "INV-8")
    _holds(lambda: create("dlpm", quantum=10), inst)


def test_dlpm_credit_gate_fires_when_zero_counts_as_credit():
    # a is refilled and holds credit; b joins with q = 0 while a still waits with credit
    inst = _inst([("a", 0, (1, 2, 3), 1), ("a", 0, (1, 2, 4), 1), ("b", 0, (5,), 1)], running=3)
    msg = _fires(lambda: Bk.DLPMZeroIsCredit(quantum=100), inst, "INV-24")
    assert "no refill round" in msg
    _holds(lambda: create("dlpm", quantum=100), inst)


def test_dlpm_credit_gate_fires_when_the_pass_stops_at_a_misfit():
    # a's first request (t = 0) gives it credit; at t = 0.5 three more arrive and join the next
    # pass (t = 1), which the prefill budget of 4 tokens limits: the 3-token request fits, the
    # 4-token one does not, the 1-token one behind it does
    inst = _inst([("a", 0, (10,), 3), ("a", 0.5, (1, 2, 3), 1), ("a", 0.5, (4, 5, 6, 7), 1), ("a", 0.5, (8,), 1)],
                 prefill=4, running=4)
    msg = _fires(lambda: Bk.DLPMStopsAtMisfit(quantum=100), inst, "INV-24")
    assert "'r3' was left waiting although it fits" in msg
    _holds(lambda: create("dlpm", quantum=100), inst)


def test_dlpm_refill_rule_fires_when_the_refill_waits_for_the_step_end():
    inst = _inst([("a", 0, (1, 2), 2), ("b", 0, (3,), 2)])
    msg = _fires(lambda: Bk.DLPMRefillAtStepEnd(quantum=100), inst, "INV-25")
    assert "ran no refill round" in msg
    _holds(lambda: create("dlpm", quantum=100), inst)


def test_dlpm_refill_rule_fires_on_eager_refills():
    # the prefill budget admits one request per pass; at the second pass a is in credit and
    # still has a request waiting after the admission, yet the eager policy refilled
    inst = _inst([("a", 0, (1, 2, 3), 3), ("a", 0, (4, 5, 6), 3), ("a", 0, (7, 8, 9), 3)], prefill=3, running=3)
    msg = _fires(lambda: Bk.DLPMEagerRefill(quantum=50), inst, "INV-25")
    assert "refill" in msg
    _holds(lambda: create("dlpm", quantum=50), inst)


def test_dlpm_active_list_fires_when_drained_clients_are_kept():
    # a's only request finishes at the end of step 0 (t = 1): a must leave the active list then
    inst = _inst([("a", 0, (1, 2), 1), ("b", 0, (3,), 3), ("a", 3, (4,), 1)], cost=DEC1)
    msg = _fires(lambda: Bk.DLPMNeverForgets(quantum=10), inst, "INV-29")
    assert "after step 0 the active list is ['a', 'b']" in msg
    chk = _holds(lambda: create("dlpm", quantum=10), inst)
    assert chk.checked["INV-29"] > 3


def test_klpm_cycle_fires_when_the_position_resets_every_pass():
    # no shared prefixes: the LPM slot's pick is the oldest request too, so only the position
    # (and the cycle count) can tell
    inst = _inst([("a", 0, (1,), 1), ("a", 0, (2,), 1), ("a", 0, (3,), 1), ("a", 0, (4,), 1)], running=1)
    msg = _fires(lambda: Bk.KLPMCycleResets(k=2), inst, "INV-26")
    assert "should be" in msg
    chk = _holds(lambda: create("k-lpm", k=2), inst)
    assert chk.checked["INV-26"] == 4


def test_klpm_cycle_rules_see_a_wrong_slot_and_an_early_stop():
    class OldestEverySlot(type(create("k-lpm"))):  # advances the cycle but always serves FCFS
        def decide(self, snap):
            b = snap.batch()
            for e in snap.fcfs():
                if not b.try_add(e):
                    break
                self._advance()
            return Decision(tuple(b.admitted))

    class OneAPass(type(create("k-lpm"))):  # stops after one admission
        def decide(self, snap):
            b = snap.batch()
            for e in snap.fcfs() if self._pos == 0 else snap.lpm():
                if b.try_add(e):
                    self._advance()
                    break
            return Decision(tuple(b.admitted))

    # one slot per pass: after r0, the LPM slot must take r2 (it matches r0's cached prefix)
    one = _inst([("a", 0, (1, 2), 1), ("a", 0, (9,), 1), ("a", 0, (1, 2, 3), 1)], running=1)
    assert "comes first in LPM order and fits" in _fires(lambda: OldestEverySlot(k=2), one, "INV-26")
    _holds(lambda: create("k-lpm", k=2), one)
    three = _inst([("a", 0, (1, 2), 1), ("a", 0, (9,), 1), ("a", 0, (1, 2, 3), 1)], running=3)
    assert "the pass stopped at slot 1" in _fires(lambda: OneAPass(k=2), three, "INV-26")
    _holds(lambda: create("k-lpm", k=2), three)


def test_d2lpm_credit_fires_when_the_dispatcher_ignores_credit():
    # a's first request makes worker 0 hold prefix (1, 2, 3) and spends a's credit there
    # (Q_w = 3), so its next request (same prefix) must go to worker 1
    inst = _inst([("a", 0, (1, 2, 3), 1), ("a", 0, (1, 2, 3, 4), 1), ("a", 0, (1, 2, 3, 5), 1)])
    with pytest.raises(RuleViolation, match=r"^INV-27: select\('r1' of 'a'.*no credit"):
        simulate_cluster(inst, "fcfs", RuleCheckingDispatcher(Bk.D2LPMIgnoresCredit(3.0)), workers=2)
    ct = simulate_cluster(inst, "fcfs", RuleCheckingDispatcher(D2LPMDispatcher(3.0)), workers=2)
    assert ct.dispatch == {"r0": 0, "r1": 1, "r2": 0}  # r2: refill, both hold the prefix, tie -> 0


def test_d2lpm_rules_see_a_missing_finish_charge_and_an_early_refill():
    class NoFinishCharge(D2LPMDispatcher):
        def on_finish(self, request, worker, now):
            self.s[worker] -= 1

    class RefillEveryTime(D2LPMDispatcher):
        def select(self, request, keys, now, loads):
            if request.client in self.q:
                self.q[request.client] = [x + self.q_w for x in self.q[request.client]]
                self.refills[request.client] += 1
            return super().select(request, keys, now, loads)

    inst = _inst([("a", 0, (1,), 1), ("a", 5, (2,), 1)])
    with pytest.raises(RuleViolation, match=r"^INV-27: finish of 'r0'"):
        simulate_cluster(inst, "fcfs", RuleCheckingDispatcher(NoFinishCharge(10.0)), workers=2)
    with pytest.raises(RuleViolation, match=r"^INV-27: select\('r1'.*refill round 1 of 1 while the client has credit"):
        simulate_cluster(inst, "fcfs", RuleCheckingDispatcher(RefillEveryTime(10.0)), workers=2)


# ---------------------------------------------------------------------------------------------
# a hypothesis search finds each broken policy by itself, and so does its lockstep oracle


BROKEN = [
    ("vtc", Bk.VTCArtifactLift, {}, "INV-23"),
    ("vtc", Bk.VTCLiftsNewcomers, {}, "INV-23"),
    ("vtc", Bk.VTCArtifactDoubleCharge, {}, "INV-30"),
    ("dlpm", Bk.DLPMZeroIsCredit, {"quantum": 20}, "INV-24"),
    ("dlpm", Bk.DLPMStopsAtMisfit, {"quantum": 20}, "INV-24"),
    ("dlpm", Bk.DLPMRefillAtStepEnd, {"quantum": 20}, "INV-25"),
    ("dlpm", Bk.DLPMEagerRefill, {"quantum": 20}, "INV-25"),
    ("dlpm", Bk.DLPMNeverForgets, {"quantum": 20}, "INV-29"),
    ("k-lpm", Bk.KLPMCycleResets, {"k": 2}, "INV-26"),
]

SEARCH = settings(
    max_examples=200, derandomize=True, database=None, phases=[Phase.generate],
    suppress_health_check=list(HealthCheck), print_blob=False, deadline=None,
)


@pytest.mark.parametrize("family, cls, params, inv", BROKEN, ids=[b[1].__name__ for b in BROKEN])
def test_search_finds_each_broken_policy_by_its_rule_and_by_its_oracle(family, cls, params, inv):
    @SEARCH
    @given(inst=lockstep_instances())
    def by_rule(inst):
        try:
            simulate(inst, RuleChecker(cls(**params)))
        except IllegalDecisionError:
            pass  # the broken policy idled the server: INV-1's business, not this rule's

    with pytest.raises(RuleViolation) as err:
        by_rule()
    assert str(err.value).startswith(inv), str(err.value)

    @SEARCH
    @given(inst=lockstep_instances())
    def by_oracle(inst):
        simulate(inst, LockstepPolicy(cls(**params), POLICY_ORACLES[family](**params)))

    with pytest.raises(Divergence):
        by_oracle()


def test_search_finds_the_dispatcher_that_ignores_credit():
    @SEARCH
    @given(inst=lockstep_instances(), workers=st.integers(2, 3))
    def by_rule(inst, workers):
        simulate_cluster(inst, "fcfs", RuleCheckingDispatcher(Bk.D2LPMIgnoresCredit(5.0)), workers=workers)

    with pytest.raises(RuleViolation, match="^INV-27"):
        by_rule()

    @SEARCH
    @given(inst=lockstep_instances(), workers=st.integers(2, 3))
    def by_oracle(inst, workers):
        disp = LockstepDispatcher(Bk.D2LPMIgnoresCredit(5.0, record=True), DISPATCHER_ORACLES["d2lpm"](5.0))
        simulate_cluster(inst, "fcfs", disp, workers=workers)

    with pytest.raises(Divergence):
        by_oracle()
