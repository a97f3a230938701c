"""Real-trace loader: Mooncake-format JSONL -> :class:`~prefixsched.theory.model.Instance`.

Source: the Mooncake FAST'25 trace release (Qin et al., "Mooncake: Trading More Storage for Less
Computation", USENIX FAST 2025; ``FAST25-release/traces/``), described in
``shared/data/mooncake/README.md``. One JSON object per line::

    {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2, ...]}

- ``timestamp``: arrival in **milliseconds** since the first request (converted to seconds);
- ``input_length``, ``output_length``: prompt and output lengths in tokens (>= 1);
- ``hash_ids``: one id per 512-token prompt block (the last block cut to ``input_length``). The ids are
  remapped prefix hashes: equal ids at the same position mean a reusable prefix, so two requests share
  ``k*512`` cached tokens when their first ``k`` ids agree. Each request becomes a
  :class:`~prefixsched.theory.model.BlockPrompt` (block ``b`` stands for the token ids
  ``b*512 .. b*512+511``), so no token-level walk is ever made;
- ``client`` (optional, not in the public trace): honoured by the ``"field"`` client strategy.

The trace has no tenants, so a client assignment is derived (:data:`CLIENT_STRATEGIES`). Request ids
are the 0-based physical line index (``"0"`` is line 1), so an id points straight at its line.

Default limits and cost model. With no ``limits`` / ``cost_model`` argument the instance gets the
default cost profile's (:data:`prefixsched.theory.profiles.DEFAULT_PROFILE`, Llama-3.1-8B on one H100:
422k-token KV pool, 16,384 max prefill tokens, 2,048 running, attention and KV-read costs) with
``page_size = block_size``. Whole
512-token pages are the finest granularity at which the trace can share anything: the hash ids say
nothing about tokens inside a block, and only a whole block can be a reused prefix of another
request. A token-level radix walk (``page_size=1``) over the trace's 145 M prompt tokens would cost
minutes per simulated policy for no extra sharing; with 512-token pages the same walk is ~280 k page
keys. (The one thing lost is SGLang's reuse of the *partial* last block of a prompt + output, which
the trace cannot express anyway.) A caller who passes ``limits`` should keep ``page_size`` a divisor of
``block_size``; otherwise :func:`~prefixsched.theory.model.page_keys` falls back to a slow token walk.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections import Counter
from collections.abc import Hashable
from typing import Any

from prefixsched import validation as _v
from prefixsched.errors import InputError
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import BlockPrompt, Instance, Limits, Request, page_keys
from prefixsched.theory.profiles import default_limits, default_profile

__all__ = [
    "CLIENT_STRATEGIES", "load_mooncake", "trace_stats", "family_id", "unbounded_reuse", "unbounded_cached_tokens",
]

#: Client-assignment strategies of :func:`load_mooncake` (name -> one-line description).
CLIENT_STRATEGIES: dict[str, str] = {
    "family": (
        "one client per conversation family (requests sharing their first non-root block, "
        "hash_ids[1]; hash_ids[0] for one-block prompts), folded onto N clients by crc32"
    ),
    "round-robin": "request i (0-based line order) goes to client c{i mod N}",
    "field": "the line's own 'client' field (string or integer); every line must have one",
}

_REQUIRED = ("timestamp", "input_length", "output_length", "hash_ids")


def family_id(hash_ids: list[int] | tuple[int, ...]) -> int:
    """The conversation family of a Mooncake request: its first non-root block id.

    Every request of the public conversation trace starts with block 0 (a common root, e.g. the
    system prompt), so the family is ``hash_ids[1]``; a one-block prompt is its own family,
    ``hash_ids[0]``.
    """
    return hash_ids[1] if len(hash_ids) > 1 else hash_ids[0]


def _family_client(family: int, clients: int) -> str:
    # zlib.crc32 is stable across runs and platforms (Python's hash() of an int is too, but
    # hash() of str is salted; crc32 keeps the rule the same whatever the id type).
    return f"c{zlib.crc32(str(family).encode('ascii')) % clients}"


def load_mooncake(
    path: str | os.PathLike[str],
    *,
    clients: int = 8,
    strategy: str = "family",
    block_size: int = 512,
    max_requests: int | None = None,
    limits: Limits | None = None,
    cost_model: CostModel | None = None,
) -> Instance:
    """Load a Mooncake-format JSONL trace as an :class:`Instance` (module docstring).

    Parameters
    ----------
    path:
        The ``.jsonl`` file. Blank lines are skipped (line numbers in errors stay physical).
    clients:
        Number of clients N (>= 1) for the ``family`` and ``round-robin`` strategies; names are
        ``"c0" .. "c{N-1}"``. Ignored by ``field``.
    strategy:
        A key of :data:`CLIENT_STRATEGIES`.
    block_size:
        Tokens per hash block (Mooncake: 512).
    max_requests:
        Keep only the first M requests (reading stops there); ``None`` keeps all.
    limits:
        Server limits; default the default profile's with ``page_size=block_size`` (module
        docstring says why; :func:`prefixsched.theory.profiles.default_limits`).
    cost_model:
        Step-time model; default the default profile's (:func:`prefixsched.theory.profiles.default_profile`).

    Returns
    -------
    Instance
        Requests ``Request(id=str(line_index), client, arrival=timestamp/1000 s,
        prompt=BlockPrompt(hash_ids, input_length, block_size), output_len=output_length)``
        in file order.

    Raises
    ------
    InputError
        Bad parameters (naming the parameter), an unreadable file, or a malformed line, with
        ``where = "path:line"`` so the message reads ``path:line: field: problem``: bytes that are
        not UTF-8, not JSON (or nested deeper than :data:`prefixsched.validation.MAX_JSON_DEPTH`),
        not an object, a missing field, a wrong type, a value outside its documented range
        (:mod:`prefixsched.validation`: timestamp ``0 .. 1e13`` ms, lengths ``1 .. 10**7`` /
        ``1 .. 10**6`` tokens, block ids ``0 .. 2**63-1``; ``NaN``, ``1e400`` and 400-digit
        integers included), a timestamp smaller than the previous line's (the trace must be
        sorted), a ``hash_ids`` list whose length does not fit ``input_length`` and
        ``block_size``, a request whose prompt + output cannot fit the KV pool; and
        ``path: trace: the trace is empty``.
    """
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise InputError("clients", f"must be an integer >= 1, got {clients!r}")
    if strategy not in CLIENT_STRATEGIES:
        raise InputError(
            "strategy", f"unknown client strategy {strategy!r} (known: {', '.join(CLIENT_STRATEGIES)})"
        )
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not 1 <= block_size <= _v.MAX_BLOCK_SIZE:
        raise InputError("block_size", f"must be an integer in [1, {_v.MAX_BLOCK_SIZE}], got {block_size!r}")
    if max_requests is not None and (
        isinstance(max_requests, bool) or not isinstance(max_requests, int) or max_requests < 1
    ):
        raise InputError("max_requests", f"must be an integer >= 1 or None, got {max_requests!r}")
    if limits is None:
        limits = default_limits(page_size=block_size)
    if cost_model is None:
        cost_model = default_profile().cost_model
    limits.validate()
    cost_model.validate()
    capacity = limits.kv_capacity_tokens

    name = os.fspath(path)
    try:
        fh = open(name, "rb")  # bytes: a bad byte is reported with its line, not as a traceback
    except OSError as e:
        raise InputError("path", f"cannot read trace {name!r}: {e.strerror}") from None

    requests: list[Request] = []
    lines: list[int] = []
    prev_ts: float = -math.inf
    prev_line = 0
    max_ts, max_in, max_out, max_id = _v.MAX_TIMESTAMP_MS, _v.MAX_PROMPT_TOKENS, _v.MAX_OUTPUT_TOKENS, _v.MAX_TOKEN_ID
    with fh:
        for lineno, raw_line in enumerate(_lines(fh, name), start=1):
            if not raw_line.strip():
                continue
            where = f"{name}:{lineno}"
            d = _v.parse_json(_v.decode_utf8(raw_line, where, field="line"), where, first_line=0, field="line")
            if not isinstance(d, dict):
                raise InputError("line", f"must be a JSON object, got {type(d).__name__}", where)
            for key in _REQUIRED:
                if key not in d:
                    raise InputError(key, "missing", where)

            ts = _v.number(d["timestamp"], "timestamp", lo=0, hi=max_ts, where=where, unit="ms")
            if ts < prev_ts:
                raise InputError(
                    "timestamp",
                    f"timestamps must be non-decreasing (the trace must be sorted by arrival): "
                    f"{ts:g} ms after {prev_ts:g} ms on line {prev_line}",
                    where,
                )
            prev_ts, prev_line = ts, lineno

            n_in = _v.integer(d["input_length"], "input_length", lo=1, hi=max_in, where=where, unit="tokens")
            n_out = _v.integer(d["output_length"], "output_length", lo=1, hi=max_out, where=where, unit="tokens")

            hashes = d["hash_ids"]
            if not isinstance(hashes, list):
                raise InputError("hash_ids", f"must be a list of integers, got {type(hashes).__name__}", where)
            if not all(type(h) is int for h in hashes) or (hashes and not 0 <= min(hashes) <= max(hashes) <= max_id):
                k, h = next((k, h) for k, h in enumerate(hashes) if type(h) is not int or not 0 <= h <= max_id)
                raise InputError(
                    "hash_ids", f"block id hash_ids[{k}] must be an integer in [0, 2**63 - 1], got {_v.show(h)}", where
                )
            need = -(-n_in // block_size)
            if len(hashes) != need:
                raise InputError(
                    "hash_ids",
                    f"input_length {n_in} needs {need} blocks of {block_size} tokens, got {len(hashes)}",
                    where,
                )
            if n_in + n_out > capacity:
                raise InputError(
                    "input_length",
                    f"prompt + output = {n_in + n_out} tokens can never fit in "
                    f"limits.kv_capacity_tokens = {capacity}",
                    where,
                )

            index = len(requests)
            if strategy == "family":
                client = _family_client(family_id(hashes), clients)
            elif strategy == "round-robin":
                client = f"c{index % clients}"
            else:
                if "client" not in d:
                    raise InputError("client", "missing (strategy 'field' needs a client on every line)", where)
                c = d["client"]
                if isinstance(c, bool) or not isinstance(c, (str, int)) or c == "":
                    raise InputError("client", f"must be a non-empty string or an integer, got {_v.show(c)}", where)
                client = str(c)

            requests.append(
                Request(
                    id=str(lineno - 1),
                    client=client,
                    arrival=ts / 1000.0,
                    prompt=BlockPrompt(hashes, n_in, block_size),
                    output_len=n_out,
                )
            )
            lines.append(lineno)
            if max_requests is not None and len(requests) >= max_requests:
                break

    if not requests:
        raise InputError("trace", "the trace is empty", name)
    try:
        return Instance(requests=tuple(requests), cost_model=cost_model, limits=limits)
    except InputError as e:  # a request-level check of the common layer: point at its line
        m = re.match(r"requests\[(\d+)\]\.?(.*)", e.field)
        if m is None:
            raise
        raise InputError(m.group(2) or "line", e.problem, f"{name}:{lines[int(m.group(1))]}") from None


def _lines(fh: Any, name: str) -> Any:
    """The lines of a binary file; an unreadable file (a directory, an I/O error) is an InputError."""
    try:
        yield from fh
    except OSError as e:
        raise InputError("path", f"cannot read trace {name!r}: {e.strerror or e}") from None


def _ideal_hits(instance: Instance) -> list[tuple[int, int]]:
    """(hit_pages, pages) per request under an unbounded radix cache of prompt pages."""
    ps = instance.limits.page_size
    children: dict[tuple[int, Hashable], int] = {}
    out: list[tuple[int, int]] = []
    for r in instance.requests:
        keys = page_keys(r.prompt, ps)
        node, hit, matching = 0, 0, True
        for k in keys:
            nxt = children.get((node, k))
            if nxt is None:
                matching = False
                nxt = len(children) + 1
                children[(node, k)] = nxt
            elif matching:
                hit += 1
            node = nxt
        out.append((hit, len(keys)))
    return out


def unbounded_reuse(instance: Instance) -> tuple[int, int, int]:
    """Prompt pages reusable from an unbounded prefix cache, in arrival order.

    Walks an unbounded radix tree of prompt pages (``instance.limits.page_size``): request r's hit is
    the longest prefix of its page keys inserted by an earlier request (prompts only: output pages
    are unique to their request and never match, see :mod:`prefixsched.theory.model`).

    Returns
    -------
    (reused_pages, total_pages, extend_tokens)
        ``extend_tokens`` = sum over requests of ``prompt_len - hit_pages * page_size``: the prefill
        work under an ideal cache (tokens).
    """
    ps = instance.limits.page_size
    hits = _ideal_hits(instance)
    reused = sum(h for h, _ in hits)
    total = sum(p for _, p in hits)
    extend = sum(r.prompt_len - h * ps for r, (h, _) in zip(instance.requests, hits))
    return reused, total, extend


def trace_stats(instance: Instance) -> dict[str, Any]:
    """Summary numbers of an instance (any source), for the CLI and the docs.

    Returns
    -------
    dict
        ``requests``, ``clients``, ``requests_per_client`` (name -> count), ``duration_s`` (last
        minus first arrival), ``request_rate_per_s``, ``prompt_tokens_mean``/``_max``/``_total``,
        ``output_tokens_mean``/``_max``/``_total``, ``page_size``, ``pages``,
        ``reuse_fraction`` (share of prompt pages an unbounded cache would serve, see
        :func:`unbounded_reuse`), ``extend_tokens_unbounded_cache``, and the pure prefill seconds
        (``prefill_per_token_s`` x attention-weighted tokens, no per-step overhead) with no cache and
        with an unbounded cache, plus the latter divided by ``duration_s``
        (``prefill_load_unbounded_cache``; > 1 means even a perfect cache cannot keep up; None when
        the duration is 0).
    """
    reqs = instance.requests
    n = len(reqs)
    ps = instance.limits.page_size
    cm = instance.cost_model
    prompts = [r.prompt_len for r in reqs]
    outputs = [r.output_len for r in reqs]
    hits = _ideal_hits(instance)
    reused = sum(h for h, _ in hits)
    pages = sum(p for _, p in hits)
    extend = sum(r.prompt_len - h * ps for r, (h, _) in zip(reqs, hits))
    b = cm.prefill_per_token_s
    no_cache_s = b * sum(cm.weighted_extend(r.prompt_len, r.prompt_len) for r in reqs)
    ideal_s = b * sum(cm.weighted_extend(r.prompt_len - h * ps, r.prompt_len) for r, (h, _) in zip(reqs, hits))
    duration = reqs[-1].arrival - reqs[0].arrival
    counts = Counter(r.client for r in reqs)
    return {
        "requests": n,
        "clients": len(counts),
        "requests_per_client": {c: counts[c] for c in instance.clients},
        "duration_s": duration,
        "request_rate_per_s": (n / duration) if duration > 0 else None,
        "prompt_tokens_mean": sum(prompts) / n,
        "prompt_tokens_max": max(prompts),
        "prompt_tokens_total": sum(prompts),
        "output_tokens_mean": sum(outputs) / n,
        "output_tokens_max": max(outputs),
        "output_tokens_total": sum(outputs),
        "page_size": ps,
        "pages": pages,
        "reuse_fraction": (reused / pages) if pages else 0.0,
        "extend_tokens_unbounded_cache": extend,
        "prefill_s_no_cache": no_cache_s,
        "prefill_s_unbounded_cache": ideal_s,
        "prefill_load_unbounded_cache": (ideal_s / duration) if duration > 0 else None,
    }


def unbounded_cached_tokens(instance: Instance) -> list[int]:
    """Per request (instance order): prompt tokens an unbounded prefix cache of prompt pages would
    serve, in arrival order (the walk of :func:`unbounded_reuse`), in tokens (whole pages)."""
    ps = instance.limits.page_size
    return [h * ps for h, _ in _ideal_hits(instance)]
