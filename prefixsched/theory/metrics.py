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
    "cluster_max_service_gap",
    "summarize",
    "cluster_service_timeline",
    "jain_windows",
    "windowed_jain",
    "backlogged_jain",
    "gap_bounds",
    "per_client_table",
    "demand_per_client",
    "program_latencies",
    "token_gaps",
    "latency_tails",
    "switch_metrics",
]

_VIEWS = ("actual", "client")
# max_service_gap: up to this many common backlogged periods per pair, reduce slices one by one;
# beyond it, one gather + segment reductions (both give the same numbers; tests run both paths)
_SLICE_MAX_PERIODS = 16
#: Default Jain window, seconds: the VTC artifact measures its service difference per 60 s window
#: (vtc_fastswitch_preble.md §A.6).
JAIN_WINDOW_S = 60.0


@dataclass(frozen=True)
class TraceArrays:
    """The trace's request records as parallel numpy arrays (record order), plus the step clock.

    ``client_idx[i]`` indexes ``clients`` (names in order of first appearance among the records).
    Times are float64 seconds, token counts and steps int64.

    Beside the per-record arrays, the trace's work is flattened into three event lists (every
    run of every request, :mod:`prefixsched.theory.trace`, "Runs"):

    - *pieces* (prefill chunks): ``piece_rec`` (record index), ``piece_step``, ``piece_tokens``;
    - *spans* (output tokens of one run): ``span_rec``, ``span_first`` (the step of its last chunk,
      which produces one token) and ``span_end`` (its ``end_step``); the run also produces one
      token in every decode-capable step in ``(span_first, span_end]``;
    - *waits* (time in the waiting queue): ``wait_rec``, ``wait_start``, ``wait_end`` (seconds,
      ``[arrival, admit)`` of the first run; ``[end of the retracting step, admission)`` of each
      later run).

    ``decode_cap[s]`` is True where step ``s`` decodes (kind ``"M"`` or ``"D"``).
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
    decode_cap: np.ndarray
    piece_rec: np.ndarray
    piece_step: np.ndarray
    piece_tokens: np.ndarray
    span_rec: np.ndarray
    span_first: np.ndarray
    span_end: np.ndarray
    wait_rec: np.ndarray
    wait_start: np.ndarray
    wait_end: np.ndarray

    @property
    def simple(self) -> bool:
        """True iff every request has one run with one chunk and every step is mixed (the
        ``ideal`` engine's traces)."""
        return len(self.piece_rec) == len(self.ids) == len(self.span_rec) and bool(self.decode_cap.all())


def trace_arrays(trace: Trace) -> TraceArrays:
    """Extract :class:`TraceArrays` from ``trace`` (O(requests + runs + steps); no validation
    beyond what the arrays need)."""
    recs = trace.requests
    n = len(recs)

    def f(name: str) -> np.ndarray:
        return np.fromiter((getattr(r, name) for r in recs), dtype=np.float64, count=n)

    def i(name: str) -> np.ndarray:
        return np.fromiter((getattr(r, name) for r in recs), dtype=np.int64, count=n)

    client_names = [r.client for r in recs]
    clients = tuple(dict.fromkeys(client_names))
    lookup = {c: k for k, c in enumerate(clients)}
    step_start = np.asarray(trace.step_start, dtype=np.float64)
    step_end = np.asarray(trace.step_end, dtype=np.float64)
    kinds = trace.step_kinds
    if kinds is None:
        decode_cap = np.ones(len(step_start), dtype=bool)
    else:
        decode_cap = np.frombuffer(kinds.encode("ascii"), dtype=np.uint8) != ord("P")
    admit_step = i("admit_step")
    finish_step = i("finish_step")
    extend = i("extend_tokens")
    arrival = f("arrival")
    admit = f("admit")
    multi = [k for k, r in enumerate(recs) if r.runs is not None]
    if not multi:
        ar = np.arange(n, dtype=np.int64)
        pieces = (ar, admit_step, extend)
        spans = (ar, admit_step, finish_step)
        waits = (ar, arrival, admit)
    else:
        is_multi = np.zeros(n, dtype=bool)
        is_multi[multi] = True
        one = np.flatnonzero(~is_multi)
        p_rec, p_step, p_tok = [one], [admit_step[one]], [extend[one]]
        s_rec, s_first, s_end = [one], [admit_step[one]], [finish_step[one]]
        w_rec, w_a, w_b = [one], [arrival[one]], [admit[one]]
        pr, ps_, pt, sr, sf, se, wr, wa, wb = ([] for _ in range(9))
        S = len(step_start)
        for k in multi:
            prev_end = None
            for run in recs[k].runs:  # type: ignore[union-attr]
                for st, tok in run.chunks:
                    pr.append(k)
                    ps_.append(st)
                    pt.append(tok)
                last = run.chunks[-1][0] if run.chunks else run.admit_step
                sr.append(k)
                sf.append(last)
                se.append(run.end_step)
                wr.append(k)
                if prev_end is None:
                    wa.append(recs[k].arrival)
                else:
                    wa.append(float(step_end[prev_end]) if 0 <= prev_end < S else np.nan)
                wb.append(float(step_start[run.admit_step]) if 0 <= run.admit_step < S else np.nan)
                prev_end = run.end_step
        p_rec.append(np.asarray(pr, dtype=np.int64))
        p_step.append(np.asarray(ps_, dtype=np.int64))
        p_tok.append(np.asarray(pt, dtype=np.int64))
        s_rec.append(np.asarray(sr, dtype=np.int64))
        s_first.append(np.asarray(sf, dtype=np.int64))
        s_end.append(np.asarray(se, dtype=np.int64))
        w_rec.append(np.asarray(wr, dtype=np.int64))
        w_a.append(np.asarray(wa, dtype=np.float64))
        w_b.append(np.asarray(wb, dtype=np.float64))
        pieces = (np.concatenate(p_rec), np.concatenate(p_step), np.concatenate(p_tok))
        spans = (np.concatenate(s_rec), np.concatenate(s_first), np.concatenate(s_end))
        waits = (np.concatenate(w_rec), np.concatenate(w_a), np.concatenate(w_b))
    return TraceArrays(
        ids=[r.id for r in recs],
        clients=clients,
        client_idx=np.fromiter((lookup[c] for c in client_names), dtype=np.int64, count=n),
        arrival=arrival,
        admit=admit,
        first_token=f("first_token"),
        finish=f("finish"),
        admit_step=admit_step,
        finish_step=finish_step,
        prompt_len=i("prompt_len"),
        cached=i("cached_tokens"),
        extend=extend,
        output_len=i("output_len"),
        step_start=step_start,
        step_end=step_end,
        decode_cap=decode_cap,
        piece_rec=pieces[0],
        piece_step=pieces[1],
        piece_tokens=pieces[2],
        span_rec=spans[0],
        span_first=spans[1],
        span_end=spans[2],
        wait_rec=waits[0],
        wait_start=waits[1],
        wait_end=waits[2],
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
    for name, st in (("chunk", arr.piece_step), ("run end", arr.span_end), ("run", arr.span_first)):
        badp = np.flatnonzero((st < 0) | (st >= S))
        if len(badp):
            raise InputError("trace.requests.runs", f"a {name} step {int(st[badp[0]])} lies outside 0..{S - 1}")


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
    """Cumulative service, shape ``(S, C)``: row s = service delivered by the end of step s.

    Prefill: ``w_e * tokens`` of every chunk in its step (view ``"actual"``), or ``w_e *
    prompt_len`` once, in the step of the request's first chunk (view ``"client"``: what the
    client sent; re-prefills after a retraction are not counted again). Output: ``w_q`` for each
    token, in the step that produced it (the last chunk's step of each run, then every
    decode-capable step up to the run's end).
    """
    if view not in _VIEWS:
        raise InputError("view", f"must be 'actual' or 'client', got {view!r}")
    _require_steps(arr)
    S, C = len(arr.step_end), len(arr.clients)
    c_of = arr.client_idx
    if view == "actual":
        pc = c_of[arr.piece_rec]
        inc = np.bincount(arr.piece_step * C + pc, weights=weights.w_e * arr.piece_tokens.astype(np.float64),
                          minlength=S * C)
    else:
        inc = np.bincount(arr.admit_step * C + c_of, weights=weights.w_e * arr.prompt_len.astype(np.float64),
                          minlength=S * C)
    sc = c_of[arr.span_rec]
    if arr.simple:
        diff = np.bincount(arr.span_first * C + sc, minlength=(S + 1) * C).astype(np.float64)
        diff -= np.bincount((arr.span_end + 1) * C + sc, minlength=(S + 1) * C)
        per_step = inc.reshape(S, C) + weights.w_q * np.cumsum(diff.reshape(S + 1, C), axis=0)[:S]
    else:
        # one token at span_first; one per decode-capable step in (span_first, span_end]
        first = np.bincount(arr.span_first * C + sc, minlength=S * C).astype(np.float64)
        diff = np.bincount((arr.span_first + 1) * C + sc, minlength=(S + 1) * C).astype(np.float64)
        diff -= np.bincount((arr.span_end + 1) * C + sc, minlength=(S + 1) * C)
        dec = np.cumsum(diff.reshape(S + 1, C), axis=0)[:S] * arr.decode_cap[:, None]
        per_step = inc.reshape(S, C) + weights.w_q * (first.reshape(S, C) + dec)
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
    wc = arr.client_idx[arr.wait_rec]
    for c in range(len(arr.clients)):
        m = wc == c
        out.append(_merge_intervals(arr.wait_start[m], arr.wait_end[m]))
    return out


def backlog_intervals(trace: Trace | TraceArrays) -> dict[str, list[tuple[float, float]]]:
    """When each client is backlogged: it has at least one request that has arrived and is waiting.

    This is VTC's and DLPM's notion (vtc_fastswitch_preble.md §A.1: membership in the waiting queue
    Q, which excludes running requests): request r waits on ``[arrival, admit)`` and, after each
    retraction, from the end of the retracting step to its re-admission; a client's backlog
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


def summarize(
    trace: Trace, instance_weights: ServiceWeights | Instance | None = None, *, window_s: float = JAIN_WINDOW_S
) -> dict[str, Any]:
    """The metrics row the CLI prints (JSON-able; floats unrounded: round only when printing).

    Keys: ``policy``, ``n_requests``, ``n_steps``, ``span_s``, ``tokens_per_s``,
    ``output_tokens_per_s``, ``extend_tokens_per_s``, ``hit_rate``, ``ttft_p50/p90/p99``,
    ``tpot_p50/p99``, ``e2e_p50/p99`` (seconds), ``jain`` (client view, DLPM's figures: one
    figure over the *whole* window in which all clients are active, ``jain_scope`` says so),
    ``jain_actual``, ``jain_window``, ``jain_reason``, ``max_service_gap`` (actual view:
    ``{"value", "pair", "interval"}``), ``per_client`` (:func:`per_client_totals`), and (issue #9)
    ``jain_windowed`` (:func:`windowed_jain`, ``window_s`` seconds, client view),
    ``jain_backlogged`` (:func:`backlogged_jain`), ``per_client_table`` (:func:`per_client_table`),
    ``gap_bounds`` (:func:`gap_bounds`; only when ``instance_weights`` is the :class:`Instance`,
    whose ``L_input`` and ``M`` the bounds need; DLPM's bound when the trace's policy has a
    ``quantum`` and no per-client weights). Percentiles and rates are None where undefined (no
    multi-token request, empty window).
    """
    w = _weights(instance_weights)
    arr = trace_arrays(trace)
    jc = jain_over_active_window(arr, w, view="client")
    ja = jain_over_active_window(arr, w, view="actual")
    gap = max_service_gap(arr, w, view="actual")
    extras = _fairness_extras(arr, w, window_s)
    if isinstance(instance_weights, Instance):
        pol = trace.policy or {}
        q = pol.get("quantum") if not pol.get("weights") else None
        extras["gap_bounds"] = gap_bounds(arr, instance_weights, float(q) if isinstance(q, (int, float)) else None)
    else:
        extras["gap_bounds"] = None
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
        "jain_scope": "whole window in which every client is active (latest first arrival to earliest last finish)",
        **extras,
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


def _distinct_step_ends(times: np.ndarray, cum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the last row of each run of equal step ends (as ``metrics.max_service_gap``) and
    prepend the zero row: ``ext[i]`` = service after the first ``i`` distinct step ends."""
    if times.size:
        last = np.ones(times.size, dtype=bool)
        last[:-1] = times[1:] != times[:-1]
        times, cum = times[last], cum[last]
    return times, np.vstack([np.zeros((1, cum.shape[1])), cum])


def _eval_rows(times: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """Rows of ``ext`` at the evaluation points of backlogged period ``[t0, t1)``: ``W(t0)`` then
    every distinct step end in ``(t0, t1]``."""
    i0 = int(np.searchsorted(times, t0, side="right"))
    i1 = int(np.searchsorted(times, t1, side="right"))
    return np.arange(i0, i1 + 1)


def _time_of(times: np.ndarray, rows: np.ndarray, j: int, t0: float) -> float:
    return float(t0) if j == 0 else float(times[rows[j] - 1])


def _cluster_curves(
    instance: ServiceWeights | Instance | None, ct: Any, view: str
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray, dict[str, list[tuple[float, float]]]]:
    times, clients, cum = cluster_service_timeline(ct.traces, instance, view, clients=ct.instance.clients)
    ext = np.vstack([np.zeros((1, cum.shape[1])), cum])
    backlog = backlog_intervals(ct.merged_trace())
    return times, clients, ext, backlog


def _intersect_periods(
    a: list[tuple[float, float]], b: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Intersection of two sorted lists of disjoint half-open periods (two pointers)."""
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if e > s:
            out.append((s, e))
        if a[i][1] <= b[j][1]:
            i += 1
        else:
            j += 1
    return out


def cluster_max_service_gap(
    cluster_trace: Any, weights: ServiceWeights | Instance | None = None, view: str = "actual"
) -> tuple[float, dict[str, Any], int]:
    """The largest ``|W_f(t1,t2) - W_g(t1,t2)|`` of cluster-wide service over pairs of clients both
    backlogged (waiting on any worker) on ``[t1, t2)`` (D²LPM Thm 5.1's premise; dlpm.md §4).

    Service curves from :func:`cluster_service_timeline` (every worker's step ends); backlog from
    the cluster's merged records (:func:`backlog_intervals`). Evaluation points as
    :func:`max_service_gap`: ``W(t0)`` and every distinct step end in ``(t0, t1]``.

    Returns
    -------
    tuple
        ``(worst, witness, pairs_checked)``: cost units; ``witness`` = ``{"pair": (more, less),
        "interval": (t1, t2)}`` (empty when nothing was backlogged together).
    """
    times, clients, ext, backlog = _cluster_curves(weights, cluster_trace, view)
    worst, witness, checked = 0.0, {}, 0
    for fi, f in enumerate(clients):
        for gi in range(fi + 1, len(clients)):
            g = clients[gi]
            periods = _intersect_periods(backlog.get(f, []), backlog.get(g, []))
            if periods:
                checked += 1
            for t0, t1 in periods:
                rows = _eval_rows(times, t0, t1)
                d = ext[rows, fi] - ext[rows, gi]
                jmax, jmin = int(np.argmax(d)), int(np.argmin(d))
                val = float(d[jmax] - d[jmin])
                if val > worst:
                    j1, j2 = min(jmax, jmin), max(jmax, jmin)
                    more_f = d[j2] > d[j1]
                    worst = val
                    witness = {
                        "pair": (f, g) if more_f else (g, f),
                        "interval": (_time_of(times, rows, j1, t0), _time_of(times, rows, j2, t0)),
                    }
    return worst, witness, checked


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
    backlogged (waiting on any worker) on a common interval, actual view
    (:func:`cluster_max_service_gap`, the premise scan of D²LPM Thm 5.1). ``n_steps`` is the sum
    over workers.
    Issue #9's ``jain_windowed`` / ``jain_backlogged`` (60 s windows, client view) use the
    cluster-wide service curves, ``per_client_table`` the merged trace; ``gap_bounds`` is None.
    """
    inst = cluster_trace.instance
    w = inst.weights
    merged = cluster_trace.merged_trace()
    arr = trace_arrays(merged)
    C = len(arr.clients)
    _, _, ta, tb = _active_window(arr)
    jain: dict[str, float | None] = {"client": None, "actual": None}
    reason = None
    rates: dict[str, float] = {}
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
            if view == "client":
                rates = {c: float(r) for c, r in zip(arr.clients, (wb - wa) / (tb - ta))}
    else:
        reason = f"no window with all clients active: the earliest last finish {tb} is not after the latest first arrival {ta}"
    gap_value, gap_witness, _ = cluster_max_service_gap(cluster_trace, w)
    # issue #9: windowed / backlogged Jain on the cluster-wide client-view service (every worker's
    # step ends), clients and backlogs from the merged trace; per-client table from the merged trace
    if len(arr.ids):
        times, _n, cum = cluster_service_timeline(cluster_trace.traces, w, "client", clients=arr.clients)
        ext = np.vstack([np.zeros((1, C)), cum])
        extras = {
            "jain_windowed": _windowed(arr, times, ext, JAIN_WINDOW_S, None, "client", backlogged=False),
            "jain_backlogged": _windowed(arr, times, ext, JAIN_WINDOW_S, None, "client", backlogged=True),
        }
    else:
        extras = {"jain_windowed": None, "jain_backlogged": None}
    extras["per_client_table"] = per_client_table(arr, w, service_rates=rates)
    extras["gap_bounds"] = None  # the single-worker bounds do not apply; see bounds.check_d2lpm_*
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
            "value": gap_value,
            "pair": list(gap_witness["pair"]) if gap_witness else None,
            "interval": list(gap_witness["interval"]) if gap_witness else None,
        },
        "per_client": per_client_totals(arr, w),
        "jain_scope": "whole window in which every client is active (latest first arrival to earliest last finish)",
        **extras,
    }


# ---------------------------------------------------------------------------------------------
# fairness over time (issue #9): windowed Jain, Jain over backlogged clients, gaps against bounds,
# the per-client table. Service comes from _service_matrix / cluster_service_timeline only.

def jain_windows(t_start: float, t_end: float, window_s: float = JAIN_WINDOW_S, step_s: float | None = None) -> np.ndarray:
    """Start times of the sliding windows ``[a, a + window_s)`` over ``[t_start, t_end]``.

    ``a = t_start + k * step_s`` for every k with ``a + window_s <= t_end``; ``step_s`` defaults
    to ``window_s / 4``. A span shorter than one window gives one window starting at ``t_start``
    (it then reaches past ``t_end``); an empty span gives none.

    Raises
    ------
    InputError
        ``window_s`` or ``step_s`` not a finite number > 0.
    """
    for name, v in (("window_s", window_s), ("step_s", window_s if step_s is None else step_s)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
            raise InputError(name, f"must be a finite number > 0, got {v!r}")
    step = window_s / 4.0 if step_s is None else float(step_s)
    if not t_end > t_start:
        return np.empty(0)
    k = int(np.floor((t_end - t_start - window_s) / step + 1e-9)) if t_end - t_start >= window_s else 0
    return t_start + step * np.arange(k + 1, dtype=np.float64)


def _interval_arrays(iv: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    if not iv:
        return np.empty(0), np.empty(0)
    a = np.asarray(iv, dtype=np.float64)
    return a[:, 0], a[:, 1]


def _overlaps(s: np.ndarray, e: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For sorted disjoint ``[s_i, e_i)``: does any meet the window ``[a_k, b_k)``? (per window)"""
    if s.size == 0:
        return np.zeros(a.size, dtype=bool)
    i = np.searchsorted(e, a, side="right")
    ok = i < s.size
    out = np.zeros(a.size, dtype=bool)
    out[ok] = s[i[ok]] < b[ok]
    return out


def _covers(s: np.ndarray, e: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For sorted disjoint ``[s_i, e_i)``: does one of them contain all of ``[a_k, b_k)``?"""
    if s.size == 0:
        return np.zeros(a.size, dtype=bool)
    i = np.searchsorted(e, a, side="right")
    ok = i < s.size
    out = np.zeros(a.size, dtype=bool)
    out[ok] = (s[i[ok]] <= a[ok]) & (e[i[ok]] >= b[ok])
    return out


def _window_service(times: np.ndarray, ext: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Service per window and client, shape ``(K, C)``: ``W(b) - W(a)`` with ``ext[i]`` = service
    after the first i step ends (steps ending in ``(a, b]``, the module's convention)."""
    return ext[np.searchsorted(times, b, side="right")] - ext[np.searchsorted(times, a, side="right")]


def _jain_rows(service: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Jain's index of each row over its member columns (NaN where fewer than two members)."""
    x = np.where(member, service, 0.0)
    n = member.sum(axis=1)
    s1 = x.sum(axis=1)
    s2 = (x * x).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        j = np.where(s2 > 0, s1 * s1 / (n * s2), 1.0)
    return np.where(n >= 2, j, np.nan)


def _window_summary(starts: np.ndarray, window_s: float, step: float, j: np.ndarray, view: str, who: str) -> dict[str, Any]:
    ok = ~np.isnan(j)
    out: dict[str, Any] = {
        "mean": None, "min": None, "min_window": None, "windows": int(ok.sum()),
        "window_s": float(window_s), "step_s": float(step), "view": view, "clients": who,
    }
    if ok.any():
        k = int(np.flatnonzero(ok)[np.argmin(j[ok])])
        out.update(mean=float(j[ok].mean()), min=float(j[k]), min_window=[float(starts[k]), float(starts[k] + window_s)])
    return out


def _active_intervals(arr: TraceArrays) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per client: union of ``[arrival, finish)`` of its requests (it has a request in the system)."""
    out = []
    for c in range(len(arr.clients)):
        m = arr.client_idx == c
        out.append(_merge_intervals(arr.arrival[m], arr.finish[m]))
    return out


def _windowed(
    arr: TraceArrays,
    times: np.ndarray,
    ext: np.ndarray,
    window_s: float,
    step_s: float | None,
    view: str,
    backlogged: bool,
) -> dict[str, Any]:
    step = window_s / 4.0 if step_s is None else float(step_s)
    if len(arr.ids) == 0:
        starts = jain_windows(0.0, 0.0, window_s, step_s)
    else:
        starts = jain_windows(float(arr.arrival.min()), float(arr.finish.max()), window_s, step_s)
    a, b = starts, starts + window_s
    C = len(arr.clients)
    member = np.zeros((starts.size, C), dtype=bool)
    if backlogged:
        bl = backlog_intervals(arr)
        for k, c in enumerate(arr.clients):
            member[:, k] = _covers(*_interval_arrays(bl[c]), a, b)
    else:
        for k, (s, e) in enumerate(_active_intervals(arr)):
            member[:, k] = _overlaps(s, e, a, b)
    j = _jain_rows(_window_service(times, ext, a, b), member) if starts.size else np.empty(0)
    who = "backlogged throughout the window" if backlogged else "with a request in the system during the window"
    return _window_summary(starts, window_s, step, j, view, who)


def _timeline_ext(arr: TraceArrays, w: ServiceWeights, view: str) -> tuple[np.ndarray, np.ndarray]:
    cum = _service_matrix(arr, w, view)
    return arr.step_end, np.vstack([np.zeros((1, cum.shape[1])), cum])


def windowed_jain(
    trace: Trace | TraceArrays,
    weights: ServiceWeights | Instance | None = None,
    view: str = "client",
    *,
    window_s: float = JAIN_WINDOW_S,
    step_s: float | None = None,
) -> dict[str, Any]:
    """Jain's index over sliding windows (:func:`jain_windows`), reported as mean and minimum.

    In window ``[a, a + window_s)`` the clients are those with a request in the system (arrived,
    not finished) at some moment of the window, and client f's figure is its service
    ``W_f(a, a + window_s)`` (:func:`service_timeline`'s convention: steps ending in the window).
    Windows with fewer than two such clients are skipped. A client that sends little and gets all
    of it lowers the index too (Jain measures equality, not max-min fairness); use
    :func:`backlogged_jain` for the clients that wanted more than they got. *Decision:* the default
    view is the client view (DLPM's figures); the default window is 60 s (the VTC artifact's) with
    a quarter-window step.

    Returns
    -------
    dict
        ``mean``, ``min`` (None without a qualifying window), ``min_window`` ``[a, b]`` (seconds),
        ``windows`` (how many qualified), ``window_s``, ``step_s``, ``view``, ``clients`` (the rule).
    """
    arr = _as_arrays(trace)
    times, ext = _timeline_ext(arr, _weights(weights), view)
    return _windowed(arr, times, ext, window_s, step_s, view, backlogged=False)


def backlogged_jain(
    trace: Trace | TraceArrays,
    weights: ServiceWeights | Instance | None = None,
    view: str = "client",
    *,
    window_s: float = JAIN_WINDOW_S,
    step_s: float | None = None,
) -> dict[str, Any]:
    """Jain's index over sliding windows among the clients backlogged throughout each window.

    As :func:`windowed_jain`, but a window's clients are those with a waiting request at every
    moment of it (:func:`backlog_intervals`: one backlogged period covers the window): VTC's and
    DLPM's premise, under which a fair scheduler serves them equally (P1). Windows with fewer than
    two such clients are skipped, so ``windows`` says how often the premise held.
    """
    arr = _as_arrays(trace)
    times, ext = _timeline_ext(arr, _weights(weights), view)
    return _windowed(arr, times, ext, window_s, step_s, view, backlogged=True)


def gap_bounds(trace: Trace | TraceArrays, instance: Instance, quantum: float | None = None) -> dict[str, Any]:
    """The largest backlogged service gap next to the theorems' bounds, as ratios.

    - ``vtc``: VTC's ``2*max(w_e*L_input, w_q*M)`` with ``M`` = the batch token capacity
      (``limits.kv_capacity_tokens``, :func:`~prefixsched.theory.bounds.kv_batch_tokens`: the
      reading under which VTC's theorem is stated), for every policy, against the gap in the client
      view (VTC charges full prompts);
    - ``dlpm`` (only with ``quantum``, DLPM's ``Q_u``): DLPM Thm 4.1's ``2(U + Q_u)``,
      ``U = w_e*L_input + w_q*M`` with the DLPM checks' ``M``
      (:func:`~prefixsched.theory.bounds.batch_output_capacity`), against the gap in the actual view
      (DLPM charges extend tokens).

    Gaps from :func:`max_service_gap`. Returns ``{"vtc": {"gap", "bound", "ratio", "M", "view",
    "pair", "interval", "period"}, "dlpm": {... , "Q_u", "U"} or None}`` (cost units; ``period`` is
    the pair's common backlogged period ``[T0, T1)`` containing ``interval``, seconds).
    """
    from prefixsched.theory import formulas as B

    arr = _as_arrays(trace)
    w = instance.weights
    L = B.max_input_tokens(instance)
    M = B.kv_batch_tokens(instance)
    g = max_service_gap(arr, w, "client")
    vb = B.vtc_two_backlogged_bound(L, M, w.w_e, w.w_q)
    out: dict[str, Any] = {
        "vtc": {
            "gap": g["value"], "bound": vb, "ratio": g["value"] / vb if vb > 0 else None, "M": M,
            "view": "client", "pair": list(g["pair"]) if g["pair"] else None,
            "interval": list(g["interval"]) if g["interval"] else None,
            "period": _common_period(arr, g),
        },
        "dlpm": None,
    }
    if quantum is not None:
        Mo = B.batch_output_capacity(instance)
        U = B.dlpm_U(L, Mo, w.w_e, w.w_q)
        db = B.dlpm_thm_4_1(float(quantum), U)
        ga = max_service_gap(arr, w, "actual")
        out["dlpm"] = {
            "gap": ga["value"], "bound": db, "ratio": ga["value"] / db, "M": Mo, "U": U, "Q_u": float(quantum),
            "view": "actual", "pair": list(ga["pair"]) if ga["pair"] else None,
            "interval": list(ga["interval"]) if ga["interval"] else None,
            "period": _common_period(arr, ga),
        }
    return out


def _common_period(arr: TraceArrays, gap: dict[str, Any]) -> list[float] | None:
    """The common backlogged period ``[T0, T1)`` of the pair of a :func:`max_service_gap` result
    that contains its interval (None when there is no gap)."""
    if not gap["pair"]:
        return None
    bl = backlog_intervals(arr)
    f, g = gap["pair"]
    s, e = _intersect(_interval_arrays(bl[f]), _interval_arrays(bl[g]))
    t1, t2 = gap["interval"]
    k = np.flatnonzero((s <= t1) & (e >= t2))
    return [float(s[k[0]]), float(e[k[0]])] if k.size else None


def demand_per_client(trace: Trace | TraceArrays, weights: ServiceWeights | Instance | None = None) -> dict[str, float]:
    """Client-view demand per client: ``w_e * prompt tokens + w_q * output tokens`` of all its
    requests (cost units), what it asked for whatever was cached."""
    arr = _as_arrays(trace)
    w = _weights(weights)
    d = np.bincount(
        arr.client_idx, weights=w.w_e * arr.prompt_len.astype(np.float64) + w.w_q * arr.output_len, minlength=len(arr.clients)
    )
    return {c: float(d[k]) for k, c in enumerate(arr.clients)}


def per_client_table(
    trace: Trace | TraceArrays,
    weights: ServiceWeights | Instance | None = None,
    *,
    service_rates: dict[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """One row per client (order of first appearance): what it asked for and what it got.

    - ``demand_share``: its share of the total client-view demand (:func:`demand_per_client`);
    - ``service_share``: its share of the client-view service delivered in the window in which
      every client is active (:func:`jain_over_active_window`'s window and rates; None when that
      window is empty). Over a run that drains its queue every client ends up served in full, so
      this window, not the whole run, is where shares can differ;
    - ``requests``, ``ttft_p50_s``, ``ttft_p99_s`` (:func:`request_latencies`, :func:`percentiles`),
      ``longest_wait_s`` (the longest time one of its requests waited from arrival to its first
      admission, seconds).

    ``service_rates`` (client -> client-view service rate over that window) replaces the window's
    rates computed from ``trace``'s own steps (a cluster's merged trace has none).
    """
    arr = _as_arrays(trace)
    w = _weights(weights)
    C = len(arr.clients)
    demand = demand_per_client(arr, w)
    tot = sum(demand.values())
    rates = service_rates if service_rates is not None else jain_over_active_window(arr, w, view="client")["rates"]
    rate_tot = sum(rates.values()) if rates else 0.0
    ttft = request_latencies(arr)["ttft"]
    wait = arr.admit - arr.arrival
    n = np.bincount(arr.client_idx, minlength=C)
    out: dict[str, dict[str, Any]] = {}
    for k, c in enumerate(arr.clients):
        m = arr.client_idx == k
        pc = percentiles(ttft[m], (50, 99))
        out[c] = {
            "demand_share": demand[c] / tot if tot > 0 else None,
            "service_share": (rates[c] / rate_tot) if rates and rate_tot > 0 else None,
            "requests": int(n[k]),
            "ttft_p50_s": pc[50],
            "ttft_p99_s": pc[99],
            "longest_wait_s": float(wait[m].max()) if m.any() else None,
        }
    return out


def _fairness_extras(arr: TraceArrays, w: ServiceWeights, window_s: float) -> dict[str, Any]:
    """The issue-#9 keys shared by :func:`summarize` (single worker)."""
    times, ext = _timeline_ext(arr, w, "client")
    return {
        "jain_windowed": _windowed(arr, times, ext, window_s, None, "client", backlogged=False),
        "jain_backlogged": _windowed(arr, times, ext, window_s, None, "client", backlogged=True),
        "per_client_table": per_client_table(arr, w),
    }


# ---------------------------------------------------------------------------------------------
# preemption: time between tokens and the cost of context switches (FastSwitch)


def token_gaps(trace: Trace | TraceArrays) -> np.ndarray:
    """Time between tokens (TBT), seconds: every gap between two consecutive output tokens of a
    request, over all its runs (so the time a preempted request spends swapped out or waiting for
    its recomputation is one gap), shape ``(sum_r (output_len_r - 1),)``.

    A token's time is the end of the step that produced it (:mod:`prefixsched.theory.trace`): a
    run produces one token in the step of its last chunk (or, resuming by swap-in, its first
    step) and one in every decode-capable step after it up to its ``end_step``. Order: within
    each run, then between consecutive runs of a request (records in trace order).
    """
    arr = _as_arrays(trace)
    _require_steps(arr)
    if len(arr.span_rec) == 0:
        return np.empty(0)
    end = arr.step_end
    D = np.flatnonzero(arr.decode_cap)
    de = end[D]
    lo = np.searchsorted(D, arr.span_first, side="right")
    hi = np.searchsorted(D, arr.span_end, side="right")
    n = hi - lo  # decode tokens after each run's first token
    t0 = end[arr.span_first]
    # the first gap of each run with decode tokens, then the gaps between its decode steps
    has = n > 0
    first_gap = de[lo[has]] - t0[has]
    dd = np.diff(de)
    cnt = np.zeros(len(de) + 1, dtype=np.int64)
    m = n > 1
    np.add.at(cnt, lo[m], 1)
    np.add.at(cnt, hi[m] - 1, -1)
    mult = np.cumsum(cnt)[: len(dd)] if len(dd) else np.zeros(0, dtype=np.int64)
    inner = np.repeat(dd, mult)
    # between runs of one request: first token of run k+1 - last token of run k
    last = np.where(has, de[np.maximum(hi - 1, 0)] if len(de) else t0, t0)
    same = arr.span_rec[1:] == arr.span_rec[:-1]
    cross = t0[1:][same] - last[:-1][same]
    return np.concatenate([first_gap, inner, cross])


def latency_tails(trace: Trace | TraceArrays, ps: Sequence[float] = (50, 95, 99, 99.9)) -> dict[str, Any]:
    """TTFT and TBT percentiles, seconds (:func:`percentiles`, type 7): ``ttft_p50`` ..., ``tbt_p50``
    ..., keys named ``p<p>`` with ``99.9`` written ``p99_9``; plus ``tbt_max``, ``tbt_mean`` and
    ``n_gaps``. FastSwitch reports P95/P99/P99.9 TTFT and P99.9 TBT (spec §B.4, §B.6)."""
    arr = _as_arrays(trace)
    lat = request_latencies(arr)
    gaps = token_gaps(arr)
    out: dict[str, Any] = {}
    for name, x in (("ttft", lat["ttft"]), ("tbt", gaps)):
        for p, v in percentiles(x, ps).items():
            out[f"{name}_p{str(p).replace('.', '_')}"] = v
    out["tbt_max"] = float(gaps.max()) if gaps.size else None
    out["tbt_mean"] = float(gaps.mean()) if gaps.size else None
    out["n_gaps"] = int(gaps.size)
    return out


def _union_length(start: np.ndarray, end: np.ndarray) -> float:
    s, e = _merge_intervals(start, end)
    return float((e - s).sum()) if s.size else 0.0


def switch_metrics(trace: Trace) -> dict[str, Any]:
    """What preemption cost, from the trace alone (its runs, :attr:`Trace.switches` and
    ``meta["preemption"]``; :mod:`prefixsched.reference.engine.preemption`).

    Returns
    -------
    dict
        ``mode`` (``"drop"``/``"swap"``, None without preemption), ``sync``, ``reuse``;
        ``preemptions`` (runs ended by a policy's preemption), ``retractions`` (by the engine's
        decode retraction), ``swap_outs``, ``swap_ins``, ``recomputes_after_swap`` (a swapped-out
        request that re-prefilled because its host copy was evicted), ``recomputed_tokens`` (the
        prefill of every re-admission after a drop or a lost host copy);
        ``bytes_out``/``bytes_in`` and ``tokens_out``/``tokens_in`` (moved each way);
        ``reuse_saved_tokens``/``reuse_saved_bytes`` (KV a swap-out did not send because host
        memory still held it) and ``swaps_avoided_by_reuse`` (swap-outs that sent nothing);
        ``host_evicted_tokens``; ``switch_time_s`` (sum of copy durations); ``link_busy_out_s`` /
        ``link_busy_in_s`` and ``link_util_out``/``link_util_in`` (busy time over the run's span,
        first step start to last step end), ``achieved_bytes_per_s_out``/``_in`` (bytes over busy
        time, None when idle) and ``peak_bytes_per_s``; ``gpu_stall_s``: time in which no step
        ran while a copy was on the link (synchronous copies: all of them; asynchronous: only the
        waits for a copy nothing else could hide) and ``gpu_stall_frac`` (of the span).
    """
    cfg = trace.meta.get("preemption") if isinstance(trace.meta, dict) else None
    ev = trace.switches or []
    recs = trace.requests
    pre = ret = rec_after = swap_in_runs = 0
    recomputed = 0
    for r in recs:
        if r.runs is None:
            continue
        prev = None
        for x in r.runs:
            if x.swapped_in is not None:
                swap_in_runs += 1
            elif prev is not None:
                if prev in ("preempt", "swap", "retract"):
                    recomputed += sum(t for _, t in x.chunks)
                if prev == "swap":
                    rec_after += 1
            if x.end in ("preempt", "swap"):
                pre += 1
            elif x.end == "retract":
                ret += 1
            prev = x.end
    out: dict[str, Any] = {
        "mode": cfg.get("mode") if isinstance(cfg, dict) else None,
        "sync": cfg.get("sync") if isinstance(cfg, dict) else None,
        "reuse": cfg.get("reuse") if isinstance(cfg, dict) else None,
        "preemptions": pre, "retractions": ret, "recomputes_after_swap": rec_after, "recomputed_tokens": recomputed,
    }
    outs = [e for e in ev if e.kind == "out"]
    ins = [e for e in ev if e.kind == "in"]
    bpt = 0
    peak = None
    if isinstance(cfg, dict) and isinstance(cfg.get("switch"), dict):
        m = cfg["switch"].get("model", {})
        bpt = 2 * m.get("layers", 0) * m.get("kv_heads", 0) * m.get("head_dim", 0) * m.get("dtype_bytes", 0)
        peak = cfg["switch"].get("link", {}).get("peak_bytes_per_s")
    saved = sum(e.kv_tokens - e.tokens for e in outs)
    st = np.asarray(trace.step_start, dtype=np.float64)
    en = np.asarray(trace.step_end, dtype=np.float64)
    span = float(en[-1] - st[0]) if st.size else 0.0
    out.update({
        "swap_outs": len(outs), "swap_ins": len(ins),
        "tokens_out": sum(e.tokens for e in outs), "tokens_in": sum(e.tokens for e in ins),
        "bytes_out": sum(e.bytes for e in outs), "bytes_in": sum(e.bytes for e in ins),
        "reuse_saved_tokens": saved, "reuse_saved_bytes": saved * bpt,
        "swaps_avoided_by_reuse": sum(1 for e in outs if e.tokens == 0 and e.kv_tokens > 0),
        "host_evicted_tokens": sum(e.tokens for e in ev if e.kind == "evict"),
        "switch_time_s": float(sum(e.t_end - e.t_start for e in outs + ins)),
        "peak_bytes_per_s": peak,
    })
    for name, lane in (("out", outs), ("in", ins)):
        a = np.array([e.t_start for e in lane], dtype=np.float64)
        b = np.array([e.t_end for e in lane], dtype=np.float64)
        busy = _union_length(a, b)
        nbytes = sum(e.bytes for e in lane)
        out[f"link_busy_{name}_s"] = busy
        out[f"link_util_{name}"] = busy / span if span > 0 else None
        out[f"achieved_bytes_per_s_{name}"] = nbytes / busy if busy > 0 else None
    # GPU stall: the idle gaps between steps (and before the first) that copies overlap
    stall = 0.0
    if ev and st.size:
        gs = np.concatenate([[-np.inf], en[:-1]])
        ge = st
        cs, ce = _merge_intervals(np.array([e.t_start for e in outs + ins]), np.array([e.t_end for e in outs + ins]))
        for a0, b0 in zip(cs, ce):
            lo = np.searchsorted(ge, a0, side="right")  # gaps ending after a0
            hi = np.searchsorted(gs, b0, side="left")  # gaps starting before b0
            if hi > lo:
                s0 = np.maximum(gs[lo:hi], a0)
                e0 = np.minimum(ge[lo:hi], b0)
                stall += float(np.clip(e0 - s0, 0, None).sum())
    out["gpu_stall_s"] = stall
    out["gpu_stall_frac"] = stall / span if span > 0 else None
    return out
