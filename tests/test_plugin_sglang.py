"""The SGLang plugin on CPU: loaded by SGLang's own load_plugins(), policies driving SGLang's real
PrefillAdder inside the twin run, the non-mutating LPM walk, failure handling, and D²LPM as the
data-parallel dispatcher.

Tests marked ``sglang`` need SGLang importable (the CPU venv); they skip when it is absent, and
fail instead when ``PREFIXSCHED_REQUIRE_SGLANG=1`` (CI's SGLang job). The configuration tests at
the top need no SGLang.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from array import array
from pathlib import Path

import pytest

from prefixsched.integration.sglang import plugin
from prefixsched.reference.policies.base import Decision, Policy
from prefixsched.reference.workloads import make_workload
from prefixsched.theory.model import Instance, Limits, Request

REAL_TRACE = Path(__file__).resolve().parents[2] / "shared/data/mooncake/conversation_trace.jsonl"


# ---------------------------------------------------------------------------------------------
# configuration and load-time checks (no SGLang needed)


@pytest.fixture
def fresh_plugin(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(plugin, "_REGISTERED", False)
    monkeypatch.setattr(plugin, "_CONFIG", None)
    monkeypatch.setattr(plugin, "_VERSION", None)
    for k in list(os.environ):
        if k.startswith("PREFIXSCHED_"):
            monkeypatch.delenv(k)
    return monkeypatch


def test_unset_policy_registers_nothing(fresh_plugin, caplog):
    with caplog.at_level(logging.INFO, logger="prefixsched.sglang"):
        plugin.register()
    assert plugin.status()["registered"] is False
    assert "plugin idle" in caplog.text


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"PREFIXSCHED_POLICY": "nope"}, "unknown policy 'nope'"),
        ({"PREFIXSCHED_POLICY": "dlpm:-3"}, "quantum"),
        ({"PREFIXSCHED_POLICY": "vtc", "PREFIXSCHED_POLICY_PARAMS": "{bad"}, "PREFIXSCHED_POLICY_PARAMS"),
        ({"PREFIXSCHED_POLICY": "vtc", "PREFIXSCHED_WEIGHTS": '{"w_e": -1}'}, "w_e"),
        ({"PREFIXSCHED_DISPATCH": "d2lpm:zero"}, "PREFIXSCHED_DISPATCH"),
    ],
)
def test_bad_configuration_is_one_clear_error(fresh_plugin, caplog, env, needle):
    for k, v in env.items():
        fresh_plugin.setenv(k, v)
    with caplog.at_level(logging.ERROR, logger="prefixsched.sglang"):
        plugin.register()  # never raises
    assert plugin.status()["registered"] is False
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert needle in errors[0].getMessage()
    assert "SGLang's own scheduler runs unchanged" in errors[0].getMessage()


def test_unsupported_version_registers_nothing(fresh_plugin, caplog):
    fresh_plugin.setenv("PREFIXSCHED_POLICY", "dlpm:8000")
    fresh_plugin.setattr(plugin, "sglang_version", lambda: "0.4.9")
    with caplog.at_level(logging.ERROR, logger="prefixsched.sglang"):
        plugin.register()
    assert plugin.status()["registered"] is False
    assert "SGLang 0.4.9 is not a version this plugin supports" in caplog.text


def test_missing_hook_target_registers_nothing(fresh_plugin, caplog):
    fresh_plugin.setenv("PREFIXSCHED_POLICY", "vtc")
    fresh_plugin.setattr(plugin, "sglang_version", lambda: "0.5.23")
    fresh_plugin.setattr(plugin, "install_torchvision_standin", lambda **k: True)
    fresh_plugin.setitem(plugin.TARGETS, "arrival", "sglang_does_not_exist.mod.Scheduler._add_request_to_queue")
    fresh_plugin.setitem(plugin.TARGETS, "adder_class", "sglang_does_not_exist.mod.Scheduler.get_prefill_adder_class")

    class NoRegistry:  # registering anything would be a failure
        @staticmethod
        def register(*a, **k):
            raise AssertionError("a hook was registered although a target is missing")

    import sys
    import types

    fake = types.ModuleType("sglang.srt.plugins.hook_registry")
    fake.HookRegistry = NoRegistry  # type: ignore[attr-defined]
    fake.HookType = types.SimpleNamespace(AROUND="around")  # type: ignore[attr-defined]
    for name in ("sglang", "sglang.srt", "sglang.srt.plugins"):
        if name not in sys.modules:
            fresh_plugin.setitem(sys.modules, name, types.ModuleType(name))
    fresh_plugin.setitem(sys.modules, "sglang.srt.plugins.hook_registry", fake)
    with caplog.at_level(logging.ERROR, logger="prefixsched.sglang"):
        plugin.register()
    assert plugin.status()["registered"] is False
    assert "lacks hook target(s)" in caplog.text and "sglang_does_not_exist" in caplog.text


# ---------------------------------------------------------------------------------------------
# SGLang on CPU


def _require_sglang():
    from prefixsched.integration.sglang._shim import SGLangUnavailable, import_sglang

    try:
        return import_sglang()
    except SGLangUnavailable as e:
        if os.environ.get("PREFIXSCHED_REQUIRE_SGLANG") == "1":
            pytest.fail(f"SGLang is required here (PREFIXSCHED_REQUIRE_SGLANG=1) but: {e.reason}")
        pytest.skip(f"SGLang not importable: {e.reason}")


@pytest.fixture(scope="module")
def sgl():
    _require_sglang()
    from prefixsched.integration.sglang import twin

    status = twin.install_hooks()
    assert status["registered"], status
    return twin


def _small(kv: int = 6000, n: int = 60, out: int = 20, clients: int = 3, seed: int = 0, chunk: int | None = 512) -> Instance:
    return make_workload(
        "shared-prefix",
        clients=clients,
        seed=seed,
        n_requests=n,
        groups=6,
        prefix_len=300,
        question_len=40,
        output_len=out,
        rate=300.0,
        limits=Limits(
            kv_capacity_tokens=kv, max_prefill_tokens=2048, max_running_requests=16, page_size=1, chunked_prefill_size=chunk
        ),
    )


def _view(run):
    return [(s.kind, s.admitted, s.chunked, s.chunk_len, s.cache_hits) for s in run.steps]


@pytest.mark.sglang
def test_plugin_is_loaded_by_sglangs_load_plugins(sgl):
    from importlib.metadata import entry_points

    from sglang.srt.managers.schedule_policy import SchedulePolicy
    from sglang.srt.managers.scheduler import Scheduler

    eps = {ep.name: ep.value for ep in entry_points(group="sglang.srt.plugins")}
    assert eps.get("prefixsched") == "prefixsched.integration.sglang.plugin:register"
    from prefixsched.integration.sglang._shim import SUPPORTED_VERSIONS

    assert plugin.status()["registered"] and plugin.status()["sglang_version"] in SUPPORTED_VERSIONS
    adder_hook = getattr(Scheduler, "get_prefill_adder_class", None)  # 0.5.23; 0.5.17 has none
    for fn in [f for f in (adder_hook,) if f is not None] + [
        Scheduler._add_request_to_queue,
        Scheduler.process_batch_result,
        Scheduler._get_new_batch_prefill_raw,
        SchedulePolicy.calc_priority,
    ]:
        assert fn.__wrapped__ is not None  # patched by HookRegistry.apply_hooks


@pytest.mark.sglang
@pytest.mark.parametrize("kv", [6000, 1500])
def test_prefixsched_fcfs_admits_exactly_as_sglang_fcfs(sgl, kv):
    inst = _small(kv=kv)
    native = sgl.run_twin(inst, None, schedule_policy="fcfs")
    ours = sgl.run_twin(inst, "fcfs", schedule_policy="fcfs")
    assert ours.driver_counters["active"] and ours.driver_counters["decision_mismatches"] == 0
    assert len(ours.steps) == len(native.steps) > 0
    assert _view(ours) == _view(native)
    assert any(s.chunked for s in ours.steps), "the check must cover chunked prefill"
    assert any(v > 0 for s in ours.steps for v in s.cache_hits.values()), "and prefix hits"
    assert len(ours.finish) == len(inst.requests)


@pytest.mark.sglang
def test_under_kv_pressure_prefixsched_fcfs_is_sglangs_own_fcfs(sgl):
    """With a small KV pool (3,186 steps, evictions), prefixsched's fcfs through the plugin equals
    SGLang 0.5.23's own fcfs step for step: FCFS is one of SGLang's own policies
    (``Policy.native_policy``), so the plugin leaves SGLang's ``calc_priority`` running, whose LRU
    refresh of waiting prefixes decides which prefix is evicted (the sglang engine models it)."""
    inst = _small(kv=700, out=60)
    ours = sgl.run_twin(inst, "fcfs", schedule_policy="fcfs")
    native = sgl.run_twin(inst, None, schedule_policy="fcfs")
    assert len(ours.steps) > 1000 and _view(native) == _view(ours)


@pytest.mark.sglang
def test_klpm_endpoints_inside_sglang(sgl):
    """k-LPM with k=1 is FCFS and with k=inf is LPM (klpm.md), also when SGLang's adder decides."""
    # (k-lpm:inf is the papers' LPM order; the plugin's 'lpm' is SGLang's own LPM, with in-batch
    # de-prioritisation and stable ties, so the two are not compared)
    inst = _small(kv=3000, seed=1)
    assert _view(sgl.run_twin(inst, "k-lpm:1")) == _view(sgl.run_twin(inst, "fcfs"))
    kinf = sgl.run_twin(inst, "k-lpm:inf")
    assert kinf.driver_counters["active"] and kinf.driver_counters["peek_mode"] == "exact"


@pytest.mark.sglang
@pytest.mark.parametrize("spec", ["dlpm:1500", "vtc", "k-lpm:2", "lpm:8"])
def test_policies_run_inside_sglang(sgl, spec):
    inst = _small(kv=2500, n=50)
    run = sgl.run_twin(inst, spec)
    c = run.driver_counters
    assert c["active"], c["off_reason"]
    assert c["decision_mismatches"] == 0 and c["arrivals"] == len(inst.requests)
    assert set(run.finish) == {r.id for r in inst.requests}
    admitted = [rid for s in run.steps for rid in s.admitted]
    assert set(admitted) == {r.id for r in inst.requests}
    assert len(admitted) == len(inst.requests) + c["requeues"]  # once, plus once per retraction
    for s in run.steps:
        if s.admitted:
            assert s.kind == "extend"
    if spec.startswith("dlpm"):
        q_u = 1500.0
        U = inst.weights.w_e * max(r.prompt_len for r in inst.requests) + inst.weights.w_q * inst.limits.kv_capacity_tokens
        for s in run.steps:  # Thm A.1 invariant, -U < q <= Q_u, after every step
            for q in s.state["deficits"].values():
                assert -U < q <= q_u
        assert sum(run.steps[-1].state["refills"].values()) > len(inst.clients)  # several rounds happened


def _token_prompts(inst: Instance) -> Instance:
    """Token-list prompts: page-1 keys are the tokens themselves, exact at any chunk cut (a
    BlockPrompt key covers a whole block; the engine caches a cut block only once it completes)."""
    return dataclasses.replace(inst, requests=tuple(dataclasses.replace(r, prompt=tuple(r.prompt)) for r in inst.requests))


@pytest.mark.sglang
@pytest.mark.parametrize("kv,out", [(1500, 20), (700, 60)])
@pytest.mark.parametrize("spec", ["fcfs", "lpm", "dlpm:1500", "vtc", "k-lpm:2"])
def test_twin_and_the_sglang_engine_agree_step_by_step(sgl, spec, kv, out):
    """The simulator's ``sglang`` engine is the twin, step for step: admitted ids in order, the
    chunked request, prefix hits, policy state, and the pool's free / evictable / total tokens
    after every step (KV pressure: kv=700 retracts and evicts)."""
    inst = _token_prompts(_small(kv=kv, out=out))
    cmp = sgl.compare_twin(inst, spec)
    assert cmp.available, cmp.reason
    assert "cache" in cmp.fields and cmp.steps_compared > 80
    assert cmp.mismatch_count == 0, cmp.mismatches[:3]


@pytest.mark.sglang
def test_twin_comparison_sees_a_pool_difference(sgl, monkeypatch):
    """The tree-size field can fail: an engine that stops splitting on a pass that admits
    nothing (the bug this comparison found) leaves a 340-token leaf where SGLang evicts 52."""
    from prefixsched.reference.engine import sglang as eng

    inst = _token_prompts(_small(kv=700, out=60))
    orig = eng.SGLangWorker._match_visits

    def only_when_admitting(self, admitted):
        return orig(self, admitted) if admitted else {}

    monkeypatch.setattr(eng.SGLangWorker, "_match_visits", only_when_admitting)
    cmp = sgl.compare_twin(inst, "dlpm:1500")
    assert cmp.mismatch_count > 0 and cmp.mismatches[0]["field"] == "cache"


@pytest.mark.sglang
def test_vtc_counters_are_the_charges_seen_in_sglang(sgl):
    """Without lifts (one client), VTC's counter is exactly w_e * prompt tokens admitted plus
    w_q * output tokens produced, summed from SGLang's own batches."""
    inst = _small(kv=4000, n=30, clients=1)
    run = sgl.run_twin(inst, "vtc")
    by = {r.id: r for r in inst.requests}
    w = inst.weights
    total = 0.0
    for s in run.steps:
        total += sum(w.w_e * by[rid].prompt_len for rid in s.admitted)
        total += w.w_q * s.decoded
        assert s.state["counters"]["c0"] == pytest.approx(total)
    assert run.steps[-1].state["lifts"] == 0


@pytest.mark.sglang
def test_peek_walk_does_not_split_or_touch(sgl):
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams
    from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey
    from sglang.srt.sampling.sampling_params import SamplingParams

    from prefixsched.integration.sglang.adapter import peek_prefix_len, prefix_len_of

    for ps in (1, 4):
        tree = RadixCache.create_simulated(page_size=ps)
        tree.insert(InsertParams(key=RadixKey(array("q", list(range(100)))), value=None))
        tree.insert(InsertParams(key=RadixKey(array("q", list(range(50)) + [7] * 30)), value=None))

        def nodes(t=tree):
            out, stack = [], [t.root_node]
            while stack:
                x = stack.pop()
                out.append((id(x), x.last_access_time, len(x.key)))
                stack.extend(x.children.values())
            return sorted(out)

        for prompt in (list(range(70)) + [1, 2], list(range(50)) + [7] * 10 + [3], list(range(10)), [9, 9, 9]):
            sp = SamplingParams(max_new_tokens=4)
            sp.normalize(None)
            req = Req("q", "", array("q", prompt), sp)
            before = nodes()
            n, exact = peek_prefix_len(tree, req)
            assert exact and nodes() == before  # no split, no LRU touch
            req.init_next_round_input(tree)  # SGLang's own match (it splits and touches)
            assert n == prefix_len_of(req)


class _Explodes(Policy):
    name = "explodes-test"

    def __init__(self) -> None:
        self.calls = 0

    def decide(self, snap):
        self.calls += 1
        if self.calls == 3:
            b = snap.batch()
            next(iter(snap.fcfs()), None) and b.try_add(next(iter(snap.fcfs())))
            raise RuntimeError("boom")
        b = snap.batch()
        for e in snap.fcfs():
            if b.full or not b.try_add(e):
                break
        return Decision(tuple(b.admitted))


@pytest.mark.sglang
def test_a_failing_policy_turns_itself_off_and_sglang_carries_on(sgl, caplog):
    inst = _small(kv=4000, n=30)
    with caplog.at_level(logging.ERROR, logger="prefixsched.sglang"):
        run = sgl.run_twin(inst, _Explodes())
    c = run.driver_counters
    assert c["active"] is False and "decide: RuntimeError: boom" in c["off_reason"]
    assert "turns itself off" in caplog.text
    assert set(run.finish) == {r.id for r in inst.requests}  # SGLang's own scheduler finished the run


@pytest.mark.sglang
def test_retracted_requeue_is_not_an_arrival(sgl):
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    from prefixsched.integration.sglang.twin import CPUScheduler, _driver_for
    from prefixsched.reference.policies import create

    sched = CPUScheduler(kv_capacity_tokens=2000, max_running_requests=4, chunked_prefill_size=None)
    drv = _driver_for(sched, create("vtc"), lambda: 0.0, "vtc")
    sp = SamplingParams(max_new_tokens=4)
    sp.normalize(None)
    req = Req("a", "", array("q", [1, 2, 3]), sp, routing_key="alice")
    sched._add_request_to_queue(req)
    assert drv.arrivals == 1 and drv.policy.state()["counters"] == {"alice": 0.0}
    sched.waiting_queue.clear()
    sched._add_request_to_queue(req, is_retracted=True)
    assert drv.arrivals == 1 and drv.requeues == 1
    sched.waiting_queue.clear()
    sched._add_request_to_queue(req)  # preempted and re-queued without the flag: a known id
    assert drv.arrivals == 1 and drv.requeues == 2


@pytest.mark.sglang
def test_calc_priority_is_a_noop_while_a_policy_drives(sgl):
    from sglang.srt.managers.schedule_batch import Req, ScheduleBatch
    from sglang.srt.sampling.sampling_params import SamplingParams

    from prefixsched.integration.sglang.twin import CPUScheduler, _driver_for
    from prefixsched.reference.policies import create

    sched = CPUScheduler(kv_capacity_tokens=2000, max_running_requests=4)
    reqs = []
    for i, p in enumerate(([5, 6, 7], [1, 2, 3, 4, 5, 6])):
        sp = SamplingParams(max_new_tokens=4)
        sp.normalize(None)
        reqs.append(Req(f"r{i}", "", array("q", p), sp))
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    sched.tree_cache.insert(InsertParams(key=RadixKey(array("q", [1, 2, 3, 4, 5])), value=None))
    q = list(reqs)
    sched.policy.calc_priority(q, ScheduleBatch(reqs=[]))
    assert [r.rid for r in q] == ["r1", "r0"]  # SGLang's LPM sorts when nothing drives
    drv = _driver_for(sched, create("dlpm"), lambda: 0.0, "dlpm")
    q = list(reqs)
    sched.policy.calc_priority(q, ScheduleBatch(reqs=[]))
    assert [r.rid for r in q] == ["r0", "r1"] and drv.active  # untouched while prefixsched drives
    drv.policy = create("fcfs")  # a native policy: SGLang's calc_priority runs, as fcfs (no sort)
    q = list(reqs)
    sched.policy.calc_priority(q, ScheduleBatch(reqs=[]))
    assert [r.rid for r in q] == ["r0", "r1"]
    drv.policy = create("lpm")  # ... as lpm: SGLang's LPM sort
    q = list(reqs)
    sched.policy.calc_priority(q, ScheduleBatch(reqs=[]))
    assert [r.rid for r in q] == ["r1", "r0"]


@pytest.mark.sglang
@pytest.mark.trace
def test_twin_on_a_slice_of_the_real_trace(sgl):
    path = Path(os.environ.get("PREFIXSCHED_MOONCAKE_TRACE", REAL_TRACE))
    if not path.exists():
        pytest.skip(f"real trace not found at {path}")
    from dataclasses import replace

    from prefixsched.reference.traces import load_mooncake

    base = load_mooncake(path, clients=4, max_requests=40)
    reqs = tuple(replace(r, output_len=min(r.output_len, 12)) for r in base.requests)
    inst = Instance(
        reqs,
        cost_model=base.cost_model,
        limits=Limits(kv_capacity_tokens=400_000, max_prefill_tokens=16384, max_running_requests=32, page_size=1),
    )
    native = sgl.run_twin(inst, None, schedule_policy="fcfs")
    ours = sgl.run_twin(inst, "fcfs", schedule_policy="fcfs")
    assert _view(ours) == _view(native)
    assert any(v > 0 for s in ours.steps for v in s.cache_hits.values())
    d = sgl.run_twin(inst, "dlpm:8000")
    assert d.driver_counters["active"] and set(d.finish) == {r.id for r in reqs}


@pytest.mark.sglang
def test_compare_twin_is_feature_detected(sgl, monkeypatch):
    inst = _small(n=12, out=4)
    if not sgl.sglang_engine_available():
        cmp = sgl.compare_twin(inst, "fcfs")
        assert cmp.available is False and "engine='sglang'" in cmp.reason and cmp.steps_compared == 0
    # a stand-in engine that replays the twin itself must give 0 mismatches, a perturbed one not
    twin_run = sgl.run_twin(inst, "fcfs")
    engine_steps = [
        {"admitted": list(s.admitted), "chunked": s.chunked, "state": dict(s.state), "cache_hits": dict(s.cache_hits)}
        for s in twin_run.steps
    ]

    monkeypatch.setattr(sgl, "_engine_steps", lambda instance, spec: engine_steps)
    assert sgl.sglang_engine_available()
    cmp = sgl.compare_twin(inst, "fcfs", twin=twin_run)
    assert cmp.available and cmp.steps_compared == len(twin_run.steps) and cmp.mismatch_count == 0
    twin_run.steps[3].admitted.append("ghost")
    cmp = sgl.compare_twin(inst, "fcfs", twin=twin_run)
    assert cmp.mismatch_count == 1 and cmp.mismatches[0]["step"] == 3


# ---------------------------------------------------------------------------------------------
# D²LPM on SGLang's data parallelism


def _recording(q_w: float):
    """A D2LPMDispatcher that logs the call sequence the cluster simulator made."""
    from prefixsched.reference.cluster import D2LPMDispatcher

    class Recording(D2LPMDispatcher):
        def bind(self, instance, workers):
            super().bind(instance, workers)
            self.calls: list[tuple] = []

        def select(self, request, keys, now, loads):
            w = super().select(request, keys, now, loads)
            self.calls.append(("dispatch", request.id, w))
            return w

        def on_finish(self, request, worker, now):
            self.calls.append(("finish", request.id, request.output_len))
            super().on_finish(request, worker, now)

        def on_evict(self, worker, keys, start_pages, now):
            self.calls.append(("evict", worker, tuple(keys), start_pages))
            super().on_evict(worker, keys, start_pages, now)

    return Recording(q_w)


def _tokens_of_key(key, bs: int, ps: int) -> list[int]:
    if isinstance(key, tuple) and key and key[0] == "B":
        start = key[1] * bs + key[2] * ps
        return list(range(start, start + ps))
    if isinstance(key, tuple) and key and key[0] == "O":  # output pages never match a prompt
        return [-(abs(hash(key)) % (1 << 40)) - 1] * ps
    return [int(key)] if ps == 1 else list(key)


@pytest.mark.sglang
@pytest.mark.parametrize("q_w", [3000.0, math.inf])
def test_d2lpm_dispatch_with_real_reqs_matches_the_cluster_simulator(sgl, q_w):
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    from prefixsched.integration.sglang.dp import DPDispatch
    from prefixsched.reference.cluster import D2LPMDispatcher, simulate_cluster

    inst = make_workload(
        "shared-prefix", clients=4, seed=2, n_requests=80, groups=8, prefix_len=200, question_len=30,
        output_len=16, rate=400.0, block_size=1,
        limits=Limits(kv_capacity_tokens=1500, max_prefill_tokens=2048, max_running_requests=8, page_size=1),
    )
    rec = _recording(q_w)
    ct = simulate_cluster(inst, "lpm", rec, workers=3)
    assert any(c[0] == "evict" for c in rec.calls), "the replay must cover eviction feedback"
    by = {r.id: r for r in inst.requests}
    dd = DPDispatch(D2LPMDispatcher(q_w), 3, weights=inst.weights, feedback="events")
    got = {}
    for c in rec.calls:
        if c[0] == "dispatch":
            r = by[c[1]]
            sp = SamplingParams(max_new_tokens=r.output_len)
            sp.normalize(None)
            req = Req(r.id, "", array("q", list(r.prompt)), sp, routing_key=r.client)
            got[r.id] = dd.select(req)
        elif c[0] == "finish":
            dd.on_finish(c[1], c[2])
        else:
            _, w, keys, start = c
            toks = [t for k in keys for t in _tokens_of_key(k, 1, 1)]
            dd.on_evict(w, toks, start)
    assert got == ct.dispatch
    assert dd.dispatcher.state()["deficits"] == rec.state()["deficits"]


@pytest.mark.sglang
def test_dp_controller_hook_replaces_sglangs_dispatch(sgl, monkeypatch):
    from sglang.srt.managers import data_parallel_controller as dpc
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    from sglang.srt.sampling.sampling_params import SamplingParams

    from prefixsched.integration.sglang import dp
    from prefixsched.reference.cluster import D2LPMDispatcher

    if not hasattr(dpc.DataParallelController.init_dispatcher, "__wrapped__"):
        HookRegistry.register(dp.TARGET, dp._hook_init_dispatcher, HookType.AROUND)
        HookRegistry.apply_hooks()
    monkeypatch.setenv("PREFIXSCHED_DISPATCH", "d2lpm:2000")
    monkeypatch.setattr(plugin, "_CONFIG", plugin.read_config())
    monkeypatch.setattr(dp, "_CONFIG", plugin._CONFIG)  # what dp.hooks() hands over at registration
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(dpc, "sock_send", lambda sock, obj: sent.append((sock, obj.rid)))
    ctl = object.__new__(dpc.DataParallelController)
    ctl.workers = [0, 1, 2]
    ctl.launch_dp_size = 3
    ctl._active_workers = [0, 1, 2]
    ctl.status = [True] * 3
    ctl.load_balance_method = dpc.LoadBalanceMethod.ROUND_ROBIN
    ctl.round_robin_counter = 0
    ctl.dispatching = ctl.round_robin_scheduler
    ctl.dispatching_native = ctl.dispatching
    ctl.init_dispatcher()
    assert isinstance(ctl._prefixsched_dispatch, dp.DPDispatch)
    ref = dp.DPDispatch(D2LPMDispatcher(2000.0), 3, feedback="snapshots")
    shared = list(range(300))
    for i in range(12):
        sp = SamplingParams(max_new_tokens=8)
        sp.normalize(None)
        prompt = shared + [1000 + i] * 5 if i % 2 else [2000 + i] * 40
        req = Req(f"r{i}", "", array("q", prompt), sp, routing_key=f"c{i % 3}")
        req.routed_dp_rank = 2 if i == 11 else None
        ctl.dispatching(req)
        if i != 11:
            ref.select(req)
    assert [rid for _, rid in sent] == [f"r{i}" for i in range(12)]
    assert [w for w, _ in sent[:11]] == [w for _, w in ref.decisions]
    assert sent[11] == (2, "r11")  # SGLang's direct routing is kept
    assert len({w for w, _ in sent[:11]}) > 1


# ---------------------------------------------------------------------------------------------
# the same tests against SGLang 0.5.17 (the GPU image's version), on CPU


@pytest.mark.sglang
def test_plugin_suite_on_sglang_0517():
    """Runs this file in a subprocess with the 0.5.17 overlay of
    ``integration/cpu/sglang_0517_overlay.sh`` first on ``PYTHONPATH`` (skips without
    ``PREFIXSCHED_SGLANG_0517_OVERLAY``)."""
    overlay = os.environ.get("PREFIXSCHED_SGLANG_0517_OVERLAY")
    if not overlay or os.environ.get("_PREFIXSCHED_IN_0517_RUN"):
        pytest.skip("PREFIXSCHED_SGLANG_0517_OVERLAY not set (integration/cpu/sglang_0517_overlay.sh builds it)")
    _require_sglang()
    import subprocess
    import sys

    env = dict(os.environ, _PREFIXSCHED_IN_0517_RUN="1", PREFIXSCHED_REQUIRE_SGLANG="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(overlay) / "site"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    code = "from prefixsched.integration.sglang._shim import sglang_version; print(sglang_version())"
    v = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert v.stdout.strip() == "0.5.17", v.stderr[-2000:]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stdout[-4000:]
    assert " passed" in out.stdout and " failed" not in out.stdout


@pytest.mark.sglang
def test_policy_file_switches_policies_on_one_server(sgl, tmp_path, monkeypatch, caplog):
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    from prefixsched.integration.sglang.twin import CPUScheduler

    f = tmp_path / "policy"
    f.write_text("vtc\n")
    monkeypatch.setattr(plugin, "_CONFIG", plugin.read_config({"PREFIXSCHED_POLICY_FILE": str(f)}))
    monkeypatch.setattr(plugin, "_AUTO_ATTACH", True)
    sched = CPUScheduler(kv_capacity_tokens=2000, max_running_requests=4)

    def arrive(rid):
        sp = SamplingParams(max_new_tokens=2)
        sp.normalize(None)
        sched._add_request_to_queue(Req(rid, "", array("q", [1, 2, 3]), sp, routing_key="u"))
        return plugin.driver_of(sched, create=False)

    d = arrive("a")
    assert d.active and d.policy.name == "vtc" and d.arrivals == 1
    for spec, active, name in (("off", False, None), ("dlpm:100", True, "dlpm"), ("sglang:lpm", False, None), ("nope", False, None)):
        f.write_text(spec)
        os.utime(f, ns=(time_ns := __import__("time").time_ns(), time_ns + 1))
        with caplog.at_level(logging.INFO, logger="prefixsched.sglang"):
            d = arrive(f"r-{spec}")
        assert d.active is active, (spec, d.off_reason)
        if name:
            assert d.policy.name == name and d.spec == spec
    assert "holds 'nope'" in caplog.text
