"""Instances of the k-LPM and VTC reproductions as registered workloads, so that sweep cells can
build them in any process (``papers/klpm/reproduce.py``, ``papers/vtc/reproduce.py``).

``klpm-replica``: k-LPM's 360Brew-shaped stream (Dexter et al., arXiv:2502.04677; klpm.md §5):
    ``n_prefixes`` shared prefixes of ``prefix_len`` tokens, each used by exactly ``replicas``
    requests, each request adding a unique ``question_len``-token question and producing
    ``output_len`` tokens; the requests are shuffled and arrive as a Poisson process of ``rate``
    requests/s. Client of a request: ``c{prefix mod clients}``. Ids ``p<prefix>.r<i>``.
``vtc-overload``: VTC's two-client overload suite (Sheng et al., OSDI'24, Fig. 3; spec
    vtc_fastswitch_preble.md §A.6): one client per entry of ``rates`` (requests/s, default 1.5
    and 3), deterministic evenly spaced arrivals with a seeded random phase, every request
    ``input_len`` unique prompt tokens and ``output_len`` output tokens; ``rpm`` drops each
    client's requests beyond ``rpm`` per minute window (the RPM baseline). ``clients`` is ignored
    (the number of rates decides). Ids ``c<client>.r<i>``.

Both draw all randomness from ``numpy.random.default_rng(seed)`` in the order the papers' scripts
did, so the instances are byte-identical to the ones the committed results were computed on
(tested). With ``n_requests`` the first N requests by arrival are kept.
"""

from __future__ import annotations

import numpy as np

from prefixsched.errors import InputError
from prefixsched.reference.workload_gen import _int, _num
from prefixsched.theory.model import BlockPrompt, Request

__all__ = ["PAPER_WORKLOADS"]


def _first(reqs: list[Request], n: int | None) -> list[Request]:
    return reqs if n is None else reqs[:n]


def _replica(*, clients: int, seed: int, n_requests: int | None, block_size: int, n_prefixes: int = 500,
             replicas: int = 4, rate: float = 10.0, prefix_len: int = 4096, question_len: int = 256,
             output_len: int = 32, duration_s: float | None = None) -> list[Request]:
    """k-LPM's replica-count stream (module docstring). ``duration_s``: keep only the requests
    arriving within it (default: all ``replicas * n_prefixes``)."""
    _int("n_prefixes", n_prefixes)
    _int("replicas", replicas)
    _num("rate", rate)
    _int("prefix_len", prefix_len)
    _int("question_len", question_len)
    _int("output_len", output_len)
    if prefix_len % block_size:
        raise InputError("prefix_len", f"must be a multiple of block_size = {block_size}, got {prefix_len}")
    rng = np.random.default_rng(seed)
    order = np.repeat(np.arange(n_prefixes), replicas)
    rng.shuffle(order)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=order.size))
    pb, qb = prefix_len // block_size, -(-question_len // block_size)
    base = n_prefixes * pb
    reqs = []
    for i, (g, t) in enumerate(zip(order.tolist(), arrivals.tolist())):
        blocks = list(range(g * pb, (g + 1) * pb)) + list(range(base + i * qb, base + (i + 1) * qb))
        reqs.append(Request(id=f"p{g}.r{i}", client=f"c{g % clients}", arrival=round(t, 6),
                            prompt=BlockPrompt(blocks, prefix_len + question_len, block_size), output_len=output_len))
    if duration_s is not None:
        _num("duration_s", duration_s)
        reqs = [r for r in reqs if r.arrival <= duration_s]
        if not reqs:
            raise InputError("duration_s", f"no request arrives within {duration_s} s; make it longer")
    return _first(reqs, n_requests)


def _overload(*, clients: int, seed: int, n_requests: int | None, block_size: int, duration_s: float = 360.0,
              rates: list[float] = [1.5, 3.0], input_len: int = 256, output_len: int = 256,  # noqa: B006
              rpm: int | None = None) -> list[Request]:
    """VTC's overload suite (module docstring)."""
    _num("duration_s", duration_s)
    if not isinstance(rates, (list, tuple)) or not rates:
        raise InputError("rates", f"must be a non-empty list of requests/s, got {rates!r}")
    for r in rates:
        _num("rates", r)
    _int("input_len", input_len)
    _int("output_len", output_len)
    if rpm is not None:
        _int("rpm", rpm)
    rng = np.random.default_rng(seed)
    raw = []
    for c, rate in enumerate(rates):
        phase = float(rng.uniform(0, 1.0 / rate))
        n = int(np.floor((duration_s - phase) * rate)) + 1
        per_min: dict[int, int] = {}
        for i in range(n):
            t = round(phase + i / rate, 6)
            if t > duration_s:
                break
            m = int(t // 60)
            per_min[m] = per_min.get(m, 0) + 1
            if rpm is not None and per_min[m] > rpm:
                continue
            raw.append((t, c, i))
    raw.sort()
    nb = -(-input_len // block_size)
    reqs = [
        Request(id=f"c{c}.r{i}", client=f"c{c}", arrival=t,
                prompt=BlockPrompt(list(range(j * nb, (j + 1) * nb)), input_len, block_size), output_len=output_len)
        for j, (t, c, i) in enumerate(raw)
    ]
    return _first(reqs, n_requests)


PAPER_WORKLOADS = {
    "klpm-replica": (_replica, "k-LPM: N shared 4k-token prefixes, each used by exactly 4 requests, shuffled, Poisson arrivals"),
    "vtc-overload": (_overload, "VTC overload suite: 2 clients at 1.5 and 3 req/s, evenly spaced, 256/256 tokens, optional RPM limit"),
}
