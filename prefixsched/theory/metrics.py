"""Every metric of prefixsched, computed from a :class:`~prefixsched.theory.trace.Trace` alone.

This is the only module that computes metrics (DESIGN.md): latency (TTFT, TPOT, end-to-end),
throughput, prefix hit rate, per-client service curves, backlog intervals, the VTC/DLPM service
gap between backlogged clients and Jain's fairness index. Everything is vectorised with numpy and
deterministic (no randomness, no wall clock). Every metric function takes a :class:`Trace` or, to
skip re-extracting the records when computing several metrics, its :func:`trace_arrays`.
Metrics assume a trace that :func:`prefixsched.theory.schedule.check_trace` accepts; only step
indices outside the trace are detected here (:class:`InputError`).

Service (DLPM §1 / paper §3 Table 1; VTC §A.1). Client f's service is
``W_f = w_e * n_e + w_q * n_q`` in cost units, with ``n_q`` its output tokens and ``n_e`` either

- its *extend* tokens (uncached prompt tokens actually prefilled): the **actual** service, DLPM's
  ``W`` and the quantity its theorems bound (``view="actual"``), or
- its *full* prompt tokens: the **client view**, what the client sent, used by DLPM's evaluation
  ("service rate (tok/s), client view: 1x input + 2x output") and its Jain's index
  (``view="client"``).

Time attribution follows the trace's step semantics (:mod:`prefixsched.theory.trace`): request r
adds ``w_e * n_e`` and ``w_q`` (its first output token) at the end of step ``admit_step`` and
``w_q`` at the end of each step ``admit_step+1 .. finish_step``. ``W_f(t)`` is therefore a
right-continuous step function of time that jumps at step ends, and ``W_f(t1, t2) = W_f(t2) -
W_f(t1)`` is the service delivered by steps ending in ``(t1, t2]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefixsched.errors import InputError
from prefixsched.theory.model import Instance, ServiceWeights
from prefixsched.theory.trace import Trace

__all__ = [
    "TraceArrays",
    "trace_arrays",
    "request_latencies",
    "percentiles",
    "throughput",
    "hit_rate",
    "service_timeline",
    "backlog_intervals",
    "max_service_gap",
    "jain_index",
    "jain_over_active_window",
    "per_client_totals",
    "summarize_cluster",
    "summarize",
    "cluster_service_timeline",
    "program_latencies",
]

_VIEWS = ("actual", "client")
# max_service_gap: up to this many common backlogged periods per pair, reduce slices one by one;
# beyond it, one gather + segment reductions (both give the same numbers; tests run both paths)
_SLICE_MAX_PERIODS = 16


@dataclass(frozen=True)
class TraceArrays:
    """The trace's request records as parallel numpy arrays (record order), plus the step clock.

    ``client_idx[i]`` indexes ``clients`` (names in order of first appearance among the records).
    Times are float64 seconds, token counts and steps int64.
    """

    ids: list[str]
    clients: tuple[str, ...]
    client_idx: np.ndarray
    arrival: np.ndarray
    admit: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    admit_step: np.ndarray
    finish_step: np.ndarray
    prompt_len: np.ndarray
    cached: np.ndarray
    extend: np.ndarray
    output_len: np.ndarray
    step_start: np.ndarray
    step_end: np.ndarray


def trace_arrays(trace: Trace) -> TraceArrays:
    """Extract :class:`TraceArrays` from ``trace`` (O(requests + steps); no validation)."""
    recs = trace.requests
    n = len(recs)

    def f(name: str) -> np.ndarray:
        return np.fromiter((getattr(r, name) for r in recs), dtype=np.float64, count=n)

    def i(name: str) -> np.ndarray:
        return np.fromiter((getattr(r, name) for r in recs), dtype=np.int64, count=n)

    client_names = [r.client for r in recs]
    clients = tuple(dict.fromkeys(client_names))
    lookup = {c: k for k, c in enumerate(clients)}
    return TraceArrays(
        ids=[r.id for r in recs],
        clients=clients,
        client_idx=np.fromiter((lookup[c] for c in client_names), dtype=np.int64, count=n),
        arrival=f("arrival"),
        admit=f("admit"),
        first_token=f("first_token"),
        finish=f("finish"),
        admit_step=i("admit_step"),
        finish_step=i("finish_step"),
        prompt_len=i("prompt_len"),
        cached=i("cached_tokens"),
        extend=i("extend_tokens"),
        output_len=i("output_len"),
        step_start=np.asarray(trace.step_start, dtype=np.float64),
        step_end=np.asarray(trace.step_end, dtype=np.float64),
    )


def _as_arrays(trace: Trace | TraceArrays) -> TraceArrays:
    return trace if isinstance(trace, TraceArrays) else trace_arrays(trace)


def _require_steps(arr: TraceArrays) -> None:
    S = len(arr.step_end)
    bad = np.flatnonzero(
        (arr.admit_step < 0) | (arr.finish_step < arr.admit_step) | (arr.finish_step >= S)
    )
    if len(bad):
        k = int(bad[0])
        raise InputError(
            f"trace.requests[{k}]",
            f"step indices admit_step={arr.admit_step[k]}, finish_step={arr.finish_step[k]} outside "
            f"0..{S - 1} (run prefixsched.theory.schedule.check_trace first)",
        )


# ---------------------------------------------------------------------------------------------
# latency, throughput, hit rate


def request_latencies(
    trace: Trace | TraceArrays, clients: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """Per-request latencies in seconds.

    Parameters
    ----------
    trace:
        The trace.
    clients:
        If given, only requests of these clients (e.g. the well-behaved ones, DLPM §5).

    Returns
    -------
    dict
        ``"ttft"`` = first_token - arrival and ``"e2e"`` = finish - arrival, one per request in
        record order (shape ``(n,)``); ``"tpot"`` = (finish - first_token) / (output_len - 1) for the
        requests with ``output_len > 1`` only (time per output token after the first; a one-token
        request has no TPOT), shape ``(n_multi,)``.
    """
    arr = _as_arrays(trace)
    mask = np.ones(len(arr.ids), dtype=bool)
    if clients is not None:
        wanted = set(clients)
        keep = np.array([c in wanted for c in arr.clients], dtype=bool)
        mask = keep[arr.client_idx] if len(arr.clients) else mask
    ttft = (arr.first_token - arr.arrival)[mask]
    e2e = (arr.finish - arr.arrival)[mask]
    multi = mask & (arr.output_len > 1)
    tpot = (arr.finish[multi] - arr.first_token[multi]) / (arr.output_len[multi] - 1)
    return {"ttft": ttft, "tpot": tpot, "e2e": e2e}


def program_latencies(
    trace: Trace | TraceArrays, program_of: Any, clients: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """Per-program completion times in seconds: for each program (a group of requests, e.g. one
    ToT tree, one judge article, one document's questions), ``last finish - first arrival`` over
    its requests. DLPM §6 measures ToT and LLM-as-a-judge latency this way (dlpm.md §5).

    Parameters
    ----------
    trace:
        The trace (a cluster's ``merged_trace()`` works: only arrival and finish are read).
    program_of:
        ``callable(request_id) -> program key`` (e.g.
        :func:`prefixsched.reference.workloads.program_of`).
    clients:
        If given, only programs of these clients (a program belongs to the client of its first
        request in record order).

    Returns
    -------
    dict
        ``"programs"``: program keys in order of first appearance; ``"e2e"``: their completion
        times, shape ``(P,)``; ``"requests"``: requests per program, shape ``(P,)``.
    """
    arr = _as_arrays(trace)
    keys: dict[Any, int] = {}
    prog = np.empty(len(arr.ids), dtype=np.int64)
    owner: list[int] = []
    for i, rid in enumerate(arr.ids):
        k = program_of(rid)
        j = keys.get(k)
        if j is None:
            j = keys[k] = len(keys)
            owner.append(int(arr.client_idx[i]))
        prog[i] = j
    P = len(keys)
    first = np.full(P, np.inf)
    np.minimum.at(first, prog, arr.arrival)
    last = np.full(P, -np.inf)
    np.maximum.at(last, prog, arr.finish)
    count = np.bincount(prog, minlength=P)
    names = list(keys)
    mask = np.ones(P, dtype=bool)
    if clients is not None:
        wanted = set(clients)
        mask = np.array([arr.clients[c] in wanted for c in owner], dtype=bool)
    return {
        "programs": [n for n, m in zip(names, mask) if m],
        "e2e": (last - first)[mask],
        "requests": count[mask],
    }


def percentiles(
    x: Sequence[float] | np.ndarray, ps: Sequence[float] = (50, 90, 99)
) -> dict[float, float | None]:
    """Percentiles of ``x`` with numpy's ``"linear"`` method (the default; Hyndman-Fan type 7).

    Type 7 interpolates between order statistics: for sorted ``x_0..x_{n-1}`` the p-th percentile is
    ``x_j + (h - j)(x_{j+1} - x_j)`` with ``h = (n-1)p/100``, ``j = floor(h)``. So P50 of ``[1,2,3,4]``
    is 2.5 and P99 of 100 values lies between the two largest.

    Returns
    -------
    dict
        ``{p: value}`` (Python floats), or ``{p: None}`` for every p when ``x`` is empty.

    Raises
    ------
    InputError
        If a p is outside [0, 100].
    """
    for p in ps:
        if not 0 <= p <= 100:
            raise InputError("ps", f"percentiles must lie in [0, 100], got {p}")
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return {p: None for p in ps}
    vals = np.percentile(a, list(ps), method="linear")
    return {p: float(v) for p, v in zip(ps, vals)}


def throughput(trace: Trace | TraceArrays) -> dict[str, float | None]:
    """Token throughput over the run, tokens per second.

    The span is ``last finish - first arrival`` (seconds). Returns ``tokens_per_s`` (prompt + output
    tokens), ``output_tokens_per_s``, ``extend_tokens_per_s`` (prefilled, uncached prompt tokens) and
    ``span_s``; the rates are None when the span is not positive (an empty trace).
    """
    arr = _as_arrays(trace)
    none = {"tokens_per_s": None, "output_tokens_per_s": None, "extend_tokens_per_s": None}
    if len(arr.ids) == 0:
        return {**none, "span_s": 0.0}
    span = float(arr.finish.max() - arr.arrival.min())
    out = int(arr.output_len.sum())
    prompt = int(arr.prompt_len.sum())
    ext = int(arr.extend.sum())
    if span <= 0:
        return {**none, "span_s": span}
    return {
        "tokens_per_s": (prompt + out) / span,
        "output_tokens_per_s": out / span,
        "extend_tokens_per_s": ext / span,
        "span_s": span,
    }


def hit_rate(trace: Trace | TraceArrays) -> float | None:
    """Prefix hit rate: ``sum cached_tokens / sum prompt_len`` over all requests (None if no tokens)."""
    arr = _as_arrays(trace)
    tot = int(arr.prompt_len.sum())
    return int(arr.cached.sum()) / tot if tot else None


# ---------------------------------------------------------------------------------------------
# service


def _weights(weights: ServiceWeights | Instance | None) -> ServiceWeights:
    if weights is None:
        return ServiceWeights()
    if isinstance(weights, Instance):
        return weights.weights
    if not isinstance(weights, ServiceWeights):
        raise InputError(
            "weights", f"must be ServiceWeights or an Instance, got {type(weights).__name__}"
        )
    return weights


def _service_matrix(
    arr: TraceArrays, weights: ServiceWeights, view: str
) -> np.ndarray:
    """Cumulative service, shape ``(S, C)``: row s = service delivered by the end of step s."""
    if view not in _VIEWS:
        raise InputError("view", f"must be 'actual' or 'client', got {view!r}")
    _require_steps(arr)
    S, C = len(arr.step_end), len(arr.clients)
    n_e = arr.extend if view == "actual" else arr.prompt_len
    c = arr.client_idx
    # per-step increments: w_e*n_e at admit_step; w_q on admit_step..finish_step via a difference array
    charge = weights.w_e * n_e.astype(np.float64)
    inc = np.bincount(arr.admit_step * C + c, weights=charge, minlength=S * C)
    diff = np.bincount(arr.admit_step * C + c, minlength=(S + 1) * C).astype(np.float64)
    diff -= np.bincount((arr.finish_step + 1) * C + c, minlength=(S + 1) * C)
    per_step = inc.reshape(S, C) + weights.w_q * np.cumsum(diff.reshape(S + 1, C), axis=0)[:S]
    return np.cumsum(per_step, axis=0)


def service_timeline(
    trace: Trace | TraceArrays, weights: ServiceWeights | Instance | None = None, view: str = "actual"
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """Per-client cumulative service ``W_f`` at every step end.

    Parameters
    ----------
    trace:
        The trace.
    weights:
        ``w_e``, ``w_q`` (a :class:`ServiceWeights`, or an :class:`Instance` to take its weights;
        default 1 and 2).
    view:
        ``"actual"`` charges extend tokens, ``"client"`` full prompt tokens (module docstring).

    Returns
    -------
    times:
        ``step_end``, shape ``(S,)``, seconds.
    clients:
        Client names, in order of first appearance among the records (the matrix columns).
    cumulative:
        Shape ``(S, C)``, cost units: ``cumulative[s, f]`` = service of client f delivered by the end
        of step s (all steps ``<= s``).

    Raises
    ------
    InputError
        Unknown ``view``, or a record's step indices outside the trace's steps.
    """
    arr = _as_arrays(trace)
    w = _weights(weights)
    return arr.step_end.copy(), arr.clients, _service_matrix(arr, w, view)


def _merge_intervals(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of half-open intervals ``[start, end)`` (empty ones dropped; touching ones merged)."""
    keep = end > start
    start, end = start[keep], end[keep]
    if start.size == 0:
        return start, end
    o = np.lexsort((end, start))
    start, end = start[o], end[o]
    reach = np.maximum.accumulate(end)
    new = np.ones(start.size, dtype=bool)
    new[1:] = start[1:] > reach[:-1]
    idx = np.flatnonzero(new)
    return start[idx], np.maximum.reduceat(end, idx)


def _backlog(arr: TraceArrays) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for c in range(len(arr.clients)):
        m = arr.client_idx == c
        out.append(_merge_intervals(arr.arrival[m], arr.admit[m]))
    return out


def backlog_intervals(trace: Trace | TraceArrays) -> dict[str, list[tuple[float, float]]]:
    """When each client is backlogged: it has at least one request that has arrived and is waiting.

    This is VTC's and DLPM's notion (vtc_fastswitch_preble.md §A.1: membership in the waiting queue
    Q, which excludes running requests): request r waits on ``[arrival, admit)``; a client's backlog
    is the union of its requests' waiting intervals, with touching intervals merged (a request
    admitted at the instant another arrives leaves no gap). Half-open ``[t_start, t_end)``, seconds.

    Returns
    -------
    dict
        ``{client: [(t_start, t_end), ...]}`` in time order, every client of the trace present
        (possibly with an empty list).
    """
    arr = _as_arrays(trace)
    return {
        name: [(float(a), float(b)) for a, b in zip(*iv)]
        for name, iv in zip(arr.clients, _backlog(arr))
    }


_Intervals = tuple[np.ndarray, np.ndarray]


def _intersect(a: _Intervals, b: _Intervals) -> _Intervals:
    """Intersection of two sorted disjoint half-open interval lists (vectorised)."""
    (as_, ae), (bs, be) = a, b
    if as_.size == 0 or bs.size == 0:
        return np.empty(0), np.empty(0)
    lo = np.searchsorted(be, as_, side="right")  # first b with end > a.start
    hi = np.searchsorted(bs, ae, side="left")  # b's with start < a.end
    cnt = np.maximum(hi - lo, 0)
    ia = np.repeat(np.arange(as_.size), cnt)
    ib = np.repeat(lo, cnt) + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    s = np.maximum(as_[ia], bs[ib])
    e = np.minimum(ae[ia], be[ib])
    keep = e > s
    return s[keep], e[keep]


def max_service_gap(
    trace: Trace | TraceArrays,
    weights: ServiceWeights | Instance | None = None,
    view: str = "actual",
    *,
    per_pair: bool = False,
) -> dict[str, Any]:
    """The largest service difference between two continuously backlogged clients (VTC/DLPM P1).

    ``max |W_f(t1, t2) - W_g(t1, t2)|`` over client pairs f != g and over ``t1 < t2`` such that both
    are backlogged on all of ``[t1, t2)`` (:func:`backlog_intervals`). VTC's theorem bounds it by
    ``2U`` (vtc_fastswitch_preble.md §A.4), DLPM's Theorem by its own constant (dlpm.md §4).

    Evaluation at step boundaries: ``W`` changes only at step ends, so within a common backlogged
    period ``[T0, T1)`` the candidates are ``W(T0)`` and ``W`` at every step end in ``(T0, T1]``
    (distinct times only: several zero-length steps ending together count once, at their last
    state). With ``D = W_f - W_g`` the maximum over ``t1 < t2`` of ``|D(t2) - D(t1)|`` is
    ``max D - min D`` over those candidates, computed with segment reductions (O(pairs * steps)).

    Returns
    -------
    dict
        ``value`` (cost units; 0.0 if no two clients are ever backlogged together), ``pair``
        ``(f, g)`` ordered so that f received *more* over the interval, ``interval`` ``(t1, t2)`` in
        seconds attaining it (``pair``/``interval`` None when value is 0), ``view``; with
        ``per_pair=True`` also ``per_pair``: ``{"f|g": value}`` for every pair that shares a backlog.
    """
    arr = _as_arrays(trace)
    w = _weights(weights)
    cum = _service_matrix(arr, w, view)
    times = arr.step_end
    # keep the last row of every run of equal step ends (zero-length steps)
    if times.size:
        last = np.ones(times.size, dtype=bool)
        last[:-1] = times[1:] != times[:-1]
        times, cum = times[last], cum[last]
    C = len(arr.clients)
    # extT[f, i] = W_f after the first i distinct step ends (row per client: contiguous slices)
    extT = np.ascontiguousarray(np.vstack([np.zeros((1, C)), cum]).T)
    backlog = _backlog(arr)
    names = arr.clients
    best: dict[str, Any] = {"value": 0.0, "pair": None, "interval": None, "view": view}
    pairs: dict[str, float] = {}
    for f in range(C):
        for g in range(f + 1, C):
            s, e = _intersect(backlog[f], backlog[g])
            if s.size == 0:
                continue
            i0 = np.searchsorted(times, s, side="right")  # column holding W(T0)
            i1 = np.searchsorted(times, e, side="right") + 1  # one past the column holding W(T1)
            if s.size <= _SLICE_MAX_PERIODS:  # few long periods: slices, no index copies
                seg = np.empty(s.size)
                for k in range(s.size):
                    d = extT[f, i0[k] : i1[k]] - extT[g, i0[k] : i1[k]]
                    seg[k] = d.max() - d.min()
            else:  # many short periods: one gather and segment reductions
                lens = i1 - i0
                starts = np.cumsum(lens) - lens
                gather = np.repeat(i0 - starts, lens) + np.arange(lens.sum())
                D = extT[f, gather] - extT[g, gather]
                seg = np.maximum.reduceat(D, starts) - np.minimum.reduceat(D, starts)
            k = int(np.argmax(seg))
            val = float(seg[k])
            if per_pair:
                pairs[f"{names[f]}|{names[g]}"] = val
            if val > best["value"]:
                d = extT[f, i0[k] : i1[k]] - extT[g, i0[k] : i1[k]]
                jmax, jmin = int(np.argmax(d)), int(np.argmin(d))
                j1, j2 = min(jmax, jmin), max(jmax, jmin)

                def t_of(j: int, k: int = k) -> float:
                    return float(s[k]) if j == 0 else float(times[i0[k] + j - 1])

                more_f = d[j2] > d[j1]
                best = {
                    "value": val,
                    "pair": (names[f], names[g]) if more_f else (names[g], names[f]),
                    "interval": (t_of(j1), t_of(j2)),
                    "view": view,
                }
    if per_pair:
        best["per_pair"] = pairs
    return best


# ---------------------------------------------------------------------------------------------
# Jain's index


def jain_index(x: Sequence[float] | np.ndarray) -> float:
    """Jain's fairness index ``J = (sum x)^2 / (n * sum x^2)`` (DLPM §5), in ``[1/n, 1]``.

    *Decision:* all-zero ``x`` (nobody served) counts as perfectly equal, ``J = 1``.

    Raises
    ------
    InputError
        If ``x`` is empty or has a negative or non-finite entry.
    """
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        raise InputError("x", "Jain's index of an empty set is undefined")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise InputError("x", f"entries must be finite and >= 0, got {a.tolist()!r}")
    sq = float(np.dot(a, a))
    if sq == 0:
        return 1.0
    return float(a.sum()) ** 2 / (a.size * sq)


def _active_window(arr: "TraceArrays") -> tuple[np.ndarray, np.ndarray, float, float]:
    """Per-client first arrival and last finish, and the window ``[ta, tb]`` in which every client
    is active (latest first arrival, earliest last finish); empty when ``tb <= ta``."""
    C = len(arr.clients)
    first = np.full(C, np.inf)
    np.minimum.at(first, arr.client_idx, arr.arrival)
    lastf = np.full(C, -np.inf)
    np.maximum.at(lastf, arr.client_idx, arr.finish)
    return first, lastf, float(first.max()), float(lastf.min())


def jain_over_active_window(
    trace: Trace | TraceArrays, weights: ServiceWeights | Instance | None = None, view: str = "client"
) -> dict[str, Any]:
    """Jain's index of per-client service *rates* over the window in which all clients are active.

    DLPM §5: "computed only over the window in which all clients are active". *Decision:* a client
    is active from its first arrival to its last finish, so the window is ``[T_a, T_b]`` with
    ``T_a`` = the latest first-arrival and ``T_b`` = the earliest last-finish across clients. Client
    f's rate is ``(W_f(T_b) - W_f(T_a)) / (T_b - T_a)`` (cost units per second, service delivered by
    steps ending in ``(T_a, T_b]``). The default view is the client view, as in the paper's figures.

    Returns
    -------
    dict
        ``jain`` (float, or None), ``window`` ``(T_a, T_b)``, ``rates`` ``{client: rate}``, ``view``,
        ``reason`` (None, or why ``jain`` is None: the window is empty because some client finished
        before another's first arrival, or the trace has no requests).
    """
    arr = _as_arrays(trace)
    w = _weights(weights)
    out: dict[str, Any] = {"jain": None, "window": None, "rates": {}, "view": view, "reason": None}
    if len(arr.ids) == 0:
        out["reason"] = "the trace has no requests"
        return out
    C = len(arr.clients)
    first, lastf, ta, tb = _active_window(arr)
    out["window"] = (ta, tb)
    if not tb > ta:
        fa = arr.clients[int(np.argmax(first))]
        fb = arr.clients[int(np.argmin(lastf))]
        out["reason"] = (
            f"no window with all clients active: client {fb!r} finishes at {tb} before client "
            f"{fa!r} first arrives at {ta}"
        )
        return out
    cum = _service_matrix(arr, w, view)
    times = arr.step_end
    ext = np.vstack([np.zeros((1, C)), cum])
    wa = ext[np.searchsorted(times, ta, side="right")]
    wb = ext[np.searchsorted(times, tb, side="right")]
    rates = (wb - wa) / (tb - ta)
    out["rates"] = {c: float(r) for c, r in zip(arr.clients, rates)}
    out["jain"] = jain_index(rates)
    return out


# ---------------------------------------------------------------------------------------------
# summary


def per_client_totals(
    trace: Trace | TraceArrays, weights: ServiceWeights | Instance | None = None
) -> dict[str, dict[str, float]]:
    """Per client: requests, prompt/cached/extend/output tokens and total service in both views."""
    arr = _as_arrays(trace)
    w = _weights(weights)
    C = len(arr.clients)

    def tot(x: np.ndarray) -> np.ndarray:
        return np.bincount(arr.client_idx, weights=x.astype(np.float64), minlength=C)

    n = np.bincount(arr.client_idx, minlength=C)
    prompt, cached, ext, out = tot(arr.prompt_len), tot(arr.cached), tot(arr.extend), tot(arr.output_len)
    return {
        c: {
            "requests": int(n[k]),
            "prompt_tokens": int(prompt[k]),
            "cached_tokens": int(cached[k]),
            "extend_tokens": int(ext[k]),
            "output_tokens": int(out[k]),
            "service_actual": float(w.w_e * ext[k] + w.w_q * out[k]),
            "service_client": float(w.w_e * prompt[k] + w.w_q * out[k]),
        }
        for k, c in enumerate(arr.clients)
    }


def summarize(trace: Trace, instance_weights: ServiceWeights | Instance | None = None) -> dict[str, Any]:
    """The metrics row the CLI prints (JSON-able; floats unrounded: round only when printing).

    Keys: ``policy``, ``n_requests``, ``n_steps``, ``span_s``, ``tokens_per_s``,
    ``output_tokens_per_s``, ``extend_tokens_per_s``, ``hit_rate``, ``ttft_p50/p90/p99``,
    ``tpot_p50/p99``, ``e2e_p50/p99`` (seconds), ``jain`` (client view, DLPM's figures),
    ``jain_actual``, ``jain_window``, ``jain_reason``, ``max_service_gap`` (actual view:
    ``{"value", "pair", "interval"}``), ``per_client`` (:func:`per_client_totals`). Percentiles and
    rates are None where undefined (no multi-token request, empty window).
    """
    w = _weights(instance_weights)
    arr = trace_arrays(trace)
    jc = jain_over_active_window(arr, w, view="client")
    ja = jain_over_active_window(arr, w, view="actual")
    gap = max_service_gap(arr, w, view="actual")
    return {
        "policy": trace.policy.get("name"),
        "n_requests": len(trace.requests),
        "n_steps": trace.n_steps,
        **_request_row(arr),
        "jain": jc["jain"],
        "jain_actual": ja["jain"],
        "jain_window": list(jc["window"]) if jc["window"] is not None else None,
        "jain_reason": jc["reason"],
        "max_service_gap": {
            "value": gap["value"],
            "pair": list(gap["pair"]) if gap["pair"] else None,
            "interval": list(gap["interval"]) if gap["interval"] else None,
        },
        "per_client": per_client_totals(arr, w),
    }


def _request_row(arr: "TraceArrays") -> dict[str, Any]:
    """The per-request part of a summary row: span, throughputs, hit rate, TTFT/TPOT/e2e
    percentiles (shared by :func:`summarize` and :func:`summarize_cluster`)."""
    lat = request_latencies(arr)
    thr = throughput(arr)
    ttft = percentiles(lat["ttft"], (50, 90, 99))
    tpot = percentiles(lat["tpot"], (50, 99))
    e2e = percentiles(lat["e2e"], (50, 99))
    return {
        "span_s": thr["span_s"],
        "tokens_per_s": thr["tokens_per_s"],
        "output_tokens_per_s": thr["output_tokens_per_s"],
        "extend_tokens_per_s": thr["extend_tokens_per_s"],
        "hit_rate": hit_rate(arr),
        "ttft_p50": ttft[50],
        "ttft_p90": ttft[90],
        "ttft_p99": ttft[99],
        "tpot_p50": tpot[50],
        "tpot_p99": tpot[99],
        "e2e_p50": e2e[50],
        "e2e_p99": e2e[99],
    }


# ---------------------------------------------------------------------------------------------
# clusters (several workers, one trace each)


def cluster_service_timeline(
    traces: Sequence[Trace],
    weights: ServiceWeights | Instance | None = None,
    view: str = "actual",
    *,
    clients: Sequence[str] | None = None,
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """Per-client cumulative service summed over the workers of a cluster, at the union of the
    workers' step ends (D²LPM Thm 5.1: ``W_i = sum_w W_{i,w}``; dlpm.md §4).

    Each worker's service follows the single-trace attribution (module docstring): it jumps at
    that worker's step ends. ``cumulative[k, f]`` = service of client f delivered by every step
    of every worker ending at or before ``times[k]``; so ``W_f(t1, t2)`` is again the service of
    steps ending in ``(t1, t2]``.

    Parameters
    ----------
    traces:
        One :class:`Trace` per worker (``ClusterTrace.traces``); traces without requests add
        nothing.
    weights, view:
        As :func:`service_timeline`.
    clients:
        Column order; default: order of first appearance over the traces' records (worker by
        worker). Clients that appear in no trace get a zero column; a client of a trace missing
        from an explicit ``clients`` raises.

    Returns
    -------
    times:
        Distinct step ends of all workers, sorted, shape ``(K,)``, seconds.
    clients:
        Column names.
    cumulative:
        Shape ``(K, C)``, cost units.

    Raises
    ------
    InputError
        Unknown ``view``, step indices outside a trace, or a client missing from ``clients``.
    """
    w = _weights(weights)
    arrs = [trace_arrays(t) for t in traces]
    if clients is None:
        names = tuple(dict.fromkeys(c for a in arrs for c in a.clients))
    else:
        names = tuple(clients)
    col = {c: k for k, c in enumerate(names)}
    ends = [a.step_end for a in arrs if len(a.ids)]
    times = np.unique(np.concatenate(ends)) if ends else np.empty(0)
    out = np.zeros((times.size, len(names)))
    for a in arrs:
        if not len(a.ids):
            continue
        missing = [c for c in a.clients if c not in col]
        if missing:
            raise InputError("clients", f"client {missing[0]!r} of a worker trace is not listed")
        cum = _service_matrix(a, w, view)
        rows = np.searchsorted(a.step_end, times, side="right") - 1
        ok = rows >= 0
        idx = np.flatnonzero(ok)
        r_ok = rows[ok]
        for j, c in enumerate(a.clients):  # one column at a time: a (K,) temporary, not (K, C)
            out[idx, col[c]] += cum[r_ok, j]
    return times, names, out


def summarize_cluster(cluster_trace: Any) -> dict[str, Any]:
    """The CLI's metrics row for a cluster run (a
    :class:`~prefixsched.reference.cluster.ClusterTrace`; read through its ``instance``, ``traces``,
    ``merged_trace()``, ``meta``, ``dispatcher`` and ``workers``), with the keys of
    :func:`prefixsched.theory.metrics.summarize` computed cluster-wide, plus ``workers``,
    ``dispatcher`` and ``requests_per_worker``.

    Per-request metrics (latencies, throughput, hit rate, per-client totals) come from
    :meth:`ClusterTrace.merged_trace`. Service curves come from
    :func:`~prefixsched.theory.metrics.cluster_service_timeline` (every worker's step ends):
    ``jain``/``jain_actual`` over the window in which all clients are active (the same window
    rule as :func:`~prefixsched.theory.metrics.jain_over_active_window`: latest first arrival to
    earliest last finish), and ``max_service_gap`` = the largest ``|W_f - W_g|`` over pairs
    backlogged (waiting on any worker) on a common interval, actual view: the premise scan of
    :func:`~prefixsched.theory.bounds.check_d2lpm_thm_5_1`. ``n_steps`` is the sum over workers.
    """
    from prefixsched.theory.bounds import check_d2lpm_thm_5_1  # imports this module: import here

    inst = cluster_trace.instance
    w = inst.weights
    merged = cluster_trace.merged_trace()
    arr = trace_arrays(merged)
    C = len(arr.clients)
    _, _, ta, tb = _active_window(arr)
    jain: dict[str, float | None] = {"client": None, "actual": None}
    reason = None
    if tb > ta:
        # W_f(T_a), W_f(T_b) summed over the workers, each read at its last step end <= T: the
        # same numbers (same additions, same order) as reading cluster_service_timeline at T_a and
        # T_b, without building the (all step ends) x clients matrix (1M requests: ~0.9 GiB less)
        col = {c: k for k, c in enumerate(arr.clients)}
        warrs = [trace_arrays(t) for t in cluster_trace.traces]
        for view in ("client", "actual"):
            wa = np.zeros(C)
            wb = np.zeros(C)
            for a in warrs:
                if not len(a.ids):
                    continue
                cum = _service_matrix(a, w, view)
                cols = np.array([col[c] for c in a.clients], dtype=np.int64)
                ia = int(np.searchsorted(a.step_end, ta, side="right")) - 1
                ib = int(np.searchsorted(a.step_end, tb, side="right")) - 1
                if ia >= 0:
                    wa[cols] += cum[ia]
                if ib >= 0:
                    wb[cols] += cum[ib]
            jain[view] = jain_index((wb - wa) / (tb - ta))
    else:
        reason = f"no window with all clients active: the earliest last finish {tb} is not after the latest first arrival {ta}"
    gap = check_d2lpm_thm_5_1(inst, cluster_trace, 1.0)  # only the scanned worst is used
    return {
        "policy": cluster_trace.meta.get("local_policy", {}).get("name"),
        "dispatcher": cluster_trace.dispatcher,
        "workers": cluster_trace.workers,
        "requests_per_worker": list(cluster_trace.meta.get("requests_per_worker", [])),
        "n_requests": len(merged.requests),
        "n_steps": sum(t.n_steps for t in cluster_trace.traces),
        **_request_row(arr),
        "jain": jain["client"],
        "jain_actual": jain["actual"],
        "jain_window": [ta, tb] if tb > ta else None,
        "jain_reason": reason,
        "max_service_gap": {
            "value": gap.worst,
            "pair": list(gap.witness["pair"]) if gap.witness else None,
            "interval": list(gap.witness["interval"]) if gap.witness else None,
        },
        "per_client": per_client_totals(arr, w),
    }
