"""The data-parallel cluster simulator (prefixsched.reference.cluster) and its dispatchers.

The strongest check: every worker of a cluster run produces exactly the trace that the
single-worker ``simulate`` gives on the sub-instance of the requests dispatched to it, and that
trace passes the independent checker. D²LPM's dispatch decisions are replayed from the worker
traces alone (deficits, refills, loads, choice rule of Algorithm 2).
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefixsched.errors import InputError
from prefixsched.reference.cluster import (
    DISPATCHERS,
    D2LPMDispatcher,
    Dispatcher,
    GlobalPrefixTree,
    available_dispatchers,
    create_dispatcher,
    simulate_cluster,
)
from prefixsched.reference.policies import create
from prefixsched.reference.simulator import Worker, simulate
from prefixsched.reference.workloads import make_workload
from prefixsched.testing import instances
from prefixsched.theory.metrics import cluster_service_timeline, per_client_totals, service_timeline
from prefixsched.theory.model import Instance, Limits, Request, ServiceWeights, key_tokens
from prefixsched.theory.cost import CostModel
from prefixsched.theory.schedule import check_trace

MOONCAKE = Path(__file__).resolve().parents[2] / "shared/data/mooncake/conversation_trace.jsonl"
ALL = sorted(DISPATCHERS)


def _dump(x) -> str:
    return json.dumps(x.to_dict(), sort_keys=True)


@pytest.fixture(scope="module")
def small() -> Instance:
    return make_workload("default", seed=3, n_requests=240, clients=4)


@pytest.fixture(scope="module")
def tight() -> Instance:
    """Small KV pool and few running slots: queues build up and the caches evict."""
    base = make_workload("default", seed=5, n_requests=200, clients=4)
    need = max(r.prompt_len + r.output_len for r in base.requests)
    lim = Limits(kv_capacity_tokens=need * 3, max_prefill_tokens=4096, max_running_requests=4, page_size=1)
    return Instance(base.requests, cost_model=base.cost_model, limits=lim, weights=base.weights)


# ---------------------------------------------------------------------------------------------
# the engine: one worker == simulate on its sub-instance


@pytest.mark.parametrize("policy", ["dlpm", "vtc", "lpm", "fcfs"])
def test_one_worker_cluster_equals_simulate_byte_for_byte(small: Instance, policy: str) -> None:
    ref = _dump(simulate(small, create(policy)))
    for disp in ALL:
        ct = simulate_cluster(small, policy, disp, workers=1)
        assert set(ct.dispatch.values()) == {0}
        assert _dump(ct.traces[0]) == ref, disp


@pytest.mark.parametrize("disp", ALL)
def test_every_worker_trace_is_simulate_on_its_sub_instance_and_passes_the_checker(tight: Instance, disp: str) -> None:
    ct = simulate_cluster(tight, "dlpm", disp, workers=3)
    assert sorted(ct.dispatch) == sorted(r.id for r in tight.requests)
    for w in range(ct.workers):
        sub = ct.sub_instance(w)
        if sub is None:
            assert ct.traces[w].requests == []
            continue
        rep = check_trace(sub, ct.traces[w])
        assert rep.ok
        assert [r.id for r in ct.traces[w].requests] == [r.id for r in sub.requests]
        assert _dump(ct.traces[w]) == _dump(simulate(sub, create("dlpm")))
    assert ct.meta["final_loads"] == [0] * ct.workers
    assert ct.meta["finish_events"] == len(tight.requests)


@pytest.mark.parametrize("engine", ["ideal", "sglang"])
@given(data=st.data(), D=st.integers(1, 3), disp=st.sampled_from(ALL))
def test_property_worker_traces_are_legal_and_equal_the_single_worker_engine(engine: str, data, D: int, disp: str) -> None:
    inst = data.draw(instances(max_clients=3, max_requests_per_client=6, engine=engine))
    ct = simulate_cluster(inst, "dlpm", disp, workers=D, engine=engine)
    for w in range(D):
        sub = ct.sub_instance(w)
        if sub is None:
            continue
        assert check_trace(sub, ct.traces[w]).ok
        assert _dump(ct.traces[w]) == _dump(simulate(sub, create("dlpm"), engine=engine))


def test_cluster_runs_are_deterministic(tight: Instance) -> None:
    a = simulate_cluster(tight, "dlpm", "d2lpm:3000", workers=3, record_states=True)
    b = simulate_cluster(tight, "dlpm", "d2lpm:3000", workers=3, record_states=True)
    assert _dump(a) == _dump(b)
    assert a.meta["dispatch_log"]
    c = simulate_cluster(tight, "dlpm", "d2lpm:inf", workers=3, record_states=True)
    for x in (a, c):  # strict JSON (no Infinity/NaN), even with Q_w = inf
        assert json.loads(json.dumps(x.to_dict(), allow_nan=False)) == json.loads(_dump(x))


def test_worker_online_submission_rules() -> None:
    inst = Instance(
        (Request("a", "x", 0.0, (1, 2, 3), 2), Request("b", "y", 5.0, (1, 2, 4), 2), Request("c", "x", 9.0, (7, 8), 1)),
        cost_model=CostModel.token_units(),
    )
    w = Worker(inst, create("fcfs"), requests=())
    w.submit(inst.requests[0])
    w.run(5.0)
    assert w.outstanding == 0 and w.done == 1  # prefill 3 tokens: done at t=3 < 5
    with pytest.raises(InputError):
        w.submit(inst.requests[0])  # duplicate
    w.submit(inst.requests[2])
    with pytest.raises(InputError):
        w.submit(inst.requests[1])  # earlier than the previous submission
    with pytest.raises(InputError):
        Worker(inst, create("fcfs")).submit(inst.requests[0])  # whole-instance mode
    w.run(final=True)
    assert w.trace().requests[1].admit == 9.0


def test_worker_rejects_an_arrival_before_a_step_it_already_ran() -> None:
    inst = Instance((Request("a", "x", 0.0, (1, 2, 3), 4), Request("b", "x", 1.0, (5,), 1)), cost_model=CostModel.token_units())
    w = Worker(inst, create("fcfs"), requests=())
    w.submit(inst.requests[0])
    w.run(10.0)  # runs the step at t=0 (and the zero-length decode steps at t=3)
    with pytest.raises(InputError, match="already run"):
        w.submit(inst.requests[1])


def test_eviction_events_account_for_every_evicted_token(tight: Instance) -> None:
    w = Worker(tight, create("lpm"), requests=(), log_events=True)
    evicted_pages = 0
    finishes = 0
    for r in tight.requests:
        w.run(r.arrival)
        f, ev = w.pop_events()
        finishes += len(f)
        for t, keys, start in ev:
            assert 0 <= start < len(keys) and t <= w.now
            evicted_pages += key_tokens(keys[start:], tight.limits.page_size)
        w.submit(r)
    w.run(final=True)
    f, ev = w.pop_events()
    finishes += len(f)
    evicted_pages += sum(key_tokens(k[s:], tight.limits.page_size) for _t, k, s in ev)
    assert w.cache.stats.evicted_tokens > 0
    assert evicted_pages == w.cache.stats.evicted_tokens  # tokens (compressed page-1 keys weigh more)
    assert finishes == len(tight.requests)


# ---------------------------------------------------------------------------------------------
# the global tree


def test_global_prefix_tree_match_insert_evict_prune() -> None:
    t = GlobalPrefixTree()
    assert t.longest_match_workers((1, 2, 3)) == (0, 0)
    t.insert((1, 2, 3), 0)
    t.insert((1, 2, 9), 2)
    assert t.longest_match_workers((1, 2, 3, 4)) == (3, 0b001)
    assert t.longest_match_workers((1, 2, 7)) == (2, 0b101)
    t.insert((1, 2, 3), 1)
    assert t.longest_match_workers((1, 2, 3)) == (3, 0b011)
    t.remove((1, 2), 1, 0)  # worker 0 evicted page 2 of path 1,2 (keeps page 1)
    assert t.longest_match_workers((1, 2, 3)) == (3, 0b010)
    assert t.workers_at((1, 2, 3)) == [0b111, 0b110, 0b011]
    # worker 0's tag on page 3 is stale (not contiguous from the root): it no longer matches
    assert t.longest_match_workers((1, 2)) == (2, 0b110)
    n = t.n_nodes
    t.remove((1, 2, 9), 2, 2)
    assert t.n_nodes == n - 1 and t.workers_at((1, 2, 9)) == [0b111, 0b110]


# ---------------------------------------------------------------------------------------------
# D²LPM: replay Algorithm 2 from the worker traces


def _replay_d2lpm(inst: Instance, ct, q_w: float) -> None:
    """Check the dispatch log against an independent replay of Algorithm 2's accounting."""
    w_e, w_q = inst.weights.w_e, inst.weights.w_q
    D = ct.workers
    # when each finish reaches the dispatcher: the finishing step ran before the dispatch time
    fin = []  # (finish time, step start, worker, request)
    by_id = {r.id: r for r in inst.requests}
    for w, t in enumerate(ct.traces):
        for rec in t.requests:
            fin.append((rec.finish, t.step_start[rec.finish_step], w, by_id[rec.id]))
    q: dict[str, list[float]] = {}
    refills: Counter[str] = Counter()
    load = [0] * D
    applied = [False] * len(fin)
    log = ct.meta["dispatch_log"]
    assert [e["id"] for e in log] == [r.id for r in inst.requests]
    for e in log:
        t = e["t"]
        for k, (tf, ts, w, r) in enumerate(fin):
            if not applied[k] and tf <= t and ts < t:
                applied[k] = True
                q[r.client][w] -= w_q * r.output_len
                load[w] -= 1
        c = e["client"]
        qc = q.setdefault(c, [0.0] * D)
        while not any(x > 0 for x in qc):
            for w in range(D):
                qc[w] += q_w
            refills[c] += 1
        assert e["refills"] == refills[c]
        assert e["loads"] == load
        got = [math.inf if x == "inf" else x for x in e["q_before"]]
        assert got == pytest.approx(qc)
        avail = [w for w in range(D) if qc[w] > 0]
        assert e["avail"] == avail
        cand = [w for w in avail if w in e["G"]]
        pool = cand or avail
        best = min(pool, key=lambda w: (load[w], w))
        assert e["worker"] == best == ct.dispatch[e["id"]]
        if e["G"]:
            assert e["match_pages"] > 0
        r = by_id[e["id"]]
        qc[best] -= w_e * r.prompt_len
        load[best] += 1
    assert all(applied[k] or fin[k][0] > log[-1]["t"] or fin[k][1] >= log[-1]["t"] for k in range(len(fin)))


@pytest.mark.parametrize("q_w", [500.0, 3000.0, math.inf])
def test_d2lpm_dispatch_log_replays_algorithm_2(tight: Instance, q_w: float) -> None:
    spec = "d2lpm:inf" if math.isinf(q_w) else f"d2lpm:{q_w}"
    ct = simulate_cluster(tight, "dlpm", spec, workers=3, record_states=True)
    _replay_d2lpm(tight, ct, q_w)
    st_ = ct.meta["dispatcher_state"]
    assert st_["loads"] == [0, 0, 0] and ct.meta["evict_events"] > 0


def test_d2lpm_finite_quantum_charges_every_worker_until_it_runs_dry(tight: Instance) -> None:
    ct = simulate_cluster(tight, "dlpm", "d2lpm:2000", workers=3, record_states=True)
    # a refill happens only when the client had no credit on any worker (line 2)
    prev: dict[str, int] = {}
    for e in ct.meta["dispatch_log"]:
        if e["refills"] > prev.get(e["client"], 0) and prev.get(e["client"]) is not None:
            assert max(e["q_before"]) <= 2000.0 + 1e-9
        prev[e["client"]] = e["refills"]
    # final deficits: charges are w_e*prompt + w_q*output per request, refills of Q_w per round
    w_e, w_q = tight.weights.w_e, tight.weights.w_q
    for c, qs in ct.meta["dispatcher_state"]["deficits"].items():
        charged = sum(w_e * r.prompt_len + w_q * r.output_len for r in tight.requests if r.client == c)
        k = ct.meta["dispatcher_state"]["refills"][c]
        assert sum(qs) == pytest.approx(k * 3 * 2000.0 - charged)


def test_infinite_quantum_is_locality_plus_least_load_and_equals_preble_with_threshold_zero(tight: Instance) -> None:
    ct = simulate_cluster(tight, "dlpm", "d2lpm:inf", workers=3, record_states=True)
    for e in ct.meta["dispatch_log"]:
        assert e["avail"] == [0, 1, 2] and e["refills"] == 1
        pool = e["G"] or [0, 1, 2]
        assert e["worker"] == min(pool, key=lambda w: (e["loads"][w], w))
    pr = simulate_cluster(tight, "dlpm", "preble:0", workers=3)
    assert pr.dispatch == ct.dispatch


def test_client_round_robin_spreads_every_client_evenly(small: Instance) -> None:
    D = 3
    ct = simulate_cluster(small, "vtc", "client-round-robin", workers=D)
    per: dict[str, list[int]] = defaultdict(list)
    for r in small.requests:
        per[r.client].append(ct.dispatch[r.id])
    for c, ws in per.items():
        counts = Counter(ws)
        assert max(counts.get(w, 0) for w in range(D)) - min(counts.get(w, 0) for w in range(D)) <= 1, c
        assert all((b - a) % D == 1 for a, b in zip(ws, ws[1:])), c
    # clients start staggered
    firsts = [per[c][0] for c in small.clients]
    assert firsts == [k % D for k in range(len(firsts))]


def test_round_robin_and_least_load_rules(small: Instance) -> None:
    rr = simulate_cluster(small, "lpm", "round-robin", workers=4)
    assert [rr.dispatch[r.id] for r in small.requests] == [k % 4 for k in range(len(small.requests))]
    ll = simulate_cluster(small, "lpm", "least-load", workers=4)
    assert ll.meta["final_loads"] == [0, 0, 0, 0]
    counts = Counter(ll.dispatch.values())
    assert set(counts) == {0, 1, 2, 3}


def test_all_arrivals_at_once_least_load_is_round_robin() -> None:
    reqs = tuple(Request(f"r{k}", f"c{k % 2}", 0.0, (k, k + 100), 1) for k in range(10))
    inst = Instance(reqs, cost_model=CostModel.token_units())
    ct = simulate_cluster(inst, "fcfs", "least-load", workers=3)
    assert [ct.dispatch[r.id] for r in reqs] == [k % 3 for k in range(10)]


# ---------------------------------------------------------------------------------------------
# merged view and cluster service curves


def test_merged_trace_and_cluster_service_timeline(tight: Instance) -> None:
    ct = simulate_cluster(tight, "dlpm", "d2lpm", workers=3)
    m = ct.merged_trace()
    assert [r.id for r in m.requests] == [r.id for r in tight.requests]
    assert m.meta["worker_of"] == ct.dispatch and m.step_end == []
    times, clients, cum = cluster_service_timeline(ct.traces, tight, clients=tight.clients)
    assert list(times) == sorted(set(times)) and clients == tight.clients
    assert (cum[1:] >= cum[:-1] - 1e-9).all()  # cumulative
    tot = per_client_totals(m, tight)
    for k, c in enumerate(clients):
        assert cum[-1, k] == pytest.approx(tot[c]["service_actual"])
    _t, _c, cum_client = cluster_service_timeline(ct.traces, tight, "client", clients=tight.clients)
    for k, c in enumerate(clients):
        assert cum_client[-1, k] == pytest.approx(tot[c]["service_client"])


def test_cluster_service_timeline_of_one_worker_is_service_timeline(small: Instance) -> None:
    tr = simulate(small, create("dlpm"))
    t1, c1, m1 = service_timeline(tr, small)
    t2, c2, m2 = cluster_service_timeline([tr], small)
    assert c1 == c2
    last = [i for i in range(len(t1)) if i == len(t1) - 1 or t1[i + 1] != t1[i]]
    assert list(t2) == [t1[i] for i in last]
    assert m2 == pytest.approx(m1[last])


# ---------------------------------------------------------------------------------------------
# registry and errors


def test_dispatcher_registry_and_specs() -> None:
    assert set(available_dispatchers()) == {"round-robin", "client-round-robin", "least-load", "d2lpm", "preble"}
    d = create_dispatcher("d2lpm:inf")
    assert isinstance(d, D2LPMDispatcher) and math.isinf(d.q_w)
    assert create_dispatcher("d2lpm:4000", q_w=1.0).q_w == 4000.0
    assert create_dispatcher("d2lpm", q_w=123).q_w == 123.0
    for bad in ("nope", "round-robin:3", "d2lpm:x", "d2lpm:0", "d2lpm:-5", "preble:1.5"):
        with pytest.raises(InputError):
            create_dispatcher(bad)


def test_bad_arguments_raise_input_errors(small: Instance) -> None:
    with pytest.raises(InputError, match="workers"):
        simulate_cluster(small, "dlpm", "d2lpm", workers=0)
    with pytest.raises(InputError):
        simulate_cluster(small, "no-such-policy", "d2lpm", workers=2)
    with pytest.raises(InputError):
        simulate_cluster(small, "dlpm", 42, workers=2)  # type: ignore[arg-type]

    class Bad(Dispatcher):
        name = "bad"

        def select(self, request, keys, now, loads):
            return len(loads)

    with pytest.raises(InputError, match="returned worker"):
        simulate_cluster(small, "dlpm", Bad(), workers=2)
    ct = simulate_cluster(small, "dlpm", "round-robin", workers=2)
    with pytest.raises(InputError):
        ct.sub_instance(2)


def test_progress_is_reported_per_dispatch(small: Instance) -> None:
    seen = []
    simulate_cluster(small, "fcfs", "round-robin", workers=2, progress=lambda d, n: seen.append((d, n)))
    n = len(small.requests)
    assert seen[0] == (1, n) and seen[-1] == (n, n) and len(seen) == n


def test_custom_weights_are_used_by_the_d2lpm_charges() -> None:
    reqs = tuple(Request(f"r{k}", "a", float(k), (k + 1, k + 50), 3) for k in range(4))
    inst = Instance(reqs, cost_model=CostModel.token_units(), weights=ServiceWeights(w_e=3.0, w_q=5.0))
    ct = simulate_cluster(inst, "fcfs", "d2lpm:100", workers=2, record_states=True)
    q = ct.meta["dispatcher_state"]["deficits"]["a"]
    k = ct.meta["dispatcher_state"]["refills"]["a"]
    assert sum(q) == pytest.approx(k * 2 * 100 - 4 * (3.0 * 2 + 5.0 * 3))


@pytest.mark.slow
@pytest.mark.skipif(not MOONCAKE.exists(), reason="Mooncake trace not present (../shared/data/mooncake)")
def test_mooncake_prefix_cluster_workers_pass_the_checker() -> None:
    from prefixsched.reference.traces import load_mooncake

    inst = load_mooncake(MOONCAKE, max_requests=600)
    ct = simulate_cluster(inst, "dlpm", "d2lpm", workers=4)
    for w in range(4):
        sub = ct.sub_instance(w)
        if sub is not None:
            assert check_trace(sub, ct.traces[w]).ok


# ---------------------------------------------------------------------------------------------
# CLI


def _cli(argv, capsys):
    from prefixsched.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_simulate_with_workers_reports_cluster_rows(capsys, tmp_path) -> None:
    out_json = tmp_path / "r.json"
    argv = ["simulate", "--workers", "3", "--dispatch", "d2lpm", "--q-w", "inf", "--max-requests", "120",
            "--policy", "dlpm", "lpm", "--no-progress", "--json", str(out_json)]
    rc, out, _err = _cli(argv, capsys)
    assert rc == 0 and "workers=3, dispatch=d2lpm" in out
    data = json.loads(out_json.read_text())
    assert data["input"]["workers"] == 3
    for r in data["results"]:
        assert r["workers"] == 3 and r["dispatcher"] == {"name": "d2lpm", "q_w": "inf"}
        assert sum(r["summary"]["requests_per_worker"]) == 120
    # the default dispatcher with D > 1 is d2lpm; same arguments, same bytes
    rc2, out2, _ = _cli(argv, capsys)
    assert out2 == out and json.loads(out_json.read_text()) == data
    rc, out, _ = _cli(["simulate", "--workers", "2", "--max-requests", "60", "--policy", "vtc", "--no-progress"], capsys)
    assert rc == 0 and "dispatch=d2lpm" in out


def test_cli_one_worker_ignores_dispatch_and_matches_the_single_worker_output(capsys) -> None:
    base = ["simulate", "--max-requests", "80", "--policy", "dlpm", "--no-progress"]
    _, a, _ = _cli(base, capsys)
    _, b, _ = _cli(base + ["--workers", "1", "--dispatch", "least-load"], capsys)
    assert a == b and "workers=" not in a


def test_cli_cluster_errors(capsys) -> None:
    rc, _, err = _cli(["simulate", "--workers", "2", "--dispatch", "nope", "--max-requests", "20", "--no-progress"], capsys)
    assert rc == 2 and "unknown dispatcher" in err
    rc, _, err = _cli(["simulate", "--workers", "2", "--plot", "x.png", "--max-requests", "20", "--no-progress"], capsys)
    assert rc == 2 and "--plot" in err
    with pytest.raises(SystemExit):
        _cli(["simulate", "--workers", "0"], capsys)
