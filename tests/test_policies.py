"""Tests of the single-worker policies (fcfs, lpm, dfs-weight, k-lpm, vtc, dlpm, random)."""

from __future__ import annotations

import math
import random as pyrandom

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixsched.errors import InputError
from prefixsched.reference.policies import available, create, parse_spec
from prefixsched.reference.policies.base import Policy
import functools

from prefixsched.reference.simulator import simulate as _simulate
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request, ServiceWeights

simulate = functools.partial(_simulate, engine="ideal")  # the papers' model these tests state

TOK = CostModel.token_units()
DEC1 = CostModel(0.0, 1.0, 0.0, 1.0, 0.0, 0.0)  # prefill 1/token, decode 1 per step


def R(i, client, arrival, prompt, out=1, rid=None):
    return Request(rid or f"r{i}", client, float(arrival), tuple(prompt), out)


def inst(reqs, cost=TOK, weights=None, **lim):
    return Instance(tuple(reqs), cost, Limits(**lim), weights or ServiceWeights())


def order(trace):
    """Request ids by (admit_step, position in the decision)."""
    return [r.id for r in sorted(trace.requests, key=lambda r: (r.admit_step,))]


class Recorder(Policy):
    """Wraps a policy and records each decision (admission order inside a step)."""

    name = "recorder"

    def __init__(self, inner):
        self.inner = inner
        self.decisions = []
        self.arrival_states = []

    def on_arrival(self, request, now, snap):
        self.inner.on_arrival(request, now, snap)
        self.arrival_states.append((request.id, self.inner.state()))

    def decide(self, snap):
        d = self.inner.decide(snap)
        self.decisions.append(d.admit)
        return d

    def on_step_end(self, decoded, finished, snap):
        self.inner.on_step_end(decoded, finished, snap)

    def state(self):
        return self.inner.state()

    def describe(self):
        return self.inner.describe()

    @property
    def admitted(self):
        return [x for d in self.decisions for x in d]


def run(i, spec_or_policy, **kw):
    pol = create(spec_or_policy) if isinstance(spec_or_policy, str) else spec_or_policy
    rec = Recorder(pol)
    tr = simulate(i, rec, **kw)
    return tr, rec


def rid(tr, x):
    return next(r for r in tr.requests if r.id == x)


# ------------------------------------------------------------------------------------------
# registry


def test_registry_names_and_primary_params():
    assert set(available()) == {"fcfs", "lpm", "dfs-weight", "k-lpm", "vtc", "dlpm", "random",
                                "vtc-preempt", "fastswitch", "sglang-priority"}
    assert create("k-lpm:inf").k == math.inf
    assert create("k-lpm:4").k == 4
    assert create("k-lpm").k == 2
    assert create("dlpm:500").quantum == 500.0
    assert create("dlpm").quantum == 8000.0
    assert create("random", seed=5).seed == 5
    assert parse_spec("dlpm:1e3") == ("dlpm", {"quantum": 1000.0})
    assert create("k-lpm:inf").describe() == {"name": "k-lpm", "k": "inf"}


@pytest.mark.parametrize(
    "spec, kw",
    [
        ("k-lpm", {"k": 0}),
        ("k-lpm", {"k": 1.5}),
        ("dlpm", {"quantum": 0}),
        ("dlpm", {"quantum": math.inf}),
        ("dlpm", {"weights": {"a": -1}}),
        ("vtc", {"charge": "both"}),
        ("vtc", {"weights": {"a": 0}}),
        ("lpm", {"fcfs_fallback": -1}),
        ("random", {"seed": -3}),
    ],
)
def test_bad_parameters_raise_input_error(spec, kw):
    with pytest.raises(InputError):
        create(spec, **kw)


# ------------------------------------------------------------------------------------------
# FCFS / LPM / dfs-weight / random


def _warm_then(waiting, warm=((1, 2, 3, 4),), **lim):
    reqs = [R(k, "w", 0, p, rid=f"w{k}") for k, p in enumerate(warm)]
    reqs += [R(k, c, 1, p, rid=x) for k, (x, c, p) in enumerate(waiting)]
    lim.setdefault("max_running_requests", 1)
    return inst(reqs, **lim)


WAIT = [
    ("o1", "a", (9, 9, 9)),
    ("a1", "b", (1, 2, 3, 4, 5)),
    ("o2", "a", (8, 8, 8)),
    ("a2", "b", (1, 2, 3, 4, 6)),
    ("a3", "c", (1, 2, 3, 4, 7)),
]


def test_fcfs_lpm_klpm_orders_by_hand():
    i = _warm_then(WAIT)
    assert run(i, "fcfs")[1].admitted == ["w0", "o1", "a1", "o2", "a2", "a3"]
    assert run(i, "lpm")[1].admitted == ["w0", "a1", "a2", "a3", "o1", "o2"]
    # Algorithm-1 box: oldest (w0), LPM (a1), oldest (o1), LPM (a2), oldest (o2), LPM (a3)
    assert run(i, "k-lpm:2")[1].admitted == ["w0", "a1", "o1", "a2", "o2", "a3"]
    assert run(i, "k-lpm:3")[1].admitted == ["w0", "a1", "a2", "o1", "a3", "o2"]
    tr, _ = run(i, "lpm")
    # w0 [0,4); a1 extends 1 [4,5); a2, a3 1 each; o1, o2 3 each
    assert [rid(tr, x).admit for x in ("a1", "a2", "a3", "o1", "o2")] == [4.0, 5.0, 6.0, 7.0, 10.0]
    assert rid(tr, "a2").cached_tokens == 4


def test_lpm_fcfs_fallback_above_threshold():
    i = _warm_then(WAIT)
    # 5 waiting > 3: FCFS order while the queue is long, LPM once it is short
    tr, rec = run(i, create("lpm", fcfs_fallback=3))
    assert rec.admitted == ["w0", "o1", "a1", "a2", "a3", "o2"]
    assert rec.inner.state()["fallback_steps"] == 2
    assert run(i, create("lpm", fcfs_fallback=100))[1].admitted == run(i, "lpm")[1].admitted


def test_fcfs_blocks_head_of_line_lpm_skips():
    # kv 20: big0 runs (need 12); big1 (need 12) does not fit; small (need 3) does
    reqs = [
        R(0, "a", 0, range(10), out=2, rid="big0"),
        R(1, "a", 0, range(100, 110), out=2, rid="big1"),
        R(2, "b", 0, [200, 201], out=1, rid="small"),
    ]
    i = inst(reqs, cost=DEC1, kv_capacity_tokens=20)
    tf, _ = run(i, "fcfs")
    tl, _ = run(i, "lpm")
    assert rid(tf, "small").admit_step == 2  # after big1, which waited for big0
    assert rid(tf, "big1").admit_step == 2
    assert rid(tl, "small").admit_step == 0  # skipped over big1
    assert rid(tl, "big1").admit_step == 2


def test_dfs_weight_heavier_subtree_first():
    waiting = [
        ("a", "x", (1, 2, 3, 7)),
        ("b", "x", (1, 2, 3, 8)),
        ("c", "y", (4, 5, 6, 1)),
        ("d", "y", (4, 5, 6, 2)),
        ("e", "y", (4, 5, 6, 3)),
        ("f", "z", (9, 9)),
    ]
    i = _warm_then(waiting, warm=((1, 2, 3), (4, 5, 6)), max_running_requests=64)
    _, rec = run(i, "dfs-weight")
    assert rec.decisions[0] == ("w0", "w1")
    assert rec.decisions[1] == ("c", "d", "e", "a", "b", "f")
    _, rec = run(i, "lpm")
    assert rec.decisions[1] == ("a", "b", "c", "d", "e", "f")


def test_dfs_weight_match_inside_an_edge_is_a_virtual_split():
    # cached edge (1,2,3,4,5); g matches 2 pages inside it, h all of it: SGLang splits at 2 and
    # visits the deeper part (h) before the upper node's own request (g).
    waiting = [("g", "x", (1, 2, 9)), ("h", "x", (1, 2, 3, 4, 5, 6)), ("k", "x", (1, 2, 3, 4, 5, 7))]
    i = _warm_then(waiting, warm=((1, 2, 3, 4, 5),), max_running_requests=64)
    _, rec = run(i, "dfs-weight")
    assert rec.decisions[1] == ("h", "k", "g")


def test_random_policy_is_a_seeded_permutation():
    reqs = [R(k, "a", 0, [k + 1]) for k in range(12)]
    i = inst(reqs, max_running_requests=1)
    a = run(i, create("random", seed=4))[1].admitted
    b = run(i, create("random", seed=4))[1].admitted
    c = run(i, create("random", seed=5))[1].admitted
    assert a == b and sorted(a) == sorted(f"r{k}" for k in range(12))
    assert a != c and a != [f"r{k}" for k in range(12)]


# ------------------------------------------------------------------------------------------
# k-LPM limits


def _rand_inst(seed, n=40, clients=3, page_size=1, cap=150, running=4, prefill=25, cost=DEC1):
    rng = pyrandom.Random(seed)
    reqs, t = [], 0.0
    for k in range(n):
        t += rng.choice([0.0, 0.0, 1.0, 2.0, 5.0])
        c = rng.randrange(clients)
        prompt = [rng.randrange(3)] * rng.randrange(0, 6) + [100 + c] * rng.randrange(0, 4)
        prompt += [1000 + k] * rng.randrange(1, 8)
        reqs.append(R(k, f"c{c}", t, prompt, rng.randrange(1, 6)))
    lim = Limits(kv_capacity_tokens=cap, max_prefill_tokens=prefill, max_running_requests=running, page_size=page_size)
    return Instance(tuple(reqs), cost, lim)


def _same_schedule(a, b):
    return a.requests == b.requests and a.step_start == b.step_start and a.step_end == b.step_end


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 100_000), page_size=st.sampled_from([1, 2]), running=st.integers(1, 6))
def test_klpm_limits_equal_fcfs_and_lpm(seed, page_size, running):
    i = _rand_inst(seed, page_size=page_size, running=running)
    assert _same_schedule(simulate(i, create("k-lpm:1")), simulate(i, create("fcfs")))
    assert _same_schedule(simulate(i, create("k-lpm:inf")), simulate(i, create("lpm")))


def test_klpm_differs_from_both_limits_somewhere():
    diffs = 0
    for seed in range(10):
        i = _rand_inst(seed, running=1)
        k2 = simulate(i, create("k-lpm:2"))
        diffs += (not _same_schedule(k2, simulate(i, create("fcfs")))) and (
            not _same_schedule(k2, simulate(i, create("lpm")))
        )
    assert diffs > 0


def test_klpm_cycle_counter_persists_across_steps():
    i = _warm_then(WAIT)
    tr, rec = run(i, "k-lpm:2")
    # one admission per step; 6 admissions = 3 full cycles
    assert rec.inner.state() == {"position": 0, "cycles": 3}


# ------------------------------------------------------------------------------------------
# VTC


def test_vtc_newcomer_is_lifted_to_the_backlogged_minimum():
    reqs = [R(k, "a", 0, range(10 * k, 10 * k + 10)) for k in range(5)]
    reqs.append(R(5, "b", 15, range(500, 510), rid="b0"))
    i = inst(reqs, max_running_requests=1)
    tr, rec = run(i, "vtc")
    # a: 10 (prompt) + 2 (first token) per request; at t=20 a is at 24 and b is lifted to 24
    st_b = dict(rec.arrival_states)["b0"]
    assert st_b["counters"] == {"a": 24.0, "b": 24.0}
    assert st_b["lifts"] == 1
    # tie at 24 -> a (first appearance) at t=20; then b (24 < 36) at t=30
    assert rid(tr, "b0").admit == 30.0 and rid(tr, "r2").admit == 20.0


def test_lcf_without_lift_would_serve_newcomer_first():
    # sanity of the previous test's premise: with the lift disabled (counter forced back to 0)
    # the newcomer goes first.
    class NoLift(type(create("vtc"))):
        def on_arrival(self, request, now, snap):
            self.counters.setdefault(request.client, 0.0)

    reqs = [R(k, "a", 0, range(10 * k, 10 * k + 10)) for k in range(5)]
    reqs.append(R(5, "b", 15, range(500, 510), rid="b0"))
    tr = simulate(inst(reqs, max_running_requests=1), NoLift())
    assert rid(tr, "b0").admit == 20.0


def test_vtc_last_client_to_leave_rule():
    reqs = [R(0, "a", 0, range(10)), R(1, "b", 20, range(100, 110))]
    tr, rec = run(inst(reqs), "vtc")
    st_b = dict(rec.arrival_states)["r1"]
    assert st_b["last_left"] == "a" and st_b["counters"]["b"] == 12.0
    assert rec.inner.state()["counters"] == {"a": 12.0, "b": 24.0}


def test_vtc_head_of_line_stop():
    reqs = [
        R(0, "b", 0, range(5), out=5, rid="b0"),
        R(1, "a", 1, range(100, 110), out=5, rid="a0"),
        R(2, "d", 1, [300, 301], out=1, rid="d0"),
    ]
    i = inst(reqs, cost=DEC1, kv_capacity_tokens=20)
    tr, rec = run(i, "vtc")
    # a0 (lifted to b's 7, ties go to a) needs 15 KV tokens and blocks d0 until b0 finishes
    assert rid(tr, "a0").admit == 9.0 and rid(tr, "d0").admit == 9.0
    assert rid(tr, "a0").admit_step == rid(tr, "d0").admit_step == 5
    tl, _ = run(i, "lpm")
    assert rid(tl, "d0").admit == 5.0


def test_vtc_weights_and_extend_charge():
    reqs = [R(0, "a", 0, range(10)), R(1, "a", 50, range(10))]
    _, rec = run(inst(reqs), create("vtc", weights={"a": 2.0}))
    assert rec.inner.state()["counters"]["a"] == 2 * (10 + 2) / 2.0
    _, rec = run(inst(reqs), create("vtc", charge="extend"))
    assert rec.inner.state()["counters"]["a"] == (10 + 2) + (1 + 2)


# ------------------------------------------------------------------------------------------
# DLPM


def test_dlpm_deficit_round_robin_by_hand():
    reqs = [R(k, "a", 0, range(10 * k, 10 * k + 5), rid=f"a{k}") for k in range(3)]
    reqs += [R(3 + k, "b", 0, range(100 + 10 * k, 105 + 10 * k), rid=f"b{k}") for k in range(3)]
    i = inst(reqs, max_running_requests=1)
    tr, rec = run(i, create("dlpm", quantum=10))
    assert rec.admitted == ["a0", "a1", "b0", "b1", "a2", "b2"]
    assert [rid(tr, x).admit for x in rec.admitted] == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0]
    st_ = rec.inner.state()
    assert st_["refills"] == {"a": 2, "b": 2} and st_["rounds"] == 2
    assert st_["deficits"] == {}  # both left the active list at the end
    # LPM ignores the deficits
    assert run(i, "lpm")[1].admitted == ["a0", "a1", "a2", "b0", "b1", "b2"]


def test_dlpm_refills_clients_with_only_running_requests():
    reqs = [R(0, "a", 0, range(9), out=20, rid="a0")]
    reqs += [R(1 + k, "b", 0, range(100 + 10 * k, 105 + 10 * k), rid=f"b{k}") for k in range(3)]
    i = inst(reqs, cost=DEC1, max_running_requests=2)
    tr, rec = run(i, create("dlpm", quantum=10), record_states=True)
    states = dict((s, x) for s, x in tr.meta["states"])
    # step 2: b2's pass refills both b (-4) and a (-3, only running): a -> 7 - 2 (decode) = 5
    assert states[2]["refills"] == {"a": 2, "b": 2}
    assert states[2]["deficits"]["a"] == 5.0
    assert rid(tr, "b2").admit_step == 2


def test_dlpm_rejoin_resets_deficit():
    reqs = [R(0, "a", 0, range(50)), R(1, "a", 100, range(100, 105))]
    tr, rec = run(inst(reqs), create("dlpm", quantum=10))
    # a0: refill to 10, charged 50 + 2 -> -42; a leaves; on rejoin q = 0 (debt forgotten)
    assert dict(rec.arrival_states)["r1"]["deficits"] == {"a": 0.0}
    assert rid(tr, "r1").admit == 100.0


def test_dlpm_weights_scale_the_refill():
    reqs = [R(0, "a", 0, range(5)), R(1, "b", 0, range(10, 15))]
    _, rec = run(inst(reqs, max_running_requests=1), create("dlpm", quantum=10, weights={"a": 3}))
    # one round: a gets 30, b 10; both then charged 5 + 2
    assert rec.inner.state()["refills"] == {"a": 1, "b": 1}


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 100_000),
    quantum=st.sampled_from([1, 5, 20, 80, 400]),
    cap=st.integers(40, 160),
    running=st.integers(1, 6),
    clients=st.integers(1, 4),
)
def test_dlpm_deficits_stay_in_bounds(seed, quantum, cap, running, clients):
    i = _rand_inst(seed, n=50, clients=clients, cap=cap, running=running)
    w = i.weights
    U = w.w_e * max(r.prompt_len for r in i.requests) + w.w_q * i.limits.kv_capacity_tokens
    tr = simulate(i, create("dlpm", quantum=quantum), record_states=True)
    seen = 0
    for _, s in tr.meta["states"]:
        for q in s["deficits"].values():
            assert -U < q <= quantum
            seen += 1
    assert seen > 0


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 100_000))
def test_dlpm_admits_whenever_idle(seed):
    # work conservation at the idle point: every step with nothing running admits something
    i = _rand_inst(seed, n=40, running=2)
    tr = simulate(i, create("dlpm", quantum=3))
    admitted_at = {r.admit_step for r in tr.requests}
    running = [0] * (tr.n_steps + 1)
    for r in tr.requests:
        running[r.admit_step + 1] += 1
        running[r.finish_step + 1] -= 1
    cur = 0
    for s in range(tr.n_steps):
        cur += running[s]
        if cur == 0:
            assert s in admitted_at


class _NoExtSnap:
    """Snapshot proxy whose builders lack the optional ``client_full`` extension."""

    class _B:
        def __init__(self, b):
            self._b = b

        def try_add(self, e):
            return self._b.try_add(e)

        def fits(self, e):
            return self._b.fits(e)

        @property
        def admitted(self):
            return self._b.admitted

        @property
        def full(self):
            return self._b.full

    def __init__(self, snap):
        self._s = snap

    def __getattr__(self, k):
        return getattr(self._s, k)

    def batch(self):
        return self._B(self._s.batch())


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 100_000),
    quantum=st.sampled_from([1, 4, 16, 64, 1000]),
    cap=st.integers(40, 160),
    running=st.integers(1, 8),
    clients=st.integers(1, 5),
)
def test_dlpm_fast_pass_equals_literal_pass(seed, quantum, cap, running, clients):
    i = _rand_inst(seed, n=50, clients=clients, cap=cap, running=running)
    fast = simulate(i, create("dlpm", quantum=quantum), record_states=True)
    lit = create("dlpm", quantum=quantum)
    lit.decide = lit.decide_literal
    ref = simulate(i, lit, record_states=True)
    assert fast.to_dict() == ref.to_dict()
    noext = create("dlpm", quantum=quantum)
    inner = noext.decide
    noext.decide = lambda snap: inner(_NoExtSnap(snap))
    assert simulate(i, noext, record_states=True).to_dict() == ref.to_dict()
