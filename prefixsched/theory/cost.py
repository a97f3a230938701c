"""Cost model: how long one continuous-batching forward step takes, in seconds.

One forward step prefills the extend tokens of the requests admitted in it and decodes one token for
every request already running (DESIGN.md, issue #2 item 4)::

    prefill(E, X) = a + b * sum_r (1 + c_attn * |x_r|) * e_r           (0 if nothing is admitted)
    decode(n, C)  = c + d * n + e * C                                   (0 if nothing is running)
    step          = prefill + decode

with ``e_r`` the extend tokens of admitted request r, ``|x_r|`` its full prompt length, ``n`` the
decode batch size and ``C`` the total context tokens of the decode batch.

The attention term ``c_attn`` is the k-LPM paper's Definition 2 factor (klpm.md §1.3): an uncached
token costs ``(1 + c_attn * |x|)`` linear-token units. With ``a = 0, b = 1`` the prefill time of a
single request is exactly Definition 2's service time in token units, which is what the sequential
exact models use.

Default parameters ("roughly an 8B model on one H100", bf16, SGLang), derived, not measured here:

- ``b = 3.3e-5`` s/token: Llama-3.1-8B needs ~2 * 8e9 = 16 GFLOP per token; an H100 SXM gives
  ~990 dense bf16 TFLOP/s, so at ~50 % MFU prefill runs at ~30k tokens/s.
- ``a = 5e-3`` s: kernel launch, scheduling and sampling overhead of one prefill step.
- ``c = 7e-3`` s: one decode step reads all 16 GB of weights at ~3.35 TB/s (4.8 ms) plus overhead.
- ``d = 5e-5`` s/request: per-sequence sampling and bookkeeping in the decode batch.
- ``e = 0`` by default; set it to ``3.9e-8`` s/token to charge KV reads (128 KiB per token at
  3.35 TB/s).
- ``c_attn = 0`` by default (the theory papers' setting).

Every parameter can be overridden from an instance's ``cost_model`` JSON object or from the CLI;
calibrated values from live runs replace them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from prefixsched import validation as _v
from prefixsched.errors import InputError

__all__ = ["CostModel"]


@dataclass(frozen=True)
class CostModel:
    """Linear step-time model (module docstring). All times in seconds, all lengths in tokens.

    Attributes
    ----------
    prefill_base_s:
        ``a``: fixed cost of a step that prefills anything.
    prefill_per_token_s:
        ``b``: cost per (attention-weighted) extend token.
    c_attn:
        Attention factor of Definition 2 (k-LPM paper): an extend token of a prompt of length
        ``|x|`` costs ``(1 + c_attn*|x|)`` tokens' worth of ``b``.
    decode_base_s:
        ``c``: fixed cost of a step that decodes anything.
    decode_per_request_s:
        ``d``: cost per request in the decode batch.
    decode_per_context_token_s:
        ``e``: cost per context token of the decode batch (KV reads).
    """

    prefill_base_s: float = 5e-3
    prefill_per_token_s: float = 3.3e-5
    c_attn: float = 0.0
    decode_base_s: float = 7e-3
    decode_per_request_s: float = 5e-5
    decode_per_context_token_s: float = 0.0

    def validate(self) -> None:
        """Raise :class:`InputError` naming the field if a parameter is not a finite number in its
        documented range: every seconds parameter in ``[0, 1e3]`` s, ``c_attn`` in ``[0, 1e3]``
        (:mod:`prefixsched.validation`; with every instance limit at its maximum a step then stays
        far below float overflow, so no step time, TTFT or metric can become ``inf``/``nan``)."""
        for f in fields(self):
            v = getattr(self, f.name)
            hi = _v.MAX_C_ATTN if f.name == "c_attn" else _v.MAX_COST_SECONDS
            _v.number(v, f"cost_model.{f.name}", lo=0, hi=hi)

    def weighted_extend(self, extend_tokens: int, prompt_len: int) -> float:
        """``(1 + c_attn * prompt_len) * extend_tokens``: token units of one request's prefill."""
        return (1.0 + self.c_attn * prompt_len) * extend_tokens

    def prefill_time(self, weighted_extend_tokens: float) -> float:
        """Seconds to prefill ``weighted_extend_tokens`` (sum of :meth:`weighted_extend`); 0 if 0."""
        if weighted_extend_tokens <= 0:
            return 0.0
        return self.prefill_base_s + self.prefill_per_token_s * weighted_extend_tokens

    def decode_time(self, batch_size: int, context_tokens: int = 0) -> float:
        """Seconds for one decode step of ``batch_size`` requests holding ``context_tokens``."""
        if batch_size <= 0:
            return 0.0
        return (
            self.decode_base_s
            + self.decode_per_request_s * batch_size
            + self.decode_per_context_token_s * context_tokens
        )

    def step_time(self, weighted_extend_tokens: float, batch_size: int, context_tokens: int = 0) -> float:
        """Seconds of one forward step: prefill of the admitted + one decode token per running."""
        return self.prefill_time(weighted_extend_tokens) + self.decode_time(batch_size, context_tokens)

    @staticmethod
    def token_units(c_attn: float = 0.0) -> "CostModel":
        """The sequential theory model's clock: one uncached token = one time unit, no overheads."""
        return CostModel(
            prefill_base_s=0.0,
            prefill_per_token_s=1.0,
            c_attn=c_attn,
            decode_base_s=0.0,
            decode_per_request_s=0.0,
            decode_per_context_token_s=0.0,
        )

    @staticmethod
    def from_dict(d: Any, where: str = "cost_model") -> "CostModel":
        """Parse the JSON object; unknown fields and bad values raise :class:`InputError`."""
        if not isinstance(d, dict):
            raise InputError(where, f"must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(CostModel)}
        for k, v in d.items():
            if k not in names:
                raise InputError(f"{where}.{k}", f"unknown field (known: {', '.join(sorted(names))})")
        obj = CostModel(**{k: _v.number(v, f"{where}.{k}") for k, v in d.items()})
        obj.validate()
        return obj
