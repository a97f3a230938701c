"""Fitting a :class:`~prefixsched.theory.cost.CostModel` to a live run.

The client only sees its streams, so the server's forward passes are reconstructed from them
first (:func:`reconstruct_steps`), then the prefill and decode coefficients are fitted by
non-negative least squares (:func:`fit_cost_model`).

Step reconstruction (decisions)
-------------------------------
Every SSE chunk that adds output tokens is an *event* ``(time, request, new tokens, first?)``.
SGLang sends the tokens of one forward pass together, so events are grouped into passes: sorted
by time, an event joins the current group when it comes within ``eps`` of the group's previous
event, its request has no event in the group yet (a request gains at most one token per pass
without speculative decoding) and, unless ``mixed_chunk``, it is of the group's kind (first
token or decode token: SGLang runs prefill and decode as separate passes unless
``--enable-mixed-chunk``); otherwise it starts a new group. ``eps`` defaults to 0.3 x the
median per-token gap of the run's streams (a fraction of a typical decode pass, so passes are not
merged), at least 0.2 ms. A group's time ``T`` is its earliest event (least delivery delay).

- A group of first tokens only is a **prefill** pass: its extend tokens are ``E = sum(prompt_len -
  cached_tokens)`` of its requests (``cached_tokens`` from ``meta_info``), its attention feature
  ``X = sum(prompt_len * extend)``.
- A group of single-token decode events only is a **decode** pass of batch size ``n`` = its
  events and context ``C = sum(prompt_len + tokens so far)``.
- Anything else (a chunk carrying several tokens, first and decode tokens together as in
  ``--enable-mixed-chunk``) is kept on the timeline but not fitted.

A pass's duration is ``T_k - T_{k-1}``. For a prefill pass whose requests were sent after
``T_{k-1}`` the server was idle: the pass starts at the latest send time instead, which adds the
HTTP transfer to the duration; such passes are used only if fewer than 5 busy prefill passes
exist. Hidden passes (the middle chunks of a chunked prefill produce no token) make a gap
longer than its features explain: they are removed as outliers (below).

Fit
---
``prefill: y = a + b*E (+ g*X)`` and ``decode: y = c + d*n + e*C``, each solved by exact
non-negative least squares (every subset of the columns is solved by ordinary least squares and
the best solution with all coefficients >= 0 is kept; the dimension is at most 3), twice: after
the first fit, points whose residual exceeds ``4 * 1.4826 * MAD`` of the residuals are dropped
and the fit is redone. ``c_attn = g / b`` when the attention term is fitted (``fit_attention``,
off by default: the k-LPM term is then 0 as in :class:`CostModel`'s default).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from prefixsched.errors import InputError
from prefixsched.integration.live.records import LiveRun
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Limits

__all__ = ["Pass", "reconstruct_steps", "nnls", "fit_cost_model", "FitResult", "cost_profile"]


@dataclass
class Pass:
    """One reconstructed forward pass. ``kind``: ``prefill``, ``decode`` or ``mixed``; ``time``
    its end (earliest event, seconds); ``start`` its start estimate; ``busy`` whether the server
    was busy right before it; ``requests`` the ids with tokens in it, ``tokens`` how many each
    got and ``first`` whether they were its first."""

    kind: str
    time: float
    start: float | None
    busy: bool
    requests: list[str]
    tokens: list[int]
    first: list[bool]
    extend: int = 0
    attn: float = 0.0
    batch: int = 0
    context: int = 0

    @property
    def duration(self) -> float | None:
        return None if self.start is None else self.time - self.start


def _median_token_gap(run: LiveRun) -> float | None:
    gaps = []
    for r in run.results:
        t, n = r.chunk_times, r.chunk_tokens
        for j in range(1, len(t)):
            k = n[j] - n[j - 1]
            if k > 0:
                gaps.append((t[j] - t[j - 1]) / k)
    return float(np.median(gaps)) if gaps else None


def reconstruct_steps(run: LiveRun, eps_s: float | None = None, *, mixed_chunk: bool = False) -> tuple[list[Pass], float]:
    """The forward passes of ``run`` (module docstring) and the ``eps`` used (seconds)."""
    if eps_s is None:
        g = _median_token_gap(run)
        eps_s = max(2e-4, 0.3 * g) if g else 1e-3
    if not (eps_s > 0):
        raise InputError("eps_s", f"must be > 0, got {eps_s!r}")
    events = []
    info = {}
    for r in run.results:
        info[r.id] = r
        prev = 0
        for j, (t, n) in enumerate(zip(r.chunk_times, r.chunk_tokens)):
            events.append((t, r.id, n - prev, j == 0, prev))
            prev = n
    events.sort(key=lambda e: (e[0], e[1]))
    groups: list[list[tuple]] = []
    last_t = -math.inf
    members: set[str] = set()
    kind_first: bool | None = None
    for ev in events:
        t, rid, first = ev[0], ev[1], ev[3]
        same_kind = mixed_chunk or kind_first is None or first == kind_first
        if groups and t - last_t <= eps_s and rid not in members and same_kind:
            groups[-1].append(ev)
            members.add(rid)
        else:
            groups.append([ev])
            members = {rid}
            kind_first = first
        last_t = t
    passes: list[Pass] = []
    prev_t: float | None = None
    for g in groups:
        T = min(e[0] for e in g)
        firsts = [e for e in g if e[3]]
        decs = [e for e in g if not e[3]]
        rids = [e[1] for e in g]
        if firsts and not decs and all(e[2] == 1 for e in firsts):
            kind = "prefill"
        elif decs and not firsts and all(e[2] == 1 for e in decs):
            kind = "decode"
        else:
            kind = "mixed"
        p = Pass(
            kind=kind,
            time=T,
            start=prev_t,
            busy=prev_t is not None,
            requests=rids,
            tokens=[e[2] for e in g],
            first=[e[3] for e in g],
        )
        if kind == "prefill":
            ext = 0
            attn = 0.0
            latest_sent = -math.inf
            for e in firsts:
                r = info[e[1]]
                x = r.prompt_len - (r.cached_tokens or 0)
                ext += x
                attn += float(r.prompt_len) * x
                if r.sent is not None:
                    latest_sent = max(latest_sent, r.sent)
            p.extend, p.attn, p.batch = ext, attn, len(firsts)
            if prev_t is None or latest_sent > prev_t:
                p.start = latest_sent if latest_sent > -math.inf else None
                p.busy = False
        elif kind == "decode":
            p.batch = len(decs)
            p.context = sum(info[e[1]].prompt_len + e[4] for e in decs)
        passes.append(p)
        prev_t = T
    return passes, float(eps_s)


def nnls(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact non-negative least squares for a few columns: every column subset is solved by
    ``numpy.linalg.lstsq`` and the lowest-residual solution with all coefficients >= 0 wins
    (the optimum's support is one of the subsets). ``A`` shape ``(m, k)``, ``k <= 6``."""
    m, k = A.shape
    if k > 6:
        raise InputError("columns", f"subset NNLS is for at most 6 columns, got {k}")
    best = np.zeros(k)
    best_rss = float(np.sum(y * y))
    for size in range(1, k + 1):
        for cols in itertools.combinations(range(k), size):
            sub = A[:, cols]
            x, *_ = np.linalg.lstsq(sub, y, rcond=None)
            if np.any(x < 0):
                continue
            rss = float(np.sum((y - sub @ x) ** 2))
            if rss < best_rss - 1e-18:
                best_rss = rss
                best = np.zeros(k)
                best[list(cols)] = x
    return best


def _robust_fit(A: np.ndarray, y: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    if len(y) == 0:
        return {"coef": {n: None for n in names}, "points": 0, "outliers_dropped": 0, "r2": None, "rmse_s": None}
    keep = np.ones(len(y), dtype=bool)
    x = nnls(A, y)
    dropped = 0
    for _ in range(2):
        res = y - A @ x
        mad = float(np.median(np.abs(res[keep] - np.median(res[keep])))) if keep.any() else 0.0
        thr = 4 * 1.4826 * mad
        new_keep = np.abs(res) <= max(thr, 1e-9)
        if new_keep.sum() < max(3, A.shape[1]) or np.array_equal(new_keep, keep):
            break
        keep = new_keep
        x = nnls(A[keep], y[keep])
    dropped = int((~keep).sum())
    res = y[keep] - A[keep] @ x
    ss_tot = float(np.sum((y[keep] - y[keep].mean()) ** 2))
    r2 = 1.0 - float(np.sum(res**2)) / ss_tot if ss_tot > 0 else None
    return {
        "coef": {n: float(v) for n, v in zip(names, x)},
        "points": int(keep.sum()),
        "outliers_dropped": dropped,
        "r2": r2,
        "rmse_s": float(np.sqrt(np.mean(res**2))) if res.size else None,
        "abs_residual_p50_s": float(np.percentile(np.abs(res), 50)) if res.size else None,
        "abs_residual_p99_s": float(np.percentile(np.abs(res), 99)) if res.size else None,
    }


@dataclass
class FitResult:
    """The fitted :class:`CostModel` and the report (``report`` is JSON-able)."""

    cost_model: CostModel
    report: dict[str, Any]
    passes: list[Pass]


def fit_cost_model(
    run: LiveRun,
    *,
    eps_s: float | None = None,
    mixed_chunk: bool = False,
    fit_attention: bool = False,
    fit_context: bool = True,
    fallback: CostModel | None = None,
) -> FitResult:
    """Fit the prefill and decode coefficients of ``run`` (module docstring).

    Parameters
    ----------
    fit_attention:
        Fit the k-LPM attention term (``c_attn``); off: ``c_attn = 0``.
    fit_context:
        Fit ``decode_per_context_token_s`` (KV reads); off: 0.
    fallback:
        Coefficients used where a model has no data points (default :class:`CostModel()`);
        the report says which ones.

    Raises
    ------
    InputError
        If the run has no reconstructable pass at all.
    """
    passes, eps = reconstruct_steps(run, eps_s, mixed_chunk=mixed_chunk)
    if not passes:
        raise InputError("run", "no streamed tokens to fit a cost model to")
    fb = fallback or CostModel()
    pre = [p for p in passes if p.kind == "prefill" and p.duration is not None and p.duration > 0]
    busy_pre = [p for p in pre if p.busy]
    used_pre = busy_pre if len(busy_pre) >= 5 else pre
    dec = [p for p in passes if p.kind == "decode" and p.busy and p.duration is not None and p.duration > 0]
    names_p = ["prefill_base_s", "prefill_per_token_s"] + (["attn_per_token_s"] if fit_attention else [])
    A = np.array([[1.0, p.extend] + ([p.attn] if fit_attention else []) for p in used_pre], dtype=float).reshape(-1, len(names_p))
    yp = np.array([p.duration for p in used_pre], dtype=float)
    fp = _robust_fit(A, yp, names_p)
    names_d = ["decode_base_s", "decode_per_request_s"] + (["decode_per_context_token_s"] if fit_context else [])
    B = np.array([[1.0, p.batch] + ([p.context] if fit_context else []) for p in dec], dtype=float).reshape(-1, len(names_d))
    yd = np.array([p.duration for p in dec], dtype=float)
    fd = _robust_fit(B, yd, names_d)
    used_fallback = []

    def coef(fit: dict[str, Any], name: str, default: float) -> float:
        v = fit["coef"].get(name)
        if v is None:
            used_fallback.append(name)
            return default
        return v

    a = coef(fp, "prefill_base_s", fb.prefill_base_s)
    b = coef(fp, "prefill_per_token_s", fb.prefill_per_token_s)
    g = fp["coef"].get("attn_per_token_s") if fit_attention else 0.0
    c_attn = (g / b) if (fit_attention and g is not None and b > 0) else (0.0 if fit_attention else fb.c_attn)
    cm = CostModel(
        prefill_base_s=a,
        prefill_per_token_s=b,
        c_attn=float(c_attn),
        decode_base_s=coef(fd, "decode_base_s", fb.decode_base_s),
        decode_per_request_s=coef(fd, "decode_per_request_s", fb.decode_per_request_s),
        decode_per_context_token_s=(
            coef(fd, "decode_per_context_token_s", fb.decode_per_context_token_s) if fit_context else 0.0
        ),
    )
    kinds: dict[str, int] = {}
    for p in passes:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    report = {
        "method": "passes reconstructed from the SSE streams, then exact non-negative least squares with one "
        "round of MAD outlier removal (prefixsched.integration.live.fit)",
        "eps_s": eps,
        "passes": kinds,
        "prefill_passes_idle_start_used": len(used_pre) - len([p for p in used_pre if p.busy]),
        "prefill": fp,
        "decode": fd,
        "fit_attention": fit_attention,
        "fit_context": fit_context,
        "fallback_used": used_fallback,
    }
    return FitResult(cm, report, passes)


def cost_profile(name: str, fit: FitResult, limits: Limits, source: str) -> dict[str, Any]:
    """The cost profile JSON object: ``{"name", "cost_model": {CostModel fields}, "limits":
    {Limits fields}, "source", "fitted": report}`` (the format of ``theory/cost.py``'s named
    profiles)."""
    return {
        "name": name,
        "cost_model": asdict(fit.cost_model),
        "limits": asdict(limits),
        "source": source,
        "fitted": fit.report,
    }
