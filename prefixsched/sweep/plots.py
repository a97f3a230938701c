"""Plot helpers for sweep tables (matplotlib, Agg): Pareto frontiers, a metric against a
parameter, per-worker load. Each takes the rows of :meth:`SweepResult.rows` (or of a table read
back from CSV/Parquet as a list of dicts) and returns a matplotlib Figure; nothing is shown.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

__all__ = ["pareto_front", "plot_pareto", "plot_metric", "plot_worker_load", "save_png"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(rows: Sequence[dict[str, Any]], *cols: str) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status", "ok") == "ok" and all(r.get(c) is not None for c in cols)]


def pareto_front(rows: Sequence[dict[str, Any]], x: str, y: str) -> list[dict[str, Any]]:
    """The rows not dominated in (``x``, ``y``), both maximised, sorted by ``x``: a row is
    dominated if another has ``x`` and ``y`` at least as large and one strictly larger."""
    pts = _ok(rows, x, y)
    front = [
        r for r in pts
        if not any(o[x] >= r[x] and o[y] >= r[y] and (o[x] > r[x] or o[y] > r[y]) for o in pts)
    ]
    return sorted(front, key=lambda r: (r[x], r[y]))


def _groups(rows: Sequence[dict[str, Any]], by: str | None) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r.get(by) if by else "all", []).append(r)
    return out


def plot_pareto(rows: Sequence[dict[str, Any]], x: str = "service_rate_client", y: str = "jain",
                by: str | None = "policy", label: str | None = None, title: str | None = None):
    """Scatter of ``y`` against ``x`` per group ``by`` with the Pareto front (both maximised) as
    a line; points annotated with column ``label`` if given."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for j, (g, rs) in enumerate(_groups(_ok(rows, x, y), by).items()):
        ax.plot([r[x] for r in rs], [r[y] for r in rs], "o", color=f"C{j % 10}", label=str(g))
        if label:
            for r in rs:
                ax.annotate(str(r.get(label)), (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = pareto_front(rows, x, y)
    if front:
        ax.plot([r[x] for r in front], [r[y] for r in front], "-", color="grey", lw=0.8, label="Pareto front")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_metric(rows: Sequence[dict[str, Any]], param: str, metric: str, by: str | None = "policy",
                logx: bool = False, logy: bool = False, title: str | None = None):
    """``metric`` against ``param``, one line per group ``by`` (points sorted by ``param``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for j, (g, rs) in enumerate(_groups(_ok(rows, param, metric), by).items()):
        rs = sorted(rs, key=lambda r: r[param])
        ax.plot([r[param] for r in rs], [r[metric] for r in rs], "o-", ms=3, color=f"C{j % 10}", label=str(g))
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_worker_load(rows: Sequence[dict[str, Any]], label: str = "dispatch", title: str | None = None):
    """Requests per worker (``requests_per_worker``, JSON text or a list) of every cluster row, one
    group of bars per row labelled by column ``label``."""
    plt = _plt()
    rs = _ok(rows, "requests_per_worker")
    loads = [json.loads(r["requests_per_worker"]) if isinstance(r["requests_per_worker"], str) else list(r["requests_per_worker"]) for r in rs]
    D = max((len(x) for x in loads), default=1)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(rs) * (D ** 0.5) + 2), 3.6))
    width = 0.8 / D
    for w in range(D):
        ax.bar([i + (w - (D - 1) / 2) * width for i in range(len(rs))], [x[w] if w < len(x) else 0 for x in loads],
               width=width, color=f"C{w % 10}", label=f"worker {w}")
    ax.set_xticks(range(len(rs)))
    ax.set_xticklabels([str(r.get(label)) for r in rs], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("requests")
    if title:
        ax.set_title(title, fontsize=9)
    if D <= 8:
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def save_png(fig: Any, path: Any, dpi: int = 90) -> None:
    """Save ``fig`` atomically as PNG without the matplotlib version in the metadata (same
    figure, same bytes)."""
    import io

    from prefixsched._io import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())
    _plt().close(fig)
