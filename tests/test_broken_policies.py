"""Each deliberately broken policy or cache makes its checker fire (BLIS's pathological
policies): a detector that never fires proves nothing. Hand-made instances make each firing
deterministic; one check_policy run per class shows the suite finds it by itself."""

from __future__ import annotations

import pytest

from prefixsched.reference.engine import core as sim_module
from prefixsched.reference.policies import create
from prefixsched.reference.radix_cache import RadixCache
from prefixsched.testing import check_policy, instances, run_invariants
from prefixsched.testing import broken as Bk
from prefixsched.testing.suite import PolicyReport
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request

TOK = CostModel.token_units()


def inst_of(spec, kv=6, running=1, prefill=1):
    reqs = tuple(Request(f"r{i}", c, float(a), tuple(p), o) for i, (c, a, p, o) in enumerate(spec))
    return Instance(reqs, TOK, Limits(kv_capacity_tokens=kv, max_prefill_tokens=prefill, max_running_requests=running))


def fired(outcomes, inv):
    return inv in outcomes and outcomes[inv].violation is not None


# ---------------------------------------------------------------------------------------------
# one hand-made instance per bug


def test_reverse_order_starves_the_oldest_request():
    inst = inst_of([("a", 0, (100 + i,), 1) for i in range(6)], kv=3)
    assert fired(run_invariants(inst, Bk.ReverseOrder, starvation_k=2), "INV-6")
    honest = run_invariants(inst, lambda: create("fcfs"), starvation_k=1)
    assert honest["INV-6"].violation is None and honest["INV-6"].checked == 6


def test_dlpm_that_never_refills_stops_making_progress():
    inst = inst_of([("a", 0, (1,), 4), ("a", 0, (2,), 4)])
    out = run_invariants(inst, lambda: Bk.DLPMNeverRefills(quantum=1.0))
    assert fired(out, "INV-1") and "IllegalDecisionError" in out["INV-1"].violation
    assert run_invariants(inst, lambda: create("dlpm", quantum=1.0))["INV-1"].violation is None


def test_dlpm_that_refills_eagerly_leaves_the_deficit_range():
    inst = inst_of([("c0", 0, (10000,), 4), ("c0", 0, (10000,), 4)], running=2)
    out = run_invariants(inst, lambda: Bk.DLPMEagerRefill(quantum=8.0))
    assert fired(out, "INV-7")
    assert run_invariants(inst, lambda: create("dlpm", quantum=8.0))["INV-7"].violation is None


def test_vtc_without_the_lift_lets_a_late_joiner_monopolise():
    flood = [("c0", 0, (1,), 4) for _ in range(40)]
    late = [("c1", 20, (2,), 4) for _ in range(6)]
    inst = inst_of(flood + late)
    out = run_invariants(inst, Bk.VTCNoLift)
    assert fired(out, "INV-9") and fired(out, "INV-12")
    honest = run_invariants(inst, lambda: create("vtc"))
    assert honest["INV-9"].violation is None and honest["INV-12"].violation is None
    assert honest["INV-12"].checked > 0


def test_lazy_batcher_idles_while_a_request_waits():
    inst = inst_of([("a", 0, (1,), 1), ("a", 5, (2,), 1)], running=2, prefill=2)
    out = run_invariants(inst, Bk.LazyBatcher)
    assert not fired(out, "INV-1") and fired(out, "INV-4")
    lone = inst_of([("a", 0, (1,), 1)])
    assert fired(run_invariants(lone, Bk.LazyBatcher), "INV-1")
    assert run_invariants(inst, lambda: create("fcfs"))["INV-4"].violation is None


def test_clairvoyant_policy_breaks_the_online_invariant():
    inst = inst_of([("a", 0, (1,), 1), ("b", 0, (2,), 1), ("b", 10, (3,), 1), ("b", 10, (4,), 1)])
    out = run_invariants(inst, Bk.Clairvoyant)  # gets the instance it runs on, cut or not
    assert fired(out, "INV-13")
    assert run_invariants(inst, lambda: create("fcfs"))["INV-13"].violation is None


# ---------------------------------------------------------------------------------------------
# the cache that evicts locked nodes


def _pinned_cache(cls):
    cache = cls(capacity_tokens=10, page_size=1)
    cache.insert((1, 2, 3))
    cache.insert((7, 8))
    node = cache.match_prefix((1, 2, 3)).node
    cache.inc_lock_ref(node)
    return cache, node


def test_lock_ignoring_cache_evicts_a_pinned_node():
    cache, node = _pinned_cache(Bk.LockIgnoringCache)
    cache.evict(10)
    assert Bk.check_lock_safety(cache, [node])  # fires
    good, gnode = _pinned_cache(RadixCache)
    good.evict(10)
    assert Bk.check_lock_safety(good, [gnode]) == []
    assert gnode.alive and good.total_tokens == 3  # only the unpinned (7, 8) went


def test_lock_ignoring_cache_inside_the_simulator_breaks_the_run(monkeypatch):
    # a later request is admitted while earlier finished sequences fill the pool: the engine pins
    # its matched prefix and evicts; the broken cache evicts the pinned node, and the engine's
    # later dec_lock_ref on it fails (instance found and shrunk by hypothesis)
    inst = inst_of([("c0", 0, (10000,), 4), ("c0", 0, (10000, 100000), 4), ("c0", 0, (10000,), 4)], kv=6)
    honest = run_invariants(inst, lambda: create("fcfs"), determinism=False, online=False)
    assert all(o.violation is None for o in honest.values())
    monkeypatch.setattr(sim_module, "RadixCache", Bk.LockIgnoringCache)
    out = run_invariants(inst, lambda: create("fcfs"), determinism=False, online=False)
    assert fired(out, "INV-1") and "LockRefError" in out["INV-1"].violation


# ---------------------------------------------------------------------------------------------
# the suite finds each bug by itself (generated instances), and checks something


@pytest.mark.parametrize(
    "cls, kwargs, expect",
    [
        (Bk.ReverseOrder, {"starvation_k": 4}, {"INV-6"}),
        (Bk.DLPMNeverRefills, {"params": {"quantum": 4.0}}, {"INV-1", "INV-4"}),
        (Bk.DLPMEagerRefill, {"params": {"quantum": 8.0}}, {"INV-7"}),
        (Bk.VTCNoLift, {"strategy": instances(min_clients=2, kinds=("flooder", "late-joiner"))}, {"INV-9", "INV-12"}),
        (Bk.LazyBatcher, {}, {"INV-1", "INV-4"}),
    ],
)
def test_check_policy_finds_each_broken_policy(cls, kwargs, expect):
    rep = check_policy(cls, max_examples=25, seed=0, shrink=False, determinism=False, online=False, **kwargs)
    assert set(rep.violated) & expect, str(rep)
    inv = sorted(set(rep.violated) & expect)[0]
    assert rep.results[inv].counterexample is not None and "VIOLATED" in str(rep)


def test_check_policy_shrinks_the_counterexample():
    rep = check_policy(Bk.DLPMEagerRefill, params={"quantum": 8.0}, max_examples=20, seed=0,
                       determinism=False, online=False)
    r = rep.results["INV-7"]
    assert r.shrunk and len(r.counterexample["requests"]) <= 2


def test_a_suite_that_checked_nothing_is_not_a_pass():
    rep = check_policy("fcfs", max_examples=10, seed=0)
    assert rep.ok and rep.total_checks > 0
    assert all(r.checks > 0 and not r.vacuous for r in rep.results.values())
    # single-client instances: the VTC pair bound has no premise, and the report says so
    one = check_policy("vtc", max_examples=5, seed=0, strategy=instances(max_clients=1), determinism=False)
    assert one.results["INV-12"].vacuous and "vacuous" in str(one)
    empty = PolicyReport(policy={"name": "x"}, examples=0)
    assert empty.total_checks == 0


def test_broken_policies_are_not_registered():
    from prefixsched.reference.policies import available

    assert not any(n.startswith("broken") for n in available())
