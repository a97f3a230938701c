"""Cost profiles: a step-time model (:class:`~prefixsched.theory.cost.CostModel`) plus the server
limits (:class:`~prefixsched.theory.model.Limits`) of one hardware and model setup.

A profile answers "what does this GPU and model cost, and what does SGLang configure on it". The
CLI selects one with ``--cost-model NAME|FILE.json`` (default :data:`DEFAULT_PROFILE`); Python code
uses :func:`get_profile` / :func:`load_profile` and :func:`with_profile`.

Every built-in profile has an attention term (``c_attn``: an extend token of a prompt of ``|x|``
tokens costs ``(1 + c_attn*|x|)`` linear tokens, k-LPM Definition 2) and a KV-read term in decode
(``decode_per_context_token_s``: seconds per context token of the decode batch). Their numbers,
derivations, sources and the ratio against published measurements are in each profile's
``source`` string (:data:`PROFILES`; the CLI prints it with ``simulate --json``).

Conventions of the derivations
------------------------------
- FLOPs: a linear (GEMM) token costs ``2 * (non-embedding weights)`` FLOPs (the LM head runs on the
  last token of a prompt only, so it sits in the per-step overhead ``a``); an attention *pair*
  (one extend token against one context token) costs ``4 * n_layers * n_heads * head_dim`` FLOPs
  (QK^T and AV). ``c_attn`` = (pair time) / (linear token time). Definition 2 charges every extend
  token against the *full* prompt length ``|x|``; the true causal cost is against its own position
  (``cached + i``), so the model is exact for the last tokens of a long cached context (the common
  case of multi-turn traces) and overcharges a fully uncached prompt's attention by up to 2x.
- Decode: ``c`` = weight bytes / HBM bandwidth + ~2 ms of launch and sampling overhead (CUDA
  graphs); ``e`` = KV bytes per token / HBM bandwidth (per GPU, divided by the tensor-parallel
  degree).
- Limits: SGLang 0.5.23's rules (:func:`sglang_chunked_prefill_size`,
  :func:`sglang_kv_capacity_tokens`, :func:`sglang_max_running_requests`); ``max_prefill_tokens``
  16,384 (SGLang's default); ``page_size`` 1 (SGLang's default; :func:`with_profile` keeps an
  instance's own page size unless told otherwise, because traces and workloads pick theirs for
  speed).

Published measurements used as checks (ratio = this profile / the measurement):

- Vidur (microsoft/vidur, ``data/profiling/compute/``), per-layer linear-operator times:
  H100, Llama-2-7B, 4,096-token batch, TP1: 2.586 ms per layer, i.e. 20.2 us per token for
  12.95 GFLOP (641 TFLOP/s); A100-80GB, Llama-3-8B, 32,768-token batch: TP1 67.35 ms per layer
  (65.8 us per token), TP8 10.44 ms per layer (10.2 us per token, collectives not included).
- FlashAttention kernels, causal forward, bf16, head dim 128, 8k-16k tokens (read off the
  papers' plots): FA2 on A100 ~190 TFLOP/s (Dao 2023, Fig. 4); FA3 on H100 ~550-650 TFLOP/s
  (Shah et al. 2024, Fig. 5).
- Preble's fitted H100 prefill model for Llama-3-70B (vtc_fastswitch_preble.md §C.2):
  ``T = 28.93 + 0.1822*new + 0.004004*ctx + 2.55e-6*new*ctx`` ms, whose attention/linear ratio per
  context token is 2.55e-6/0.1822 = 1.40e-5 against a FLOP ratio of 1.91e-5 (0.73 of it).
- DLPM Fig. 4a: 53 ms per decode step at decode batch 25 (the GPU and context lengths of that
  figure are not stated, so it is a weak check).

JSON format (what :meth:`CostProfile.to_dict` writes and :meth:`CostProfile.from_dict` reads; a
profile fitted from a live run is written the same way)::

    {"name": "my-h100",                      # required, non-empty string
     "cost_model": {...CostModel fields...}, # required object; missing fields take CostModel()'s defaults
     "limits": {...Limits fields...},        # optional object; missing fields take Limits()'s defaults
     "source": "how the numbers were obtained",   # optional string
     "fitted": {...} or null}                # optional free-form fit report (JSON object)

Unknown fields and bad values raise :class:`~prefixsched.errors.InputError` naming the field.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from prefixsched.errors import InputError
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits

__all__ = [
    "CostProfile",
    "PROFILES",
    "PROFILE_ALIASES",
    "DEFAULT_PROFILE",
    "get_profile",
    "load_profile",
    "default_profile",
    "default_limits",
    "with_profile",
    "sglang_chunked_prefill_size",
    "sglang_decode_max_bs",
    "sglang_kv_capacity_tokens",
    "sglang_max_running_requests",
]

MIB = 1 << 20


# ---------------------------------------------------------------------------------------------
# SGLang 0.5.23's memory rules


def sglang_chunked_prefill_size(gpu_mem_mib: float) -> int:
    """SGLang's default ``--chunked-prefill-size`` for a GPU of ``gpu_mem_mib`` MiB.

    Source: ``sglang/srt/arg_groups/memory_hook.py::handle_gpu_memory_settings`` (0.5.23):
    2048 below 20 GiB, 4096 below 60 GiB, 8192 below 160 GiB, 16384 above.
    """
    if not gpu_mem_mib > 0:
        raise InputError("gpu_mem_mib", f"must be > 0, got {gpu_mem_mib!r}")
    if gpu_mem_mib < 20 * 1024:
        return 2048
    if gpu_mem_mib < 60 * 1024:
        return 4096
    if gpu_mem_mib < 160 * 1024:
        return 8192
    return 16384


def sglang_decode_max_bs(gpu_mem_mib: float, tp: int = 1) -> int:
    """SGLang's default decode CUDA-graph batch size (same source as
    :func:`sglang_chunked_prefill_size`): 8 below 20 GiB; 48 (tp < 4) or 160 below 35 GiB; 32 or
    160 below 60 GiB; 256 or 512 below 160 GiB; 512 above."""
    if gpu_mem_mib < 20 * 1024:
        return 8
    if gpu_mem_mib < 35 * 1024:
        return 48 if tp < 4 else 160
    if gpu_mem_mib < 60 * 1024:
        return 32 if tp < 4 else 160
    if gpu_mem_mib < 160 * 1024:
        return 256 if tp < 4 else 512
    return 512


def sglang_kv_capacity_tokens(
    gpu_mem_mib: float,
    weight_bytes: float,
    kv_bytes_per_token: float,
    *,
    tp: int = 1,
    chunked_prefill_size: int | None = None,
) -> int:
    """KV-pool size in tokens that SGLang 0.5.23 allocates on each GPU of a ``tp``-way group.

    ``mem_fraction_static = (gpu_mem - reserved) / gpu_mem`` with
    ``reserved = 512 + 1.5 * max(chunked_prefill_size, 2048) + tp/8 * 1024 + 2 * decode_max_bs``
    MiB, raised to at least 10 GiB on GPUs above 60 GiB
    (``memory_hook.py::handle_gpu_memory_settings`` and ``reserve_for_graph_mb``); the pool is
    what is left of ``gpu_mem * mem_fraction_static`` after the weights
    (``weight_bytes / tp`` per GPU): ``(gpu_mem - reserved - weights) / (kv_bytes_per_token / tp)``.
    *Decision:* the prefill CUDA-graph and DeepEP reserves (off by default for dense models) are
    left out. ``chunked_prefill_size`` defaults to :func:`sglang_chunked_prefill_size`.

    Raises
    ------
    InputError
        A non-positive size, or weights that leave no room for a KV pool.
    """
    for name, v in (("gpu_mem_mib", gpu_mem_mib), ("weight_bytes", weight_bytes), ("kv_bytes_per_token", kv_bytes_per_token)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise InputError(name, f"must be a finite number > 0, got {v!r}")
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise InputError("tp", f"must be an integer >= 1, got {tp!r}")
    cps = sglang_chunked_prefill_size(gpu_mem_mib) if chunked_prefill_size is None else chunked_prefill_size
    reserved = 512 + 1.5 * max(cps, 2048) + tp / 8 * 1024 + 2 * sglang_decode_max_bs(gpu_mem_mib, tp)
    if gpu_mem_mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    free_mib = gpu_mem_mib - reserved - weight_bytes / tp / MIB
    if free_mib <= 0:
        raise InputError("weight_bytes", f"the weights leave no KV pool on a {gpu_mem_mib:g} MiB GPU")
    return int(free_mib * MIB // (kv_bytes_per_token / tp))


def sglang_max_running_requests(kv_tokens: int, context_len: int) -> int:
    """SGLang's default ``--max-running-requests``: ``clamp(kv_tokens / context_len * 512, 2048,
    4096)``, at most ``kv_tokens // 2`` (``model_executor/pool_configurator.py::
    _resolve_max_running_requests_per_worker``, 0.5.23)."""
    est = int(kv_tokens / context_len * 512)
    return min(max(min(est, 4096), 2048), kv_tokens // 2)


# ---------------------------------------------------------------------------------------------
# the profile type


@dataclass(frozen=True)
class CostProfile:
    """A named cost model with its default server limits (module docstring).

    Attributes
    ----------
    name:
        Registry name (``--cost-model NAME``).
    cost_model:
        Step-time model (seconds, tokens).
    limits:
        Default limits of one worker (tokens, requests).
    source:
        Where the numbers come from and how they compare with published measurements.
    fitted:
        Optional fit report of a profile fitted from a live run (free-form JSON object).
    """

    name: str
    cost_model: CostModel
    limits: Limits
    source: str = ""
    fitted: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (module docstring); ``from_dict(to_dict())`` round-trips."""
        return {
            "name": self.name,
            "cost_model": asdict(self.cost_model),
            "limits": asdict(self.limits),
            "source": self.source,
            "fitted": self.fitted,
        }

    @staticmethod
    def from_dict(d: Any, where: str = "cost_profile") -> "CostProfile":
        """Parse and validate the JSON form (module docstring).

        Raises
        ------
        InputError
            Naming ``where.field``: not an object, a missing ``name``/``cost_model``, an unknown
            field, or a bad value in ``cost_model`` / ``limits``.
        """
        if not isinstance(d, dict):
            raise InputError(where, f"must be a JSON object, got {type(d).__name__}")
        known = ("name", "cost_model", "limits", "source", "fitted")
        for k in d:
            if k not in known:
                raise InputError(f"{where}.{k}", f"unknown field (known: {', '.join(known)})")
        for k in ("name", "cost_model"):
            if k not in d:
                raise InputError(f"{where}.{k}", "missing")
        name = d["name"]
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{where}.name", f"must be a non-empty string, got {name!r}")
        source = d.get("source", "")
        if not isinstance(source, str):
            raise InputError(f"{where}.source", f"must be a string, got {type(source).__name__}")
        fitted = d.get("fitted")
        if fitted is not None and not isinstance(fitted, dict):
            raise InputError(f"{where}.fitted", f"must be a JSON object or null, got {type(fitted).__name__}")
        try:
            cost = CostModel.from_dict(d["cost_model"], f"{where}.cost_model")
            limits = Limits.from_dict(d.get("limits", {}), f"{where}.limits")
        except InputError as e:  # validate() names "cost_model.X" / "limits.X" whatever the context
            if e.field.startswith(where):
                raise
            raise InputError(f"{where}.{e.field}", e.problem) from None
        return CostProfile(name=name, cost_model=cost, limits=limits, source=source, fitted=fitted)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        from prefixsched._io import write_json

        write_json(path, self.to_dict())


# ---------------------------------------------------------------------------------------------
# built-in profiles

# Llama-3.1-8B: 8.03e9 parameters (16.06 GB bf16), 32 layers, hidden 4096, 32 query heads, 8 KV
# heads of dim 128: KV 2*32*8*128*2 = 131,072 B per token; linear 13.96 GFLOP per token; attention
# 4*32*4096 = 524,288 FLOP per pair.
_L31_8B = {"weights": 16.06e9, "kv": 131_072, "ctx": 131_072}
_H100_MIB = 81_559  # H100 SXM 80GB as the driver reports it
_A100_MIB = 81_920  # A100 SXM4 80GB
_A10_MIB = 23_028  # A10 / A10G 24GB

_H100_KV = sglang_kv_capacity_tokens(_H100_MIB, _L31_8B["weights"], _L31_8B["kv"])  # 422,423
_A100X8_KV = sglang_kv_capacity_tokens(_A100_MIB, _L31_8B["weights"], _L31_8B["kv"], tp=8)  # 4,170,079
_A10_KV = sglang_kv_capacity_tokens(_A10_MIB, 6.43e9, 114_688)  # Llama-3.2-3B: 91,573

_H100 = CostProfile(
    name="h100-llama3.1-8b",
    cost_model=CostModel(
        prefill_base_s=5e-3,
        prefill_per_token_s=2.2e-5,
        c_attn=4.3e-5,
        decode_base_s=7e-3,
        decode_per_request_s=5e-5,
        decode_per_context_token_s=3.9e-8,
    ),
    limits=Limits(
        kv_capacity_tokens=_H100_KV,
        max_prefill_tokens=16_384,
        max_running_requests=sglang_max_running_requests(_H100_KV, _L31_8B["ctx"]),
        page_size=1,
        chunked_prefill_size=sglang_chunked_prefill_size(_H100_MIB),
    ),
    source=(
        "Llama-3.1-8B bf16 on one H100 SXM 80GB, SGLang 0.5.23 defaults (the default profile). "
        "b = 2.2e-5 s/token: Vidur's H100 profile of Llama-2-7B (20.2 us per token for 12.95 GFLOP of "
        "linear layers, 641 TFLOP/s) scaled to Llama-3.1-8B's 13.96 GFLOP (ratio to Vidur 1.00 by "
        "construction; the pre-#9 default 3.3e-5 was 1.5x slower). c_attn = 4.3e-5: 524,288 FLOP per "
        "attention pair at 550 TFLOP/s (FA3-class causal kernel, Shah et al. 2024) = 0.95 ns, over b; "
        "relative to the FLOP ratio this makes attention 1.15x as costly per FLOP as the GEMMs, against "
        "0.73x in Preble's fitted H100 model of Llama-3-70B (ratio 1.6: the attention term may be "
        "pessimistic). a = 5 ms per prefill step (launch, LM head, sampling; derived). c = 7 ms: 16.06 GB "
        "of weights at 3.35 TB/s (4.8 ms) + 2 ms overhead; d = 50 us per request; e = 3.9e-8 s per "
        "context token (131,072 B of KV at 3.35 TB/s). Limits: KV pool 422,423 tokens and "
        "max_running_requests 2048 by SGLang's memory rules, chunked_prefill_size 8192, "
        "max_prefill_tokens 16384."
    ),
)

_A10 = CostProfile(
    name="a10-llama3.2-3b",
    cost_model=CostModel(
        prefill_base_s=5e-3,
        prefill_per_token_s=7.5e-5,
        c_attn=6.0e-5,
        decode_base_s=1.3e-2,
        decode_per_request_s=5e-5,
        decode_per_context_token_s=1.9e-7,
    ),
    limits=Limits(
        kv_capacity_tokens=_A10_KV,
        max_prefill_tokens=16_384,
        max_running_requests=sglang_max_running_requests(_A10_KV, 131_072),
        page_size=1,
        chunked_prefill_size=sglang_chunked_prefill_size(_A10_MIB),
    ),
    source=(
        "The DLPM paper's single-A10 setup (Figs. 1 and 11: Llama-3.2-3B on one A10 24GB, SGLang). "
        "Llama-3.2-3B: 3.21e9 parameters (6.43 GB bf16), 28 layers, hidden 3072, 24 heads, 8 KV heads of "
        "dim 128 (114,688 B of KV per token), 5.64 GFLOP per linear token, 344,064 FLOP per attention "
        "pair. A10: 125 TFLOP/s dense bf16, 600 GB/s. b = 7.5e-5 s/token at 60 % of peak (Vidur measures "
        "65-75 % on H100/A100); c_attn = 6.0e-5: a pair at 76 TFLOP/s (FA2's 61 % of peak on A100) = "
        "4.5 ns, over b. c = 13 ms (6.43 GB at 600 GB/s + 2 ms), d = 50 us, e = 1.9e-7 s per context "
        "token (114,688 B at 600 GB/s). Check: DLPM Fig. 4a reports 53 ms per decode step at batch 25; "
        "this profile gives 24 ms at 2k context per request (ratio 0.45; that figure's GPU and context "
        "are not stated). No published A10 prefill profile was found: the prefill terms are derived. "
        "Limits by SGLang's memory rules: KV pool 91,573 tokens, chunked_prefill_size 4096, "
        "max_running_requests 2048."
    ),
)

_A100X8 = CostProfile(
    name="a100x8-llama3.1-8b",
    cost_model=CostModel(
        prefill_base_s=5e-3,
        prefill_per_token_s=1.4e-5,
        c_attn=2.5e-5,
        decode_base_s=4e-3,
        decode_per_request_s=5e-5,
        decode_per_context_token_s=8.0e-9,
    ),
    limits=Limits(
        kv_capacity_tokens=_A100X8_KV,
        max_prefill_tokens=16_384,
        max_running_requests=sglang_max_running_requests(_A100X8_KV, _L31_8B["ctx"]),
        page_size=1,
        chunked_prefill_size=sglang_chunked_prefill_size(_A100_MIB),
    ),
    source=(
        "The k-LPM paper's setup (Llama-3.1-8B-Instruct on 8x A100 80GB, tensor parallel, SGLang "
        "v0.4.1; klpm.md §5), as one TP8 worker. b = 1.4e-5 s/token: Vidur's measured A100 TP8 linear "
        "layers of Llama-3-8B (10.44 ms per layer per 32,768 tokens = 10.2 us per token; ratio 1.38 to "
        "that compute-only figure) plus two all-reduces per layer (268 MB each at ~131 GB/s NCCL "
        "algorithm bandwidth on NVLink, 3.9 us per token; estimated). c_attn = 2.5e-5: 524,288 FLOP per "
        "pair over 8 GPUs at FA2's ~190 TFLOP/s each (Dao 2023) = 0.35 ns, over b. c = 4 ms (2 GB of "
        "weights per GPU at 2.04 TB/s, 64 small all-reduces, 2 ms overhead), d = 50 us, e = 8.0e-9 s "
        "per context token (16,384 B of KV per GPU at 2.04 TB/s). The paper publishes no step times. "
        "Limits by SGLang 0.5.23's rules: KV pool 4,170,079 tokens per TP group, "
        "max_running_requests 4096, chunked_prefill_size 8192 (the paper ran v0.4.1, whose defaults "
        "differed)."
    ),
)

_A10G = CostProfile(
    name="a10g-llama2-7b",
    cost_model=CostModel(
        prefill_base_s=1e-2,
        prefill_per_token_s=2.2e-4,
        c_attn=3.1e-5,
        decode_base_s=2.5e-2,
        decode_per_request_s=1e-4,
        decode_per_context_token_s=8.7e-7,
    ),
    limits=Limits(
        kv_capacity_tokens=10_000,
        max_prefill_tokens=3_072,
        max_running_requests=1_000,
        page_size=1,
        chunked_prefill_size=None,
    ),
    source=(
        "The VTC artifact's setup (Llama-2-7B on one A10G 24GB, S-LoRA/LightLLM runtime; "
        "vtc_fastswitch_preble.md §A.5-A.6). Limits are the artifact's, not SGLang's: "
        "max_total_token_num 10,000 (SGLang's memory rule would give 6,584), batch_max_tokens 3,072, "
        "at most 1,000 running requests, no chunked prefill (the artifact has none; SGLang's rule "
        "would give 4096). Timing: a = 10 ms, b = 2.2e-4 s/token, c = 25 ms, d = 100 us, as "
        "papers/vtc/reproduce.py's A10G model; Llama-2-7B's 12.95 GFLOP per linear token at 60 % of an "
        "A10-class 125 TFLOP/s would give b = 1.7e-4 (ratio 1.27; NVIDIA publishes no A10G tensor "
        "rate). c = 25 ms matches 13.5 GB of weights at 600 GB/s (22.5 ms) + overhead. c_attn = 3.1e-5: "
        "524,288 FLOP per pair (32 MHA heads) at 76 TFLOP/s = 6.9 ns, over b. e = 8.7e-7 s per context "
        "token (524,288 B of KV per token at 600 GB/s). The artifact publishes throughputs under its "
        "traces (777 tok/s), not capacities or step times, so there is nothing to compare the step "
        "model with."
    ),
)

_LINEAR = CostProfile(
    name="linear",
    cost_model=CostModel(),
    limits=Limits(),
    source=(
        "CostModel() and Limits() as they stand: the theory papers' linear model (c_attn = 0, no KV "
        "reads), a = 5 ms, b = 3.3e-5, c = 7 ms, d = 50 us, with a 480,000-token KV pool, 256 running "
        "requests, chunked_prefill_size 8192. It was the default of the CLI and loaders before issue #9; "
        "kept so that earlier results can be reproduced."
    ),
)

#: Built-in profiles by name.
PROFILES: dict[str, CostProfile] = {p.name: p for p in (_H100, _A10, _A100X8, _A10G, _LINEAR)}
#: Short names accepted by :func:`get_profile`.
PROFILE_ALIASES: dict[str, str] = {
    "default": "h100-llama3.1-8b",
    "h100": "h100-llama3.1-8b",
    "dlpm-a10": "a10-llama3.2-3b",
    "klpm-a100": "a100x8-llama3.1-8b",
    "vtc-a10g": "a10g-llama2-7b",
}
#: The profile of the CLI, :func:`~prefixsched.reference.workloads.make_workload` and
#: :func:`~prefixsched.reference.traces.load_mooncake` when none is given.
DEFAULT_PROFILE = "h100-llama3.1-8b"


def get_profile(name: str) -> CostProfile:
    """The built-in profile ``name`` (a key of :data:`PROFILES` or :data:`PROFILE_ALIASES`).

    Raises :class:`InputError` for an unknown name."""
    key = PROFILE_ALIASES.get(name, name)
    if key not in PROFILES:
        known = ", ".join(list(PROFILES) + list(PROFILE_ALIASES))
        raise InputError("cost_model", f"unknown cost profile {name!r} (known: {known}; or a FILE.json)")
    return PROFILES[key]


def default_profile() -> CostProfile:
    """:data:`DEFAULT_PROFILE`."""
    return PROFILES[DEFAULT_PROFILE]


def default_limits(page_size: int = 1) -> Limits:
    """The default profile's limits with ``page_size`` (what the trace loader and the workload
    generators use when no limits are given). The KV pool is floored to whole pages, as SGLang
    sizes it (``model_executor/pool_configurator.py``: ``max_total_num_tokens // page_size *
    page_size``)."""
    lim = default_profile().limits
    return replace(lim, page_size=page_size, kv_capacity_tokens=lim.kv_capacity_tokens // page_size * page_size)


def load_profile(spec: str | os.PathLike[str]) -> CostProfile:
    """A built-in profile by name, or a profile JSON file (module docstring) by path.

    A ``spec`` ending in ``.json`` or naming an existing file is read as a file.

    Raises
    ------
    InputError
        Unknown name, unreadable file, invalid JSON, or an invalid profile (``path: field: problem``).
    """
    text = os.fspath(spec)
    if not (text.endswith(".json") or os.path.isfile(text)):
        return get_profile(text)
    try:
        with open(text, encoding="utf-8") as fh:
            raw = json.load(fh)
    except OSError as e:
        raise InputError("cost_model", f"cannot read profile {text!r}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise InputError("cost_model", f"{text}: not valid JSON ({e.msg} at line {e.lineno})") from None
    try:
        return CostProfile.from_dict(raw)
    except InputError as e:
        raise InputError(e.field, e.problem, text) from None


def with_profile(
    instance: Instance,
    profile: CostProfile,
    *,
    keep_page_size: bool = True,
    **limits: Any,
) -> Instance:
    """``instance`` with the profile's cost model and limits, then ``limits`` overrides applied.

    Parameters
    ----------
    instance:
        Any instance (its requests, order and weights are kept).
    profile:
        The profile.
    keep_page_size:
        Keep the instance's own ``page_size`` (traces use their block size, workloads 32 tokens,
        so that the radix cache works on pages) instead of the profile's.
    **limits:
        :class:`Limits` fields to override (``kv_capacity_tokens=...``; ``chunked_prefill_size=None``
        turns chunking off). ``None`` values other than ``chunked_prefill_size`` are ignored.
        The profile's own ``kv_capacity_tokens`` is floored to whole pages of the resulting
        ``page_size`` (SGLang's ``pool_configurator.py``); an explicit ``kv_capacity_tokens`` is
        kept as given.

    Raises
    ------
    InputError
        An unknown limit, a bad value (``limits.FIELD``), or a request that can no longer fit the KV
        pool (``requests[i]``).
    """
    names = set(Limits.__dataclass_fields__)
    for k in limits:
        if k not in names:
            raise InputError(f"limits.{k}", f"unknown limit (known: {', '.join(sorted(names))})")
    lim = profile.limits
    if keep_page_size:
        lim = replace(lim, page_size=instance.limits.page_size)
    if "page_size" in limits and limits["page_size"] is not None:
        lim = replace(lim, page_size=limits["page_size"])
    # the profile's pool floored to whole pages, as SGLang sizes it (default_limits); an explicit
    # kv_capacity_tokens override is taken as given
    lim = replace(lim, kv_capacity_tokens=lim.kv_capacity_tokens // lim.page_size * lim.page_size)
    over = {k: v for k, v in limits.items() if v is not None or k == "chunked_prefill_size"}
    lim = replace(lim, **over)
    lim.validate()
    return Instance(requests=instance.requests, cost_model=profile.cost_model, limits=lim, weights=instance.weights)
