"""The formal model: requests, prompts, server limits, service weights and instances.

Units throughout prefixsched: time in **seconds** (the sequential exact models of
:mod:`prefixsched.theory.exact` read the same numbers in **token units**, see there), lengths in
**tokens**, service in **cost units** (weighted tokens, ``W = w_e * n_e + w_q * n_q``).

Token ids are the ground truth for prefix sharing. Two kinds of prompt exist:

- a plain tuple of token ids (small hand-made or generated instances), and
- :class:`BlockPrompt`, the compact form of a block-hashed trace (Mooncake): block ``b`` of
  ``block_size`` tokens stands for the token ids ``b*block_size .. b*block_size+block_size-1``,
  and the last block is cut to the prompt length.

Prefix sharing is decided on *pages* (``page_size`` tokens; SGLang matches and stores whole
pages). :func:`page_keys` gives one hashable key per full page; two pages are equal iff their keys
are equal. Keys of the two prompt kinds (and of block prompts of different block sizes) live in
different namespaces, so an :class:`Instance` refuses to mix them (see :meth:`Instance.validate`); within one kind the equality of keys is exactly
the equality of the token ids. Output tokens are synthetic and unique to their request (page keys
``("O", request_id, page_index)``): outputs occupy KV memory but never match another prompt.

JSON instance format (round-trips through :meth:`Instance.to_dict` / :meth:`Instance.from_dict`)::

    {"requests": [{"id": "r0", "client": "c0", "arrival": 0.0,
                   "prompt": [1, 2, 3]            # or {"blocks": [0, 7], "length": 900, "block_size": 512}
                   "output_len": 16}, ...],
     "cost_model": {...CostModel fields...},
     "limits": {...Limits fields...},
     "weights": {"w_e": 1, "w_q": 2}}
"""

from __future__ import annotations

import math
from itertools import repeat
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Union, overload

from prefixsched import validation as _v
from prefixsched.errors import InputError
from prefixsched.theory.cost import CostModel

__all__ = [
    "BlockPrompt",
    "Prompt",
    "Request",
    "Limits",
    "ServiceWeights",
    "Instance",
    "page_keys",
    "sequence_page_keys",
    "WKey",
    "key_tokens",
    "PageKeys",
    "lcp",
]


class BlockPrompt(Sequence[int]):
    """A prompt given as a list of block ids (a block-hashed trace such as Mooncake).

    Token ``i`` is ``blocks[i // block_size] * block_size + i % block_size``: distinct blocks have
    distinct token ids, equal block ids at the same position share their tokens.

    Parameters
    ----------
    blocks:
        Block ids, one per ``block_size`` tokens (the last may be partial). Non-negative ints.
    length:
        Prompt length in tokens; ``(len(blocks)-1)*block_size < length <= len(blocks)*block_size``.
    block_size:
        Tokens per block (Mooncake: 512).

    Raises
    ------
    InputError
        If ``length`` does not fit the number of blocks, a block id is negative, or
        ``block_size < 1``.
    """

    __slots__ = ("blocks", "length", "block_size", "_hash")

    def __init__(self, blocks: Sequence[int], length: int, block_size: int) -> None:
        if block_size < 1:
            raise InputError("block_size", f"must be >= 1, got {block_size}")
        blocks = tuple(int(b) for b in blocks)
        if not blocks:
            raise InputError("blocks", "must not be empty")
        if any(b < 0 for b in blocks):
            raise InputError("blocks", f"block ids must be >= 0, got {min(blocks)}")
        lo, hi = (len(blocks) - 1) * block_size, len(blocks) * block_size
        if not (lo < length <= hi):
            raise InputError(
                "length",
                f"{len(blocks)} blocks of {block_size} tokens hold {lo + 1}..{hi} tokens, got {length}",
            )
        self.blocks = blocks
        self.length = int(length)
        self.block_size = int(block_size)
        self._hash = hash((self.blocks, self.length, self.block_size))

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[int, ...]: ...
    def __getitem__(self, i: int | slice) -> int | tuple[int, ...]:
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(self.length)))
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(i)
        b, off = divmod(i, self.block_size)
        return self.blocks[b] * self.block_size + off

    def __iter__(self) -> Iterator[int]:
        bs = self.block_size
        n = self.length
        for k, b in enumerate(self.blocks):
            start = b * bs
            for off in range(min(bs, n - k * bs)):
                yield start + off

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BlockPrompt):
            return (self.blocks, self.length, self.block_size) == (
                other.blocks,
                other.length,
                other.block_size,
            )
        return NotImplemented

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"BlockPrompt(blocks={list(self.blocks)!r}, length={self.length}, block_size={self.block_size})"

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": list(self.blocks), "length": self.length, "block_size": self.block_size}


Prompt = Union[tuple[int, ...], BlockPrompt]


class WKey(tuple):
    """A page key that stands for several tokens: ``("BT", block, start, n)`` = the ``n`` tokens
    ``start .. start+n-1`` of block ``block`` (its ids ``block*block_size + start ..``).

    :func:`page_keys` of a :class:`BlockPrompt` at ``page_size == 1`` compresses each block into two
    such keys, so a page-1 radix walk costs O(blocks), not O(tokens) (issue #8 §3): ``(block, 0,
    len-1)`` and ``(block, len-1, 1)`` where ``len`` is the block's length in that prompt (its last
    block may be partial). The split before the last token puts SGLang's ``len - 1`` match cap on a
    key boundary. This is exact as long as every block id has one length throughout the instance
    (true of the Mooncake trace, whose ids are hashes of the block's tokens: a partial block has its
    own id); a block id that is partial in one prompt and full in another would not share its
    first tokens, as token-level matching would. The radix cache reads a key's token count from
    :attr:`n` (:func:`key_tokens`); every other key weighs one page.
    """

    __slots__ = ()

    @property
    def n(self) -> int:
        return self[3]


def key_tokens(keys: Sequence[Hashable], page_size: int) -> int:
    """Tokens that a page-key sequence stands for: ``page_size`` per key, :attr:`WKey.n` for a
    compressed key."""
    if page_size != 1:
        return len(keys) * page_size
    t = 0
    for k in keys:
        t += k[3] if type(k) is WKey else 1
    return t


def page_keys(prompt: Prompt, page_size: int) -> tuple[Hashable, ...]:
    """One hashable key per *full* page of ``prompt`` (a trailing partial page has no key).

    Parameters
    ----------
    prompt:
        A tuple of token ids or a :class:`BlockPrompt`.
    page_size:
        Tokens per page (>= 1). With ``page_size == 1`` a tuple prompt's keys are its token ids.

    Returns
    -------
    tuple
        ``len(prompt) // page_size`` keys. Equal keys <=> equal token pages (within one prompt
        kind). For a BlockPrompt whose ``block_size`` is a multiple of ``page_size`` the keys are
        ``("B", block, sub_page)`` and cost O(pages), never a token-level walk; at ``page_size ==
        1`` (and ``block_size > 1``) they are compressed :class:`WKey` keys, two per block, that
        cover every token (:func:`key_tokens` counts them).
    """
    if page_size < 1:
        raise InputError("page_size", f"must be >= 1, got {page_size}")
    n_pages = len(prompt) // page_size
    if isinstance(prompt, BlockPrompt):
        bs = prompt.block_size
        if page_size == 1 and bs > 1:
            out: list[Hashable] = []
            n = prompt.length
            for k, b in enumerate(prompt.blocks):
                ln = bs if (k + 1) * bs <= n else n - k * bs
                if ln > 1:
                    out.append(WKey(("BT", b, 0, ln - 1)))
                out.append(WKey(("BT", b, ln - 1, 1)))
            return tuple(out)
        if bs % page_size == 0:
            per = bs // page_size
            blocks = prompt.blocks
            if per == 1:  # one page per block: built by zip in C (the hot case at scale)
                return tuple(zip(repeat("B", n_pages), blocks[:n_pages], repeat(0, n_pages)))
            return tuple(("B", blocks[p // per], p % per) for p in range(n_pages))
        tokens = tuple(prompt)
    else:
        tokens = prompt
    if page_size == 1:
        return tuple(tokens)
    return tuple(tokens[p * page_size : (p + 1) * page_size] for p in range(n_pages))


class PageKeys:
    """The page keys of every prompt of an instance, consistent across its prompts.

    Equal to :func:`page_keys` except at ``page_size == 1`` over block prompts, where a block is
    cut into compressed :class:`WKey` keys at every offset where some prompt of the instance needs
    a boundary inside it: where a prompt ends in it (its length there) and one token before (SGLang's
    ``len - 1`` match cap). So two prompts that share a block share its keys up to the shorter one's
    end, exactly as token-level matching would, also when one block id ends prompts of different
    lengths (the synthetic workloads' partial blocks); every key boundary of a prompt is a token
    boundary of it. A page-1 radix walk stays O(keys), a few per block.

    Parameters
    ----------
    requests:
        Every request whose prompt will be keyed (the instance's).
    page_size:
        Tokens per page.
    """

    def __init__(self, requests: Sequence["Request"], page_size: int) -> None:
        if page_size < 1:
            raise InputError("page_size", f"must be >= 1, got {page_size}")
        self.page_size = page_size
        self._cuts: dict[int, tuple[int, ...]] | None = None
        if page_size != 1:
            return
        cuts: dict[int, set[int]] = {}
        any_block = False
        for r in requests:
            p = r.prompt
            if not isinstance(p, BlockPrompt) or p.block_size == 1:
                continue
            any_block = True
            bs = p.block_size
            k = len(p.blocks) - 1
            ln = p.length - k * bs  # the last block's tokens in this prompt
            c = cuts.setdefault(p.blocks[k], set())
            c.add(ln)
            c.add(ln - 1)
        if any_block:
            self._cuts = {b: tuple(sorted(x for x in c if x > 0)) for b, c in cuts.items()}

    def keys(self, prompt: Prompt) -> tuple[Hashable, ...]:
        """The page keys of ``prompt`` (one of the instance's prompts, or any other)."""
        cuts = self._cuts
        if cuts is None or not isinstance(prompt, BlockPrompt) or prompt.block_size == 1:
            return page_keys(prompt, self.page_size)
        bs = prompt.block_size
        n = prompt.length
        out: list[Hashable] = []
        for k, b in enumerate(prompt.blocks):
            ln = bs if (k + 1) * bs <= n else n - k * bs
            start = 0
            for c in cuts.get(b, ()):
                if c >= ln:
                    break
                out.append(WKey(("BT", b, start, c - start)))
                start = c
            if ln - 1 > start:  # the len-1 boundary of this block, when no cut made it already
                out.append(WKey(("BT", b, start, ln - 1 - start)))
                start = ln - 1
            out.append(WKey(("BT", b, start, ln - start)))
        return tuple(out)


def sequence_page_keys(
    request: "Request", page_size: int, *, with_output: bool
) -> tuple[Hashable, ...]:
    """Page keys of the request's prompt, or of prompt + output when ``with_output``.

    Output tokens are synthetic and unique to the request: every full page that contains at least
    one output token has the key ``("O", request.id, page_index)``. This is what a finished
    request inserts into the cache (prompt + output, whole pages only).
    """
    keys = page_keys(request.prompt, page_size)
    if not with_output:
        return keys
    total = len(request.prompt) + request.output_len
    if page_size == 1:  # compressed prompt keys cover every prompt token: one key per output token
        return keys + tuple(("O", request.id, p) for p in range(len(request.prompt), total))
    n_full = total // page_size
    extra = tuple(("O", request.id, p) for p in range(len(keys), n_full))
    return keys + extra


def lcp(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common prefix of two sequences (tokens or page keys)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class Request:
    """One inference request.

    Attributes
    ----------
    id:
        Unique id within its instance (string).
    client:
        The client (tenant) that sent it; fairness is measured per client.
    arrival:
        Arrival time in seconds (>= 0).
    prompt:
        Prompt token ids: a tuple of ints or a :class:`BlockPrompt`. Length >= 1.
    output_len:
        Number of output tokens to generate (>= 1). The first one is produced by the prefill step.
    """

    id: str
    client: str
    arrival: float
    prompt: Prompt
    output_len: int

    @property
    def prompt_len(self) -> int:
        """Prompt length in tokens."""
        return len(self.prompt)

    def to_dict(self) -> dict[str, Any]:
        prompt: Any = self.prompt.to_dict() if isinstance(self.prompt, BlockPrompt) else list(self.prompt)
        return {
            "id": self.id,
            "client": self.client,
            "arrival": self.arrival,
            "prompt": prompt,
            "output_len": self.output_len,
        }

    @staticmethod
    def from_dict(d: Any, where: str = "request") -> "Request":
        """Build and validate one request from its JSON object.

        Raises
        ------
        InputError
            Naming ``where`` (e.g. ``requests[3]``) and the field: missing or mistyped field,
            non-positive lengths, negative or non-finite arrival, bad token ids.
        """
        if not isinstance(d, dict):
            raise InputError(where, f"must be a JSON object, got {type(d).__name__}")
        for key in ("id", "client", "arrival", "prompt", "output_len"):
            if key not in d:
                raise InputError(f"{where}.{key}", "missing")
        rid = d["id"]
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise InputError(f"{where}.id", f"must be a string or integer, got {rid!r}")
        client = d["client"]
        if not isinstance(client, (str, int)) or isinstance(client, bool):
            raise InputError(f"{where}.client", f"must be a string or integer, got {client!r}")
        arrival = _v.number(d["arrival"], f"{where}.arrival", lo=0, hi=_v.MAX_ARRIVAL)
        raw = d["prompt"]
        prompt: Prompt
        if isinstance(raw, dict):
            for key in ("blocks", "length", "block_size"):
                if key not in raw:
                    raise InputError(f"{where}.prompt.{key}", "missing")
            try:
                prompt = BlockPrompt(
                    _token_ids(raw["blocks"], f"{where}.prompt.blocks"),
                    _v.integer(raw["length"], f"{where}.prompt.length", lo=1, hi=_v.MAX_PROMPT_TOKENS),
                    _v.integer(raw["block_size"], f"{where}.prompt.block_size", lo=1, hi=_v.MAX_BLOCK_SIZE),
                )
            except InputError as e:
                if e.field.startswith(where):
                    raise
                raise InputError(f"{where}.prompt.{e.field}", e.problem) from None
        else:
            prompt = tuple(_token_ids(raw, f"{where}.prompt"))
        if len(prompt) < 1:
            raise InputError(f"{where}.prompt", "must hold at least one token")
        output_len = _v.integer(d["output_len"], f"{where}.output_len", lo=1, hi=_v.MAX_OUTPUT_TOKENS)
        return Request(id=str(rid), client=str(client), arrival=arrival, prompt=prompt, output_len=output_len)


@dataclass(frozen=True)
class Limits:
    """Server limits of one continuous-batching worker (SGLang's knobs).

    Attributes
    ----------
    kv_capacity_tokens:
        KV-cache pool size in tokens, shared by the radix cache and the running requests.
        Default 480,000: about 60 GiB of KV at 128 KiB per token (Llama-3.1-8B, bf16, 32 layers,
        8 KV heads of dim 128) left on an 80 GB H100 after 16 GB of weights.
    max_prefill_tokens:
        Extend tokens one step may prefill (SGLang ``--max-prefill-tokens``, default 16384).
        Chunked prefill is not modelled: as in SGLang with chunking off, the *first* request of a
        step may exceed this cap on its own.
    max_running_requests:
        Requests in the running batch at once (SGLang ``--max-running-requests``).
    page_size:
        Tokens per cache page; the cache matches and stores whole pages only.
    chunked_prefill_size:
        SGLang ``--chunked-prefill-size``: the most extend tokens one prefill batch runs; a prompt
        longer than the budget left is cut into chunks, one chunked request at a time. ``None``
        turns chunking off (SGLang ``--chunked-prefill-size -1``). Default 8192: SGLang 0.5.23's
        default for a GPU of 60-160 GB (``arg_groups/memory_hook.py::_handle_gpu_memory_settings``),
        i.e. an 80 GB H100. Only the ``sglang`` engine chunks; the ``ideal`` engine (the papers'
        model) ignores this field.
    """

    kv_capacity_tokens: int = 480_000
    max_prefill_tokens: int = 16_384
    max_running_requests: int = 256
    page_size: int = 1
    chunked_prefill_size: int | None = 8192

    def validate(self) -> None:
        """Raise :class:`InputError` naming the field if a limit is not an integer within its
        documented range (:mod:`prefixsched.validation`: token limits ``1 .. 10**15``,
        ``max_running_requests`` ``1 .. 10**7``, ``page_size`` ``1 .. 2**20``;
        ``chunked_prefill_size`` may also be ``None``)."""
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and f.name == "chunked_prefill_size":
                continue
            hi = _LIMIT_MAX.get(f.name, _v.MAX_LIMIT_TOKENS)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
                _v.integer(v, f"limits.{f.name}", lo=1, hi=hi)
                raise InputError(f"limits.{f.name}", f"must be an integer, got {_v.show(v)}")

    @staticmethod
    def from_dict(d: Any, where: str = "limits") -> "Limits":
        def reader(v: Any, name: str) -> Any:
            if v is None and name.endswith(".chunked_prefill_size"):
                return None
            return _v.integer(v, name)

        return _dataclass_from_dict(Limits, d, where, reader)


#: Upper ends of the :class:`Limits` fields that are not token counts (those: 10**15).
_LIMIT_MAX = {"max_running_requests": _v.MAX_RUNNING_REQUESTS, "page_size": _v.MAX_BLOCK_SIZE}


@dataclass(frozen=True)
class ServiceWeights:
    """Token-type weights of the service ``W = w_e * n_e + w_q * n_q`` (VTC, DLPM: 1 and 2).

    ``n_e`` counts extend tokens (uncached prompt tokens actually prefilled, the *actual* service)
    or full prompt tokens (the *client view*), ``n_q`` output tokens. Source: DLPM §3 Table 1,
    VTC §A.1 (w_p = 1, w_q = 2 after OpenAI's GPT-4 input/output price ratio).
    """

    w_e: float = 1.0
    w_q: float = 2.0

    def validate(self) -> None:
        for name in ("w_e", "w_q"):
            v = getattr(self, name)
            _v.number(v, f"weights.{name}", lo=0, hi=_v.MAX_WEIGHT)

    @staticmethod
    def from_dict(d: Any, where: str = "weights") -> "ServiceWeights":
        return _dataclass_from_dict(ServiceWeights, d, where, lambda v, name: _v.number(v, name))


@dataclass(frozen=True)
class Instance:
    """A scheduling instance: requests (sorted by arrival), a cost model, limits and weights.

    ``requests`` are kept in the order given, which must be non-decreasing in arrival time; the
    position of a request in this tuple is its tie-break sequence number everywhere in prefixsched.

    Raises
    ------
    InputError
        From :meth:`validate` (called by ``__post_init__``): empty instance, duplicate ids,
        unsorted arrivals, mixed prompt kinds, or a request whose prompt + output can never fit in
        ``limits.kv_capacity_tokens``.
    """

    requests: tuple[Request, ...]
    cost_model: CostModel = field(default_factory=CostModel)
    limits: Limits = field(default_factory=Limits)
    weights: ServiceWeights = field(default_factory=ServiceWeights)

    def __post_init__(self) -> None:
        object.__setattr__(self, "requests", tuple(self.requests))
        self.validate()

    def validate(self) -> None:
        self.limits.validate()
        self.weights.validate()
        self.cost_model.validate()
        if not self.requests:
            raise InputError("requests", "the instance is empty")
        seen: set[str] = set()
        prev = -math.inf
        kind = None
        max_prompt, max_out, max_arr = _v.MAX_PROMPT_TOKENS, _v.MAX_OUTPUT_TOKENS, _v.MAX_ARRIVAL
        for i, r in enumerate(self.requests):
            where = f"requests[{i}]"
            a = r.arrival
            if not (type(a) is float and 0.0 <= a <= max_arr):  # the fast path; else name the problem
                _v.number(a, f"{where}.arrival", lo=0, hi=max_arr)
            if not 1 <= r.prompt_len <= max_prompt:
                raise InputError(f"{where}.prompt", f"must hold 1 .. {max_prompt:,} tokens, got {r.prompt_len:,}")
            if type(r.output_len) is not int or not 1 <= r.output_len <= max_out:
                _v.integer(r.output_len, f"{where}.output_len", lo=1, hi=max_out)
            if r.id in seen:
                raise InputError(f"{where}.id", f"duplicate id {r.id!r}")
            seen.add(r.id)
            if r.arrival < prev:
                raise InputError(
                    f"{where}.arrival", f"arrivals must be non-decreasing, got {r.arrival} after {prev}"
                )
            prev = r.arrival
            this_kind = r.prompt.block_size if isinstance(r.prompt, BlockPrompt) else 0
            if kind is None:
                kind = this_kind
            elif kind != this_kind:
                raise InputError(
                    f"{where}.prompt",
                    "an instance must not mix token-list prompts and block prompts, or block prompts of "
                    f"different block sizes (their page keys differ): got block_size {this_kind or 'none'} "
                    f"after {kind or 'none'}",
                )
            need = r.prompt_len + r.output_len
            if need > self.limits.kv_capacity_tokens:
                raise InputError(
                    f"{where}",
                    f"prompt + output = {need} tokens can never fit in limits.kv_capacity_tokens = "
                    f"{self.limits.kv_capacity_tokens}",
                )

    @property
    def clients(self) -> tuple[str, ...]:
        """Client names in order of first appearance."""
        return tuple(dict.fromkeys(r.client for r in self.requests))

    def by_id(self) -> dict[str, Request]:
        return {r.id: r for r in self.requests}

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": [r.to_dict() for r in self.requests],
            "cost_model": asdict(self.cost_model),
            "limits": asdict(self.limits),
            "weights": asdict(self.weights),
        }

    @staticmethod
    def from_dict(d: Any) -> "Instance":
        """Parse and validate the JSON instance format (module docstring)."""
        if not isinstance(d, dict):
            raise InputError("instance", f"must be a JSON object, got {type(d).__name__}")
        if "requests" not in d:
            raise InputError("requests", "missing")
        if not isinstance(d["requests"], list):
            raise InputError("requests", "must be a list")
        unknown = set(d) - {"requests", "cost_model", "limits", "weights"}
        if unknown:
            raise InputError(sorted(unknown)[0], "unknown top-level field")
        reqs = tuple(Request.from_dict(r, f"requests[{i}]") for i, r in enumerate(d["requests"]))
        cost = CostModel.from_dict(d.get("cost_model", {}))
        limits = Limits.from_dict(d.get("limits", {}))
        weights = ServiceWeights.from_dict(d.get("weights", {}))
        return Instance(requests=reqs, cost_model=cost, limits=limits, weights=weights)


# ---------------------------------------------------------------------------------------------
# small validated readers


def _token_ids(v: Any, name: str) -> list[int]:
    """Token or block ids: a list of at most MAX_PROMPT_TOKENS ints in [0, MAX_TOKEN_ID]."""
    return _v.int_list(v, name, lo=0, hi=_v.MAX_TOKEN_ID, max_len=_v.MAX_PROMPT_TOKENS)


def _dataclass_from_dict(cls: Any, d: Any, where: str, reader: Any) -> Any:
    if not isinstance(d, dict):
        raise InputError(where, f"must be a JSON object, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    for key in d:
        if key not in names:
            raise InputError(f"{where}.{key}", f"unknown field (known: {', '.join(sorted(names))})")
    obj = cls(**{k: reader(v, f"{where}.{k}") for k, v in d.items()})
    obj.validate()
    return obj
