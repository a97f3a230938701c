"""Property-based invariant tests: every registered policy inside the simulator.

The simulator has no step API, so each example runs a whole simulation on a hypothesis-generated
instance with ``record_states=True`` and the policy wrapped in
:class:`~prefixsched.testing.suite.RecordingPolicy`; the invariants are then checked on every
step (state log, decision log, trace). IDs refer to docs/invariants.md. Example counts come from
the hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefixsched.reference.policies import available, create
import functools

from prefixsched.reference.simulator import simulate as _simulate
from prefixsched.testing import check_policy, instances, run_invariants
from prefixsched.testing.strategies import backlogged_instances
from prefixsched.theory import bounds as B
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request

simulate = functools.partial(_simulate, engine="ideal")  # the papers' model these tests state

WORKLOADS = st.one_of(
    instances(max_clients=3, max_requests_per_client=6), backlogged_instances(max_requests_per_client=8)
)
GENERIC = ["INV-1", "INV-2", "INV-3", "INV-4", "INV-5"]


def _factory(name: str, inst: Instance, f: float):
    if name == "dlpm":
        U = B.dlpm_U(B.max_input_tokens(inst), B.batch_output_capacity(inst))
        return lambda: create("dlpm", quantum=f * U)
    return lambda: create(name)


def _assert_all_hold(outcomes):
    bad = {k: o.violation for k, o in outcomes.items() if o.violation is not None}
    assert not bad, bad


def test_every_builtin_policy_is_covered():
    names = set(available())
    assert {"fcfs", "lpm", "dfs-weight", "k-lpm", "vtc", "dlpm", "random"} <= names


@pytest.mark.parametrize("name", sorted(available()))
@given(inst=WORKLOADS, f=st.sampled_from([0.25, 1.0, 4.0]))
def test_registered_policy_keeps_every_invariant_on_every_step(name, inst, f):
    outcomes = run_invariants(inst, _factory(name, inst, f))
    assert set(GENERIC) <= set(outcomes)  # the generic invariants always ran
    _assert_all_hold(outcomes)


@given(inst=WORKLOADS, k=st.sampled_from([1, 2, 3, 5]))
def test_klpm_serves_the_oldest_request_within_every_k_picks(inst, k):
    outcomes = run_invariants(inst, lambda: create("k-lpm", k=k), determinism=False, online=False)
    assert "INV-6" in outcomes
    _assert_all_hold(outcomes)


@given(inst=WORKLOADS)
def test_fcfs_serves_the_oldest_request_every_pick(inst):
    outcomes = run_invariants(inst, lambda: create("fcfs"), starvation_k=1, determinism=False, online=False)
    assert outcomes["INV-6"].checked == len(inst.requests)
    _assert_all_hold(outcomes)


@given(inst=WORKLOADS, f=st.sampled_from([0.25, 0.5, 1.0, 2.0]))
def test_dlpm_deficits_and_accounting_on_every_step(inst, f):
    out = run_invariants(inst, _factory("dlpm", inst, f), determinism=False, online=False)
    assert {"INV-7", "INV-8", "INV-10", "INV-11"} <= set(out)
    _assert_all_hold(out)


@given(inst=WORKLOADS)
def test_vtc_counter_spread_on_every_step(inst):
    out = run_invariants(inst, lambda: create("vtc"), determinism=False, online=False)
    assert {"INV-9", "INV-12"} <= set(out)
    _assert_all_hold(out)


@given(inst=WORKLOADS, name=st.sampled_from(["fcfs", "lpm", "vtc", "dlpm", "k-lpm", "random", "dfs-weight"]))
def test_decisions_before_T_ignore_requests_arriving_after_T(name, inst):
    out = run_invariants(inst, _factory(name, inst, 1.0), determinism=False)
    if "INV-13" in out:
        assert out["INV-13"].violation is None, out["INV-13"].violation


def test_check_policy_on_a_builtin_reports_every_applicable_invariant():
    rep = check_policy("dlpm", params={"quantum": 6.0}, max_examples=15, seed=1)
    assert rep.ok, str(rep)
    assert {"INV-1", "INV-2", "INV-3", "INV-4", "INV-5", "INV-7", "INV-8", "INV-10", "INV-11"} <= set(rep.results)
    assert all(r.checks > 0 for r in rep.results.values())
    assert "holds" in str(rep)


def test_check_policy_is_deterministic_for_a_seed():
    a = check_policy("vtc", max_examples=8, seed=3)
    b = check_policy("vtc", max_examples=8, seed=3)
    assert str(a) == str(b)


@given(inst=instances())
def test_generated_instances_are_valid_and_feasible(inst):
    assert inst.requests == tuple(sorted(inst.requests, key=lambda r: r.arrival))
    need = max(r.prompt_len + r.output_len for r in inst.requests)
    assert inst.limits.kv_capacity_tokens >= need
    trace = simulate(inst, create("fcfs"))
    assert len(trace.requests) == len(inst.requests)


@pytest.mark.parametrize("limit", ["running", "kv"])
def test_generated_limits_bind_sometimes(limit):
    from hypothesis import Phase, find, settings

    def binds(inst):
        t = simulate(inst, create("fcfs"))
        if limit == "running":
            return inst.limits.max_running_requests >= 2 and t.meta["peak_running"] == inst.limits.max_running_requests
        # KV memory or the prefill budget binds: a request waited although a running slot was free
        return t.meta["peak_running"] < inst.limits.max_running_requests and any(
            r.admit > r.arrival for r in t.requests
        )

    found = find(instances(), binds, settings=settings(max_examples=300, database=None, phases=[Phase.generate]))
    assert binds(found)


def test_progress_when_kv_capacity_is_exactly_prompt_plus_output():
    """Regression: the simulator used to pin a request's whole matched prompt while claiming at
    most prompt_len - 1 cached tokens, so this instance (found by this suite) never finished."""
    reqs = (
        Request("r0", "c0", 0.0, (10000,), 4),
        Request("r1", "c0", 0.0, (10000,), 4),
    )
    inst = Instance(reqs, CostModel.token_units(), Limits(kv_capacity_tokens=5, max_prefill_tokens=1, max_running_requests=1))
    out = run_invariants(inst, lambda: create("fcfs"), determinism=False, online=False)
    assert out["INV-1"].violation is None, out["INV-1"].violation


@pytest.mark.slow
@given(inst=instances(max_clients=4, max_requests_per_client=10), f=st.sampled_from([0.25, 1.0]))
def test_slow_larger_instances_keep_every_invariant(inst, f):
    for name in ("fcfs", "lpm", "k-lpm", "vtc", "dlpm"):
        _assert_all_hold(run_invariants(inst, _factory(name, inst, f)))
