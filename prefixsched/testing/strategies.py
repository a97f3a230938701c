"""Hypothesis strategies for scheduling workloads: prefix trees, clients, arrivals, instances.

Everything here builds *small, valid* :class:`~prefixsched.theory.model.Instance` objects for
property-based tests of policies (the invariant suite in :mod:`prefixsched.testing.suite` and the
tests in ``tests/test_invariants.py``). The shapes aim at the situations where schedulers go wrong:

- **shared prefixes**: prompts are drawn as a node of a random prefix tree plus a private suffix,
  so that LPM-style policies have something to reorder and the radix cache has something to split;
- **mixed rates**: each client has its own arrival process (burst, Poisson-like, periodic,
  on-off) and rate;
- **misbehaving clients**: a *flooder* (many requests at once with long outputs), a *long-prompt*
  client (prompts near the KV capacity) and a *late joiner* (arrives after everyone else is
  backlogged), the shapes behind the fairness theorems' premises;
- **rejoining clients** (opt-in kind ``"rejoiner"``, :data:`LOCKSTEP_KINDS`): short on-off bursts
  with long outputs, so the client's waiting queue drains and it rejoins the backlog while its
  earlier requests still run (VTC's counter lift and DLPM's active list on rejoin);
- **binding limits**: KV capacity, prefill budget and running slots are drawn small enough that
  they bind sometimes (KV capacity is never below the largest ``prompt + output`` of the
  instance, so every instance stays feasible).

Units: prompt and output lengths in tokens. Arrival times are integer *ticks* times a tick length:
one token time (1.0) under :meth:`CostModel.token_units`, 5 ms under the default cost model, so
that arrivals fall inside and between steps in both.

Determinism: strategies draw only through hypothesis (no global RNG), so ``@seed``/derandomized
runs reproduce byte-identical instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request, ServiceWeights

__all__ = [
    "ClientSpec",
    "ARRIVAL_PROCESSES",
    "CLIENT_KINDS",
    "prefix_trees",
    "prompts_from_tree",
    "arrival_ticks",
    "client_specs",
    "cost_models",
    "limits_for",
    "instances",
    "backlogged_instances",
    "LOCKSTEP_KINDS",
    "lockstep_instances",
]

#: Arrival processes understood by :func:`arrival_ticks`.
ARRIVAL_PROCESSES = ("burst", "poisson", "periodic", "on-off")
#: Client behaviours drawn by :func:`client_specs`.
CLIENT_KINDS = ("normal", "flooder", "long-prompt", "late-joiner")
#: :data:`CLIENT_KINDS` plus ``"rejoiner"`` (drains and rejoins while its requests still run); the
#: kinds :func:`lockstep_instances` draws. Opt-in: :func:`instances` draws it only when asked.
LOCKSTEP_KINDS = CLIENT_KINDS + ("rejoiner",)

_DEFAULT_TICK_S = 5e-3  # one tick under the default cost model (about one small prefill step)


@dataclass(frozen=True)
class ClientSpec:
    """How one generated client behaves.

    Attributes
    ----------
    name:
        Client id (``"c0"``, ``"c1"``, ...).
    kind:
        One of :data:`CLIENT_KINDS`.
    process:
        One of :data:`ARRIVAL_PROCESSES`.
    n_requests:
        Requests it sends (>= 1).
    mean_gap:
        Mean inter-arrival gap in ticks (>= 0).
    start:
        Tick of its first arrival.
    output_lo, output_hi:
        Output lengths are drawn in ``[output_lo, output_hi]`` tokens.
    """

    name: str
    kind: str
    process: str
    n_requests: int
    mean_gap: int
    start: int
    output_lo: int
    output_hi: int


@st.composite
def prefix_trees(
    draw: st.DrawFn,
    *,
    max_roots: int = 3,
    max_children: int = 3,
    max_depth: int = 3,
    max_segment: int = 6,
    first_token: int = 1,
) -> list[tuple[int, ...]]:
    """A random prefix tree, returned as the list of its nodes' token sequences (roots first).

    Every node's sequence extends its parent's by a segment of 1..``max_segment`` fresh token ids,
    so two nodes share exactly the tokens of their lowest common ancestor. Token ids of distinct
    segments never collide (ids are allocated from a counter), hence the sharing structure is the
    tree's and nothing else; ids start at ``first_token`` (give disjoint trees disjoint ranges).
    The list holds at least one node.
    """
    nodes: list[tuple[int, ...]] = []
    next_token = [first_token]

    def segment() -> tuple[int, ...]:
        n = draw(st.integers(1, max_segment))
        out = tuple(range(next_token[0], next_token[0] + n))
        next_token[0] += n
        return out

    def grow(prefix: tuple[int, ...], depth: int) -> None:
        nodes.append(prefix)
        if depth >= max_depth:
            return
        for _ in range(draw(st.integers(0, max_children))):
            grow(prefix + segment(), depth + 1)

    for _ in range(draw(st.integers(1, max_roots))):
        grow(segment(), 1)
    return nodes


@st.composite
def prompts_from_tree(
    draw: st.DrawFn, tree: Sequence[tuple[int, ...]], *, max_suffix: int = 6, suffix_base: int = 100_000
) -> tuple[int, ...]:
    """A prompt = one node of ``tree`` + a private suffix of 0..``max_suffix`` tokens.

    Suffix token ids start at ``suffix_base`` and are random, so two prompts may (rarely) share
    part of a suffix too; prompts are never empty.
    """
    base = draw(st.sampled_from(list(tree))) if tree else ()
    n = draw(st.integers(0 if base else 1, max_suffix))
    suffix = tuple(draw(st.lists(st.integers(suffix_base, suffix_base + 50), min_size=n, max_size=n)))
    return tuple(base) + suffix


@st.composite
def arrival_ticks(draw: st.DrawFn, n: int, process: str, mean_gap: int, start: int = 0) -> list[int]:
    """``n`` non-decreasing integer arrival ticks from ``start`` following ``process``.

    - ``burst``: everything at ``start`` (a flooder's pattern);
    - ``poisson``: gaps drawn in ``[0, 2*mean_gap]`` (integer stand-in for exponential gaps);
    - ``periodic``: constant gap ``mean_gap``;
    - ``on-off``: bursts of 1..4 requests separated by idle periods of 2..4 × ``mean_gap + 1``.
    """
    if process not in ARRIVAL_PROCESSES:
        raise ValueError(f"unknown arrival process {process!r}; known: {ARRIVAL_PROCESSES}")
    t = start
    out: list[int] = []
    if process == "burst":
        return [start] * n
    if process == "periodic":
        return [start + i * mean_gap for i in range(n)]
    if process == "poisson":
        for _ in range(n):
            out.append(t)
            t += draw(st.integers(0, 2 * mean_gap))
        return out
    while len(out) < n:  # on-off
        for _ in range(min(n - len(out), draw(st.integers(1, 4)))):
            out.append(t)
        t += draw(st.integers(2, 4)) * (mean_gap + 1)
    return out


@st.composite
def client_specs(
    draw: st.DrawFn,
    index: int,
    *,
    max_requests: int = 6,
    max_output: int = 8,
    kinds: Sequence[str] = CLIENT_KINDS,
) -> ClientSpec:
    """One client's behaviour (see :class:`ClientSpec`); ``index`` names it ``c{index}``.

    ``kinds`` may also hold ``"rejoiner"``: on-off bursts of 1..4 requests with idle periods of
    2..12 ticks and outputs in the upper half of ``[1, max_output]``, so that its queue empties and
    it rejoins while earlier requests are still decoding.
    """
    kind = draw(st.sampled_from(list(kinds)))
    if kind == "rejoiner":
        return ClientSpec(
            f"c{index}", kind, "on-off", draw(st.integers(2, max(2, max_requests))), draw(st.integers(0, 2)),
            draw(st.integers(0, 3)), max(1, (max_output + 1) // 2), max_output,
        )
    if kind == "flooder":
        return ClientSpec(
            f"c{index}", kind, "burst", draw(st.integers(2, max(2, max_requests))), 0, draw(st.integers(0, 2)),
            max(1, max_output // 2), max_output,
        )
    process = draw(st.sampled_from(ARRIVAL_PROCESSES))
    start = draw(st.integers(0, 3)) if kind != "late-joiner" else draw(st.integers(5, 30))
    lo = draw(st.integers(1, max_output))
    hi = draw(st.integers(lo, max_output))
    return ClientSpec(
        f"c{index}", kind, process, draw(st.integers(1, max_requests)), draw(st.integers(0, 6)), start, lo, hi
    )


def cost_models(kinds: Sequence[str] = ("token", "default")) -> st.SearchStrategy[CostModel]:
    """``CostModel.token_units()`` (one time unit per extend token, free decode) and/or the
    default linear cost model (``"default"``)."""
    opts: list[CostModel] = []
    for k in kinds:
        if k == "token":
            opts.append(CostModel.token_units())
        elif k == "default":
            opts.append(CostModel())
        else:
            raise ValueError(f"unknown cost model kind {k!r} (token, default)")
    return st.sampled_from(opts)


@st.composite
def limits_for(
    draw: st.DrawFn,
    requests: Sequence[Request],
    *,
    page_sizes: Sequence[int] = (1, 2, 4),
    tight: bool = True,
    kv_slack: int = 0,
    engine: str = "ideal",
) -> Limits:
    """Limits under which every request of ``requests`` fits, drawn small enough to bind.

    ``kv_capacity_tokens`` is in ``[need + kv_slack, 4*need + kv_slack]`` (``need`` = largest
    prompt + output; ``kv_slack`` = 0 by default, so the tightest feasible pool is drawn too).
    ``max_prefill_tokens`` in ``[1, 2*longest prompt]`` (the first request of a step may exceed
    it), ``max_running_requests`` in ``[1, 6]``. With ``tight=False`` the limits are generous
    (never bind on these small instances).

    ``engine="sglang"``: ``need`` is SGLang's admission requirement into an empty pool, ``prompt +
    min(output, 4096) + page + 1`` (SGLang admits only if that is below the pool), and
    ``chunked_prefill_size`` is drawn too (off, or ``[page, 2*longest prompt]`` so chunking binds);
    with ``engine="ideal"`` it stays at its default (the ideal engine ignores it).
    """
    page = draw(st.sampled_from(list(page_sizes)))
    if engine == "sglang":
        need = max(r.prompt_len + min(r.output_len, 4096) + page + 1 for r in requests)
    else:
        need = max(r.prompt_len + r.output_len for r in requests)
    longest = max(r.prompt_len for r in requests)
    if not tight:
        return Limits(kv_capacity_tokens=100 * need * len(requests), max_prefill_tokens=10**6,
                      max_running_requests=10**4, page_size=page)
    chunk: int | None = Limits().chunked_prefill_size
    if engine == "sglang":
        chunk = draw(st.one_of(st.none(), st.integers(page, max(page, 2 * longest))))
    return Limits(
        kv_capacity_tokens=draw(st.integers(need + kv_slack, 4 * need + kv_slack)),
        max_prefill_tokens=draw(st.integers(1, 2 * longest)),
        max_running_requests=draw(st.integers(1, 6)),
        page_size=page,
        chunked_prefill_size=chunk,
    )


@st.composite
def instances(
    draw: st.DrawFn,
    *,
    min_clients: int = 1,
    max_clients: int = 3,
    max_requests_per_client: int = 6,
    max_output: int = 8,
    kinds: Sequence[str] = CLIENT_KINDS,
    cost: Sequence[str] = ("token", "default"),
    page_sizes: Sequence[int] = (1, 2, 4),
    tight_limits: bool = True,
    shared_tree: bool | None = None,
    kv_slack: int = 0,
    engine: str = "ideal",
) -> Instance:
    """A small valid :class:`Instance`: clients from :func:`client_specs`, prompts from a prefix
    tree (shared by all clients, or one tree per client when ``shared_tree`` is False; drawn when
    None), arrivals from each client's process, limits from :func:`limits_for`.

    Request ids are ``r0, r1, ...`` in arrival order (ties by client index, then the client's own
    order), which is also the instance order. Weights are the papers' (w_e = 1, w_q = 2).
    ``engine`` is the engine the limits must admit every request on (:func:`limits_for`).
    """
    n_clients = draw(st.integers(min_clients, max_clients))
    specs = [
        draw(client_specs(i, max_requests=max_requests_per_client, max_output=max_output, kinds=kinds))
        for i in range(n_clients)
    ]
    share = draw(st.booleans()) if shared_tree is None else shared_tree
    common = draw(prefix_trees())
    cost_model = draw(cost_models(cost))
    tick = 1.0 if cost_model == CostModel.token_units() else _DEFAULT_TICK_S
    raw: list[tuple[int, int, int, str, tuple[int, ...], int]] = []
    for ci, spec in enumerate(specs):
        tree = common if share else draw(prefix_trees(max_roots=2, first_token=10_000 * (ci + 1)))
        max_suffix = 14 if spec.kind == "long-prompt" else 6
        ticks = draw(arrival_ticks(spec.n_requests, spec.process, spec.mean_gap, spec.start))
        for j, t in enumerate(ticks):
            prompt = draw(prompts_from_tree(tree, max_suffix=max_suffix))
            out = draw(st.integers(spec.output_lo, spec.output_hi))
            raw.append((t, ci, j, spec.name, prompt, out))
    raw.sort(key=lambda x: (x[0], x[1], x[2]))
    requests = tuple(
        Request(id=f"r{i}", client=name, arrival=t * tick, prompt=prompt, output_len=out)
        for i, (t, _ci, _j, name, prompt, out) in enumerate(raw)
    )
    limits = draw(limits_for(requests, page_sizes=page_sizes, tight=tight_limits, kv_slack=kv_slack, engine=engine))
    return Instance(requests=requests, cost_model=cost_model, limits=limits, weights=ServiceWeights())


def backlogged_instances(
    *, n_clients: int = 2, max_requests_per_client: int = 8, **kw: object
) -> st.SearchStrategy[Instance]:
    """Instances in which ``n_clients`` clients flood at time 0 (the premise of the two-backlogged
    fairness theorems: both are continuously backlogged for a long stretch), optionally joined by
    others. Keyword arguments go to :func:`instances`."""
    return instances(
        min_clients=n_clients,
        max_clients=n_clients,
        max_requests_per_client=max_requests_per_client,
        kinds=("flooder",),
        **kw,  # type: ignore[arg-type]
    )


def lockstep_instances(
    *, max_clients: int = 4, max_requests_per_client: int = 6, max_output: int = 8, **kw: object
) -> st.SearchStrategy[Instance]:
    """Instances for lockstep tests of a policy against its oracle (tests/oracles): 1 to
    ``max_clients`` clients of every kind in :data:`LOCKSTEP_KINDS` (flooders, late joiners,
    long prompts, rejoiners, mixed arrival processes), shared or per-client prefix trees and
    binding limits (KV capacity down to the largest ``prompt + output``). Keyword arguments go to
    :func:`instances`."""
    return instances(
        max_clients=max_clients,
        max_requests_per_client=max_requests_per_client,
        max_output=max_output,
        kinds=LOCKSTEP_KINDS,
        **kw,  # type: ignore[arg-type]
    )
