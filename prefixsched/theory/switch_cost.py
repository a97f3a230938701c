"""Context-switch cost model: how long moving KV between GPU and host memory takes, in seconds.

Beside :mod:`prefixsched.theory.cost` (the compute clock of a forward step), this module prices
the copies a preemption in *swap* mode issues (FastSwitch, Shen, Li, Gao, arXiv 2411.18424;
spec ``shared/specs/vtc_fastswitch_preble.md`` §B.2, §B.5)::

    t(transfer) = copies * tau_call + bytes / BW(copy_bytes)
    BW(s)       = BW_peak * s / (s + s_half)                  (saturating in the copy size s)
    bytes       = tokens * bytes_per_token
    bytes_per_token = 2 * layers * kv_heads * head_dim * dtype_bytes   (K and V of every layer)

``tau_call`` is the host-side cost of issuing one copy (``cudaMemcpyAsync``); ``BW(s)`` is the
DMA bandwidth one copy of ``s`` bytes reaches: small copies pay a fixed set-up that the curve
folds into ``s_half`` (the copy size at which half of ``BW_peak`` is reached).

Granularity (how a request's KV is cut into copies). A request's KV lives in *blocks* of
``block_tokens`` tokens (vLLM: 16) and in every layer separately, K and V apart, so one copy
moves one block of one layer of K (or of V):

- ``"block"`` (vLLM's swap, the FastSwitch baseline): ``copies = 2 * layers * blocks`` with
  ``blocks = ceil(tokens / block_tokens)``; each copy holds ``block_tokens`` tokens of one layer
  (Llama-3-8B: 16 * 8 * 128 * 2 B = 32 KiB, spec §B.2);
- ``"group"`` (FastSwitch's Dynamic Block Group Manager): runs of physically contiguous blocks
  move in one copy per layer and K/V. The paper's group-sizing rule is not public (spec §B.3:
  "sized dynamically", "buddy-style in coarse units", [2nd]/[recall]). **Decision (ours):** a
  group holds up to ``group_blocks`` blocks (default 64 = 1,024 tokens), and free space is the
  more fragmented the fuller the GPU pool is, so the effective group size at a GPU KV utilisation
  ``u`` (tokens in use / pool, at the moment of the copy) is
  ``G(u) = max(1, floor(group_blocks * (1 - fragmentation * u)))`` blocks (default
  ``fragmentation`` 0.5: half the nominal size on a full pool); ``groups = ceil(blocks / G(u))``,
  ``copies = 2 * layers * groups``;
- ``"request"`` (one contiguous region per layer and K/V, an upper bound of what contiguity can
  give): ``copies = 2 * layers``.

``bytes`` is ``tokens * bytes_per_token`` under every granularity (the copies of the last,
partial block move only its valid tokens: *decision*), so granularity changes only the number and
size of the copies, never the volume.

Named profiles (numbers derived from public sources, not measured here; override any field):

- **Links** (:data:`LINKS`), per direction, pinned host memory:

  - ``pcie4-x16``: PCIe 4.0 x16, 16 GT/s/lane, 128b/130b: 31.5 GB/s theoretical (PCI-SIG PCIe 4.0
    base specification); ``BW_peak`` = 26 GB/s, the ~85 % that DMA copy engines reach in
    practice (same efficiency as the Gen5 measurement below). FastSwitch's hosts (spec §B.6).
  - ``pcie5-x16``: PCIe 5.0 x16, 32 GT/s/lane: 63 GB/s theoretical; ``BW_peak`` = 55 GB/s
    (NVIDIA nvbandwidth ``host_to_device_memcpy_ce`` example output, 55.6 GB/s on a Gen5 H100
    host). The H100/H200 hosts of the default :class:`~prefixsched.theory.cost.CostModel`.
  - both: ``tau_call`` = 3.5 us (one ``cudaMemcpyAsync`` call on an x86 H100 host: 3.5-4.0 us
    per call, meta-pytorch/torchcomms PR #2195's benchmark), ``s_half`` = 32 KiB (*decision*:
    a 32 KiB block copy then reaches 50 % of ``BW_peak`` before call overhead, ~28 % after it;
    the spec's "small, scattered copies run far below peak PCIe bandwidth", §B.2, and vLLM PRs
    #38460/#48936, which batch the per-block copies because of that, give no single number).

- **Models** (:data:`MODELS`), bf16 KV: ``llama3-8b`` (32 layers, 8 KV heads, head dim 128:
  128 KiB per token, spec §B.2) and ``qwen2.5-32b`` (64 layers, 8 KV heads, head dim 128:
  256 KiB per token; FastSwitch's larger model is "Qwen-32B", §B.4).

Everything here is pure and deterministic; the engine (:mod:`prefixsched.reference.engine.preemption`)
records each copy's tokens, bytes, copies and link interval in the trace, and the checker
(:mod:`prefixsched.theory.schedule`) recomputes their durations with this module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from prefixsched.errors import InputError

__all__ = ["ModelShape", "LinkProfile", "SwitchCostModel", "Transfer", "MODELS", "LINKS", "GRANULARITIES"]

#: How a request's KV is cut into copies (module docstring).
GRANULARITIES = ("block", "group", "request")


def _pos(where: str, v: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
    if not bad and integer and not isinstance(v, int):
        bad = True
    if not bad and (v < 0 or (v == 0 and not allow_zero)):
        bad = True
    if bad:
        kind = "an integer" if integer else "a finite number"
        raise InputError(where, f"must be {kind} {'>=' if allow_zero else '>'} 0, got {v!r}")


@dataclass(frozen=True)
class ModelShape:
    """The KV shape of a model: ``bytes_per_token = 2 * layers * kv_heads * head_dim * dtype_bytes``.

    Attributes
    ----------
    name:
        Label (``"llama3-8b"``).
    layers, kv_heads, head_dim:
        Transformer layers, KV heads (GQA) and head dimension.
    dtype_bytes:
        Bytes per KV element (2 for bf16/fp16, 1 for fp8).
    """

    name: str = "llama3-8b"
    layers: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype_bytes: int = 2

    def validate(self, where: str = "switch.model") -> None:
        for f in ("layers", "kv_heads", "head_dim", "dtype_bytes"):
            _pos(f"{where}.{f}", getattr(self, f), integer=True)

    @property
    def bytes_per_token(self) -> int:
        """KV bytes of one token over all layers, K and V."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def bytes_per_token_layer(self) -> int:
        """Bytes of one token's K (or V) in one layer: the unit a copy is made of."""
        return self.kv_heads * self.head_dim * self.dtype_bytes


@dataclass(frozen=True)
class LinkProfile:
    """One direction of the host link (module docstring, "Links").

    Attributes
    ----------
    name:
        Label (``"pcie4-x16"``).
    peak_bytes_per_s:
        ``BW_peak``: what large copies reach, bytes per second.
    half_size_bytes:
        ``s_half``: the copy size at which ``BW`` is half of ``BW_peak`` (bytes).
    call_s:
        ``tau_call``: host cost of issuing one copy, seconds.
    source:
        Where the numbers come from (free text).
    """

    name: str = "pcie5-x16"
    peak_bytes_per_s: float = 55e9
    half_size_bytes: float = 32 * 1024
    call_s: float = 3.5e-6
    source: str = ""

    def validate(self, where: str = "switch.link") -> None:
        _pos(f"{where}.peak_bytes_per_s", self.peak_bytes_per_s)
        _pos(f"{where}.half_size_bytes", self.half_size_bytes, allow_zero=True)
        _pos(f"{where}.call_s", self.call_s, allow_zero=True)

    def bandwidth(self, copy_bytes: float) -> float:
        """``BW(s) = BW_peak * s / (s + s_half)``, bytes per second (0 for an empty copy)."""
        if copy_bytes <= 0:
            return 0.0
        return self.peak_bytes_per_s * copy_bytes / (copy_bytes + self.half_size_bytes)


_SRC_CALL = "tau_call 3.5 us: meta-pytorch/torchcomms PR #2195 (cudaMemcpyAsync on an x86 H100 host); s_half 32 KiB: ours"
#: Named link profiles (module docstring).
LINKS: dict[str, LinkProfile] = {
    "pcie4-x16": LinkProfile(
        "pcie4-x16", 26e9, 32 * 1024, 3.5e-6,
        "PCIe 4.0 x16: 31.5 GB/s theoretical (PCI-SIG), 85 % reached by DMA; " + _SRC_CALL,
    ),
    "pcie5-x16": LinkProfile(
        "pcie5-x16", 55e9, 32 * 1024, 3.5e-6,
        "PCIe 5.0 x16: 63 GB/s theoretical (PCI-SIG), 55.6 GB/s NVIDIA nvbandwidth host_to_device_memcpy_ce; " + _SRC_CALL,
    ),
}

#: Named model shapes (module docstring).
MODELS: dict[str, ModelShape] = {
    "llama3-8b": ModelShape("llama3-8b", 32, 8, 128, 2),
    "qwen2.5-32b": ModelShape("qwen2.5-32b", 64, 8, 128, 2),
}


@dataclass(frozen=True)
class Transfer:
    """The price of one transfer (:meth:`SwitchCostModel.transfer`).

    ``tokens`` moved, ``bytes`` (``tokens * bytes_per_token``), ``copies`` issued, mean
    ``copy_bytes`` and ``seconds`` on the link.
    """

    tokens: int
    bytes: int
    copies: int
    copy_bytes: float
    seconds: float


@dataclass(frozen=True)
class SwitchCostModel:
    """The context-switch cost model (module docstring). Times in seconds, sizes in bytes/tokens.

    Attributes
    ----------
    model, link:
        The KV shape and the link profile.
    granularity:
        ``"block"``, ``"group"`` or ``"request"``.
    block_tokens:
        Tokens per KV block (vLLM: 16).
    group_blocks:
        Nominal block-group size, blocks (``"group"`` only).
    fragmentation:
        ``"group"`` only: how much a full GPU pool shrinks groups, in ``[0, 1]``.

    Raises
    ------
    InputError
        From :meth:`validate` / :meth:`from_dict`, naming the field.
    """

    model: ModelShape = field(default_factory=lambda: MODELS["llama3-8b"])
    link: LinkProfile = field(default_factory=lambda: LINKS["pcie5-x16"])
    granularity: str = "group"
    block_tokens: int = 16
    group_blocks: int = 64
    fragmentation: float = 0.5

    def validate(self) -> None:
        self.model.validate()
        self.link.validate()
        if self.granularity not in GRANULARITIES:
            raise InputError("switch.granularity", f"must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        _pos("switch.block_tokens", self.block_tokens, integer=True)
        _pos("switch.group_blocks", self.group_blocks, integer=True)
        f = self.fragmentation
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
            raise InputError("switch.fragmentation", f"must be a number in [0, 1], got {f!r}")

    @staticmethod
    def named(model: str = "llama3-8b", link: str = "pcie5-x16", **kw: Any) -> "SwitchCostModel":
        """A cost model from profile names (:data:`MODELS`, :data:`LINKS`) and overrides.

        Raises
        ------
        InputError
            Unknown profile name or bad field.
        """
        if model not in MODELS:
            raise InputError("switch.model", f"unknown model {model!r}; known: {', '.join(sorted(MODELS))}")
        if link not in LINKS:
            raise InputError("switch.link", f"unknown link {link!r}; known: {', '.join(sorted(LINKS))}")
        m = SwitchCostModel(MODELS[model], LINKS[link], **kw)
        m.validate()
        return m

    def with_(self, **kw: Any) -> "SwitchCostModel":
        m = replace(self, **kw)
        m.validate()
        return m

    # ------------------------------------------------------------------ pricing

    def group_size(self, util: float) -> int:
        """Effective block-group size, blocks, at GPU KV utilisation ``util`` in ``[0, 1]``."""
        u = min(max(float(util), 0.0), 1.0)
        return max(1, int(math.floor(self.group_blocks * (1.0 - self.fragmentation * u) + 1e-12)))

    def copies(self, tokens: int, util: float = 0.0) -> int:
        """Copies a transfer of ``tokens`` issues under the granularity (0 for no tokens)."""
        if tokens <= 0:
            return 0
        two_l = 2 * self.model.layers
        if self.granularity == "request":
            return two_l
        blocks = -(-tokens // self.block_tokens)
        if self.granularity == "block":
            return two_l * blocks
        g = self.group_size(util)
        return two_l * -(-blocks // g)

    def copy_bounds(self, tokens: int) -> tuple[int, int]:
        """The fewest and most copies any utilisation can give for ``tokens`` (the checker's
        range: ``"group"`` spans ``util`` 0 .. 1)."""
        if self.granularity != "group" or tokens <= 0:
            c = self.copies(tokens)
            return c, c
        return self.copies(tokens, 0.0), self.copies(tokens, 1.0)

    def seconds(self, n_bytes: int, copies: int) -> float:
        """``copies * tau_call + bytes / BW(bytes / copies)`` (0 for an empty transfer)."""
        if n_bytes <= 0 or copies <= 0:
            return 0.0
        s = n_bytes / copies
        return copies * self.link.call_s + n_bytes / self.link.bandwidth(s)

    def transfer(self, tokens: int, util: float = 0.0) -> Transfer:
        """Price moving ``tokens`` of one request's KV at GPU KV utilisation ``util``.

        Raises
        ------
        InputError
            Negative ``tokens``.
        """
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise InputError("tokens", f"must be an integer >= 0, got {tokens!r}")
        n = tokens * self.model.bytes_per_token
        c = self.copies(tokens, util)
        return Transfer(tokens, n, c, (n / c) if c else 0.0, self.seconds(n, c))

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Any, where: str = "switch") -> "SwitchCostModel":
        """Parse :meth:`to_dict`'s output (unknown fields raise :class:`InputError`)."""
        from prefixsched.theory.model import _dataclass_from_dict

        def reader(v: Any, name: str) -> Any:
            for key, cls in (("model", ModelShape), ("link", LinkProfile)):
                if name == f"{where}.{key}":
                    return _dataclass_from_dict(cls, v, name, lambda x, _n: x)
            return v

        return _dataclass_from_dict(SwitchCostModel, d, where, reader)
