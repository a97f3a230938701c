"""DLPM Thm A.1: the exact identity W = K*Q_u + q(t1) - q(t2) gives the printed max(Q_u, U) from a
join or rejoin (q(t1) = 0) and Q_u + U in general (papers/dlpm/bounds_findings.md, finding 1)."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from prefixsched.reference.policies import create
from prefixsched.reference.simulator import simulate
from prefixsched.reference.workloads import make_workload
from prefixsched.testing.strategies import backlogged_instances, instances
from prefixsched.theory import bounds as B
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request


def test_the_printed_bound_holds_from_a_join_where_it_fails_in_general():
    # the shrunk counterexample of the printed bound: c1 gets W = 18 with K = 0 over (2, 4]
    spec = [("c0", (1, 2), 1), ("c1", (1, 2), 4), ("c1", (1, 2), 4), ("c1", (1, 2), 4)]
    inst = Instance(tuple(Request(f"r{i}", c, 0.0, p, o) for i, (c, p, o) in enumerate(spec)), CostModel.token_units(),
                    Limits(kv_capacity_tokens=7, max_prefill_tokens=1, max_running_requests=1))
    U = B.dlpm_U(B.max_input_tokens(inst), B.batch_output_capacity(inst))
    t = simulate(inst, create("dlpm", quantum=U), record_states=True, engine="ideal")
    assert not B.check_dlpm_thm_a1(inst, t, U).holds
    join = B.check_dlpm_thm_a1_from_join(inst, t, U)
    # c1 joins at 0 (c0 is admitted at once: no backlogged period); from there the bound is attained
    assert join.holds and join.checked == 1 and join.worst == join.bound == U
    # a realistic workload: s1 at Q_u = 8000 breaks the printed bound, not from its joins
    w = make_workload("s1", clients=4, n_requests=600, cost_model=CostModel())
    big = max(r.prompt_len + r.output_len for r in w.requests)
    w = dataclasses.replace(w, limits=dataclasses.replace(w.limits, max_running_requests=16, kv_capacity_tokens=4 * big))
    t = simulate(w, create("dlpm", quantum=8000.0), record_states=True, engine="ideal")
    assert not B.check_dlpm_thm_a1(w, t, 8000.0).holds
    rep = B.check_dlpm_thm_a1_from_join(w, t, 8000.0)
    assert rep.holds and rep.checked > 0 and rep.worst > 0
    assert B.check_dlpm_thm_a1(w, t, 8000.0, printed=False).holds


@given(inst=st.one_of(instances(max_clients=3, max_requests_per_client=6), backlogged_instances()),
       f=st.sampled_from([0.25, 1.0, 4.0]))
def test_from_a_join_the_printed_bound_always_holds(inst, f):
    U = B.dlpm_U(B.max_input_tokens(inst), B.batch_output_capacity(inst))
    t = simulate(inst, create("dlpm", quantum=f * U), record_states=True, engine="ideal")
    rep = B.check_dlpm_thm_a1_from_join(inst, t, f * U)
    assert rep.holds, str(rep)
