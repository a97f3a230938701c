"""Figures for the CLI (matplotlib, Agg backend; no screen needed).

Plots only draw what :mod:`prefixsched.theory.metrics` computed; no metric is computed here.
"""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_simulation", "plot_gantt"]


def _natural(name: str) -> tuple:
    """Sort key that puts c2 before c10."""
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def plot_simulation(instance: Any, specs: Sequence[str], traces: Sequence[Any], *, envelope: bool = True):
    """One row per policy: per-client cumulative service (actual, cost units) against time,
    per-client TTFT CDFs (log time axis) and, with ``envelope``, the worst backlogged pair against
    VTC's bound: both clients' client-view service since their common backlogged period began,
    with the band ``W_g +- 2*max(w_e*L_input, w_q*M)`` around one of them (the other must stay in
    it while both are backlogged; :func:`~prefixsched.theory.metrics.gap_bounds`). Returns the
    matplotlib Figure."""
    from prefixsched.theory.metrics import gap_bounds, request_latencies, service_timeline

    clients = sorted(instance.clients, key=_natural)
    cmap = plt.get_cmap("tab10" if len(clients) <= 10 else "tab20")
    colors = {c: cmap(i % cmap.N) for i, c in enumerate(clients)}
    ncol = 3 if envelope else 2
    fig, axes = plt.subplots(len(traces), ncol, figsize=(6 * ncol, 3.2 * len(traces)), squeeze=False)
    for row, (spec, trace) in enumerate(zip(specs, traces)):
        times, tl_clients, cum = service_timeline(trace, instance.weights, view="actual")
        ax = axes[row][0]
        for c in clients:
            j = list(tl_clients).index(c)
            ax.plot(times, cum[:, j], color=colors[c], lw=1.2, label=c)
        ax.set_title(f"{spec}: cumulative service per client")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("W = w_e*extend + w_q*output")
        ax.grid(alpha=0.3)
        lat = request_latencies(trace)
        ttft = np.asarray(lat["ttft"])
        ids_client = np.array([r.client for r in trace.requests])
        ax = axes[row][1]
        for c in clients:
            x = np.sort(ttft[ids_client == c])
            if x.size == 0:
                continue
            y = np.arange(1, x.size + 1) / x.size
            ax.step(np.maximum(x, 1e-4), y, where="post", color=colors[c], lw=1.2, label=c)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded minor labels
        ax.set_title(f"{spec}: TTFT CDF per client")
        ax.set_xlabel("TTFT (s)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        if envelope:
            _envelope_panel(axes[row][2], spec, instance, trace, colors, gap_bounds, service_timeline)
    handles, labels = axes[0][1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 10), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # room for the legend row
    return fig


def _envelope_panel(ax: Any, spec: str, instance: Any, trace: Any, colors: dict, gap_bounds: Any, service_timeline: Any) -> None:
    """Third column of :func:`plot_simulation` (see there)."""
    vtc = gap_bounds(trace, instance)["vtc"]
    ax.set_title(f"{spec}: worst backlogged pair vs VTC bound")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("client-view service since T0")
    ax.grid(alpha=0.3)
    if not vtc["pair"] or not vtc["period"]:
        ax.text(0.5, 0.5, "no two clients backlogged together", ha="center", va="center", transform=ax.transAxes)
        return
    times, tl_clients, cum = service_timeline(trace, instance.weights, view="client")
    t0, t1 = vtc["period"]
    names = list(tl_clients)
    i0 = int(np.searchsorted(times, t0, side="right"))
    i1 = int(np.searchsorted(times, t1, side="right"))
    ts = np.concatenate([[t0], times[i0:i1]])
    f, g = vtc["pair"]
    base = cum[i0 - 1] if i0 > 0 else np.zeros(cum.shape[1])
    seg = np.vstack([base, cum[i0:i1]]) - base
    wf, wg = seg[:, names.index(f)], seg[:, names.index(g)]
    ax.fill_between(ts, wg - vtc["bound"], wg + vtc["bound"], step="post", color=colors.get(g, "grey"), alpha=0.15,
                    label=f"{g} +- bound {vtc['bound']:,.0f}")
    ax.step(ts, wf, where="post", color=colors.get(f, "black"), lw=1.4, label=f"{f} (more service)")
    ax.step(ts, wg, where="post", color=colors.get(g, "grey"), lw=1.4, label=g)
    ax.axvspan(*vtc["interval"], color="red", alpha=0.08, lw=0)
    hi = float(max(wf.max(), wg.max(), 1.0))
    top = min(hi * 1.25, float((wg + vtc["bound"]).max()) * 1.05)
    ax.set_ylim(-0.05 * top, top)  # the band may reach far beyond the curves: keep them readable
    ax.legend(loc="upper left", fontsize=7, frameon=False,
              title=f"gap {vtc['gap']:,.0f} = {vtc['ratio']:.2f} x bound", title_fontsize=7)


def plot_gantt(instance: Any, result: Any, *, model: str):
    """Gantt chart of a sequential schedule (start..completion per request, arrival ticks)."""
    by_id = instance.by_id()
    order = list(result.order)
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(order) + 1.5))
    clients = list(instance.clients)
    cmap = plt.get_cmap("tab10")
    for y, rid in enumerate(order):
        req = by_id[rid]
        start = result.start[rid]
        finish = req.arrival + result.ttft[rid]
        ax.barh(y, finish - start, left=start, color=cmap(clients.index(req.client) % 10), edgecolor="black", lw=0.5)
        ax.plot([req.arrival], [y], marker="|", color="black", ms=12)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels(order)
    ax.invert_yaxis()
    ax.set_xlabel("time (token units)")
    ax.set_title(
        f"{model} model, {result.objective_name}: {result.status.value} objective={result.objective} bound={result.bound}"
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
