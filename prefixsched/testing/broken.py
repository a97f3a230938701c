"""Deliberately broken policies and cache: each exists only to prove that a checker fires.

Modelled on BLIS's pathological policies (``reverse-priority``, ``always-busiest``; spec
style_anchors.md §1.4): a detector that never fires on a known-bad subject proves nothing. None of
these classes is registered in the policy registry (they never show up on the CLI); tests import
them from here.

=========================  ========================================  =====================
class                      the bug                                   the checker that fires
=========================  ========================================  =====================
:class:`ReverseOrder`      admits the *newest* waiting request first INV-6 (no starvation)
:class:`DLPMNeverRefills`  DLPM without CHECK_REFILL (one grant of   INV-1 (progress) /
                           ``Q_u`` at join, never refilled)          INV-4 (work cons.)
:class:`DLPMEagerRefill`   refills every pass and also tops up       INV-7 (deficit range)
                           clients with ``q > 0`` (banks credit)
:class:`VTCNoLift`         VTC that forgets the counter lift         INV-9 (counter spread),
                           (a (re)joining client keeps its old,      INV-12 (two-backlogged)
                           low counter)
:class:`LazyBatcher`       never starts an idle server with a        INV-4 (work cons.) /
                           single waiting request                    INV-1 (progress)
:class:`Clairvoyant`       orders by the clients' future arrivals    INV-13 (online)
:class:`LockIgnoringCache` ``evict`` strips lock refs first, so it   ``check_lock_safety``
                           evicts nodes pinned by running requests   (INV-14); in the
                                                                     simulator INV-1
:class:`VTCArtifactLift`   no lift when the queue is empty (the VTC  INV-23 (VTC lift)
                           artifact's rule; the paper lifts to the
                           last leaver's counter)
:class:`VTCLiftsNewcomers` lifts only clients seen for the first     INV-23 (VTC lift)
                           time; a returning client keeps its old,
                           lower counter
:class:`VTCArtifactDoubleCharge` in a step in which a request        INV-30 (VTC charges)
                           finishes, every running request's
                           output is charged twice (the artifact's
                           ``update_counter`` quirk)
:class:`DLPMZeroIsCredit`  ``q >= 0`` counts as credit: a client at  INV-24 (credit gate)
                           ``q = 0`` (a newcomer) is admitted
                           without a refill round
:class:`DLPMStopsAtMisfit` the pass stops at the first credited      INV-24 (credit gate)
                           request that does not fit (SGLang's
                           ``PrefillAdder`` habit), skipping
                           credited requests that fit
:class:`DLPMRefillAtStepEnd` CHECK_REFILL moved out of the pass to     INV-25 (refill rule)
                           the end of the step: a pass with no
                           queued credit admits nothing
:class:`DLPMNeverForgets`  a drained client stays in the active     INV-29 (active list)
                           list: its debt or credit carries over to
                           its next backlog period
:class:`KLPMCycleResets`   the k-LPM cycle position is reset to the  INV-26 (k-LPM cycle)
                           oldest slot at every pass
:class:`D2LPMIgnoresCredit` dispatcher sends a request to the        INV-27 (D2LPM credit)
                           prefix-holding worker even where the
                           client has no credit
=========================  ========================================  =====================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import ClassVar

from prefixsched.reference.cluster import D2LPMDispatcher
from prefixsched.reference.policies.base import Decision, FinishedInfo, Policy, Snapshot
from prefixsched.reference.policies.dlpm import DLPM
from prefixsched.reference.policies.klpm import KLPM
from prefixsched.reference.policies.vtc import VTC
from prefixsched.reference.radix_cache import RadixCache, TreeNode
from prefixsched.theory.model import Instance, Request

__all__ = [
    "ReverseOrder",
    "DLPMNeverRefills",
    "DLPMEagerRefill",
    "VTCNoLift",
    "LazyBatcher",
    "Clairvoyant",
    "LockIgnoringCache",
    "check_lock_safety",
    "VTCArtifactLift",
    "VTCLiftsNewcomers",
    "VTCArtifactDoubleCharge",
    "DLPMZeroIsCredit",
    "DLPMStopsAtMisfit",
    "DLPMRefillAtStepEnd",
    "DLPMNeverForgets",
    "KLPMCycleResets",
    "D2LPMIgnoresCredit",
]


class ReverseOrder(Policy):
    """Admits waiting requests newest first (reverse FCFS), skipping ones that do not fit.

    Starves the oldest request while newer ones keep arriving: ``INV-6`` fires for any k.
    """

    name: ClassVar[str] = "broken-reverse"
    description: ClassVar[str] = "BROKEN: newest request first"

    def decide(self, snap: Snapshot) -> Decision:
        b = snap.batch()
        for e in reversed(list(snap.fcfs())):
            if b.full:
                break
            b.try_add(e)
        return Decision(tuple(b.admitted))


class DLPMNeverRefills(DLPM):
    """DLPM whose CHECK_REFILL never runs: a client gets ``Q_u`` once when it joins and is never
    refilled, so once every waiting client is out of credit nothing is admitted again.

    The simulator stops the run (``IllegalDecisionError``: the server idles forever), ``INV-1``
    fires; with later arrivals the idle gap fires ``INV-4``.
    """

    name: ClassVar[str] = "broken-dlpm-never-refills"
    description: ClassVar[str] = "BROKEN: DLPM without refills"

    def on_arrival(self, request: Request, now: float, snap: Snapshot) -> None:
        u = request.client
        if u not in self.deficits:
            self.deficits[u] = self.quantum
            self.refills.setdefault(u, 0)

    def decide(self, snap: Snapshot) -> Decision:
        b = snap.batch()
        q = self.deficits
        w_e = snap.weights.w_e
        for e in snap.lpm():
            if b.full:
                break
            u = e.request.client
            if q[u] > 0 and b.try_add(e):
                q[u] -= w_e * e.extend_tokens
        return Decision(tuple(b.admitted))


class DLPMEagerRefill(DLPM):
    """DLPM that refills at the start of *every* scheduling pass and tops up *every* active
    client, also those with ``q > 0`` (the two guards of CHECK_REFILL dropped): credit is banked
    above ``Q_u``, so ``INV-7`` (``q in (-U, Q_u]``) fires."""

    name: ClassVar[str] = "broken-dlpm-eager-refill"
    description: ClassVar[str] = "BROKEN: DLPM refills everyone every pass"

    def _refill(self) -> None:
        self.rounds += 1
        for u in self.deficits:
            self.deficits[u] += self.quantum
            self.refills[u] += 1

    def decide(self, snap: Snapshot) -> Decision:
        self._refill()
        return super().decide(snap)


class VTCNoLift(VTC):
    """VTC without the counter lift (the paper's LCF ablation): a client that (re)joins the
    backlog keeps its old counter (0 for a new client), so a late joiner is served exclusively
    until it catches up. ``INV-9`` (counter spread among waiting clients) and, with enough
    backlog, ``INV-12`` fire."""

    name: ClassVar[str] = "broken-vtc-no-lift"
    description: ClassVar[str] = "BROKEN: VTC without the counter lift"

    def on_arrival(self, request: Request, now: float, snap: Snapshot) -> None:
        self.counters.setdefault(request.client, 0.0)


class LazyBatcher(Policy):
    """FCFS that refuses to start an idle server for a single waiting request (it waits for a
    second one to batch them): the server idles while a request waits (``INV-4``), and a lone
    last request is never served (``INV-1``)."""

    name: ClassVar[str] = "broken-lazy-batcher"
    description: ClassVar[str] = "BROKEN: idles while one request waits"

    def decide(self, snap: Snapshot) -> Decision:
        if snap.running_count() == 0 and snap.waiting_count() < 2:
            return Decision(())
        b = snap.batch()
        for e in snap.fcfs():
            if b.full or not b.try_add(e):
                break
        return Decision(tuple(b.admitted))


class Clairvoyant(Policy):
    """Reads the future: built with the whole instance, it serves first the clients with the most
    requests still to *arrive* (an oracle no online scheduler has). ``INV-13`` (online) fires:
    removing future requests changes earlier decisions."""

    name: ClassVar[str] = "broken-clairvoyant"
    description: ClassVar[str] = "BROKEN: peeks at future arrivals"

    def __init__(self, instance: Instance) -> None:
        self._arrivals = [(r.arrival, r.client) for r in instance.requests]

    def decide(self, snap: Snapshot) -> Decision:
        future: dict[str, int] = {}
        for t, c in self._arrivals:
            if t > snap.now:
                future[c] = future.get(c, 0) + 1
        b = snap.batch()
        order = sorted(snap.fcfs(), key=lambda e: -future.get(e.request.client, 0))
        for e in order:
            if b.full:
                break
            b.try_add(e)
        return Decision(tuple(b.admitted))


class LockIgnoringCache(RadixCache):
    """A radix cache whose :meth:`evict` first strips every lock ref, so it evicts nodes that
    running requests have pinned (SGLang's ``lock_ref`` exists precisely to forbid this).

    The unlocking goes through the public :meth:`dec_lock_ref`, so the tree's own accounting
    (``check_invariants``) stays consistent: only a checker that knows which nodes were pinned
    (:func:`check_lock_safety`) or a later ``dec_lock_ref`` by the pin holder (``LockRefError``)
    notices.
    """

    def evict(self, n_tokens: int) -> int:
        while True:
            locked = [x for x in self.iter_nodes() if x is not self.root and x.lock_ref > 0]
            if not locked:
                break
            # deepest pinned node first: dec_lock_ref on it unpins its whole path once
            x = max(locked, key=lambda node: node.depth)
            self.dec_lock_ref(x)
        return super().evict(n_tokens)


def check_lock_safety(cache: RadixCache, pinned: Iterable[TreeNode]) -> list[str]:
    """The lock-safety invariant (INV-14): every node a holder pinned with ``inc_lock_ref`` and
    has not released is still in the tree with ``lock_ref >= 1``.

    Returns one message per violation (empty list: holds).
    """
    out: list[str] = []
    for x in pinned:
        if not x.alive:
            out.append(f"pinned node {x.id} was evicted")
        elif x.lock_ref < 1:
            out.append(f"pinned node {x.id} has lock_ref {x.lock_ref}")
    return out



# ---------------------------------------------------------------------------------------------
# state-rule bugs (issue #13): each breaks one rule of a policy's counters, by a margin smaller
# than the fairness bounds' slack


class VTCArtifactLift(VTC):
    """VTC with the artifact's lift (vtc_fastswitch_preble.md §A.5): a client that joins an
    *empty* queue keeps its counter instead of being lifted to the last leaver's. ``INV-23``."""

    name: ClassVar[str] = "broken-vtc-artifact-lift"
    description: ClassVar[str] = "BROKEN: VTC without the last-leaver lift"

    def on_arrival(self, request: Request, now: float, snap: Snapshot) -> None:
        if snap.waiting_count() == 0:
            self.counters.setdefault(request.client, 0.0)
            return
        super().on_arrival(request, now, snap)


class VTCLiftsNewcomers(VTC):
    """VTC that lifts only a client it has never seen: a client returning to the backlog keeps
    its old counter, which may be far below the others' (the lift case the issue found
    untested). ``INV-23``."""

    name: ClassVar[str] = "broken-vtc-lifts-newcomers"
    description: ClassVar[str] = "BROKEN: VTC lifts only new clients"

    def on_arrival(self, request: Request, now: float, snap: Snapshot) -> None:
        if request.client in self.counters:
            return
        super().on_arrival(request, now, snap)


class VTCArtifactDoubleCharge(VTC):
    """VTC with the artifact's decode accounting (vtc_fastswitch_preble.md §A.5): ``update_counter``
    runs again in every step in which a request finishes, so each running request's output token
    of that step is charged twice. ``INV-30``."""

    name: ClassVar[str] = "broken-vtc-artifact-double-charge"
    description: ClassVar[str] = "BROKEN: VTC charges decode twice in steps with a finish"

    def on_step_end(self, decoded: Mapping[str, int], finished: Sequence[FinishedInfo], snap: Snapshot) -> None:
        super().on_step_end(decoded, finished, snap)
        if finished:
            super().on_step_end(decoded, finished, snap)


def _dlpm_pass(
    pol: DLPM, snap: Snapshot, *, credited: Callable[[float], bool], stop_at_misfit: bool, refill: bool
) -> Decision:
    """One literal DLPM pass (Algorithm 1 lines 5-11) with the credit test, the misfit rule and
    the in-pass CHECK_REFILL as parameters (the correct pass: ``q > 0``, skip, refill)."""
    b = snap.batch()
    q = pol.deficits
    w_e = snap.weights.w_e
    remaining = {u: snap.waiting_count(u) for u in snap.waiting_clients()}

    def n_credited() -> int:
        return sum(1 for v, k in remaining.items() if k > 0 and credited(q[v]))

    for e in snap.lpm():
        if b.full:
            break
        u = e.request.client
        if not credited(q[u]):
            if not refill or n_credited() > 0:
                continue
            while n_credited() == 0:
                pol._refill()
            if not credited(q[u]):
                continue
        if b.try_add(e):
            q[u] -= w_e * e.extend_tokens
            remaining[u] -= 1
        elif stop_at_misfit:
            break
    return Decision(tuple(b.admitted))


class DLPMZeroIsCredit(DLPM):
    """DLPM whose credit test is ``q >= 0`` instead of ``q > 0``: a client that joins with
    ``q = 0`` is admitted at once, ahead of the refill round it should wait for, while others
    still hold credit. ``INV-24``."""

    name: ClassVar[str] = "broken-dlpm-zero-is-credit"
    description: ClassVar[str] = "BROKEN: DLPM counts q = 0 as credit"

    def decide(self, snap: Snapshot) -> Decision:
        return _dlpm_pass(self, snap, credited=lambda x: x >= 0, stop_at_misfit=False, refill=True)


class DLPMStopsAtMisfit(DLPM):
    """DLPM whose pass stops at the first credited request that does not fit (SGLang's
    ``PrefillAdder`` stops there; DLPM §2 says a request that fits is never rejected): a credited
    client's smaller request further down the LPM order is left waiting. ``INV-24``."""

    name: ClassVar[str] = "broken-dlpm-stops-at-misfit"
    description: ClassVar[str] = "BROKEN: DLPM pass stops at the first misfit"

    def decide(self, snap: Snapshot) -> Decision:
        return _dlpm_pass(self, snap, credited=lambda x: x > 0, stop_at_misfit=True, refill=True)


class DLPMRefillAtStepEnd(DLPM):
    """DLPM with CHECK_REFILL moved out of the pass: the pass skips every client without credit,
    and the refill rounds run at the end of the step when no queued client has credit. A pass
    that starts without queued credit therefore admits nothing (the refill comes a step late;
    on an idle server the run stops). ``INV-25``."""

    name: ClassVar[str] = "broken-dlpm-refill-at-step-end"
    description: ClassVar[str] = "BROKEN: DLPM refills at the end of the step, not in the pass"

    def decide(self, snap: Snapshot) -> Decision:
        return _dlpm_pass(self, snap, credited=lambda x: x > 0, stop_at_misfit=False, refill=False)

    def on_step_end(self, decoded: Mapping[str, int], finished: Sequence[FinishedInfo], snap: Snapshot) -> None:
        super().on_step_end(decoded, finished, snap)
        waiting = [u for u in snap.waiting_clients() if u in self.deficits]
        while waiting and not any(self.deficits[u] > 0 for u in waiting):
            self._refill()


class DLPMNeverForgets(DLPM):
    """DLPM that never removes a client from its active list: a client that drained (nothing
    waiting, nothing running) keeps its deficit, debt or banked credit, into its next backlog
    period (Thm A.2 assumes ``q = 0`` on rejoin), and is refilled while absent. ``INV-29``."""

    name: ClassVar[str] = "broken-dlpm-never-forgets"
    description: ClassVar[str] = "BROKEN: DLPM keeps drained clients in the active list"

    def on_step_end(self, decoded: Mapping[str, int], finished: Sequence[FinishedInfo], snap: Snapshot) -> None:
        w_q = snap.weights.w_q
        for u, k in decoded.items():
            self.deficits[u] -= w_q * k


class KLPMCycleResets(KLPM):
    """k-LPM whose cycle position lives in the pass (reset to the oldest-request slot at every
    ``decide``): with one admission per pass it degenerates to FCFS, the opposite of
    starvation, so ``INV-6`` cannot see it. ``INV-26``."""

    name: ClassVar[str] = "broken-k-lpm-cycle-resets"
    description: ClassVar[str] = "BROKEN: k-LPM restarts its cycle every pass"

    def decide(self, snap: Snapshot) -> Decision:
        self._pos = 0
        return super().decide(snap)


class D2LPMIgnoresCredit(D2LPMDispatcher):
    """D²LPM dispatcher that puts locality before credit: a request goes to the least-loaded
    worker holding its longest prefix even where its client has no credit left (``G`` instead of
    ``G ∩ G_avail``; Algorithm 2 line 5), which is Thm A.5's unfairness at any ``Q_w``.
    ``INV-27``."""

    name = "broken-d2lpm-ignores-credit"
    description = "BROKEN: D2LPM prefers locality over per-worker credit"

    def select(self, request: Request, keys: tuple, now: float, loads: Sequence[int]) -> int:
        w = super().select(request, keys, now, loads)  # refills as Algorithm 2 does
        _, G = self.tree.longest_match_workers(keys)
        holders = [x for x in range(self.workers) if G >> x & 1]
        if not holders:
            return w
        return min(holders, key=lambda x: (self.s[x], x))
