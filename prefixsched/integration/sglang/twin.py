"""The twin run: SGLang's real scheduler pieces stepped on CPU with the cost model's clock.

:class:`CPUScheduler` is a stand-in object holding exactly the attributes SGLang 0.5.23's
``Scheduler`` methods read; the methods themselves are SGLang's, looked up on the ``Scheduler``
class at call time (so the plugin's hooks, once applied, run inside them). What runs for real:

- ``Req`` objects (``srt/managers/schedule_batch.py``), ``RadixCache``
  (``srt/mem_cache/radix_cache.py``), ``TokenToKVPoolAllocator`` (``mem_cache/allocator/token.py``)
  and ``ReqToTokenPool`` on ``device="cpu"``, ``SchedulePolicy``, ``PrefillAdder`` and the plugin's
  subclass of it;
- ``Scheduler._add_request_to_queue`` (with the plugin's arrival hook),
  ``Scheduler.get_next_batch_to_run`` (merge of the last prefill batch, ``filter_batch``,
  ``get_new_batch_prefill`` -> ``_get_new_batch_prefill_raw`` with ``calc_priority``, the adder
  loop, ``ScheduleBatch.init_new``, ``prepare_for_extend``; ``update_running_batch`` with
  ``check_decode_mem``, ``retract_decode`` and ``prepare_for_decode``);
- ``Scheduler.process_batch_result`` (with the plugin's charging hook) and the real
  ``SchedulerBatchResultProcessor.process_batch_result_prefill`` / ``_decode`` (output tokens,
  ``update_finish_state``, ``release_kv_cache``, ``checkpoint_kv_cache``).

The forward pass is replaced: next tokens are synthetic ids cycling through the model's vocabulary
(``1 + counter mod (vocab - 2)``; 0.5.17 finishes a request whose token is outside the vocabulary),
so an output can only create a prefix match for a prompt that contains another request's whole
prompt followed by that same token (the workloads here never do), and the clock advances by the
cost model:
an extend batch takes ``cost.prefill_time(sum_r weighted_extend(extend_len_r, prompt_len_r))``, a
decode batch ``cost.decode_time(n, sum_r (prompt_len_r + generated_r))`` (SGLang runs prefill and
decode as separate forward passes; ``--enable-mixed-chunk`` is off). Requests with ``arrival <=
clock`` join the queue (``_add_request_to_queue``) before each scheduling step, in instance order;
an idle server jumps to the next arrival.

:data:`NOT_EXECUTED` lists every SGLang function on that path the twin could not run on CPU, with
the reason.

:func:`compare_twin` runs the same workload through prefixsched's simulator with
``engine="sglang"`` (when the simulator offers that engine; feature-detected) and counts the steps
compared and the mismatches of admitted requests, the chunked request, the policy counters and
the cache hits.
"""

from __future__ import annotations

import inspect
import itertools
import math
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefixsched.errors import InputError
from prefixsched.integration.sglang._shim import import_sglang, publish_cpu_runtime
from prefixsched.integration.sglang.adapter import PolicyDriver, extend_len_of, prefix_len_of
from prefixsched.reference.policies import create as create_policy
from prefixsched.reference.policies.base import Policy
from prefixsched.theory.model import BlockPrompt, Instance, Request

__all__ = [
    "CPUScheduler",
    "TwinStep",
    "TwinRun",
    "run_twin",
    "compare_twin",
    "TwinComparison",
    "NOT_EXECUTED",
    "sglang_engine_available",
]

#: SGLang functions on the twin's path that do not run on CPU, and why (SGLang 0.5.23).
NOT_EXECUTED: dict[str, str] = {
    "Scheduler.__init__": "builds the model runner, NCCL/gloo groups, ZMQ sockets and the KV pool from a "
    "real model; the stand-in sets the attributes the scheduling methods read instead",
    "Scheduler.run_batch / TpModelWorker.forward_batch_generation": "the forward pass needs the model; "
    "replaced by the cost model's clock and synthetic token ids",
    "Scheduler.event_loop_normal / event_loop_overlap": "receive loops on ZMQ sockets; the twin's loop "
    "calls get_next_batch_to_run and process_batch_result in the same order as event_loop_normal",
    "Scheduler.recv_requests / handle_generate_request": "tokenizer IPC; requests are built as Req "
    "objects and queued with _add_request_to_queue directly",
    "SchedulerOutputStreamer.stream_output": "sends to the detokenizer over ZMQ; a no-op stand-in",
    "SchedulerMetricsReporter.* / SchedulerLoadInquirer.* / load publisher": "metrics and load "
    "snapshots for routers (ZMQ, shared memory); no-op stand-ins",
    "Scheduler._record_step_counters / publish_load_snapshot / maybe_send_health_check_signal": "step "
    "timing and health bookkeeping of the real loop; no-op stand-ins",
    "UnifiedRadixCache (Rust tree core)": "0.5.23's production tree; the twin uses the Python RadixCache "
    "(0.5.17's default tree), on which the adapter's LPM walk is exact",
    "PrefillDelayer / DynamicChunkSizer / priority preemption / LoRA / HiCache / overlap scheduling": "off "
    "(server defaults for one GPU without those flags)",
}


class _Null:
    """Absorbs any attribute access and call (metrics, streaming, tracing stand-ins)."""

    def __getattr__(self, name: str) -> "_Null":
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __bool__(self) -> bool:
        return False


class _PassThrough:
    """``dp_attn_adapter`` / ``ngram_embedding_manager`` stand-ins: return the batch unchanged."""

    def maybe_prepare_mlp_sync_batch(self, batch: Any, need_sync: bool = False) -> Any:
        return batch

    def maybe_convert_decode_to_extend(self, batch: Any) -> Any:
        return batch

    def prepare_for_forward(self, batch: Any, chunked_req: Any = None) -> Any:
        return batch


class _Beams:
    def pending_member_rows(self, batch: Any) -> int:
        return 0

    def retire_group(self, req: Any) -> None:
        return None


_FORWARDED = (
    "_get_new_batch_prefill_raw",
    "get_new_batch_prefill",
    "get_next_batch_to_run",
    "update_running_batch",
    "get_num_allocatable_reqs",
    "_add_request_to_queue",
    "_set_or_validate_priority",
    "_abort_on_queued_limit",
    "_prefetch_kvcache",
    "get_prefill_adder_class",  # 0.5.23 only (0.5.17 builds PrefillAdder by name)
    "process_batch_result",
    "stash_chunked_request",
    "process_pending_chunked_abort",
    "_process_hicache_events",
    "_should_defer_prefill",
    "_arm_prefill_decode_interval",
    "_reqs_finishing_inflight",
    "_abort_on_waiting_timeout",  # 0.5.17 (no-op unless SGLANG_REQ_WAITING_TIMEOUT is set)
    "_abort_on_running_timeout",  # 0.5.17
)


class CPUScheduler:
    """SGLang's ``Scheduler`` scheduling methods on CPU (module docstring).

    Parameters
    ----------
    kv_capacity_tokens:
        Size of the ``TokenToKVPoolAllocator`` (tokens).
    max_running_requests, max_prefill_tokens, chunked_prefill_size, page_size:
        SGLang's knobs (``chunked_prefill_size=None`` = chunking off).
    schedule_policy:
        SGLang's ``--schedule-policy`` (``lpm`` by default; ignored while a prefixsched policy
        drives admission).
    schedule_conservativeness:
        SGLang's ``--schedule-conservativeness`` (the new_token_ratio schedule).

    Raises
    ------
    SGLangUnavailable
        If SGLang cannot be imported.
    InputError
        If ``page_size`` is not 1 (the twin uses the non-paged ``TokenToKVPoolAllocator``).
    """

    def __init__(
        self,
        *,
        kv_capacity_tokens: int,
        max_running_requests: int,
        max_prefill_tokens: int = 16384,
        chunked_prefill_size: int | None = 8192,
        page_size: int = 1,
        schedule_policy: str = "lpm",
        schedule_conservativeness: float = 1.0,
        max_context_len: int = 1 << 17,
    ) -> None:
        if page_size != 1:
            raise InputError("page_size", f"the twin run supports page_size 1 only, got {page_size}")
        import_sglang()
        knobs = dict(  # SGLang's ServerArgs fields of this stand-in (published and kept)
            pp_max_micro_batch_size=max_running_requests,
            chunked_prefill_size=chunked_prefill_size if chunked_prefill_size else -1,
            max_prefill_tokens=max_prefill_tokens,
            max_running_requests=max_running_requests,
            schedule_policy=schedule_policy,
            schedule_conservativeness=schedule_conservativeness,
            page_size=page_size,
        )
        publish_cpu_runtime(**knobs)
        import torch
        from sglang.srt.configs.model_config import ModelConfig
        from sglang.srt.disaggregation.utils import DisaggregationMode
        from sglang.srt.managers.schedule_batch import ScheduleBatch
        from sglang.srt.managers.schedule_policy import SchedulePolicy
        from sglang.srt.managers.scheduler_components.batch_result_processor import SchedulerBatchResultProcessor
        from sglang.srt.managers.scheduler_components.logprob_result_processor import (
            SchedulerLogprobResultProcessor,
        )
        from sglang.srt.managers.scheduler_components.new_token_ratio_tracker import NewTokenRatioTracker
        from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
        from sglang.srt.mem_cache.cache_init_params import CacheInitParams
        from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
        from sglang.srt.mem_cache.radix_cache import RadixCache
        from sglang.srt.server_args import ServerArgs
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
        from prefixsched.integration.sglang import _shim

        self.token_to_kv_pool_allocator = TokenToKVPoolAllocator(
            size=kv_capacity_tokens, dtype=torch.float32, device="cpu", kvcache=None, need_sort=False
        )
        self.req_to_token_pool = ReqToTokenPool(
            size=max_running_requests + 2, max_context_len=max_context_len, device="cpu", enable_memory_saver=False
        )
        self.tree_cache = RadixCache(
            CacheInitParams(
                disable=False,
                req_to_token_pool=self.req_to_token_pool,
                token_to_kv_pool_allocator=self.token_to_kv_pool_allocator,
                page_size=page_size,
            )
        )
        self.page_size = page_size
        self.max_running_requests = max_running_requests
        self.max_prefill_tokens = max_prefill_tokens
        self.chunked_prefill_size = chunked_prefill_size
        self.schedule_policy = schedule_policy
        self.policy = SchedulePolicy(schedule_policy, self.tree_cache, False, False, False)
        self.server_args = ServerArgs(model_path=_shim._PUBLISHED, device="cpu", skip_tokenizer_init=True, **knobs)
        if hasattr(NewTokenRatioTracker, "from_config"):  # 0.5.23
            self.new_token_ratio_tracker = NewTokenRatioTracker.from_config()
        else:  # 0.5.17
            self.new_token_ratio_tracker = NewTokenRatioTracker.from_server_args(self.server_args)
        self.model_config = ModelConfig.from_server_args(self.server_args)
        self.spec_algorithm = SpeculativeAlgorithm.from_string(None)
        self.disaggregation_mode = DisaggregationMode.NULL
        self.waiting_queue: list[Any] = []
        self.running_batch = ScheduleBatch(reqs=[], batch_is_full=False)
        self.last_batch: Any = None
        self.chunked_req: Any = None
        self._pending_chunked_abort_req = None
        # features off (server defaults)
        for name in (
            "enable_hicache_storage", "enable_priority_preemption", "enable_lora", "is_hybrid_swa",
            "enable_priority_scheduling", "enable_hierarchical_cache", "enable_unified_cache_external_linker",
            "enable_lmcache", "enable_overlap", "is_mixed_chunk", "enable_hisparse", "require_mlp_sync",
            "enable_skip_finishing_decode", "abort_on_priority_when_disabled", "enable_fpm",
            "schedule_low_priority_values_first", "enable_dynamic_chunking",
        ):
            setattr(self, name, False)
        self.min_free_slots_delayer = None
        self.scheduler_stage_metrics = None
        self.dynamic_chunk_sizer = None
        self.prefill_delayer = None
        self.dllm_config = None
        self.hisparse_coordinator = None
        self.decode_offload_manager = None
        self.lora_drainer = None
        self.max_queued_requests = None
        self.truncation_align_size = None
        self.priority_scheduling_preemption_threshold = 10
        self.max_prefill_bs = 0
        self.processed_tokens_counter = 0
        self.prefill_decode_interval = 0
        self._prefill_decode_interval_remaining = 0
        self.prefill_decode_interval_min_bs = 0
        self.result_queue = None
        self.forward_ct = 0
        self.device = "cpu"
        self.is_generation = True
        self.beam_coordinator = _Beams()
        self.grammar_manager = types.SimpleNamespace(has_waiting_grammars=lambda: False)
        self.tp_worker = types.SimpleNamespace(
            model_runner=types.SimpleNamespace(attn_backend=object(), prefill_aware_swa=False)
        )
        self.dp_attn_adapter = _PassThrough()
        self.ngram_embedding_manager = _PassThrough()
        null = _Null()
        self.load_inquirer = null
        self.load_publisher = null
        self.metrics_reporter = _Null()
        self.metrics_reporter.num_generated_tokens = 0
        self.metrics_reporter.forward_ct_decode = 0
        self.metrics_reporter.enable_metrics = False
        self.output_streamer = null
        self.future_map = null
        self.batch_result_processor = _build(
            SchedulerBatchResultProcessor,
            server_args=self.server_args,
            is_generation=True,
            disaggregation_mode=self.disaggregation_mode,
            enable_overlap=False,
            enable_overlap_mlx=False,
            model_config=self.model_config,
            token_to_kv_pool_allocator=self.token_to_kv_pool_allocator,
            tree_cache=self.tree_cache,
            hisparse_coordinator=None,
            req_to_token_pool=self.req_to_token_pool,
            decode_offload_manager=None,
            metrics_collector=null,
            metrics_reporter=self.metrics_reporter,
            draft_worker=None,
            model_worker=null,
            logprob_result_processor=SchedulerLogprobResultProcessor(model_config=self.model_config),
            output_streamer=null,
            beam_coordinator=self.beam_coordinator,
            abort_request=null,
        )

    # the loop's bookkeeping that needs a real server: no-ops
    def publish_load_snapshot(self, force: bool = False) -> None:
        return None

    def _record_step_counters(self, batch: Any, result: Any) -> None:
        return None

    def _maybe_clear_mm_inputs(self, batch: Any) -> None:
        return None

    def maybe_send_health_check_signal(self) -> None:
        return None

    def send_abort_output(self, *args: Any, **kwargs: Any) -> None:
        return None


def _build(cls: type, **kwargs: Any) -> Any:
    """``cls(**kwargs)`` keeping only the fields this SGLang version's dataclass declares."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in kwargs.items() if k in names})


def _forward(name: str) -> Callable[..., Any]:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        from sglang.srt.managers.scheduler import Scheduler

        return getattr(Scheduler, name)(self, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"SGLang's ``Scheduler.{name}`` (looked up at call time, hooks included)."
    return method


for _name in _FORWARDED:
    setattr(CPUScheduler, _name, _forward(_name))


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class TwinStep:
    """One forward step of the twin run.

    ``kind`` is ``"extend"`` or ``"decode"``; ``admitted`` the ids the pass admitted (new
    requests; the resumed chunked request is not in it), ``chunked`` the request being chunked
    after the pass (None if none) and ``chunk_len`` its extend length in this step;
    ``cache_hits`` the device prefix matched per admitted request (tokens); ``state`` the
    policy's counters after the step; ``start``/``end`` the cost-model clock (seconds);
    ``cache`` the ``(available_size, evictable_size, total_size)`` tokens of the KV pool and
    the tree after ``process_batch_result`` (None where the tree does not report them).
    """

    step: int
    kind: str
    start: float
    end: float
    admitted: list[str]
    chunked: str | None
    chunk_len: int | None
    cache_hits: dict[str, int]
    decoded: int
    finished: list[str]
    state: dict[str, Any]
    cache: tuple[int, int, int] | None = None


@dataclass
class TwinRun:
    """A finished twin run: its steps and per-request times (seconds, cost-model clock)."""

    policy: str
    steps: list[TwinStep]
    first_token: dict[str, float]
    finish: dict[str, float]
    admit: dict[str, float]
    driver_counters: dict[str, Any]
    not_executed: dict[str, str] = field(default_factory=lambda: dict(NOT_EXECUTED))

    def admitted_steps(self) -> list[TwinStep]:
        return [s for s in self.steps if s.admitted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "steps": [s.__dict__ for s in self.steps],
            "first_token": self.first_token,
            "finish": self.finish,
            "admit": self.admit,
            "driver": self.driver_counters,
            "not_executed": self.not_executed,
        }


def _tokens_of(r: Request) -> list[int]:
    p = r.prompt
    if isinstance(p, BlockPrompt):
        return list(iter(p))
    return list(p)


def _make_req(r: Request, vocab_size: int) -> Any:
    from array import array

    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    sp = SamplingParams(max_new_tokens=r.output_len, ignore_eos=True)
    sp.normalize(None)
    kwargs: dict[str, Any] = {}
    params = inspect.signature(Req.__init__).parameters
    if "routing_key" in params:
        kwargs["routing_key"] = r.client
    if "vocab_size" in params:
        kwargs["vocab_size"] = vocab_size
    req = Req(r.id, "", array("q", _tokens_of(r)), sp, **kwargs)
    if "routing_key" not in params:
        req.routing_key = r.client
    return req


def _driver_for(sched: CPUScheduler, policy: Policy, clock: Callable[[], float], spec: str) -> PolicyDriver:
    d = PolicyDriver(policy, spec=spec, clock=clock, record=True, default_client="default")
    sched.__dict__["_prefixsched_driver"] = d
    sched.policy._prefixsched_driver = d
    return d


def run_twin(
    instance: Instance,
    policy: Policy | str | None,
    *,
    schedule_policy: str = "lpm",
    schedule_conservativeness: float = 1.0,
    max_steps: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TwinRun:
    """Run ``policy`` on ``instance`` through SGLang's real scheduler pieces (module docstring).

    The plugin's hooks must be applied (:func:`install_hooks` does it for tests and scripts:
    it runs SGLang's own ``load_plugins()`` with ``PREFIXSCHED_POLICY`` set, or applies the
    hooks directly if the plugin was loaded already).

    Parameters
    ----------
    instance:
        Requests, limits (``kv_capacity_tokens``, ``max_running_requests``,
        ``max_prefill_tokens``, ``chunked_prefill_size``, ``page_size`` = 1) and the cost model
        (the clock).
    policy:
        A fresh policy object or a spec (``"dlpm:8000"``); None runs SGLang's own scheduling
        (``schedule_policy``) with the plugin's driver off, the reference the adapter is checked
        against (prefixsched's ``fcfs`` must admit exactly as SGLang's ``fcfs``).
    schedule_policy:
        SGLang's ``--schedule-policy`` of the stand-in scheduler.
    max_steps:
        Stop after this many forward steps (None: run to completion).

    Raises
    ------
    SGLangUnavailable
        If SGLang cannot be imported.
    RuntimeError
        If the plugin's hooks are not applied, or the run stops making progress.
    """
    if policy is None:
        spec = f"sglang:{schedule_policy}"
        pol: Policy | None = None
    else:
        spec = policy if isinstance(policy, str) else policy.name
        pol = create_policy(policy) if isinstance(policy, str) else policy
    lim = instance.limits
    sched = CPUScheduler(
        kv_capacity_tokens=lim.kv_capacity_tokens,
        max_running_requests=lim.max_running_requests,
        max_prefill_tokens=lim.max_prefill_tokens,
        chunked_prefill_size=lim.chunked_prefill_size,
        page_size=lim.page_size,
        schedule_conservativeness=schedule_conservativeness,
        schedule_policy=schedule_policy,
        max_context_len=max(r.prompt_len + r.output_len for r in instance.requests) + 8,
    )
    _check_hooks()
    cost = instance.cost_model
    clock = [0.0]
    drv = _driver_for(sched, pol if pol is not None else create_policy("fcfs"), lambda: clock[0], spec)
    if pol is None:
        drv.active = False
        drv.off_reason = "native SGLang scheduling (reference run)"
    reqs = list(instance.requests)
    n = len(reqs)
    nxt = 0
    synth = itertools.count()
    vocab = int(sched.model_config.vocab_size)
    steps: list[TwinStep] = []
    first_token: dict[str, float] = {}
    finish: dict[str, float] = {}
    admit: dict[str, float] = {}
    done = 0
    idle_spins = 0
    while done < n:
        if max_steps is not None and len(steps) >= max_steps:
            break
        while nxt < n and reqs[nxt].arrival <= clock[0]:
            sched._add_request_to_queue(_make_req(reqs[nxt], vocab))
            nxt += 1
        prev_chunked = sched.chunked_req
        plan = sched.get_next_batch_to_run(sched.running_batch, sched.last_batch)
        sched.running_batch = plan.running_batch
        batch = plan.batch_to_run
        if batch is None:
            sched.last_batch = None
            if nxt < n:
                clock[0] = max(clock[0], reqs[nxt].arrival)
                continue
            idle_spins += 1
            if idle_spins > 2:
                raise RuntimeError(
                    f"twin run stuck at t={clock[0]}: {len(sched.waiting_queue)} waiting, "
                    f"{len(sched.running_batch.reqs)} running, no batch and no arrival left"
                )
            continue
        idle_spins = 0
        is_extend = batch.forward_mode.is_extend()
        start = clock[0]
        admitted: list[str] = []
        hits: dict[str, int] = {}
        if is_extend:
            weighted = 0.0
            for r in batch.reqs:
                weighted += cost.weighted_extend(extend_len_of(r), len(r.origin_input_ids))
                if r is not prev_chunked:
                    admitted.append(str(r.rid))
                    hits[str(r.rid)] = prefix_len_of(r)
            dt = cost.prefill_time(weighted)
        else:
            ctx = sum(len(r.origin_input_ids) + len(r.output_ids) for r in batch.reqs)
            dt = cost.decode_time(len(batch.reqs), ctx)
        chunked = sched.chunked_req
        chunk_len = None if chunked is None else extend_len_of(chunked)
        import torch
        from sglang.srt.managers.utils import GenerationBatchResult

        ids = torch.tensor([1 + next(synth) % (vocab - 2) for _ in batch.reqs], dtype=torch.int64)
        result = GenerationBatchResult(next_token_ids=ids, can_run_cuda_graph=False)
        clock[0] = start + dt
        before_out = {r.rid: len(r.output_ids) for r in batch.reqs}
        sched.process_batch_result(batch, result)
        sched.forward_ct += 1
        sched.last_batch = batch
        for rid in admitted:
            admit[rid] = start
        decoded = 0
        fin: list[str] = []
        for r in batch.reqs:
            k = len(r.output_ids) - before_out[r.rid]
            decoded += k
            if k > 0 and r.rid not in first_token:
                first_token[r.rid] = clock[0]
            if r.finished() and r.rid not in finish:
                finish[r.rid] = clock[0]
                fin.append(r.rid)
        done += len(fin)
        steps.append(
            TwinStep(
                step=len(steps),
                kind="extend" if is_extend else "decode",
                start=start,
                end=clock[0],
                admitted=admitted,
                chunked=None if chunked is None else str(chunked.rid),
                chunk_len=chunk_len,
                cache_hits=hits,
                decoded=decoded,
                finished=fin,
                state=pol.state() if pol is not None else {},
                cache=_cache_sizes(sched),
            )
        )
        if progress is not None and fin:
            progress(done, n)
    return TwinRun(
        policy=spec,
        steps=steps,
        first_token=first_token,
        finish=finish,
        admit=admit,
        driver_counters={
            "decisions": drv.decisions,
            "decision_mismatches": drv.decision_mismatches,
            "arrivals": drv.arrivals,
            "requeues": drv.requeues,
            "peek_mode": drv.peek_mode,
            "active": drv.active,
            "off_reason": drv.off_reason,
        },
    )


# ---------------------------------------------------------------------------------------------
# hooks for in-process use


def _cache_sizes(sched: Any) -> tuple[int, int, int] | None:
    tree = sched.tree_cache
    try:
        return (int(sched.token_to_kv_pool_allocator.available_size()), int(tree.evictable_size()),
                int(tree.total_size()))
    except (AttributeError, TypeError, NotImplementedError):  # a tree without the counters
        return None


def _check_hooks() -> None:
    from sglang.srt.managers.schedule_policy import SchedulePolicy
    from sglang.srt.managers.scheduler import Scheduler

    names = {
        "Scheduler._get_new_batch_prefill_raw": Scheduler._get_new_batch_prefill_raw,
        "Scheduler._add_request_to_queue": Scheduler._add_request_to_queue,
        "Scheduler.process_batch_result": Scheduler.process_batch_result,
        "SchedulePolicy.calc_priority": SchedulePolicy.calc_priority,
    }
    if hasattr(Scheduler, "get_prefill_adder_class"):
        names["Scheduler.get_prefill_adder_class"] = Scheduler.get_prefill_adder_class
    missing = [k for k, fn in names.items() if not hasattr(fn, "__wrapped__")]
    if missing:
        raise RuntimeError(
            "the prefixsched plugin's hooks are not applied (" + ", ".join(missing) + "); call "
            "prefixsched.integration.sglang.twin.install_hooks() first"
        )


def install_hooks(spec: str = "fcfs") -> dict[str, Any]:
    """Apply the plugin's hooks in this process through SGLang's own ``load_plugins()``, for the
    twin driver and tests.

    ``PREFIXSCHED_POLICY`` is set to ``spec`` for the duration of the call if unset (the plugin
    registers its hooks only when a policy is configured; the twin binds its own policy object
    per run, so the spec here only has to be valid). Automatic attachment of drivers to
    schedulers is switched off (``plugin._AUTO_ATTACH``): only the twin's stand-in schedulers
    get a driver. Returns :func:`~.plugin.status`.
    """
    import os

    import_sglang()
    from prefixsched.integration.sglang import plugin

    plugin._AUTO_ATTACH = False
    had = os.environ.get("PREFIXSCHED_POLICY")
    if not had:
        os.environ["PREFIXSCHED_POLICY"] = spec
    try:
        from sglang.srt.plugins import load_plugins
        from sglang.srt.plugins.hook_registry import HookRegistry

        load_plugins()
        if not plugin.status()["registered"]:  # loaded before with the variable unset
            plugin.register()
            HookRegistry.apply_hooks()
    finally:
        if not had:
            os.environ.pop("PREFIXSCHED_POLICY", None)
    return plugin.status()


# ---------------------------------------------------------------------------------------------
# comparison with prefixsched's `sglang` engine


def sglang_engine_available() -> bool:
    """True if :func:`prefixsched.reference.simulator.simulate` takes ``engine="sglang"``."""
    from prefixsched.reference import simulator

    try:
        sig = inspect.signature(simulator.simulate)
    except (TypeError, ValueError):  # pragma: no cover
        return False
    if "engine" not in sig.parameters:
        return False
    engines = getattr(simulator, "ENGINES", None)
    return engines is None or "sglang" in engines


@dataclass
class TwinComparison:
    """Step-by-step agreement of the twin run and prefixsched's ``sglang`` engine.

    ``available`` is False (and the counts 0) when the simulator has no ``sglang`` engine yet;
    ``reason`` then says so. ``mismatches`` lists the first differences (at most 20).
    """

    available: bool
    reason: str
    steps_compared: int = 0
    mismatch_count: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    fields: tuple[str, ...] = ("admitted", "chunked", "state", "cache_hits", "cache")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, fields=list(self.fields))


def _engine_steps(instance: Instance, spec: str) -> list[dict[str, Any]]:
    """Per-step records of the simulator's ``sglang`` engine, in the twin's terms: from its pass
    records (``on_pass``: the requests admitted from the queue, a resumed chunk left out; the
    request left chunked and its chunk; the prefix hits) and its policy-state log
    (``record_states``: the state in force after each step)."""
    from prefixsched.reference.engine.sglang import SGLangConfig
    from prefixsched.reference.simulator import simulate

    passes: list[Any] = []
    # the twin sends every request with ignore_eos (exact output lengths), as the live harness does
    trace = simulate(instance, create_policy(spec), engine="sglang", record_states=True, on_pass=passes.append,
                     sglang=SGLangConfig(ignore_eos=True))
    states = {int(k): v for k, v in trace.meta.get("states", [])}
    out: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    by_step = {p.step: p for p in passes if p.kind in ("prefill", "decode")}
    for k in range(trace.n_steps):
        if k in states:
            last = states[k]
        p = by_step.get(k)
        cached = dict(p.cached or {}) if p is not None and p.kind == "prefill" else {}
        ch = p.chunked if p is not None else None
        out.append({
            "step": k,
            "admitted": list(cached),
            "cache_hits": cached,
            "chunked": None if ch is None else ch[0],
            "chunk_len": None if ch is None else ch[1],
            "state": last,
            "cache": None if p is None else p.cache_after,
        })
    return out


def compare_twin(instance: Instance, spec: str, *, twin: TwinRun | None = None) -> TwinComparison:
    """Run ``spec`` on ``instance`` through the twin and through the simulator's ``sglang``
    engine, and compare them step by step (admitted ids in order, chunked request, policy state,
    cache hits per admitted request, and the pool and tree sizes after the step: free, evictable
    and total tokens). Feature-detects the engine (:func:`sglang_engine_available`).

    The twin's steps and the engine's steps are aligned by index (both count every forward step,
    extend and decode).
    """
    if not sglang_engine_available():
        return TwinComparison(
            available=False,
            reason="prefixsched.reference.simulator.simulate has no engine='sglang' yet (issue #8); "
            "the twin ran alone",
        )
    tw = twin if twin is not None else run_twin(instance, spec)
    eng = _engine_steps(instance, spec)
    cmp = TwinComparison(available=True, reason="")
    n = max(len(tw.steps), len(eng))
    for k in range(n):
        a = tw.steps[k] if k < len(tw.steps) else None
        b = eng[k] if k < len(eng) else None
        cmp.steps_compared += 1
        if a is None or b is None:
            cmp.mismatch_count += 1
            if len(cmp.mismatches) < 20:
                cmp.mismatches.append({"step": k, "field": "length", "twin": a is not None, "engine": b is not None})
            continue
        diffs = []
        if list(a.admitted) != list(b.get("admitted", [])):
            diffs.append(("admitted", a.admitted, b.get("admitted")))
        if "chunked" in b and b["chunked"] != a.chunked:
            diffs.append(("chunked", a.chunked, b["chunked"]))
        if "state" in b and _canon(b["state"]) != _canon(a.state):
            diffs.append(("state", a.state, b["state"]))
        if a.cache is not None and b.get("cache") is not None and tuple(a.cache) != tuple(b["cache"]):
            diffs.append(("cache", list(a.cache), list(b["cache"])))
        hits_b = b.get("cache_hits", {})
        if {k2: int(v) for k2, v in a.cache_hits.items()} != {k2: int(v) for k2, v in hits_b.items()}:
            diffs.append(("cache_hits", a.cache_hits, hits_b))
        if diffs:
            cmp.mismatch_count += 1
            for f, x, y in diffs:
                if len(cmp.mismatches) < 20:
                    cmp.mismatches.append({"step": k, "field": f, "twin": x, "engine": y})
    return cmp


def _canon(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _canon(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, (list, tuple)):
        return [_canon(v) for v in x]
    if isinstance(x, float):
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return round(x, 9)
    return x
