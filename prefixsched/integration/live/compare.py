"""Measured against theory and simulation: per-client service of a live run, its service gaps
against ``theory/bounds.py``, and its TTFT and throughput against a simulator run.

Measured service (decisions). On the passes of :func:`~.fit.reconstruct_steps`: a request's
prefill service ``w_e * extend`` (``extend = prompt_len - cached_tokens``, the *actual* view; the
*client* view charges ``prompt_len``) is delivered at the pass carrying its first token, and
``w_q`` per output token at the pass carrying it. A client is backlogged while one of its
requests was sent and not yet admitted; the admission time of a request is the start of the
pass that carried its first token. The largest service gap between two continuously backlogged
clients is then computed exactly as :func:`prefixsched.theory.metrics.max_service_gap` does on a
simulator trace (evaluation at ``T0`` and at every pass end in ``(T0, T1]``).

Bounds (:func:`bound_for`): VTC's two-backlogged bound ``2*max(w_e*L_input, w_q*M)`` with ``M =
kv_capacity_tokens`` on the client view, DLPM's Thm 4.1 ``2*(U + Q_u)`` with ``U = w_e*L_input +
w_q*M`` and ``M`` = :func:`~prefixsched.theory.bounds.batch_output_capacity` on the actual view.
LPM, k-LPM and FCFS have no fairness bound (``None``). On SGLang the theorems' engine premises
(whole-output reservation, no chunking, no retraction) do not all hold: the comparison reports
the measured value next to the bound; it is not a proof either way.

Simulation (:func:`simulate_like`): the same requests at their scaled arrival times, the fitted
cost model, the server's limits; ``engine="sglang"`` when the simulator offers it, else its
default engine (the result says which). TTFT errors are ``(simulated - measured) / measured`` at
P50 and P99 over the requests that finished live; measured TTFT counts from the POST, simulated
TTFT from the arrival.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import numpy as np

from prefixsched.integration.live.fit import Pass
from prefixsched.integration.live.records import LiveRun
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, ServiceWeights

__all__ = [
    "measured_service",
    "backlog_intervals_live",
    "max_service_gap_live",
    "bound_for",
    "simulate_like",
    "latency_comparison",
]


def measured_service(
    run: LiveRun, passes: list[Pass], weights: ServiceWeights, view: str = "actual"
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """``(times, clients, cumulative)``: cumulative service per client (cost units) after every
    pass (module docstring); shapes ``(K,)``, ``(C,)``, ``(K, C)``."""
    if view not in ("actual", "client"):
        raise ValueError(f"view: must be 'actual' or 'client', got {view!r}")
    by = {r.id: r for r in run.results}
    clients = tuple(dict.fromkeys(r.client for r in run.results))
    col = {c: i for i, c in enumerate(clients)}
    K, C = len(passes), len(clients)
    inc = np.zeros((K, C))
    for k, p in enumerate(passes):
        for rid, tok, first in zip(p.requests, p.tokens, p.first):
            r = by[rid]
            j = col[r.client]
            inc[k, j] += weights.w_q * tok
            if first:
                n_e = r.prompt_len if view == "client" else r.prompt_len - (r.cached_tokens or 0)
                inc[k, j] += weights.w_e * n_e
    times = np.array([p.time for p in passes], dtype=float)
    return times, clients, np.cumsum(inc, axis=0)


def backlog_intervals_live(run: LiveRun, passes: list[Pass]) -> dict[str, list[tuple[float, float]]]:
    """``{client: [(t_start, t_end), ...]}``: union of ``[sent, admitted)`` of its requests;
    a request never admitted waits until the end of the run."""
    admitted: dict[str, float] = {}
    for p in passes:
        for rid, first in zip(p.requests, p.first):
            if first:
                admitted[rid] = p.start if p.start is not None else p.time
    end = max([p.time for p in passes], default=0.0)
    iv: dict[str, list[tuple[float, float]]] = {}
    for r in run.results:
        iv.setdefault(r.client, [])
        if r.sent is None:
            continue
        a = admitted.get(r.id, end)
        if a > r.sent:
            iv[r.client].append((r.sent, a))
    out = {}
    for c, xs in iv.items():
        xs.sort()
        merged: list[list[float]] = []
        for s, e in xs:
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        out[c] = [(float(s), float(e)) for s, e in merged]
    return out


def max_service_gap_live(
    times: np.ndarray, clients: tuple[str, ...], cum: np.ndarray, backlog: dict[str, list[tuple[float, float]]]
) -> dict[str, Any]:
    """``max |W_f(t1,t2) - W_g(t1,t2)|`` over client pairs both backlogged on ``[t1, t2)``:
    ``value`` (cost units), ``pair`` (the one served more first), ``interval``."""
    best: dict[str, Any] = {"value": 0.0, "pair": None, "interval": None}
    ext = np.vstack([np.zeros((1, len(clients))), cum]) if len(clients) else np.zeros((1, 0))

    def col_at(t: float) -> int:  # row of ext holding W after every pass with time <= t
        return int(np.searchsorted(times, t, side="right"))

    for i, f in enumerate(clients):
        for j in range(i + 1, len(clients)):
            g = clients[j]
            for s1, e1 in backlog.get(f, []):
                for s2, e2 in backlog.get(g, []):
                    s, e = max(s1, s2), min(e1, e2)
                    if e <= s:
                        continue
                    lo, hi = col_at(s), col_at(e)
                    d = ext[lo : hi + 1, i] - ext[lo : hi + 1, j]
                    val = float(d.max() - d.min())
                    if val > best["value"]:
                        a, b = int(np.argmin(d)), int(np.argmax(d))
                        j1, j2 = min(a, b), max(a, b)

                        def t_of(x: int, lo: int = lo, s: float = s) -> float:
                            return s if x == 0 else float(times[lo + x - 1])

                        more_f = d[j2] > d[j1]
                        best = {"value": val, "pair": (f, g) if more_f else (g, f), "interval": (t_of(j1), t_of(j2))}
    return best


def bound_for(spec: str | None, instance: Instance) -> dict[str, Any] | None:
    """The fairness bound the policy ``spec`` claims on ``instance`` (module docstring), or None."""
    from prefixsched.reference.policies import create
    from prefixsched.theory import bounds

    if not spec:
        return None
    try:
        pol = create(spec)
    except Exception:  # noqa: BLE001 - not a prefixsched policy (e.g. SGLang's own)
        return None
    w = instance.weights
    L = bounds.max_input_tokens(instance)
    if pol.name == "vtc":
        M = bounds.kv_batch_tokens(instance)
        return {
            "theorem": "VTC two-backlogged bound 2*max(w_e*L_input, w_q*M) (Sheng et al. OSDI'24)",
            "value": bounds.vtc_two_backlogged_bound(L, M, w.w_e, w.w_q),
            "view": "client",
            "L_input": L,
            "M": M,
        }
    if pol.name == "dlpm":
        M = bounds.batch_output_capacity(instance)
        U = bounds.dlpm_U(L, M, w.w_e, w.w_q)
        q = float(pol.params()["quantum"])
        return {
            "theorem": "DLPM Thm 4.1 2*(U + Q_u) (Cao et al. arXiv:2501.14312)",
            "value": bounds.dlpm_thm_4_1(q, U),
            "view": "actual",
            "L_input": L,
            "M": M,
            "U": U,
            "Q_u": q,
        }
    return None


def _engines() -> tuple[str, ...]:
    from prefixsched.reference import simulator

    params = inspect.signature(simulator.simulate).parameters
    if "engine" not in params:
        return ()
    return tuple(getattr(simulator, "ENGINES", ("sglang",)))


def simulate_like(
    instance: Instance, spec: str, cost_model: CostModel, *, time_scale: float = 1.0, limits: Limits | None = None
) -> tuple[Any, str]:
    """Simulate ``spec`` on ``instance`` with arrivals times ``time_scale``, ``cost_model`` and
    ``limits``; returns ``(trace, engine)`` (``engine`` = ``"sglang"`` if the simulator has it,
    else ``"default"``)."""
    from prefixsched.reference.policies import create
    from prefixsched.reference.simulator import simulate

    reqs = tuple(replace(r, arrival=r.arrival * time_scale) for r in instance.requests)
    inst = Instance(reqs, cost_model=cost_model, limits=limits or instance.limits, weights=instance.weights)
    if "sglang" in _engines():
        return simulate(inst, create(spec), engine="sglang"), "sglang"  # type: ignore[call-arg]
    return simulate(inst, create(spec)), "default"


def latency_comparison(run: LiveRun, trace: Any) -> dict[str, Any]:
    """Measured vs simulated TTFT (P50, P99) and output throughput, on the requests that finished
    live. ``error`` = (simulated - measured) / measured."""
    ok = {r.id: r for r in run.ok()}
    sim = {r.id: r for r in trace.requests}
    ids = [i for i in ok if i in sim]
    out: dict[str, Any] = {"requests": len(ids)}
    if not ids:
        return out
    m = np.array([ok[i].ttft for i in ids], dtype=float)
    s = np.array([sim[i].first_token - sim[i].arrival for i in ids], dtype=float)
    for q in (50, 99):
        mv, sv = float(np.percentile(m, q)), float(np.percentile(s, q))
        out[f"ttft_p{q}_s"] = {"measured": mv, "simulated": sv, "error": (sv - mv) / mv if mv > 0 else None}
    mt = sum(ok[i].output_tokens for i in ids)
    span_m = max(ok[i].finish for i in ids) - min(ok[i].sent for i in ids)
    st = sum(sim[i].output_len for i in ids)
    span_s = max(sim[i].finish for i in ids) - min(sim[i].arrival for i in ids)
    tm = mt / span_m if span_m > 0 else None
    ts = st / span_s if span_s > 0 else None
    out["output_throughput_tok_s"] = {
        "measured": tm,
        "simulated": ts,
        "error": (ts - tm) / tm if tm and ts is not None else None,
    }
    return out
