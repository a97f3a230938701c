"""The service-gap bound of VTC with preemption (prefixsched/theory/bounds.py::vtc_preemptive_bound):
the formula, its trace check, where it holds (its premises met by construction) and a pinned
instance where it breaks (premise A3 fails)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixsched.errors import InputError
from prefixsched.reference.engine.preemption import PreemptionConfig
from prefixsched.reference.engine.sglang import SGLangConfig
from prefixsched.reference.policies import create
from prefixsched.reference.simulator import simulate
from prefixsched.theory.bounds import check_vtc_preemptive_gap, switch_delay_steps, vtc_preemptive_bound
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request
from prefixsched.theory.schedule import check_trace

MODES = {"drop": PreemptionConfig(mode="drop"), "sync": PreemptionConfig(), "async": PreemptionConfig.fastswitch()}
EXACT = SGLangConfig(ignore_eos=True)


def test_formula_by_hand():
    # 2 * (max(margin, w_e L) + w_q * min(M, B (K + sigma)))
    assert vtc_preemptive_bound(100, 10_000, K=4, B=8, margin=0) == 2 * (100 + 2 * 32)
    assert vtc_preemptive_bound(100, 10_000, K=4, B=8, margin=500, sigma=2) == 2 * (500 + 2 * 48)
    assert vtc_preemptive_bound(100, 20, K=4, B=8, margin=0) == 2 * (100 + 2 * 20)  # capped by M
    # it grows with K and with the switch delay, and for K -> inf it is VTC's decode term again
    b = [vtc_preemptive_bound(1000, 480_000, K=k, B=256, margin=0) for k in (1, 4, 16, 64)]
    assert b == sorted(b)
    assert vtc_preemptive_bound(1000, 480_000, K=10**6, B=256, margin=0) == 2 * (1000 + 2 * 480_000)
    for bad in ({"K": -1}, {"B": 1.5}, {"sigma": -2}):
        kw = {"K": 1, "B": 1, "sigma": 0, **bad}
        with pytest.raises(InputError):
            vtc_preemptive_bound(1, 1, margin=0, **kw)


@st.composite
def uniform(draw):
    """Two clients with identical requests and a pool of k requests (+1 token): the blocked client
    is the one with the smaller counter, every other running request is the other client's, and
    preempting one of them frees room for exactly one request, so premise A3 holds by construction.
    (With three clients it does not: a third client within the margin can take the freed room first;
    hypothesis finds such instances, see papers/fastswitch/claims.md.)"""
    n_cl = 2
    p, o, k = draw(st.integers(1, 8)), draw(st.integers(2, 40)), draw(st.integers(1, 3))
    raw = []
    for c in range(n_cl):
        for j in range(draw(st.integers(1, 8))):
            raw.append((draw(st.sampled_from([0.0, 0.001 * j, 0.01 * j])), c, j))
    raw.sort()
    reqs = tuple(Request(id=f"r{i}", client=f"c{c}", arrival=t, prompt=tuple(range(1000 * c + 100 * j, 1000 * c + 100 * j + p)),
                         output_len=o) for i, (t, c, j) in enumerate(raw))
    lim = Limits(kv_capacity_tokens=k * (p + o + 1) + 1, max_prefill_tokens=10_000,
                 max_running_requests=draw(st.sampled_from([k, 256])), page_size=1, chunked_prefill_size=None)
    return Instance(reqs, CostModel(), lim)


@settings(deadline=None, max_examples=80)
@given(inst=uniform(), K=st.sampled_from([1, 2, 4, 16]), margin=st.sampled_from([0.0, 10.0, None]),
       mode=st.sampled_from(sorted(MODES)))
def test_bound_holds_when_its_premises_hold(inst, K, margin, mode):
    tr = simulate(inst, create("vtc-preempt", interval=K, margin=margin), engine="sglang", sglang=EXACT,
                  preemption=MODES[mode])
    assert check_trace(inst, tr).ok
    rep = check_vtc_preemptive_gap(inst, tr)
    assert rep.holds, (str(rep), rep.params)
    assert rep.params["K"] == K and rep.params["B"] == inst.limits.max_running_requests


def test_switch_delay_is_zero_when_synchronous_and_counts_overlapped_steps_when_not():
    reqs = (Request("a", "A", 0, tuple(range(10)), 30), Request("b", "B", 0.02, tuple(range(100, 110)), 30))
    i = Instance(reqs, CostModel(), Limits(kv_capacity_tokens=10_000, max_prefill_tokens=1000, max_running_requests=1,
                                          page_size=1, chunked_prefill_size=None))
    sync = simulate(i, create("vtc-preempt", interval=1, margin=0.0), engine="sglang", preemption=MODES["sync"])
    assert sync.switches and switch_delay_steps(sync) == 0
    import dataclasses

    from prefixsched.theory.switch_cost import SwitchCostModel
    slow = PreemptionConfig(mode="swap", sync=False, switch=SwitchCostModel().with_(
        link=dataclasses.replace(SwitchCostModel().link, peak_bytes_per_s=2e8)))
    tr = simulate(i, create("vtc-preempt", interval=1, margin=0.0), engine="sglang", preemption=slow)
    assert check_trace(i, tr).ok
    n = 0
    for kind in ("out", "in"):
        ev = [e for e in tr.switches if e.kind == kind]
        n += max((sum(1 for s in tr.step_start if e.t_start <= s < e.t_end) for e in ev), default=0)
    assert switch_delay_steps(tr) == n >= 1


def test_where_it_breaks_a_blocked_head_that_no_victim_can_make_room_for():
    # found by hypothesis (tiny pool of 25 tokens, pages of 2): c2's head does not fit, and the
    # only running request above the margin (c0's) is too small to make room for it by the
    # policy's estimate, so it is not preempted and c0 keeps decoding past the bound (A3 fails).
    spec = [("c0", 1, 1)] * 5 + [("c0", 1, 8), ("c0", 1, 1), ("c1", 1, 1), ("c2", 2, 20), ("c2", 1, 20)]
    base = {"c0": 10000, "c1": 20000, "c2": 30000}
    reqs = tuple(Request(f"r{k}", c, 0.0, tuple(range(base[c], base[c] + p)), o) for k, (c, p, o) in enumerate(spec))
    i = Instance(reqs, CostModel(), Limits(kv_capacity_tokens=25, max_prefill_tokens=1, max_running_requests=2,
                                          page_size=2, chunked_prefill_size=None))
    tr = simulate(i, create("vtc-preempt", interval=1, margin=0.0), engine="sglang", preemption=MODES["drop"])
    assert check_trace(i, tr).ok
    rep = check_vtc_preemptive_gap(i, tr)
    assert not rep.holds and rep.worst > rep.bound and rep.params["premises"] == []
