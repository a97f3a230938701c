r"""Adversarial instance families: one builder per family, its growth law stated and measured.

Every builder returns a validated :class:`~prefixsched.theory.model.Instance` in **token units**
(:meth:`CostModel.token_units`: one uncached prompt token = one time unit, no step overheads,
zero-cost decode; arrivals in the same unit), ``page_size = 1``, deterministic token ids (each
family uses its own id ranges so that prompts share exactly the prefixes described). The growth
laws below are exact for the stated model and are checked by ``tests/test_families.py``.

Families
--------
``lpm_starvation(n)`` (simulator, LPM vs FCFS)
    A cache-cold request ``cold`` (``C`` unique tokens, arrival ``delta/2``) competes with ``n``
    hot requests ``hot{i}`` (shared prefix of ``P`` tokens + ``s`` unique tokens, arrival
    ``i * delta``, ``s >= delta``: the hot stream alone saturates the server). Limits:
    ``max_prefill_tokens = s`` (one hot request fills a step's prefill budget; the first request
    of a step may exceed it alone, so ``cold`` can still run). LPM always prefers a hot request
    (``P`` cached tokens against 0), so::

        TTFT_LPM(cold)  = P + n*s + C - delta/2        (linear in n, slope s)
        TTFT_FCFS(cold) = P + s + C - delta/2          (independent of n)

``fcfs_no_reuse(L)`` (prev model, FCFS vs the exact optimum)
    ``g`` groups of ``q`` queries; group ``a``'s prompts are a group prefix of ``L`` tokens plus one
    unique token; all arrive at 0 and the instance interleaves the groups (FCFS order =
    instance order: ``a0, b0, a1, b1, ...``). In the previous-query model FCFS never reuses::

        makespan_FCFS = g*q*(L+1),   makespan_OPT = g*L + g*q  (one prefix per group, = LPM)
        ratio = q*(L+1)/(L+q)  ->  q  as L -> inf (increasing in L for q > 1)

    (In the ``radix`` model with an unbounded cache every order does the same total work, so this
    family is specific to the prev model, i.e. to a cache that keeps one sequence.)

``vtc_locality(n)`` (simulator, VTC vs LPM)
    ``c`` clients, each with ``n`` requests (client prefix of ``P = n*s`` tokens + ``s`` unique
    tokens, ``output_len = 1``), all arriving at 0, interleaved. Limits: ``max_running_requests = 1``
    and a KV pool of ``P + 2(s+1)`` tokens (one client prefix fits, two do not). VTC alternates
    clients (equal charges), so LRU evicts the other prefix every time and every request misses;
    LPM drains one client (prefix hit) before the next::

        span_VTC = c*n*(P+s) = c*n*s*(n+1),   span_LPM = c*(P + n*s) = 2*c*n*s
        throughput_VTC / throughput_LPM = span_LPM / span_VTC = 2/(n+1)  -> 0

``d2lpm_infinite_qw(n)`` (D²LPM cluster, dlpm.md §4 Thm A.5)
    Client ``f``: ``n`` requests sharing a long prefix (``P`` tokens + ``s`` unique); client ``g``:
    ``n`` requests of the same length with no common prefix (distinct first tokens). Both are
    backlogged from time 0. With an infinite worker quantum ``Q_w``, D²LPM sends all of ``f`` to
    the one worker holding its prefix while ``g`` spreads over all ``|W|`` workers, so
    ``W_g - W_f`` grows linearly with the busy interval (about ``(|W|-1)/|W|`` of all service
    while both are backlogged) instead of staying below Thm 5.1's ``2|W|(U + Q_u)``. Measured with
    :func:`prefixsched.reference.cluster.simulate_cluster` in ``tests/test_families.py`` (4
    workers, one running slot each, Q_u = 500: the gap grows by about 129 cost units per request
    with Q_w = inf and stays within the bound with Q_w = 2000).

``klpm_definition4(u, d, s, k, users, seed)`` (prev model, klpm.md §4 Definition 4)
    Height-two prefix tree: ``users`` user prefixes of ``u`` tokens, each repeated in ``k``
    queries whose unique document has ``d`` tokens. The ``users*k`` queries are shuffled
    *globally* (seeded ``numpy`` permutation) and arrive regularly with **gap ``d + s``**: ``s`` is
    the arrival slack beyond the document cost (our reading of the open spacing convention,
    klpm.md §4). FCFS pays ``u + d`` per query, so it is overloaded iff ``s < u`` (backlog grows by
    about ``u - s`` per query); a group of ``k`` same-user queries costs ``u + k*d``. Measured with
    the prev-model greedy orders (:func:`prev_greedy_order`). Finding (``papers/klpm/reduction.md``):
    whether k-LPM beats both FCFS and LPM depends on LPM's tie rule. With ties to the *oldest*
    query (the project's LPM rule) LPM is best on most points; with ties to the *newest* (an
    adversarial but legal LPM, since the paper leaves ties open) k-LPM < min(FCFS, LPM).

Registry: :data:`FAMILIES` maps a CLI name to ``(builder(n) -> Instance, description)``;
:func:`family_tokens` gives the prompt tokens of a member *before* it is built (the CLI refuses a
member above :data:`MAX_FAMILY_TOKENS`: ``vtc-locality`` grows quadratically in ``n``, the others
linearly, and a member is written as one JSON token id per token).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from prefixsched.errors import InputError
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request, ServiceWeights

__all__ = [
    "lpm_starvation",
    "fcfs_no_reuse",
    "vtc_locality",
    "d2lpm_infinite_qw",
    "klpm_definition4",
    "prev_greedy_order",
    "FAMILIES",
    "MAX_FAMILY_TOKENS",
    "family_tokens",
]


def _pos_int(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise InputError(name, f"must be an integer >= {lo}, got {v!r}")
    return int(v)


def _instance(reqs: list[Request], limits: Limits | None = None) -> Instance:
    return Instance(
        requests=tuple(reqs),
        cost_model=CostModel.token_units(0.0),
        limits=limits or Limits(page_size=1),
        weights=ServiceWeights(),
    )


def lpm_starvation(n: int, *, prefix: int = 64, suffix: int = 8, spacing: int = 4, cold_len: int = 32) -> Instance:
    """LPM starves a cache-cold request behind a saturating hot stream (module docstring).

    Parameters
    ----------
    n:
        Number of hot requests (>= 1).
    prefix, suffix:
        ``P`` shared hot-prefix tokens and ``s`` unique tokens per hot request.
    spacing:
        ``delta``, the hot inter-arrival time (time units); must be even and ``<= suffix``.
    cold_len:
        ``C``, tokens of the cold request (> suffix so that it never fits after a hot one).

    Returns
    -------
    Instance
        ``n + 1`` requests: ``hot0..hot{n-1}`` (client ``hot``) and ``cold`` (client ``cold``,
        arrival ``spacing/2``); ``Limits(max_prefill_tokens=suffix)``.
        ``TTFT_LPM(cold) = P + n*s + C - delta/2``, ``TTFT_FCFS(cold) = P + s + C - delta/2``.

    Raises
    ------
    InputError
        Non-positive sizes, odd ``spacing``, ``spacing > suffix`` or ``cold_len <= suffix``.
    """
    n = _pos_int("n", n)
    prefix, suffix, spacing, cold_len = (_pos_int(k, v) for k, v in
                                         (("prefix", prefix), ("suffix", suffix), ("spacing", spacing), ("cold_len", cold_len)))
    if spacing % 2 or spacing > suffix:
        raise InputError("spacing", f"must be even and <= suffix = {suffix}, got {spacing}")
    if cold_len <= suffix:
        raise InputError("cold_len", f"must exceed suffix = {suffix}, got {cold_len}")
    base_hot = 1_000_000
    hot_prefix = tuple(range(base_hot, base_hot + prefix))
    reqs = [Request("hot0", "hot", 0.0, hot_prefix + tuple(range(10, 10 + suffix)), 1)]
    reqs.append(Request("cold", "cold", spacing / 2, tuple(range(2_000_000, 2_000_000 + cold_len)), 1))
    for i in range(1, n):
        reqs.append(Request(f"hot{i}", "hot", float(i * spacing),
                            hot_prefix + tuple(range(10 + i * suffix, 10 + (i + 1) * suffix)), 1))
    return _instance(reqs, Limits(max_prefill_tokens=suffix, page_size=1))


def fcfs_no_reuse(L: int, *, groups: int = 2, per_group: int = 3) -> Instance:
    """Interleaved prefix groups: FCFS never reuses in the prev model (module docstring).

    Parameters
    ----------
    L:
        Group-prefix length in tokens (>= 1).
    groups, per_group:
        ``g`` groups (>= 2) of ``q`` queries (>= 1); ``n = g*q`` queries.

    Returns
    -------
    Instance
        Ids ``g{a}q{i}`` (client ``g{a}``), all arriving at 0, interleaved
        ``g0q0, g1q0, ..., g0q1, ...``; prompts ``prefix_a (L tokens) + one unique token``.
        Prev model: ``makespan_FCFS = g*q*(L+1)``, ``makespan_OPT = g*L + g*q``.
    """
    L = _pos_int("L", L)
    groups = _pos_int("groups", groups, 2)
    per_group = _pos_int("per_group", per_group)
    reqs: list[Request] = []
    uniq = 10
    for i in range(per_group):
        for a in range(groups):
            base = 1_000_000 * (a + 1)
            reqs.append(Request(f"g{a}q{i}", f"g{a}", 0.0, tuple(range(base, base + L)) + (uniq,), 1))
            uniq += 1
    return _instance(reqs)


def vtc_locality(n: int, *, clients: int = 2, suffix: int = 4) -> Instance:
    """VTC's round-robin thrashes a KV pool that holds one client prefix (module docstring).

    Parameters
    ----------
    n:
        Requests per client (>= 1); also the prefix length in units of ``suffix`` (``P = n*s``).
    clients:
        ``c`` clients (>= 2).
    suffix:
        ``s`` unique tokens per request.

    Returns
    -------
    Instance
        ``c*n`` requests ``c{a}r{i}`` (client ``c{a}``), all at time 0, interleaved;
        ``Limits(kv_capacity_tokens=P + 2*(s+1), max_running_requests=1)``. Throughput ratio
        VTC/LPM ``= 2/(n+1)`` (simulator, token units).
    """
    n = _pos_int("n", n)
    clients = _pos_int("clients", clients, 2)
    suffix = _pos_int("suffix", suffix)
    P = n * suffix
    reqs: list[Request] = []
    uniq = 10
    for i in range(n):
        for a in range(clients):
            base = 1_000_000 * (a + 1)
            reqs.append(Request(f"c{a}r{i}", f"c{a}", 0.0, tuple(range(base, base + P)) + tuple(range(uniq, uniq + suffix)), 1))
            uniq += suffix
    return _instance(reqs, Limits(kv_capacity_tokens=P + 2 * (suffix + 1), max_running_requests=1, page_size=1))


def d2lpm_infinite_qw(n: int, *, prefix: int = 256, suffix: int = 8, output_len: int = 4) -> Instance:
    """Thm A.5's counterexample (dlpm.md §4): a long-prefix client ``f`` and a no-match client ``g``.

    Parameters
    ----------
    n:
        Requests per client (>= 1).
    prefix, suffix:
        ``f``'s prompts are a shared prefix of ``prefix`` tokens + ``suffix`` unique tokens;
        ``g``'s prompts have the same length ``prefix + suffix`` and pairwise distinct first tokens.
    output_len:
        Output tokens per request.

    Returns
    -------
    Instance
        ``2n`` requests ``f{i}``/``g{i}``, all arriving at 0 (both clients backlogged), interleaved.
    """
    n = _pos_int("n", n)
    prefix, suffix, output_len = (_pos_int(k, v) for k, v in (("prefix", prefix), ("suffix", suffix), ("output_len", output_len)))
    f_prefix = tuple(range(1_000_000, 1_000_000 + prefix))
    L = prefix + suffix
    reqs: list[Request] = []
    for i in range(n):
        reqs.append(Request(f"f{i}", "f", 0.0, f_prefix + tuple(range(10 + i * suffix, 10 + (i + 1) * suffix)), output_len))
        gb = 2_000_000 + i * L
        reqs.append(Request(f"g{i}", "g", 0.0, tuple(range(gb, gb + L)), output_len))
    return _instance(reqs)


def klpm_definition4(u: int, d: int, s: int, k: int, users: int, seed: int = 0) -> Instance:
    """klpm.md §4 Definition 4, "regular arrival shuffled queue" (module docstring).

    Parameters
    ----------
    u:
        User-prefix length (tokens, >= 1).
    d:
        Per-query document length (tokens, >= 1).
    s:
        Arrival slack (time units, >= 0): consecutive arrivals are ``d + s`` apart. Corollary 3's
        regime is ``0 < s < u``.
    k:
        Queries per user (the replica count, >= 1).
    users:
        Number of users (>= 1).
    seed:
        Seed of the global shuffle (``numpy.random.default_rng(seed).permutation``).

    Returns
    -------
    Instance
        ``users*k`` requests ``q{i}`` (client ``u{user}``) in arrival order, arrival ``i*(d+s)``,
        prompt ``user prefix (u tokens) + unique document (d tokens)``.
    """
    u, d, k, users = (_pos_int(name, v) for name, v in (("u", u), ("d", d), ("k", k), ("users", users)))
    s = _pos_int("s", s, 0)
    seed = _pos_int("seed", seed, 0)
    items: list[tuple[int, tuple[int, ...]]] = []
    doc = 10_000_000
    for us in range(users):
        pre = tuple(range(1 + us * u, 1 + (us + 1) * u))
        for _ in range(k):
            items.append((us, pre + tuple(range(doc, doc + d))))
            doc += d
    perm = np.random.default_rng(seed).permutation(len(items))
    gap = d + s
    reqs = [Request(f"q{i}", f"u{items[p][0]}", float(i * gap), items[p][1], 1) for i, p in enumerate(perm)]
    return _instance(reqs)


def prev_greedy_order(inst: Any, policy: str, k: int | None = None, *, ties: str = "oldest") -> tuple[str, ...]:
    """Greedy FCFS / LPM / k-LPM order in the prev model with a choice of LPM tie rule.

    Same clock and pick rules as :func:`prefixsched.theory.exact.greedy.greedy_order` (model
    ``"prev"``; k-LPM pick ``m`` is an FCFS pick iff ``m % k == 0``), which it equals for
    ``ties="oldest"``. ``ties="newest"`` breaks equal-LCP ties in LPM picks (of LPM and of k-LPM)
    toward the *latest* arrival (then the later instance position): a legal LPM, since the paper
    leaves ties open (klpm.md §7.4).

    Parameters
    ----------
    inst:
        A :class:`~prefixsched.theory.sequential.SeqInstance` or an :class:`Instance`.
    policy:
        ``"fcfs"``, ``"lpm"`` or ``"klpm"``.
    k:
        k of k-LPM (>= 1), only for ``"klpm"``.

    Raises
    ------
    InputError
        Unknown policy or tie rule, bad ``k``.
    """
    from prefixsched.theory.sequential import SeqInstance

    if policy not in ("fcfs", "lpm", "klpm"):
        raise InputError("policy", f"must be 'fcfs', 'lpm' or 'klpm', got {policy!r}")
    if ties not in ("oldest", "newest"):
        raise InputError("ties", f"must be 'oldest' or 'newest', got {ties!r}")
    if policy == "klpm" and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise InputError("k", f"k-LPM needs an integer k >= 1, got {k!r}")
    si = inst if isinstance(inst, SeqInstance) else SeqInstance.from_instance(inst)
    arr, lcp = si.arrivals, si.lcp
    sign = 1 if ties == "oldest" else -1
    unserved = set(range(si.n))
    order: list[int] = []
    now = 0.0
    while unserved:
        waiting = [i for i in unserved if arr[i] <= now]
        if not waiting:
            now = min(arr[i] for i in unserved)
            waiting = [i for i in unserved if arr[i] <= now]
        m = len(order)
        if not order or policy == "fcfs" or (policy == "klpm" and m % k == 0):  # type: ignore[operator]
            j = min(waiting, key=lambda i: (arr[i], i))
        else:
            last = order[-1]
            j = min(waiting, key=lambda i: (-lcp[i][last], sign * arr[i], sign * i))
        reuse = lcp[j][order[-1]] if order else 0
        now = max(now, arr[j]) + si.cost_of(j, reuse)
        order.append(j)
        unserved.discard(j)
    return tuple(si.queries[i].id for i in order)


def _def4_cli(n: int) -> Instance:
    return klpm_definition4(u=100, d=20, s=20, k=4, users=n, seed=0)


#: CLI registry: name -> (builder(n) -> Instance, one-line description).
FAMILIES: dict[str, tuple[Callable[[int], Instance], str]] = {
    "lpm-starvation": (
        lpm_starvation,
        "n hot requests saturate the server; LPM starves one cold request (TTFT = P + n*s + C - delta/2)",
    ),
    "fcfs-no-reuse": (
        fcfs_no_reuse,
        "n = group-prefix length L; interleaved groups; prev-model FCFS/OPT makespan = q(L+1)/(L+q)",
    ),
    "vtc-locality": (
        vtc_locality,
        "n requests per client, prefix n*s, KV holds one prefix; VTC/LPM throughput = 2/(n+1)",
    ),
    "d2lpm-infinite-qw": (
        d2lpm_infinite_qw,
        "n requests each for a long-prefix client f and a no-match client g (dlpm.md Thm A.5)",
    ),
    "klpm-definition4": (
        _def4_cli,
        "k-LPM Definition 4 with u=100, d=20, s=20, k=4, n users, seed 0 (arrival gap d+s)",
    ),
}


#: Prompt tokens of the CLI member ``FAMILIES[name][0](n)``, from the builders' default
#: parameters (checked against the built instances in ``tests/test_reliability.py``).
_FAMILY_TOKENS: dict[str, Callable[[int], int]] = {
    "lpm-starvation": lambda n: n * (64 + 8) + 32,
    "fcfs-no-reuse": lambda n: 2 * 3 * (n + 1),
    "vtc-locality": lambda n: 2 * n * (n * 4 + 4),
    "d2lpm-infinite-qw": lambda n: 2 * n * (256 + 8),
    "klpm-definition4": lambda n: n * 4 * (100 + 20),
}

#: Largest member the CLI builds: 2 million prompt tokens (~25 MB of JSON, a few hundred MB of
#: memory while it is written). ``family NAME --n N`` above it is refused before any work.
MAX_FAMILY_TOKENS = 2_000_000


def family_tokens(name: str, n: int) -> int:
    """Total prompt tokens of the member of family ``name`` (a key of :data:`FAMILIES`) with size
    parameter ``n``, computed without building it (O(1)).

    Raises
    ------
    InputError
        Unknown family.
    """
    if name not in _FAMILY_TOKENS:
        raise InputError("NAME", f"unknown family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return int(_FAMILY_TOKENS[name](int(n)))
