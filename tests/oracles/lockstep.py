"""Drive a reference policy (or dispatcher) and its oracle on the same engine state, one call at
a time, and stop at the first difference.

:class:`LockstepPolicy` is a :class:`~prefixsched.reference.policies.base.Policy` that the engine
runs in place of the reference. Every engine call goes to the reference and then to the oracle
with the *same* snapshot, before the engine applies anything (``decide`` returns the reference's
decision, which the engine then validates and applies):

- ``on_arrival``: both update their counters; their ``state()`` must be equal;
- ``decide``: the admitted ids (in order) must be equal, then the states;
- ``on_step_end``: the states must be equal.

So every decision and every counter (deficits, refill rounds, per-client refills, virtual
counters, the last leaver, lifts, the k-LPM cycle position, LPM's fallback count) is compared
after every event. :class:`LockstepDispatcher` does the same for a cluster dispatcher
(per-(client, worker) deficits, refill rounds, loads ``s_w`` (also against the cluster's own
``loads``), eviction events, and the longest-match set ``G`` of every dispatch).

The first difference raises :class:`Divergence` (an ``AssertionError``) naming the event, the
step, the time and the differing fields; the engine lets it through, so hypothesis shrinks the
instance that produced it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefixsched.reference.cluster import Dispatcher
from prefixsched.reference.policies.base import Decision, FinishedInfo, Policy, Snapshot
from prefixsched.theory.model import Instance, Request


class Delegate:
    """``params()``, ``state()`` and ``describe()`` of the wrapped ``self.inner``, so that a wrapper
    leaves the trace (and a cluster's ``meta``) as the wrapped policy or dispatcher writes it."""

    inner: Any

    def params(self) -> dict[str, Any]:
        return self.inner.params()

    def state(self) -> dict[str, Any]:
        return self.inner.state()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


class Divergence(AssertionError):
    """The reference and its oracle disagree (message: where, and what differs)."""


def state_diff(ref: Mapping[str, Any], oracle: Mapping[str, Any], keys: Sequence[str] | None = None) -> list[str]:
    """Readable differences between two ``state()`` dicts (only ``keys`` if given)."""
    out = []
    for k in keys if keys is not None else sorted(set(ref) | set(oracle)):
        a, b = ref.get(k, "<missing>"), oracle.get(k, "<missing>")
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for c in sorted(set(a) | set(b), key=str):
                if a.get(c, "<missing>") != b.get(c, "<missing>"):
                    out.append(f"{k}[{c!r}]: reference {a.get(c, '<missing>')!r}, oracle {b.get(c, '<missing>')!r}")
        else:
            out.append(f"{k}: reference {a!r}, oracle {b!r}")
    return out


class LockstepPolicy(Delegate, Policy):
    """Runs ``ref`` (a Policy) and ``oracle`` side by side (module docstring).

    ``events`` counts the engine calls compared, ``decisions`` the ``decide`` calls and
    ``admitted`` the requests admitted (so a test can require that something was compared).
    """

    def __init__(self, ref: Policy, oracle: Any) -> None:
        self.ref = self.inner = ref
        self.oracle = oracle
        self.name = ref.name  # type: ignore[misc]
        self.events = 0
        self.decisions = 0
        self.admitted = 0

    def _compare(self, where: str) -> None:
        self.events += 1
        a, b = self.ref.state(), self.oracle.state()
        if a != b:
            raise Divergence(f"{where}: counters differ: " + "; ".join(state_diff(a, b)))

    def on_arrival(self, request: Request, now: float, snap: Snapshot) -> None:
        self.ref.on_arrival(request, now, snap)
        self.oracle.on_arrival(request, now, snap)
        self._compare(f"step {snap.step}, t={now}: on_arrival({request.id!r} of {request.client!r})")

    def decide(self, snap: Snapshot) -> Decision:
        d = self.ref.decide(snap)
        o = tuple(self.oracle.decide(snap))
        where = f"step {snap.step}, t={snap.now}: decide"
        self.decisions += 1
        if tuple(d.admit) != o:
            raise Divergence(f"{where}: reference admits {list(d.admit)}, oracle admits {list(o)}")
        self.admitted += len(o)
        self._compare(where)
        return d

    def on_step_end(self, decoded: Mapping[str, int], finished: Sequence[FinishedInfo], snap: Snapshot) -> None:
        self.ref.on_step_end(decoded, finished, snap)
        self.oracle.on_step_end(decoded, finished, snap)
        fin = [f.id for f in finished]
        self._compare(f"step {snap.step}, t={snap.now}: on_step_end(decoded={dict(decoded)}, finished={fin})")


class LockstepDispatcher(Delegate, Dispatcher):
    """Runs a reference :class:`Dispatcher` and a dispatcher oracle side by side. The reference
    must log its dispatches (``record=True``, for the ``G`` comparison)."""

    name = "lockstep"

    #: state keys compared (the reference's ``tree_nodes`` is representation, not Algorithm 2)
    KEYS = ("deficits", "loads", "refills", "evict_events")

    def __init__(self, ref: Dispatcher, oracle: Any) -> None:
        self.ref = self.inner = ref
        self.oracle = oracle
        self.events = 0
        self.dispatches = 0
        self.evictions = 0

    def _compare(self, where: str) -> None:
        self.events += 1
        a, b = self.ref.state(), self.oracle.state()
        diff = state_diff(a, b, self.KEYS)
        if diff:
            raise Divergence(f"{where}: counters differ: " + "; ".join(diff))

    def bind(self, instance: Instance, workers: int) -> None:
        super().bind(instance, workers)
        self.ref.bind(instance, workers)
        self.oracle.bind(instance, workers)
        self._compare("bind")

    def select(self, request: Request, keys: tuple, now: float, loads: Sequence[int]) -> int:
        where = f"t={now}: select({request.id!r} of {request.client!r})"
        if list(loads) != self.oracle.state()["loads"]:
            raise Divergence(f"{where}: cluster loads {list(loads)}, oracle s_w {self.oracle.state()['loads']}")
        a = self.ref.select(request, keys, now, loads)
        b = self.oracle.select(request, keys, now, loads)
        if a != b:
            raise Divergence(f"{where}: reference picks worker {a}, oracle picks worker {b}")
        log = getattr(self.ref, "log", None)
        if log:
            got = (log[-1]["match_pages"], log[-1]["G"])
            want = self.oracle.last_match
            if got != (want[0], list(want[1])):
                raise Divergence(f"{where}: reference (match pages, G) = {got}, oracle {want}")
        self._compare(where)
        self.dispatches += 1
        return a

    def on_dispatch(self, request: Request, keys: tuple, worker: int, now: float) -> None:
        self.ref.on_dispatch(request, keys, worker, now)
        self.oracle.on_dispatch(request, keys, worker, now)
        self._compare(f"t={now}: on_dispatch({request.id!r} -> {worker})")

    def on_finish(self, request: Request, worker: int, now: float) -> None:
        self.ref.on_finish(request, worker, now)
        self.oracle.on_finish(request, worker, now)
        self._compare(f"t={now}: on_finish({request.id!r} on {worker})")

    def on_evict(self, worker: int, keys: tuple, start_pages: int, now: float) -> None:
        self.ref.on_evict(worker, keys, start_pages, now)
        self.oracle.on_evict(worker, keys, start_pages, now)
        self.evictions += 1
        self._compare(f"t={now}: on_evict(worker {worker}, {len(keys) - start_pages} pages)")
