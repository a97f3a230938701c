"""DLPM's distributed and mixed-application evaluation as sweeps (Cao et al.,
arXiv:2501.14312v1, Fig. 7, Fig. 10, Fig. 12; dlpm.md §5), run by ``papers/dlpm/reproduce.py``
(``prefixsched reproduce dlpm [--quick] [--only fig7 fig10 fig12] [--ray ...]``).

Setups (decisions where the paper is silent, dlpm.md §8.14):

``fig7``  Each of the six misbehaving-client workloads ``dlpm-{tot,judge,lcqa}-{s1,s2}`` (8
    clients, c0 misbehaving; :mod:`prefixsched.reference.workloads_dlpm`) on D in {1, 2, 4, 8}
    workers, with the four systems of the paper: D²LPM (local ``dlpm``, Q_u = 8000, dispatch
    ``d2lpm``, Q_w = 16000), RR+LPM (``lpm`` + ``round-robin``), VTC (``vtc`` +
    ``client-round-robin``) and Preble (``lpm`` + the simplified ``preble`` dispatcher; omitted at
    D = 1 as in the paper). "The rate grows with the number of GPUs": the same requests arrive D
    times faster (sweep ``load = D``). Metrics per cell: service throughput = client-view service
    (1 x input + 2 x output) per second over the span; Jain's index of client-view service rates
    over the window in which all clients are active (column :data:`JAIN_COLUMN`); P99 latency of
    the well-behaved clients (c1..c7): per-program completion time for ToT and judge, TTFT for
    long-context QA, as the paper.
``fig10`` ToT on D = 4 (load 4): D²LPM with Q_w in {2000, 5000, 10000, 20000, 40000} against
    RR+LPM, Preble and VTC, (a) with the misbehaving client (``dlpm-tot-s1``) and (b) all
    well-behaved (``dlpm-tot-s1`` with ``variant = "none"``).
``fig12`` The mixed applications (``dlpm-mixed``: judge, 2x multi-turn, ToT clients) on one
    worker: LPM, DLPM (Q_u = 8000) and VTC; the metric is the completion time of the whole
    workload (span: first arrival to last finish).

Every trace is replayed by the checker (sweep cells' default). ``--quick``: D in {1, 4}, 700
requests per workload, three Q_w values, a 20 s mixed window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefixsched._io import write_json
from prefixsched.reproduce import pinned  # the setup of the committed results
from prefixsched.sweep import run

#: The Jain column used everywhere below; switch to the windowed Jain here once
#: ``theory.metrics`` has it (issue #12: "name the column so it can be switched later").
JAIN_COLUMN = "jain"

Q_U = 8000
Q_W = 16000
SYSTEMS = [
    {"label": "D2LPM", "policy": "dlpm", "policy_params": {"quantum": Q_U}, "dispatch": "d2lpm", "dispatch_params": {"q_w": Q_W}},
    {"label": "RR+LPM", "policy": "lpm", "dispatch": "round-robin"},
    {"label": "VTC", "policy": "vtc", "dispatch": "client-round-robin"},
    {"label": "Preble", "policy": "lpm", "dispatch": "preble"},
]
FAMILIES = ("tot", "judge", "lcqa")


def _latency_col(workload: str) -> str:
    return "well_behaved.ttft_p99" if "lcqa" in workload else "well_behaved.program_p99"


def _row(r: dict[str, Any]) -> dict[str, Any]:
    wl = r["workload"]
    return {
        "workload": wl, "system": r.get("system"), "workers": r.get("workers"), "q_w": r.get("dispatch_params.q_w"),
        "status": r["status"], "error": r["error"], "n_requests": r.get("metric.n_requests"),
        "service_rate": r.get("service_rate_client"), "jain": r.get(JAIN_COLUMN), "hit_rate": r.get("hit_rate"),
        "p99_latency_well_behaved": r.get(_latency_col(wl)), "latency_metric": _latency_col(wl).split(".")[1],
        "span_s": r.get("span_s"), "requests_per_worker": r.get("requests_per_worker"),
    }


def _best_ratio(rows: list[dict[str, Any]], num: str, den: str, col: str, invert: bool = False) -> dict[str, Any]:
    """max over (workload, D) of rows[num][col] / rows[den][col] (or den/num if invert)."""
    by = {(r["workload"], r["workers"], r["system"]): r for r in rows if r["status"] == "ok"}
    best: dict[str, Any] = {"ratio": None}
    for (wl, D, sys_), r in by.items():
        if sys_ != num or (wl, D, den) not in by:
            continue
        a, b = r[col], by[(wl, D, den)][col]
        if a is None or b is None or a <= 0 or b <= 0:
            continue
        x = b / a if invert else a / b
        if best["ratio"] is None or x > best["ratio"]:
            best = {"ratio": x, "workload": wl, "workers": D}
    return best


def fig7(quick: bool, seed: int, backend: dict[str, Any]) -> dict[str, Any]:
    Ds = [1, 4] if quick else [1, 2, 4, 8]
    cells = []
    for fam in FAMILIES:
        for v in ("s1", "s2"):
            wl = f"dlpm-{fam}-{v}"
            for D in Ds:
                for s in SYSTEMS:
                    if s["label"] == "Preble" and D == 1:
                        continue
                    sysd = {k: v2 for k, v2 in s.items() if k != "label"}
                    cells.append({"workload": wl, "seed": seed, "workers": D, "load": D, "probes": ["well_behaved"],
                                  **({"n_requests": 700} if quick else {}), **sysd, "tags": {"system": s["label"]}})
    res = run(pinned(cells), name="dlpm-fig7", **backend)
    rows = [_row(r) for r in res.rows()]
    claims = {
        "max_throughput_d2lpm_over_vtc": _best_ratio(rows, "D2LPM", "VTC", "service_rate"),
        "max_throughput_d2lpm_over_rr_lpm": _best_ratio(rows, "D2LPM", "RR+LPM", "service_rate"),
        "max_latency_preble_over_d2lpm": _best_ratio(rows, "D2LPM", "Preble", "p99_latency_well_behaved", invert=True),
        "max_latency_rr_lpm_over_d2lpm": _best_ratio(rows, "D2LPM", "RR+LPM", "p99_latency_well_behaved", invert=True),
        "max_latency_vtc_over_d2lpm": _best_ratio(rows, "D2LPM", "VTC", "p99_latency_well_behaved", invert=True),
    }
    ok = [r for r in rows if r["status"] == "ok"]
    for sys_ in ("D2LPM", "RR+LPM", "VTC", "Preble"):
        js = [r["jain"] for r in ok if r["system"] == sys_ and r["jain"] is not None]
        claims[f"jain_range_{sys_}"] = [min(js), max(js)] if js else None
    return {"workers": Ds, "q_u": Q_U, "q_w": Q_W, "jain_column": JAIN_COLUMN, "rows": rows, "claims": claims,
            "failures": len(res.failures)}


def fig10(quick: bool, seed: int, backend: dict[str, Any]) -> dict[str, Any]:
    qws = [2000, 10000, 40000] if quick else [2000, 5000, 10000, 20000, 40000]
    cells = []
    for panel, variant in (("a", "s1"), ("b", "none")):
        base = {"workload": "dlpm-tot-s1", "workload_params": {"variant": variant}, "seed": seed, "workers": 4, "load": 4,
                "probes": ["well_behaved"], **({"n_requests": 700} if quick else {})}
        for q in qws:
            cells.append({**base, "policy": "dlpm", "policy_params": {"quantum": Q_U}, "dispatch": "d2lpm",
                          "dispatch_params": {"q_w": q}, "tags": {"system": "D2LPM", "panel": panel}})
        for s in SYSTEMS[1:]:
            sysd = {k: v for k, v in s.items() if k != "label"}
            cells.append({**base, **sysd, "tags": {"system": s["label"], "panel": panel}})
    res = run(pinned(cells), name="dlpm-fig10", **backend)
    rows = []
    for r in res.rows():
        rows.append({**_row(r), "panel": r.get("panel")})
    claims: dict[str, Any] = {}
    for panel in ("a", "b"):
        d = sorted((r for r in rows if r["panel"] == panel and r["system"] == "D2LPM" and r["status"] == "ok"), key=lambda r: r["q_w"])
        base = {r["system"]: r for r in rows if r["panel"] == panel and r["system"] != "D2LPM" and r["status"] == "ok"}
        if d:
            claims[panel] = {
                "throughput_max_qw_over_min_qw": d[-1]["service_rate"] / d[0]["service_rate"],
                "jain_min_qw": d[0]["jain"], "jain_max_qw": d[-1]["jain"],
                **{f"d2lpm_max_qw_over_{k}": d[-1]["service_rate"] / v["service_rate"] for k, v in base.items()},
            }
    return {"q_w": qws, "workers": 4, "rows": rows, "claims": claims, "failures": len(res.failures)}


def fig12(quick: bool, seed: int, backend: dict[str, Any]) -> dict[str, Any]:
    base = {"workload": "dlpm-mixed", "clients": 4, "seed": seed, "workload_params": {"duration_s": 20.0 if quick else 60.0}}
    cells = [
        {**base, "policy": "lpm", "tags": {"system": "LPM"}},
        {**base, "policy": "dlpm", "policy_params": {"quantum": Q_U}, "tags": {"system": "DLPM"}},
        {**base, "policy": "vtc", "tags": {"system": "VTC"}},
    ]
    res = run(pinned(cells), name="dlpm-fig12", **backend)
    rows = [{"system": r.get("system"), "status": r["status"], "error": r["error"], "n_requests": r.get("metric.n_requests"),
             "completion_s": r.get("span_s"), "hit_rate": r.get("hit_rate"), "jain": r.get(JAIN_COLUMN),
             "jain_actual": r.get("jain_actual"), "service_rate": r.get("service_rate_client")} for r in res.rows()]
    by = {r["system"]: r for r in rows if r["status"] == "ok"}
    claims = {}
    if {"LPM", "DLPM", "VTC"} <= set(by):
        claims = {
            "lpm_over_dlpm_completion": by["LPM"]["completion_s"] / by["DLPM"]["completion_s"],
            "vtc_over_dlpm_completion": by["VTC"]["completion_s"] / by["DLPM"]["completion_s"],
            "dlpm_fastest": by["DLPM"]["completion_s"] <= min(by["LPM"]["completion_s"], by["VTC"]["completion_s"]),
        }
    return {"rows": rows, "claims": claims, "failures": len(res.failures)}


def _plot(res: dict[str, Any], out: Path) -> None:
    from prefixsched.sweep.plots import _plt, save_png

    plt = _plt()
    if "fig7" in res:
        rows = [r for r in res["fig7"]["rows"] if r["status"] == "ok"]
        wls = list(dict.fromkeys(r["workload"] for r in rows))
        fig, axes = plt.subplots(3, len(wls), figsize=(3.0 * len(wls), 7.5), squeeze=False)
        for j, wl in enumerate(wls):
            for i, (col, lab) in enumerate((("service_rate", "service (k/s)"), ("jain", "Jain"), ("p99_latency_well_behaved", "P99 well-behaved (s)"))):
                ax = axes[i][j]
                for k, s in enumerate(("D2LPM", "RR+LPM", "VTC", "Preble")):
                    pts = sorted((r["workers"], r[col]) for r in rows if r["workload"] == wl and r["system"] == s and r[col] is not None)
                    if pts:
                        ys = [y / 1e3 for _, y in pts] if col == "service_rate" else [y for _, y in pts]
                        ax.plot([x for x, _ in pts], ys, "o-", ms=3, color=f"C{k}", label=s)
                ax.set_xscale("log", base=2)
                if i == 0:
                    ax.set_title(wl.replace("dlpm-", ""), fontsize=9)
                if j == 0:
                    ax.set_ylabel(lab, fontsize=8)
                if i == 2:
                    ax.set_xlabel("workers D", fontsize=8)
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        save_png(fig, out / "fig7.png")
    if "fig10" in res:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for ax, panel in zip(axes, ("a", "b")):
            rows = [r for r in res["fig10"]["rows"] if r["panel"] == panel and r["status"] == "ok"]
            d = sorted((r["q_w"], r["service_rate"] / 1e3) for r in rows if r["system"] == "D2LPM")
            ax.plot(*zip(*d), "o-", color="C0", label="D2LPM")
            for k, s in ((1, "RR+LPM"), (2, "VTC"), (3, "Preble")):
                v = [r["service_rate"] / 1e3 for r in rows if r["system"] == s]
                if v:
                    ax.axhline(v[0], color=f"C{k}", ls="--", label=s)
            ax.set_xlabel("Q_w (cost units)")
            ax.set_ylabel("service (k/s)")
            ax.set_title(f"Fig. 10{panel}: ToT, D = 4, {'misbehaving c0' if panel == 'a' else 'all well-behaved'}", fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        save_png(fig, out / "fig10.png")


def run_all(which: list[str], quick: bool, seed: int, backend: dict[str, Any], out: Path) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for name, fn in (("fig7", fig7), ("fig10", fig10), ("fig12", fig12)):
        if name in which:
            res[name] = fn(quick, seed, backend)
            write_json(out / f"{name}.json", {"paper": "Cao et al., arXiv:2501.14312v1", "quick": quick, "seed": seed, **res[name]})
            print(f"{name}: {len(res[name]['rows'])} cells, {res[name]['failures']} failed; claims: {res[name]['claims']}")
    _plot(res, out)
    return res
