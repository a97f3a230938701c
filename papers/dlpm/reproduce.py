"""Reproduce DLPM's single-GPU evaluation (Cao et al., arXiv:2501.14312v1, Fig. 1 and Fig. 11;
spec ``shared/specs/dlpm.md`` §5) on prefixsched's simulator.

Usage (from the repository root)::

    prefixsched reproduce dlpm [--quick] [--ray | --ray-address ADDR] [--jobs N]
    python papers/dlpm/reproduce.py [--quick] [--only fig1 fig7 fig10 fig12]

``fig1`` (Fig. 1 and Fig. 11, below; ~1 min, ``--quick`` a few seconds) runs here; Fig. 7, Fig. 10
and Fig. 12 run as cached sweeps (``papers/dlpm/distributed.py``; ``--quick`` about a minute or
two on 2 cores) and write ``fig7.json``, ``fig10.json``, ``fig12.json``, ``fig7.png``,
``fig10.png``.

Experiments
-----------
``fig1``  Jain's index vs service rate for LPM, VTC and DLPM with ``Q_u`` in
    {1000, 2000, 4000, 8000, 16000, 32000} (+ FCFS, and ``Q_u`` = 128000 as an extra point towards
    LPM). Workload: ``make_workload("default", conv_rate=2.0, duration_s=45)`` (8 clients, c0 sends
    3.5x; every client asks for more than its fair share, so all are backlogged, the setting in
    which an equal split is the fair one) on an A10-class KV pool of 60,000 tokens (the paper's
    Fig. 1 runs on one A10; 24 GB less the weights leaves tens of thousands of KV tokens), so that
    admission order decides what stays cached. Also run on the first 3,000 requests of the
    Mooncake conversation trace when ``../shared/data/mooncake/conversation_trace.jsonl`` exists
    (8 clients by conversation family, default limits), and, as a control, on the unmodified
    ``default`` workload (480k-token pool, moderate overload).
``fig11`` Service rate of LPM, DLPM (``Q_u`` = 8000, the policy default) and VTC with 5 / 10 / 50
    clients at a fixed total conversation rate (the ``fig1`` total: 2.0 x (7 + 3.5) = 21
    conversations/s).

Metrics (``prefixsched.theory.metrics``): Jain's index of per-client service rates over the window
in which all clients are active (client view: 1 x input + 2 x output, as the paper's figures); the
service rate is the client-view service of all requests divided by the span (first arrival to last
finish), in cost units per second; the prefix hit rate; the largest service gap between two
backlogged clients (actual view, what DLPM's Thm 4.1 bounds), checked against Thm 4.1's
``2(U + Q_u)`` with :func:`prefixsched.theory.bounds.check_dlpm_thm_4_1`. Every trace is replayed
by :func:`prefixsched.theory.schedule.check_trace` before its numbers are used.

Outputs (written atomically): ``<out>/fig1_fig11.json`` (every number, plus ``claims`` with the
booleans computed from them) and ``<out>/fig1_fig11.png``. Deterministic: same arguments, same
bytes (no wall clock in the outputs).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

from prefixsched._io import atomic_write, write_json
from prefixsched.reproduce import pinned  # the setup of the committed results
from prefixsched.sweep import run
from prefixsched.sweep.cli import add_backend_arguments, backend_kwargs, default_cache_dir

REPO = Path(__file__).resolve().parents[2]
TRACE = REPO.parent / "shared" / "data" / "mooncake" / "conversation_trace.jsonl"
QUANTA = (1000, 2000, 4000, 8000, 16000, 32000)
EXTRA_QUANTA = (128000,)
KV_A10 = 60_000
CONV_RATE = 2.0
HEAVY = 3.5


def _spec(policy: str, quantum: float | None) -> dict[str, Any]:
    return {"policy": policy, "quantum": quantum}


def cell(src: dict[str, Any], policy: str, quantum: float | None, seed: int) -> dict[str, Any]:
    """The sweep cell of one run: input ``src`` (workload or trace keys), the policy, and the
    bound scan of the policy's theorem as a probe (DLPM Thm 4.1, VTC's 2U)."""
    c: dict[str, Any] = {**src, "seed": seed, "policy": policy}
    if quantum is not None:
        c["policy_params"] = {"quantum": float(quantum)}
    if policy == "dlpm":
        c["probes"] = ["dlpm_thm_4_1"]
    if policy == "vtc":
        c["probes"] = ["vtc_2U"]
    return c


def row_of(record: dict[str, Any]) -> dict[str, Any]:
    """The table row of one sweep record. Every trace was replayed by the checker in its cell
    (strict: a violation fails the cell), so ``checker_ok`` is a fact, not an assumption."""
    c, res = record["cell"], record["result"]
    s = res["summary"]
    policy = c["policy"]
    quantum = (c.get("policy_params") or {}).get("quantum")
    row = {
        **_spec(policy, quantum),
        "label": policy if quantum is None else f"dlpm Q_u={int(quantum)}",
        "checker_ok": True,
        "n_requests": s["n_requests"],
        "span_s": s["span_s"],
        "service_rate": res["derived"]["service_rate_client"],
        "tokens_per_s": s["tokens_per_s"],
        "hit_rate": s["hit_rate"],
        "jain": s["jain"],
        "jain_actual": s["jain_actual"],
        "jain_window": s["jain_window"],
        "ttft_p50": s["ttft_p50"],
        "ttft_p99": s["ttft_p99"],
        "max_service_gap_actual": s["max_service_gap"]["value"],
    }
    if policy == "dlpm":
        b = res["probes"]["dlpm_thm_4_1"]
        row["thm_4_1"] = {"worst": b["worst"], "bound": b["bound"], "holds": b["holds"]}
    if policy == "vtc":
        b = res["probes"]["vtc_2U"]
        row["vtc_2U"] = {"worst": b["worst"], "bound": b["bound"], "holds": b["holds"]}
    return row


def sweep_cells(src: dict[str, Any], quanta: tuple[float, ...], seed: int, extra: tuple[str, ...] = ("fcfs",)) -> list[dict[str, Any]]:
    cells = [cell(src, "lpm", None, seed), cell(src, "vtc", None, seed)]
    cells += [cell(src, p, None, seed) for p in extra]
    cells += [cell(src, "dlpm", float(q), seed) for q in quanta]
    return cells


def frontier_claims(rows: list[dict[str, Any]], paper_quanta: tuple[float, ...]) -> dict[str, Any]:
    """Booleans of the Fig. 1 claim, computed from the measured rows."""
    by = {r["label"]: r for r in rows}
    lpm, vtc = by["lpm"], by["vtc"]
    dl = [r for r in rows if r["policy"] == "dlpm" and r["quantum"] in paper_quanta]
    between = [r["jain"] > lpm["jain"] and r["service_rate"] > vtc["service_rate"] for r in dl]
    undominated = [
        not any(o["jain"] >= r["jain"] and o["service_rate"] >= r["service_rate"] for o in (lpm, vtc)) for r in dl
    ]
    lo, hi = dl[0], dl[-1]
    return {
        "lpm_faster_than_vtc": lpm["service_rate"] > vtc["service_rate"],
        "vtc_fairer_than_lpm": vtc["jain"] > lpm["jain"],
        "dlpm_between_vtc_and_lpm_all_Qu": all(between),
        "dlpm_not_dominated_by_lpm_or_vtc_all_Qu": all(undominated),
        "service_rate_rises_with_Qu": hi["service_rate"] > lo["service_rate"],
        "jain_falls_with_Qu": hi["jain"] < lo["jain"],
        "gap_grows_with_Qu": hi["max_service_gap_actual"] > lo["max_service_gap_actual"],
        "thm_4_1_holds_all_Qu": all(r["thm_4_1"]["holds"] for r in dl),
        "claim_holds": all(between) and all(undominated),
    }


def fig11_cells(seed: int, quick: bool) -> tuple[list[dict[str, Any]], list[tuple[int, float]], float]:
    total = CONV_RATE * (7 + HEAVY)
    counts = (5, 10) if quick else (5, 10, 50)
    dur = 8.0 if quick else 30.0
    cells, meta = [], []
    for n in counts:
        rate = total / (n - 1 + HEAVY)
        src = {"workload": "default", "clients": n, "workload_params": {"conv_rate": rate, "duration_s": dur}, "limits": {"page_size": 32, "kv_capacity_tokens": KV_A10}}
        for pol, q in (("lpm", None), ("dlpm", 8000.0), ("vtc", None)):
            cells.append(cell(src, pol, q, seed))
            meta.append((n, rate))
    return cells, meta, dur


def fig11(records: list[dict[str, Any]], meta: list[tuple[int, float]], dur: float) -> dict[str, Any]:
    total = CONV_RATE * (7 + HEAVY)
    out: dict[str, Any] = {"total_conv_rate": total, "duration_s": dur, "kv_capacity_tokens": KV_A10, "rows": []}
    for rec, (n, rate) in zip(records, meta):
        out["rows"].append({"clients": n, "conv_rate_per_client": rate, **row_of(rec)})
    counts = list(dict.fromkeys(n for n, _ in meta))
    by = {(r["clients"], r["policy"]): r["service_rate"] for r in out["rows"]}
    order_ok = [by[(n, "lpm")] >= by[(n, "dlpm")] > by[(n, "vtc")] for n in counts]
    close = [by[(n, "dlpm")] >= 0.9 * by[(n, "lpm")] for n in counts]
    out["claims"] = {
        "lpm_ge_dlpm_gt_vtc_each_n": all(order_ok),
        "dlpm_within_10pct_of_lpm_each_n": all(close),
        "lpm_service_falls_with_more_clients": by[(counts[-1], "lpm")] < by[(counts[0], "lpm")],
        "claim_holds": all(order_ok),
    }
    return out


def _plot(res: dict[str, Any]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("default_a10", "mooncake") if k in res["fig1"]]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.6 * (len(panels) + 1), 3.8))
    for ax, key in zip(axes, panels):
        rows = res["fig1"][key]["rows"]
        dl = [r for r in rows if r["policy"] == "dlpm"]
        ax.plot([r["service_rate"] / 1e3 for r in dl], [r["jain"] for r in dl], "o-", color="C2", label="DLPM")
        for r in dl:
            ax.annotate(f"{int(r['quantum']) // 1000}k", (r["service_rate"] / 1e3, r["jain"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        for r, c in ((next(x for x in rows if x["policy"] == p), col) for p, col in (("lpm", "C0"), ("vtc", "C1"), ("fcfs", "C7"))
                     if any(x["policy"] == p for x in rows)):
            ax.plot(r["service_rate"] / 1e3, r["jain"], "s", color=c, label=r["policy"].upper())
        ax.set_xlabel("service rate (k cost units/s, client view)")
        ax.set_ylabel("Jain's index (all-active window)")
        ax.set_title(res["fig1"][key]["title"], fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[-1]
    rows = res["fig11"]["rows"]
    ns = sorted({r["clients"] for r in rows})
    for j, (pol, col) in enumerate((("lpm", "C0"), ("dlpm", "C2"), ("vtc", "C1"))):
        vals = [next(r["service_rate"] for r in rows if r["clients"] == n and r["policy"] == pol) / 1e3 for n in ns]
        ax.bar([i + 0.27 * (j - 1) for i in range(len(ns))], vals, width=0.27, color=col, label=pol.upper())
    ax.set_xticks(range(len(ns)))
    ax.set_xticklabels([f"{n} clients" for n in ns])
    ax.set_ylabel("service rate (k cost units/s)")
    ax.set_title("Fig. 11 analogue: total rate fixed", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _table(rows: list[dict[str, Any]]) -> str:
    head = f"{'policy':<18}{'Jain':>7}{'Jain(act)':>10}{'service/s':>11}{'hit':>6}{'P99 TTFT':>10}{'max gap':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['label']:<18}{r['jain']:>7.3f}{r['jain_actual']:>10.3f}{r['service_rate']:>11.0f}"
            f"{r['hit_rate']:>6.2f}{r['ttft_p99']:>10.1f}{r['max_service_gap_actual']:>10.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced form (few seconds)")
    ap.add_argument("--out", default=str(REPO / "papers" / "dlpm" / "results"), help="output directory")
    ap.add_argument("--seed", type=int, default=0, help="workload seed")
    ap.add_argument("--trace", default=str(TRACE), help="Mooncake JSONL (skipped if absent)")
    ap.add_argument("--only", nargs="+", choices=["fig1", "fig7", "fig10", "fig12"], default=["fig1", "fig7", "fig10", "fig12"],
                    help="experiments to run (default: all; fig1 also runs fig11)")
    add_backend_arguments(ap, cache_default="$PREFIXSCHED_CACHE or ~/.cache/prefixsched/sweep")
    args = ap.parse_args(argv)
    quick = args.quick
    rest = [x for x in args.only if x != "fig1"]
    if rest:  # Fig. 7 / 10 / 12: sweeps (papers/dlpm/distributed.py)
        import importlib.util

        spec = importlib.util.spec_from_file_location("_dlpm_distributed", Path(__file__).with_name("distributed.py"))
        dist = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(dist)
        dist.run_all(rest, quick, args.seed, backend_kwargs(args, default_cache_dir()), Path(args.out))
    if "fig1" not in args.only:
        return 0
    res: dict[str, Any] = {
        "paper": "Cao et al., Locality-aware Fair Scheduling in LLM Serving, arXiv:2501.14312v1",
        "quick": quick,
        "seed": args.seed,
        "fig1": {},
    }
    dur = 8.0 if quick else 45.0
    a10 = {"workload": "default", "workload_params": {"conv_rate": CONV_RATE, "duration_s": dur},
           "limits": {"page_size": 32, "kv_capacity_tokens": KV_A10}}
    quanta = QUANTA if quick is False else (1000, 32000)
    paper_q = tuple(float(q) for q in quanta)
    sections: list[tuple[str, list[dict[str, Any]]]] = [("default_a10", sweep_cells(a10, quanta + (() if quick else EXTRA_QUANTA), args.seed))]
    if not quick:
        ctrl = {"workload": "default"}
        sections.append(("default_unmodified", [cell(ctrl, p, q, args.seed) for p, q in (("lpm", None), ("vtc", None), ("dlpm", 8000.0))]))
    tpath = Path(args.trace)
    n_moon = 300 if quick else 3000
    if tpath.is_file():
        sections.append(("mooncake", sweep_cells({"trace": str(tpath), "clients": 8, "max_requests": n_moon}, quanta, args.seed)))
    c11, meta11, dur11 = fig11_cells(args.seed, quick)
    sections.append(("fig11", c11))
    allcells = [c for _, cs in sections for c in cs]
    sw = run(pinned(allcells), name="dlpm-fig1-fig11", **backend_kwargs(args, default_cache_dir()))
    if sw.failures:
        raise SystemExit(f"dlpm reproduction: {len(sw.failures)} cell(s) failed: {sw.failures[0]['error']}")
    recs: dict[str, list[dict[str, Any]]] = {}
    i = 0
    for name, cs in sections:
        recs[name] = sw.records[i : i + len(cs)]
        i += len(cs)
    rows = [row_of(r) for r in recs["default_a10"]]
    res["fig1"]["default_a10"] = {
        "title": f"default workload, conv_rate {CONV_RATE}/s, {dur:g} s, KV {KV_A10 // 1000}k",
        "workload": {"name": "default", "conv_rate": CONV_RATE, "duration_s": dur, "kv_capacity_tokens": KV_A10},
        "rows": rows,
        "claims": frontier_claims(rows, paper_q),
    }
    print(f"Fig. 1 analogue, default workload ({rows[0]['n_requests']} requests, KV {KV_A10} tokens)")
    print(_table(rows))
    if not quick:
        crow = [row_of(r) for r in recs["default_unmodified"]]
        res["fig1"]["default_unmodified"] = {
            "title": "control: default workload as generated (480k KV, moderate overload)",
            "rows": crow,
        }
        print("\nControl: unmodified default workload")
        print(_table(crow))
    if "mooncake" in recs:
        mrows = [row_of(r) for r in recs["mooncake"]]
        res["fig1"]["mooncake"] = {
            "title": f"Mooncake first {n_moon} requests, 8 clients (family)",
            "rows": mrows,
            "claims": frontier_claims(mrows, paper_q),
        }
        print(f"\nFig. 1 analogue, Mooncake first {n_moon} requests")
        print(_table(mrows))
    else:
        res["fig1"]["mooncake_skipped"] = f"trace not found at {tpath.name} (../shared/data/mooncake/)"
        print(f"\nMooncake trace not found; skipped ({tpath})")
    res["fig11"] = fig11(recs["fig11"], meta11, dur11)
    print("\nFig. 11 analogue (total rate fixed)")
    for r in res["fig11"]["rows"]:
        print(f"  {r['clients']:>3} clients {r['label']:<16} service {r['service_rate']:>9.0f}/s  hit {r['hit_rate']:.2f}  Jain {r['jain']:.3f}")
    res["claims"] = {
        "fig1_frontier": res["fig1"]["default_a10"]["claims"]["claim_holds"],
        "fig11_order": res["fig11"]["claims"]["claim_holds"],
    }
    print("\nclaims:", res["claims"])
    out = Path(args.out)
    write_json(out / "fig1_fig11.json", res)
    fig = _plot(res)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    with atomic_write(out / "fig1_fig11.png", "wb") as fh:
        fh.write(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
