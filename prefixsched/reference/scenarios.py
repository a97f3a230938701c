"""Scenarios: transforms of an :class:`~prefixsched.theory.model.Instance` that set its load, its
client assignment and its misbehaving clients, for any trace or workload.

- **Load** (:func:`offered_load`, :func:`scale_to_load`, :func:`scale_to_rate`,
  :func:`rescale_arrivals`): how much work the requests offer against what the configured workers
  can do under the instance's cost model, and arrival times rescaled to a target load or rate.
- **Clients** (:func:`assign_clients`, :data:`CLIENT_STRATEGIES`): ``family``, ``round-robin``,
  ``field`` (as :func:`~prefixsched.reference.traces.load_mooncake`), and the skewed ``zipf:ALPHA``
  and ``heavy:K:SHARE`` that expose unfairness (DLPM §6 aggregates users into a few heavy clients).
- **Misbehaving clients** (:func:`misbehave_s1`, :func:`misbehave_s2`): DLPM's S1 (more requests)
  and S2 (longer prefix) patterns (dlpm.md §5 Table 3) applied to one client of any instance.

Every function returns a new instance (same seed-free input, same output: nothing here is random;
hashes are ``zlib.crc32``) and raises :class:`~prefixsched.errors.InputError` naming the parameter
on a bad value.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import Any

import numpy as np

from prefixsched.errors import InputError
from prefixsched.reference.traces import family_id, unbounded_cached_tokens
from prefixsched.reference.workloads import program_of
from prefixsched.theory.model import BlockPrompt, Instance, Request

__all__ = [
    "CLIENT_STRATEGIES",
    "offered_load",
    "rescale_arrivals",
    "scale_to_load",
    "scale_to_rate",
    "parse_client_strategy",
    "request_family",
    "assign_clients",
    "client_demand",
    "misbehave_s1",
    "misbehave_s2",
    "parse_misbehave",
]

#: Client strategies of :func:`assign_clients` (pattern -> description).
CLIENT_STRATEGIES: dict[str, str] = {
    "family": "one client per conversation family, folded onto N clients by crc32 (traces: as load_mooncake)",
    "round-robin": "request i (instance order) goes to client c{i mod N}",
    "field": "keep the instance's own clients (a trace's 'client' field)",
    "zipf:ALPHA": "families drawn onto N clients with Zipf(ALPHA) popularity: client ck (rank k+1) gets "
    "a (k+1)^-ALPHA share of the families (crc32 of the family as the uniform draw)",
    "heavy:K:SHARE": "K heavy clients c0..c{K-1} carry SHARE of the client-view demand (w_e*prompt + "
    "w_q*output), whole families at a time; the others share the rest evenly",
}


# ---------------------------------------------------------------------------------------------
# load


def _positive(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise InputError(name, f"must be a finite number > 0, got {v!r}")
    return float(v)


def _workers(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InputError("workers", f"must be an integer >= 1, got {v!r}")
    return v


def offered_load(instance: Instance, workers: int = 1) -> dict[str, Any]:
    """The work the instance offers against what ``workers`` workers can do, under its cost model.

    Offered work (worker-seconds, each request at full-batch efficiency). With ``CostModel``
    terms ``a, b, c_attn`` (prefill) and ``c, d, e`` (decode), ``B = min(max_prefill_tokens,
    chunked_prefill_size)`` tokens per prefill step and ``N`` requests per decode step:

    - prefill of request r with ``x`` extend tokens of a ``|x_r|``-token prompt:
      ``b * (1 + c_attn*|x_r|) * x + a * x / B`` (its share of full B-token prefill steps; the
      attention term as the simulator charges it). **No cache**: ``x = |x_r|``; **unbounded cache**:
      ``x = |x_r| - cached_r`` with ``cached_r`` from
      :func:`~prefixsched.reference.traces.unbounded_cached_tokens` (a perfect cache of every
      earlier prompt, the least any policy must prefill);
    - decode: ``n = output_len - 1`` steps, each reading its context once:
      ``n * (c/N + d) + e * (n*|x_r| + n*(n+1)/2)``, with ``N`` running requests sharing each
      step's fixed cost: ``N = min(max_running_requests, kv_capacity_tokens // mean footprint)``,
      at least 1, where the footprint (the simulator reserves every running request's prompt and
      full output) is ``prompt + output`` without cache hits and ``prompt - cached + output`` with
      the unbounded cache (cached prefixes shared by the running requests).

    Load ``rho = total work / (span * workers)`` with ``span`` = last arrival - first arrival.
    ``rho`` (no cache, prefill + decode) is what :func:`scale_to_load` targets: below 1 every
    policy can keep up with the prefill and decode work even without a single cache hit (it is
    necessary, not sufficient: batches are not always full, and arrivals are bursty);
    ``rho_unbounded_cache`` is the lower bound that no cache can beat (above 1 nothing keeps up).

    Returns
    -------
    dict
        ``workers``, ``requests``, ``span_s``, ``request_rate_per_s`` (requests / span),
        ``prompt_tokens_per_s`` (offered), ``prefill_capacity_tokens_per_s`` (prompt tokens per
        second the workers prefill without cache hits: total prompt tokens / no-cache prefill
        work, times ``workers``), ``decode_batch`` (N), ``work_s`` (``prefill_no_cache``,
        ``prefill_unbounded_cache``, ``decode``), ``rho``, ``rho_prefill``, ``rho_decode``,
        ``rho_unbounded_cache``. Loads are None when the span is 0.

    Raises
    ------
    InputError
        ``workers`` not an integer >= 1.
    """
    D = _workers(workers)
    reqs = instance.requests
    cm = instance.cost_model
    lim = instance.limits
    x = np.array([r.prompt_len for r in reqs], dtype=np.float64)
    out = np.array([r.output_len for r in reqs], dtype=np.float64)
    cached = np.array(unbounded_cached_tokens(instance), dtype=np.float64)
    B = float(min(lim.max_prefill_tokens, lim.chunked_prefill_size or lim.max_prefill_tokens))
    per_tok = cm.prefill_per_token_s * (1.0 + cm.c_attn * x) + cm.prefill_base_s / B
    pre_none = float(np.sum(per_tok * x))
    pre_ideal = float(np.sum(per_tok * (x - cached)))
    n = out - 1.0
    kv_reads = float(np.sum(cm.decode_per_context_token_s * (n * x + n * (n + 1) / 2) + n * cm.decode_per_request_s))

    def batch(footprint: np.ndarray) -> int:
        return max(1, min(lim.max_running_requests, int(lim.kv_capacity_tokens // max(float(np.mean(footprint)), 1.0))))

    N, N_ideal = batch(x + out), batch(x - cached + out)
    dec = kv_reads + float(np.sum(n)) * cm.decode_base_s / N
    dec_ideal = kv_reads + float(np.sum(n)) * cm.decode_base_s / N_ideal
    span = reqs[-1].arrival - reqs[0].arrival
    res: dict[str, Any] = {
        "workers": D,
        "requests": len(reqs),
        "span_s": span,
        "request_rate_per_s": None,
        "prompt_tokens_per_s": None,
        "prefill_capacity_tokens_per_s": float(x.sum()) / pre_none * D if pre_none > 0 else math.inf,
        "decode_batch": {"no_cache": N, "unbounded_cache": N_ideal},
        "work_s": {
            "prefill_no_cache": pre_none, "prefill_unbounded_cache": pre_ideal,
            "decode_no_cache": dec, "decode_unbounded_cache": dec_ideal,
        },
        "rho": None,
        "rho_prefill": None,
        "rho_decode": None,
        "rho_unbounded_cache": None,
    }
    if span > 0:
        cap = span * D
        res.update(
            request_rate_per_s=len(reqs) / span,
            prompt_tokens_per_s=float(x.sum()) / span,
            rho=(pre_none + dec) / cap,
            rho_prefill=pre_none / cap,
            rho_decode=dec / cap,
            rho_unbounded_cache=(pre_ideal + dec_ideal) / cap,
        )
    return res


def rescale_arrivals(instance: Instance, factor: float) -> Instance:
    """Arrival times stretched by ``factor`` around the first arrival: ``t0 + (t - t0) * factor``
    (``factor > 1`` slows the stream down, ``< 1`` speeds it up). Order, requests, cost model and
    limits are unchanged.

    Raises :class:`InputError` (``time_scale``) unless ``factor`` is a finite number > 0."""
    f = _positive("time_scale", factor)
    t0 = instance.requests[0].arrival
    reqs = tuple(replace(r, arrival=t0 + (r.arrival - t0) * f) for r in instance.requests)
    return Instance(requests=reqs, cost_model=instance.cost_model, limits=instance.limits, weights=instance.weights)


def scale_to_load(instance: Instance, rho: float, workers: int = 1) -> Instance:
    """Rescale arrivals so that :func:`offered_load`'s ``rho`` (no cache, prefill + decode, on
    ``workers`` workers) equals ``rho``.

    Raises
    ------
    InputError
        ``load`` not a finite number > 0, or every request arrives at the same time (no span to
        rescale).
    """
    target = _positive("load", rho)
    cur = offered_load(instance, workers)["rho"]
    if cur is None:
        raise InputError("load", "every request arrives at the same time: there is no arrival span to rescale")
    return rescale_arrivals(instance, cur / target)


def scale_to_rate(instance: Instance, rate: float) -> Instance:
    """Rescale arrivals so that the mean request rate (requests / arrival span, as
    :func:`~prefixsched.reference.traces.trace_stats`) is ``rate`` requests per second.

    Raises :class:`InputError` (``rate``) for a bad value or a zero arrival span."""
    target = _positive("rate", rate)
    reqs = instance.requests
    span = reqs[-1].arrival - reqs[0].arrival
    if span <= 0:
        raise InputError("rate", "every request arrives at the same time: there is no arrival span to rescale")
    return rescale_arrivals(instance, (len(reqs) / span) / target)


# ---------------------------------------------------------------------------------------------
# clients


def parse_client_strategy(spec: str) -> tuple[str, tuple[float, ...]]:
    """``"family"`` -> ``("family", ())``; ``"zipf:1.2"`` -> ``("zipf", (1.2,))``;
    ``"heavy:2:0.5"`` -> ``("heavy", (2, 0.5))``.

    Raises
    ------
    InputError
        (``client_strategy``) an unknown name, or parameters out of range: ``zipf:ALPHA`` needs a
        finite ``ALPHA >= 0``; ``heavy:K:SHARE`` an integer ``K >= 1`` and ``0 < SHARE < 1``.
    """
    if not isinstance(spec, str):
        raise InputError("client_strategy", f"must be a string, got {spec!r}")
    head, *rest = spec.split(":")
    if head in ("family", "round-robin", "field") and not rest:
        return head, ()
    if head == "zipf" and len(rest) == 1:
        try:
            a = float(rest[0])
        except ValueError:
            a = math.nan
        if not (math.isfinite(a) and a >= 0):
            raise InputError("client_strategy", f"zipf:ALPHA needs a finite ALPHA >= 0, got {rest[0]!r}")
        return "zipf", (a,)
    if head == "heavy" and len(rest) == 2:
        try:
            k = int(rest[0])
        except ValueError:
            k = 0
        try:
            s = float(rest[1])
        except ValueError:
            s = math.nan
        if k < 1 or str(k) != rest[0].strip():
            raise InputError("client_strategy", f"heavy:K:SHARE needs an integer K >= 1, got {rest[0]!r}")
        if not (0 < s < 1):
            raise InputError("client_strategy", f"heavy:K:SHARE needs 0 < SHARE < 1, got {rest[1]!r}")
        return "heavy", (k, s)
    raise InputError(
        "client_strategy",
        f"unknown client strategy {spec!r} (known: {', '.join(CLIENT_STRATEGIES)})",
    )


def request_family(request: Request) -> Hashable:
    """The conversation family of a request, the unit that :func:`assign_clients` gives to one client.

    *Decision:* a generated workload's program (:func:`~prefixsched.reference.workloads.program_of`,
    ids with a ``.``); otherwise a block prompt's first non-root block
    (:func:`~prefixsched.reference.traces.family_id`, the ``family`` strategy of the trace loader);
    otherwise a token prompt's second token (its first one for a one-token prompt), by analogy.
    """
    if "." in request.id:
        return ("p", program_of(request.id))
    p = request.prompt
    if isinstance(p, BlockPrompt):
        return family_id(p.blocks)
    return ("t", p[1] if len(p) > 1 else p[0])


def _crc(family: Hashable) -> int:
    return zlib.crc32(str(family).encode("utf-8"))


def client_demand(request: Request, instance: Instance) -> float:
    """Client-view demand of one request: ``w_e * prompt_len + w_q * output_len`` (cost units)."""
    w = instance.weights
    return w.w_e * request.prompt_len + w.w_q * request.output_len


def assign_clients(
    instance: Instance,
    strategy: str,
    clients: int = 8,
    *,
    family_of: Callable[[Request], Hashable] | None = None,
) -> Instance:
    """The instance with its requests re-assigned to clients ``c0 .. c{clients-1}`` by ``strategy``
    (:data:`CLIENT_STRATEGIES`; ``field`` returns the instance unchanged).

    Families (``family_of``, default :func:`request_family`) stay whole: every request of a family
    goes to the same client. ``family`` maps family f to ``c{crc32(str(f)) mod N}``, which is exactly
    the trace loader's ``family`` strategy on a Mooncake trace. ``zipf:ALPHA`` maps f through the
    Zipf CDF over the N ranks at the uniform point ``crc32(str(f)) / 2^32``. ``heavy:K:SHARE`` visits
    the families in crc32 order (ties: first appearance) and gives a family to the heavy group while
    that brings the group's client-view demand (:func:`client_demand`) closer to ``SHARE`` of the
    total; each family then goes to the least-loaded client of its group (heavy: c0..c{K-1}, light:
    the others), so demand is even within a group. The achieved share differs from SHARE by at most
    half the largest family's demand.

    Raises
    ------
    InputError
        A bad ``strategy`` (:func:`parse_client_strategy`), ``clients < 1``, or ``heavy`` with
        ``K >= clients``.
    """
    kind, params = parse_client_strategy(strategy)
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise InputError("clients", f"must be an integer >= 1, got {clients!r}")
    if kind == "field":
        return instance
    N = clients
    fam = family_of or request_family
    reqs = instance.requests
    if kind == "round-robin":
        names = [f"c{i % N}" for i in range(len(reqs))]
    else:
        fams = [fam(r) for r in reqs]
        order = list(dict.fromkeys(fams))
        crc = {f: _crc(f) for f in order}
        if kind == "family":
            to = {f: crc[f] % N for f in order}
        elif kind == "zipf":
            (alpha,) = params
            w = np.arange(1, N + 1, dtype=np.float64) ** -alpha
            cdf = np.cumsum(w / w.sum())
            cdf[-1] = 1.0
            to = {f: min(int(np.searchsorted(cdf, crc[f] / 2.0**32, side="right")), N - 1) for f in order}
        else:
            K, share = int(params[0]), float(params[1])
            if K >= N:
                raise InputError("client_strategy", f"heavy:{K}:{share} needs K < clients = {N}")
            demand: dict[Hashable, float] = dict.fromkeys(order, 0.0)
            for f, r in zip(fams, reqs):
                demand[f] += client_demand(r, instance)
            target = share * sum(demand.values())
            visit = sorted(order, key=lambda f: crc[f])  # sorted() is stable: ties keep appearance order
            heavy_sum = 0.0
            loads = [0.0] * N
            to = {}
            for f in visit:
                d = demand[f]
                heavy = abs(heavy_sum + d - target) < abs(heavy_sum - target)
                group = range(K) if heavy else range(K, N)
                c = min(group, key=lambda k: (loads[k], k))
                loads[c] += d
                heavy_sum += d if heavy else 0.0
                to[f] = c
        names = [f"c{to[f]}" for f in fams]
    new = tuple(replace(r, client=c) for r, c in zip(reqs, names))
    return Instance(requests=new, cost_model=instance.cost_model, limits=instance.limits, weights=instance.weights)


# ---------------------------------------------------------------------------------------------
# misbehaving clients (DLPM S1 / S2)


def _pick_client(instance: Instance, client: str | None) -> str:
    if client is None:
        return "c0" if "c0" in instance.clients else instance.clients[0]
    if client not in instance.clients:
        raise InputError("client", f"no client {client!r} in the instance (clients: {', '.join(instance.clients[:10])}...)")
    return client


def misbehave_s1(instance: Instance, client: str | None = None, copies: int = 4) -> Instance:
    """DLPM S1, "more requests per program" (dlpm.md §5 Table 3): every request of ``client``
    (default ``c0``, else the first client) is sent ``copies`` times at the same instant.

    The copies have the same prompt and output length, as the sibling requests of a Tree-of-Thought
    node do (they share their whole prompt; the ``s1`` workload builds its trees the same way), and
    ids ``"<id>~s1.<k>"`` (k = 1..copies-1), placed right after the original.

    Raises :class:`InputError` for ``copies`` not an integer >= 1 or an unknown client."""
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise InputError("copies", f"must be an integer >= 1, got {copies!r}")
    c = _pick_client(instance, client)
    out: list[Request] = []
    for r in instance.requests:
        out.append(r)
        if r.client == c:
            out.extend(replace(r, id=f"{r.id}~s1.{k}") for k in range(1, copies))
    return Instance(requests=tuple(out), cost_model=instance.cost_model, limits=instance.limits, weights=instance.weights)


def misbehave_s2(
    instance: Instance,
    client: str | None = None,
    factor: float = 2.0,
    *,
    family_of: Callable[[Request], Hashable] | None = None,
) -> Instance:
    """DLPM S2, "longer prefix" (dlpm.md §5 Table 3: 2x longer documents for Long-Context QA, 10x
    longer questions for ToT): every family of ``client`` gets a private prefix ``factor`` times
    as long.

    For each family (``family_of``, default :func:`request_family`) of the client, let ``L`` be the
    length of its first request's prompt after the first block (block prompts) or token (token
    prompts): the family's own part. ``(factor - 1) * L`` fresh tokens (whole blocks, rounded up,
    for block prompts) are inserted right after that first block/token of every request of the
    family, the same tokens for the whole family. So the shared root stays shared, the family's
    turns still share their prefix, and the first turn prefills ``factor`` times its own part.
    A one-block prompt gets the new blocks in front of its (partial) block. Fresh ids lie above every
    block / token id of the instance.

    Raises
    ------
    InputError
        ``factor`` not a finite number >= 1, an unknown client, or a lengthened request that no
        longer fits ``limits.kv_capacity_tokens``.
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 1:
        raise InputError("factor", f"must be a finite number >= 1, got {factor!r}")
    c = _pick_client(instance, client)
    fam = family_of or request_family
    reqs = instance.requests
    next_id = 1 + max(
        (max(r.prompt.blocks) if isinstance(r.prompt, BlockPrompt) else max(r.prompt)) for r in reqs
    )
    extra: dict[Hashable, tuple[int, ...]] = {}
    out = []
    for r in reqs:
        if r.client != c:
            out.append(r)
            continue
        f = fam(r)
        p = r.prompt
        if f not in extra:
            own = len(p) - (p.block_size if isinstance(p, BlockPrompt) else 1)
            n = max(0, math.ceil((factor - 1.0) * max(own, 0)))
            if isinstance(p, BlockPrompt):
                n = -(-n // p.block_size)
            extra[f] = tuple(range(next_id, next_id + n))
            next_id += n
        ins = extra[f]
        if isinstance(p, BlockPrompt):
            bs = p.block_size
            if len(p.blocks) == 1:
                blocks = ins + p.blocks
            else:
                blocks = p.blocks[:1] + ins + p.blocks[1:]
            newp: Any = BlockPrompt(blocks, p.length + len(ins) * bs, bs)
        else:
            newp = p[:1] + ins + tuple(p[1:])
        out.append(replace(r, prompt=newp))
    return Instance(requests=tuple(out), cost_model=instance.cost_model, limits=instance.limits, weights=instance.weights)


def parse_misbehave(spec: str) -> tuple[str, float, str | None]:
    """``"s1"``, ``"s1:COPIES"``, ``"s1:COPIES:CLIENT"``, ``"s2"``, ``"s2:FACTOR"``,
    ``"s2:FACTOR:CLIENT"`` -> ``(pattern, number, client)``; defaults: 4 copies, factor 2.

    Raises :class:`InputError` (``misbehave``) for anything else."""
    parts = spec.split(":") if isinstance(spec, str) else []
    if not parts or parts[0] not in ("s1", "s2") or len(parts) > 3:
        raise InputError("misbehave", f"must be s1[:COPIES[:CLIENT]] or s2[:FACTOR[:CLIENT]], got {spec!r}")
    kind = parts[0]
    num: float = 4 if kind == "s1" else 2.0
    if len(parts) > 1 and parts[1]:
        try:
            num = int(parts[1]) if kind == "s1" else float(parts[1])
        except ValueError:
            raise InputError("misbehave", f"bad {'COPIES' if kind == 's1' else 'FACTOR'} {parts[1]!r} in {spec!r}") from None
    client = parts[2] if len(parts) > 2 and parts[2] else None
    return kind, num, client
