"""Every policy against its literal oracle, in lockstep (issue #13; INV-28).

On hypothesis-generated instances (:func:`~prefixsched.testing.strategies.lockstep_instances`:
shared-prefix trees, mixed-rate, flooding, long-prompt, late-joining and rejoining clients,
binding KV limits) the reference simulator runs a :class:`~oracles.lockstep.LockstepPolicy`:
the reference policy and its oracle (``tests/oracles/``) see every engine call with the same
snapshot, and after every arrival, every decision and every step end their decisions and all
their counters must be equal. The D²LPM test does the same for the dispatcher (and for every
worker's local policy) inside the cluster simulator.

A failure is the *first* divergence of the shrunk instance: the message names the event, the
step and the differing counters, and the instance is printed as JSON (hypothesis ``note``).
Examples: four times the active hypothesis profile's ``max_examples`` (200 under ``ci``, 4000
under ``deep``): one example is a few milliseconds.
"""

from __future__ import annotations

import dataclasses
import functools

import json
import math
from typing import Any

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from oracles import DISPATCHER_ORACLES, POLICY_ORACLES
from oracles.lockstep import Divergence, LockstepDispatcher, LockstepPolicy
from prefixsched.reference.cluster import D2LPMDispatcher, simulate_cluster as _simulate_cluster
from prefixsched.reference.policies import create
from prefixsched.reference.policies.base import Policy
from prefixsched.reference.simulator import simulate as _simulate
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

#: (registry name, constructor parameters) per family; ``None`` = the registry's defaults
#: (``create(name)`` with no parameter, the oracle with its own defaults), so that a changed
#: default is a divergence too.
SPECS: dict[str, list[dict[str, Any] | None]] = {
    "fcfs": [None],
    "lpm": [None, {"fcfs_fallback": 0}, {"fcfs_fallback": 2}, {"fcfs_fallback": 5}],
    "k-lpm": [None, {"k": 1}, {"k": 3}, {"k": 4}, {"k": "inf"}],
    "vtc": [None, {"charge": "extend"}, {"weights": {"c0": 2.0, "c2": 0.5}}, {"charge": "extend", "weights": {"c1": 3.0}}],
    "dlpm": [
        None,
        {"quantum": 1},
        {"quantum": 3},
        {"quantum": 8},
        {"quantum": 20},
        {"quantum": 60},
        {"quantum": 10, "weights": {"c1": 3.0, "c3": 0.5}},
    ],
}


#: four times the profile's count: the examples are cheap and the oracles are the point
LOCKSTEP = settings(max_examples=4 * settings.default.max_examples)


def pair(name: str, params: dict[str, Any] | None) -> LockstepPolicy:
    ref = create(name) if params is None else create(name, **params)
    oracle = POLICY_ORACLES[name]() if params is None else POLICY_ORACLES[name](**params)
    return LockstepPolicy(ref, oracle)


def _note(inst: Instance, label: str) -> None:
    note(f"policy: {label}")
    note("instance: " + json.dumps(inst.to_dict(), sort_keys=True, separators=(",", ":")))


@pytest.mark.parametrize("name", sorted(SPECS))
@LOCKSTEP
@given(inst=lockstep_instances(), data=st.data())
def test_policy_equals_its_oracle_at_every_event(name, inst, data):
    params = data.draw(st.sampled_from(SPECS[name]), label="params")
    _note(inst, f"{name} {params}")
    lock = pair(name, params)
    simulate(inst, lock)
    assert lock.decisions > 0 and lock.admitted == len(inst.requests)
    assert lock.events >= len(inst.requests) + 2  # every arrival, at least one decision and one step end


@pytest.mark.parametrize("name", ["fcfs", "vtc", "dlpm", "k-lpm"])
@settings(max_examples=2 * settings.default.max_examples)
@given(inst=lockstep_instances(engine="sglang"), data=st.data())
def test_policy_equals_its_oracle_on_the_sglang_engine(name, inst, data):
    """The same oracles on the SGLang engine (chunked prefill, stop at the first misfit, SGLang's
    reservation): FCFS, VTC, DLPM and k-LPM decide only an order and their counters, so their
    oracles hold there too. LPM is left out: on this engine it carries SGLang's in-batch prefix
    de-prioritisation and its 128-request FCFS fallback, which the paper's oracle does not state.

    The KV pool is made large enough that nothing is ever retracted: a retracted request rejoins
    SGLang's waiting queue at its end, so after a retraction FCFS serves queue order, not arrival
    order (deep profile, found by this test), and the papers' oracles do not model retraction.
    ``max_prefill_tokens``, ``max_running_requests`` and chunking still bind."""
    roomy = sum(r.prompt_len + r.output_len + 2 * inst.limits.page_size for r in inst.requests)
    inst = dataclasses.replace(inst, limits=dataclasses.replace(inst.limits, kv_capacity_tokens=roomy))
    params = data.draw(st.sampled_from(SPECS[name]), label="params")
    _note(inst, f"{name} {params} (sglang engine)")
    lock = pair(name, params)
    _simulate(inst, lock, engine="sglang")
    assert lock.decisions > 0 and lock.admitted == len(inst.requests)


Q_W = [None, 1.0, 5.0, 20.0, 100.0, math.inf]
LOCALS = [("dlpm", {"quantum": 5}), ("dlpm", None), ("vtc", None), ("lpm", None), ("k-lpm", {"k": 2}), ("fcfs", None)]


@LOCKSTEP
@given(inst=lockstep_instances(), workers=st.integers(1, 3), q_w=st.sampled_from(Q_W), local=st.sampled_from(LOCALS))
def test_d2lpm_dispatcher_and_local_policies_equal_their_oracles(inst, workers, q_w, local):
    _note(inst, f"d2lpm q_w={q_w} workers={workers} local={local}")
    ref = D2LPMDispatcher(record=True) if q_w is None else D2LPMDispatcher(q_w, record=True)
    oracle = DISPATCHER_ORACLES["d2lpm"]() if q_w is None else DISPATCHER_ORACLES["d2lpm"](q_w)
    disp = LockstepDispatcher(ref, oracle)
    locks: list[LockstepPolicy] = []

    def make() -> Policy:
        locks.append(pair(*local))
        return locks[-1]

    ct = simulate_cluster(inst, make, disp, workers=workers)
    assert disp.dispatches == len(inst.requests)
    assert sum(lk.admitted for lk in locks) == len(inst.requests)
    assert disp.evictions == ct.meta["evict_events"]


# ---------------------------------------------------------------------------------------------
# the generator reaches the states the oracles are there for


def _observe(name: str, params: dict[str, Any] | None, inst: Instance) -> set[str]:
    """Run the lockstep pair and name the interesting situations it went through."""
    seen: set[str] = set()
    lock = pair(name, params)

    class Watch(Policy):
        name = lock.name

        def on_arrival(self, request, now, snap):
            u = request.client
            if snap.waiting_count(u) == 0 and snap.running_count(u) > 0:
                seen.add("rejoin while running")
            before = lock.ref.state()
            lock.on_arrival(request, now, snap)
            after = lock.ref.state()
            if after.get("lifts", 0) > before.get("lifts", 0):
                seen.add("lift, queue empty" if snap.waiting_count() == 0 else "lift, others waiting")

        def decide(self, snap):
            before = lock.ref.state()
            d = lock.decide(snap)
            after = lock.ref.state()
            if "rounds" in after:
                r = after["rounds"] - before["rounds"]
                if r >= 2:
                    seen.add("multi-round refill")
                if r and len(d.admit) and snap.waiting_count() > len(d.admit):
                    seen.add("refill mid-pass, requests left")
            if "cycles" in after and after["cycles"] > before["cycles"]:
                seen.add("k-lpm cycle wrapped")
            return d

        def on_step_end(self, decoded, finished, snap):
            before = lock.ref.state()
            lock.on_step_end(decoded, finished, snap)
            if "deficits" in before and len(lock.ref.state()["deficits"]) < len(before["deficits"]):
                seen.add("client left the active list")

    simulate(inst, Watch())
    return seen


def test_lockstep_instances_reach_the_interesting_states():
    seen: set[str] = set()

    @settings(max_examples=60, derandomize=True, database=None)
    @given(inst=lockstep_instances())
    def run(inst):
        seen.update(_observe("vtc", None, inst))
        seen.update(_observe("dlpm", {"quantum": 3}, inst))
        seen.update(_observe("k-lpm", {"k": 3}, inst))

    run()
    want = {
        "rejoin while running", "lift, queue empty", "lift, others waiting", "multi-round refill",
        "refill mid-pass, requests left", "k-lpm cycle wrapped", "client left the active list",
    }
    assert want <= seen, sorted(want - seen)


# ---------------------------------------------------------------------------------------------
# the lockstep harness fires: a policy that differs from its oracle is reported at the event


TOK = CostModel.token_units()


def _inst(spec, kv=20, running=2, prefill=20) -> Instance:
    reqs = tuple(Request(f"r{i}", c, float(a), tuple(p), o) for i, (c, a, p, o) in enumerate(spec))
    return Instance(reqs, TOK, Limits(kv_capacity_tokens=kv, max_prefill_tokens=prefill, max_running_requests=running))


def test_a_counter_difference_is_reported_with_the_event_and_the_counter():
    from prefixsched.reference.policies.dlpm import DLPM

    class HalfRefill(DLPM):  # refills Q_u / 2: same decisions at first, different counters
        def _refill(self):
            self.quantum /= 2
            try:
                super()._refill()
            finally:
                self.quantum *= 2

    inst = _inst([("a", 0, (1, 2, 3), 2), ("b", 0, (4, 5), 2)])
    lock = LockstepPolicy(HalfRefill(quantum=10), POLICY_ORACLES["dlpm"](quantum=10))
    with pytest.raises(Divergence, match=r"step 0, t=0\.0: decide: counters differ: deficits\['a'\]"):
        simulate(inst, lock)


def test_a_decision_difference_is_reported_before_the_engine_applies_it():
    from prefixsched.reference.policies.fcfs import FCFS

    class NewestFirst(FCFS):
        def decide(self, snap):
            b = snap.batch()
            for e in reversed(list(snap.fcfs())):
                b.try_add(e)
            return type(super().decide(snap))(tuple(b.admitted))

    inst = _inst([("a", 0, (1,), 1), ("b", 0, (2,), 1)], running=1)
    with pytest.raises(Divergence, match=r"reference admits \['r1'\], oracle admits \['r0'\]"):
        simulate(inst, LockstepPolicy(NewestFirst(), POLICY_ORACLES["fcfs"]()))


def test_a_dispatcher_difference_is_reported():
    class Lowest(D2LPMDispatcher):  # ignores the loads: always the lowest credited worker
        def select(self, request, keys, now, loads):
            super().select(request, keys, now, loads)
            q = self.q[request.client]
            return min(w for w in range(self.workers) if q[w] > 0)

    inst = _inst([("a", 0, (1,), 1), ("a", 0, (2,), 1), ("a", 0, (3,), 1)])
    disp = LockstepDispatcher(Lowest(100.0, record=True), DISPATCHER_ORACLES["d2lpm"](100.0))
    with pytest.raises(Divergence, match=r"select\('r1' of 'a'\): reference picks worker 0, oracle picks worker 1"):
        simulate_cluster(inst, "fcfs", disp, workers=2)
