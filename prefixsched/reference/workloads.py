"""Seeded synthetic workloads (multi-client, shared-prefix, DLPM's misbehaving clients S1/S2).

``make_workload(name, clients=8, seed=0, ...)`` builds an :class:`~prefixsched.theory.model.Instance`
from the :data:`WORKLOADS` registry. Same name, parameters and seed -> identical instance (equal
``to_dict()``, equal JSON bytes).

Common decisions (all workloads)
--------------------------------
Prompts are :class:`~prefixsched.theory.model.BlockPrompt` with ``block_size = 32`` tokens (parameter
``block_size``) and the default limits (the default cost profile's) use ``page_size = block_size``:
the radix cache then works on 32-token pages, so a 4k-token prefix is 128 page keys instead of
4,096 token keys (a tuple prompt at ``page_size = 1`` makes every match walk every token, too slow
for thousands of multi-k-token prompts). 32 rather than 16 halves the key count again; the sharing lost is at most one partial page
(< 32 tokens) per request, under 1 % of the 1-4k-token prefixes used here.

A prompt is built by appending token runs to a context of blocks. A run appended to a context that
has exactly one continuation (the next turn of a conversation) continues the context's partial last
block with the same block id, so turn t-1's prompt is an exact token prefix of turn t's. Where a
context has several continuations (conversations under one system prompt, ToT siblings' children),
each continuation gets a fresh id for the partial last block, so siblings never share tokens they do
not share (the cost: the parent's partial page is not reused, which the page-granular cache would not
reuse anyway). Shared prefixes (system prompts, templates) are whole blocks.

Arrivals: renewal processes with Gamma inter-arrival times of rate ``rate`` and coefficient of
variation ``cv`` (shape ``1/cv^2``, scale ``cv^2/rate``; ``cv = 1`` is Poisson, ``cv = 0`` evenly
spaced), as in VTC's and DLPM's synthetic suites (vtc_fastswitch_preble.md §A.6, dlpm.md §5).
Each client draws from its own stream, spawned from ``numpy.random.default_rng(seed)``'s seed
sequence, so adding clients or extending the window never changes what an existing client draws.

Window: a workload is an endless stream cut to a window. With ``n_requests=None`` the instance holds
the requests arriving in ``[0, duration_s]``; with ``n_requests=N`` it holds the first N requests of
the same stream by arrival (so the N-request instance is a prefix of the 2N one). Conversations and
programs cut by the window's end are kept partially (a trace window does the same). Block ids are
renumbered by first appearance, so they do not depend on the window.

The model has no request dependencies (an :class:`Instance` is open-loop), so a follow-up request
(the next turn, a ToT child) arrives after a drawn think/level gap, not after its parent finishes;
under overload a child may arrive before its parent is served. An earlier answer enters a later
prompt as fresh tokens of its length: in the model output pages are unique to their request and never
match a prompt (:mod:`prefixsched.theory.model`), so the first request that carries an answer
prefills it, as SGLang would if the answer's KV had been evicted.

Request ids are ``"<program>.<node>"`` (``c0.v3.t1``: client 0, conversation 3, turn 1;
``c0.p2.n5``: client 0, ToT program 2, node 5; ``g4.r17``: group 4, request 17);
:func:`program_of` strips the node part, for per-program completion times (DLPM §6 measures ToT
latency per program). The heavy / misbehaving client is always ``c0``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from prefixsched.errors import InputError
from prefixsched.reference.workload_gen import (  # the generator toolkit (also the paper families')
    _EMPTY,
    _Alloc,
    _Ctx,
    _gap,
    _int,
    _lognormal_len,
    _num,
    _range,
    _Raw,
    _streams,
    _window,
)
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request
from prefixsched.theory.profiles import default_limits, default_profile

__all__ = ["WORKLOADS", "make_workload", "workload_params", "program_of", "DEFAULT_BLOCK_SIZE"]

#: Tokens per block of generated prompts (and default page size of generated instances).
DEFAULT_BLOCK_SIZE = 32


def program_of(request_id: str) -> str:
    """The program (conversation, ToT tree, prefix group) a generated request belongs to:
    its id without the last ``.``-separated part (``"c0.p2.n5"`` -> ``"c0.p2"``)."""
    return request_id.rsplit(".", 1)[0]


def _default(
    *,
    clients: int,
    seed: int,
    n_requests: int | None,
    block_size: int,
    duration_s: float = 90.0,
    conv_rate: float = 0.8,
    heavy_factor: float = 3.5,
    cv: float = 1.0,
    system_min: int = 1024,
    system_max: int = 4096,
    first_msg_min: int = 256,
    first_msg_max: int = 2048,
    msg_min: int = 32,
    msg_max: int = 256,
    mean_turns: float = 4.0,
    max_turns: int = 10,
    think_s: float = 8.0,
    output_median: float = 200.0,
    output_min: int = 32,
    output_max: int = 512,
) -> list[Request]:
    """Mooncake-shaped multi-client multi-turn chat with one heavy client (the built-in input).

    Each client ``ck`` has its own system prompt (``system_min..system_max`` tokens, whole blocks,
    uniform) and starts conversations as a Gamma process of ``conv_rate`` conversations/s
    (``heavy_factor`` times that for ``c0``) with CV ``cv``. A conversation has
    ``min(max_turns, Geometric(1/mean_turns))`` turns; turn 0's prompt is the system prompt + a
    ``first_msg_min..first_msg_max``-token user message; turn t's prompt is turn t-1's prompt + turn
    t-1's answer + a ``msg_min..msg_max``-token message, arriving an Exponential(``think_s``) gap
    after turn t-1. Outputs: lognormal, median ``output_median``, sigma 0.6, clipped to
    ``output_min..output_max``.

    Numbers at the defaults (8 clients, seed 0; ``trace_stats``): 2,222 requests in 90 s (c0: 752,
    the others 168-266, i.e. ~3.6x), mean prompt 4.7k tokens (max 9.1k), mean output 230, 86 % of
    prompt pages reusable from an unbounded cache. Under the default cost profile (Llama-3.1-8B on
    one H100 with attention and KV-read costs; :func:`prefixsched.reference.scenarios.offered_load`)
    the offered load is 5.0x one worker without cache hits (prefill 3.2 + decode 1.8: the decode
    steps read ~4.7k tokens of KV per running request) and 1.9x with an unbounded cache: the server
    is overloaded and queues build for the whole window (``--load 0.9`` on the CLI, or
    :func:`~prefixsched.reference.scenarios.scale_to_load`, rescales it to a sustainable rate).
    Measured with the reference simulator (``ideal`` engine) at the defaults: the last request
    finishes at ~208 s (FCFS, 79 % prompt hit, mean TTFT 35-47 s for every client) / ~189 s (LPM,
    84 % hit, clients with short system prompts starved to up to 70 s mean TTFT while others get
    1.5 s); VTC and DLPM (default parameters) hold c0 back (mean TTFT 67 s / 58 s) and keep the
    others at 6-32 s / 10-30 s, DLPM at LPM's 84 % hit rate; up to ~350 requests run at once. Each
    run takes about 0.5 s. (With the pre-#9 linear model, ``cost_model=CostModel()``, the load was
    moderate: last finish ~125 s.)
    """
    _num("duration_s", duration_s)
    _num("conv_rate", conv_rate)
    _num("heavy_factor", heavy_factor)
    _num("cv", cv, strict=False)
    s_lo, s_hi = _range("system", system_min, system_max)
    f_lo, f_hi = _range("first_msg", first_msg_min, first_msg_max)
    m_lo, m_hi = _range("msg", msg_min, msg_max)
    _num("mean_turns", mean_turns, lo=1.0, strict=False)
    _int("max_turns", max_turns)
    _num("think_s", think_s, strict=False)
    _num("output_median", output_median)
    o_lo, o_hi = _range("output", output_min, output_max)
    bs = block_size
    sb_lo, sb_hi = max(1, s_lo // bs), max(1, s_hi // bs)

    def gen(horizon: float) -> list[_Raw]:
        alloc = _Alloc()
        out: list[_Raw] = []
        for k, rng in enumerate(_streams(seed, clients)):
            rate = conv_rate * (heavy_factor if k == 0 else 1.0)
            system = _EMPTY.extend(int(rng.integers(sb_lo, sb_hi + 1)) * bs, alloc, bs, fork=False)
            t = 0.0
            seq = 0
            conv = 0
            while True:
                t += _gap(rng, rate, cv)
                if t > horizon:
                    break
                turns = min(max_turns, int(rng.geometric(1.0 / mean_turns)))
                ctx = system.extend(int(rng.integers(f_lo, f_hi + 1)), alloc, bs, fork=True)
                at = t
                for turn in range(turns):
                    out_len = _lognormal_len(rng, output_median, 0.6, o_lo, o_hi)
                    out.append(_Raw(round(at, 6), k, seq, f"c{k}.v{conv}.t{turn}", ctx, out_len))
                    seq += 1
                    if turn + 1 < turns:
                        msg = int(rng.integers(m_lo, m_hi + 1))
                        at += float(rng.exponential(think_s)) if think_s > 0 else 0.0
                        ctx = ctx.extend(out_len + msg, alloc, bs, fork=False)
                conv += 1
        return out

    return _window(gen, duration_s, n_requests, bs)


def _shared_prefix(
    *,
    clients: int,
    seed: int,
    n_requests: int | None,
    block_size: int,
    duration_s: float = 60.0,
    groups: int = 16,
    prefix_len: int = 2048,
    question_len: int = 128,
    output_len: int = 128,
    rate: float = 20.0,
    cv: float = 1.0,
) -> list[Request]:
    """G shared-prefix groups: each request = its group's ``prefix_len``-token shared prompt + a
    fresh ``question_len``-token question, ``output_len`` output tokens (all fixed).

    Arrivals: one Gamma process of ``rate`` requests/s (CV ``cv``) over all groups; each request
    picks its group uniformly at random. Group g belongs to client ``c{g mod clients}`` (so
    ``groups >= clients`` is required). At the defaults (seed 0): 1,180 requests in 60 s; the 16
    prefixes (32k tokens) stay cached, 93 % of prompt pages hit, and the server is under capacity
    (default cost profile: offered load 1.5x without cache hits, 0.43 with an unbounded cache; every
    policy finishes at ~61 s with TTFTs of a few ms). Raise ``rate``, ``groups`` or ``prefix_len``
    (past the KV pool) to make locality decide the queue.
    """
    _num("duration_s", duration_s)
    _int("groups", groups)
    if groups < clients:
        raise InputError("groups", f"must be >= clients = {clients} so that every client has a group, got {groups}")
    _int("prefix_len", prefix_len)
    _int("question_len", question_len)
    _int("output_len", output_len)
    _num("rate", rate)
    _num("cv", cv, strict=False)
    bs = block_size

    def gen(horizon: float) -> list[_Raw]:
        alloc = _Alloc()
        rng = _streams(seed, 1)[0]
        prefixes: dict[int, _Ctx] = {}
        out: list[_Raw] = []
        t = 0.0
        i = 0
        while True:
            t += _gap(rng, rate, cv)
            if t > horizon:
                break
            g = int(rng.integers(groups))
            if g not in prefixes:
                prefixes[g] = _EMPTY.extend(prefix_len, alloc, bs, fork=False)
            ctx = prefixes[g].extend(question_len, alloc, bs, fork=True)
            out.append(_Raw(round(t, 6), g % clients, i, f"g{g}.r{i}", ctx, output_len))
            i += 1
        return out

    return _window(gen, duration_s, n_requests, bs)


def _tot(
    *,
    clients: int,
    seed: int,
    n_requests: int | None,
    block_size: int,
    pattern: str,
    duration_s: float = 60.0,
    program_rate: float | None = None,
    cv: float = 1.0,
    branches: int = 2,
    heavy_branches: int | None = None,
    depth: int = 3,
    template_len: int = 192,
    question_len: int = 128,
    heavy_question_factor: float | None = None,
    thought_min: int = 128,
    thought_max: int = 384,
    level_gap_s: float = 2.0,
) -> list[Request]:
    """Tree-of-Thought programs for S1/S2 (see :func:`_s1`). ``None`` parameters take the
    pattern's default (:data:`_TOT_DEFAULTS`): ``program_rate`` 0.3 (s1) / 0.45 (s2),
    ``heavy_branches`` 2x ``branches`` (s1) / ``branches`` (s2), ``heavy_question_factor`` 1 (s1) /
    10 (s2)."""
    bs = block_size
    _num("duration_s", duration_s)
    if program_rate is None:
        program_rate = 0.3 if pattern == "s1" else 0.45
    _num("program_rate", program_rate)
    _num("cv", cv, strict=False)
    _int("branches", branches)
    if heavy_branches is None:
        heavy_branches = 2 * branches if pattern == "s1" else branches
    _int("heavy_branches", heavy_branches)
    _int("depth", depth)
    _int("template_len", template_len)
    _int("question_len", question_len)
    if heavy_question_factor is None:
        heavy_question_factor = 10.0 if pattern == "s2" else 1.0
    _num("heavy_question_factor", heavy_question_factor)
    t_lo, t_hi = _range("thought", thought_min, thought_max)
    _num("level_gap_s", level_gap_s, strict=False)
    heavy_q = max(1, round(question_len * heavy_question_factor))

    def gen(horizon: float) -> list[_Raw]:
        alloc = _Alloc()
        # The ToT instruction template (few-shot prompt) is the same application for every client.
        template = _EMPTY.extend(-(-template_len // bs) * bs, alloc, bs, fork=False)
        out: list[_Raw] = []
        for k, rng in enumerate(_streams(seed, clients)):
            b = heavy_branches if k == 0 else branches
            q = heavy_q if k == 0 else question_len
            t = 0.0
            seq = 0
            prog = 0
            while True:
                t += _gap(rng, program_rate, cv)
                if t > horizon:
                    break
                root = template.extend(q, alloc, bs, fork=True)
                # level by level: every node of level l has b children in level l+1 whose prompt is
                # the node's prompt + the node's thought (its output); siblings share their prompt.
                level = [(root, t)]
                node = 0
                for _depth in range(depth):
                    nxt = []
                    for ctx, at in level:
                        for _ in range(b):
                            thought = int(rng.integers(t_lo, t_hi + 1))
                            out.append(_Raw(round(at, 6), k, seq, f"c{k}.p{prog}.n{node}", ctx, thought))
                            seq += 1
                            node += 1
                            gap = level_gap_s * float(rng.uniform(0.5, 1.5))
                            nxt.append((ctx.extend(thought, alloc, bs, fork=True), at + gap))
                    level = nxt
                prog += 1
        return out

    return _window(gen, duration_s, n_requests, bs)


def _s1(*, clients: int, seed: int, n_requests: int | None, block_size: int, **kw: Any) -> list[Request]:
    """DLPM S1 (more requests per program), Tree-of-Thought shape: c0 expands every node into
    ``heavy_branches`` (default 2x ``branches`` = 4) children, the others into ``branches`` (2).

    Every client starts ToT programs as a Gamma process of ``program_rate`` programs/s (CV ``cv``);
    a program is a tree of ``depth`` levels, level l holding ``b**l`` requests (depth 3: 2+4+8 = 14
    requests for a well-behaved client, 4+16+64 = 84 for c0; the paper's depth 4 gives 30 vs 340,
    dlpm.md §5 Table 3). Level-1 prompts are the shared ``template_len``-token ToT template + a
    ``question_len``-token question; a child's prompt is its parent's prompt + the parent's
    thought (its output, ``thought_min..thought_max`` = 128..384 tokens, mean 256 as the paper's
    ToT, dlpm.md §5 Table 2), arriving ``level_gap_s`` (2 s) x U(0.5, 1.5) after the parent. The
    template (192 tokens) is one application's few-shot prompt, shared by all clients.
    ``program_rate`` defaults to 0.3 programs/s per client (``duration_s`` 60): at seed 0, 3,098
    requests (c0: 1,500), mean prompt 718 tokens; default cost profile: offered load 2.2x without
    cache hits (decode 1.3 of it), 1.3x with an unbounded cache; in the reference simulator up to
    ~1,080 requests run at once and the last request finishes at ~99 s (overload); FCFS and LPM give
    c0 ~7 s and the others 1-12 s mean TTFT, VTC and DLPM push c0 to ~15 s and keep the others
    under ~1.3 s.
    """
    return _tot(clients=clients, seed=seed, n_requests=n_requests, block_size=block_size, pattern="s1", **kw)


def _s2(*, clients: int, seed: int, n_requests: int | None, block_size: int, **kw: Any) -> list[Request]:
    """DLPM S2 (longer prefix), Tree-of-Thought shape: c0's questions are ``heavy_question_factor``
    (default 10) times longer than the others' (dlpm.md §5 Table 3: "ToT has 10x longer
    questions"); same structure (``branches`` = 2 for everyone) and program rate. Otherwise as
    :func:`_s1`, except ``program_rate`` defaults to 0.45 programs/s per client (S2 programs are
    6x smaller than S1's heavy ones): at seed 0, 2,822 requests in 60 s (c0: 276), mean prompt
    792 tokens; default cost profile: offered load 2.1x without cache hits, 1.3x with an unbounded
    cache; the last request finishes at ~92-94 s in the reference simulator (overload). LPM and
    VTC, which charges c0's long prompts in full, raise c0's mean TTFT to ~10 s / ~9 s (others
    3-6 s); DLPM, charging only extend tokens, leaves c0 at ~6 s like the others."""
    return _tot(clients=clients, seed=seed, n_requests=n_requests, block_size=block_size, pattern="s2", **kw)


# The ToT parameters shared by s1 and s2 (their **kw), and the per-pattern values of the None ones.
_TOT_PARAMS = {
    name: p.default
    for name, p in inspect.signature(_tot).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
    and name not in ("clients", "seed", "n_requests", "block_size", "pattern")
}
_TOT_DEFAULTS = {
    "s1": {"program_rate": 0.3, "heavy_branches": "2 x branches", "heavy_question_factor": 1.0},
    "s2": {"program_rate": 0.45, "heavy_branches": "branches", "heavy_question_factor": 10.0},
}

#: Registry: workload name -> (builder, one-line description). A builder takes keyword-only
#: ``clients, seed, n_requests, block_size`` plus its own parameters and returns the requests.
WORKLOADS: dict[str, tuple[Callable[..., list[Request]], str]] = {
    "default": (
        _default,
        "multi-turn chat, per-client 1-4k-token system prompts, Gamma arrivals, c0 sends 3.5x; "
        "~2.2k requests in 90 s, overloaded under the default cost profile (use --load to rescale)",
    ),
    "shared-prefix": (
        _shared_prefix,
        "G groups sharing a P-token prefix + Q-token questions, Gamma arrivals (rate, cv), groups spread over clients",
    ),
    "s1": (
        _s1,
        "DLPM S1: Tree-of-Thought programs, c0 uses 4 branches (84 requests/tree) vs 2 (14), same program rate",
    ),
    "s2": (
        _s2,
        "DLPM S2: Tree-of-Thought programs, c0's questions 10x longer, same structure and program rate",
    ),
}


def _params_of(name: str) -> dict[str, Any]:
    builder = WORKLOADS[name][0]
    if builder in (_s1, _s2):
        return {**_TOT_PARAMS, **_TOT_DEFAULTS[name]}
    return {
        n: p.default
        for n, p in inspect.signature(builder).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in ("clients", "seed", "n_requests", "block_size")
    }


def workload_params(name: str) -> dict[str, Any]:
    """The tunable parameters of workload ``name`` and their defaults (for ``--help`` / docs)."""
    if name not in WORKLOADS:
        raise InputError("workload", f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})")
    return _params_of(name)



def make_workload(
    name: str,
    *,
    clients: int = 8,
    seed: int = 0,
    n_requests: int | None = None,
    limits: Limits | None = None,
    cost_model: CostModel | None = None,
    **kw: Any,
) -> Instance:
    """Build the synthetic workload ``name`` (a key of :data:`WORKLOADS`).

    Parameters
    ----------
    clients:
        Number of clients ``c0 .. c{clients-1}`` (>= 2 for s1/s2 and default: c0 is the heavy one).
    seed:
        Integer >= 0; all randomness comes from ``numpy.random.default_rng(seed)``.
    n_requests:
        ``None``: the requests arriving within the workload's ``duration_s``; N: the first N
        requests of the same stream (module docstring; ``duration_s`` then only sets where the
        search for the window's end starts and does not change the result).
    limits, cost_model:
        Default: the default cost profile's (:func:`prefixsched.theory.profiles.default_limits` with
        ``page_size=block_size``, and :func:`~prefixsched.theory.profiles.default_profile`'s cost
        model: Llama-3.1-8B on one H100 with attention and KV-read costs).
    **kw:
        ``block_size`` (tokens per prompt block, default 32) and the workload's own parameters
        (:func:`workload_params`).

    Raises
    ------
    InputError
        Unknown workload or parameter, or a bad value (naming the parameter and the value).
    """
    if name not in WORKLOADS:
        raise InputError("workload", f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})")
    builder = WORKLOADS[name][0]
    min_clients = 1 if name == "shared-prefix" else 2
    _int("clients", clients, min_clients)
    _int("seed", seed, 0)
    if n_requests is not None:
        _int("n_requests", n_requests)
    block_size = _int("block_size", kw.pop("block_size", DEFAULT_BLOCK_SIZE))
    known = _params_of(name)
    for k in kw:
        if k not in known:
            raise InputError(k, f"unknown parameter of workload {name!r} (known: {', '.join(sorted(known))})")
    if limits is None:
        limits = default_limits(page_size=block_size)
    if cost_model is None:
        cost_model = default_profile().cost_model
    reqs = builder(clients=clients, seed=seed, n_requests=n_requests, block_size=block_size, **kw)
    return Instance(requests=tuple(reqs), cost_model=cost_model, limits=limits)


# The DLPM paper's families (dlpm-*: long-context QA, height-4 ToT, LLM-as-a-judge, multi-turn
# chat, mixed), issue #12: their own module registers them into WORKLOADS on import.
from prefixsched.reference.workloads_dlpm import DLPM_WORKLOADS  # noqa: E402
from prefixsched.reference.workloads_papers import PAPER_WORKLOADS  # noqa: E402  (klpm-replica, vtc-overload)

WORKLOADS.update(DLPM_WORKLOADS)
WORKLOADS.update(PAPER_WORKLOADS)
