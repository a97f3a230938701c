"""Reproduce VTC's two-client overload experiment (Sheng et al., "Fairness in Serving Large
Language Models", OSDI'24, Fig. 3 "overload" suite; spec ``shared/specs/vtc_fastswitch_preble.md``
§A.4-§A.6) on prefixsched's simulator.

Usage (from the repository root)::

    python papers/vtc/reproduce.py            # full run (6 simulated minutes), ~30 s
    python papers/vtc/reproduce.py --quick    # reduced form (60 simulated seconds)

Setup (the artifact's ``overload`` suite, §A.6): two clients with **deterministic, evenly spaced**
arrivals (random phase, seeded) at **1.5 and 3 req/s**, every request 256 prompt tokens (unique,
no prefix sharing) and 256 output tokens, 6 minutes. The server is scaled to the paper's hardware
(Llama-2-7B on one A10G) rather than our default H100 model, so that these rates overload it:

- KV pool 10,000 tokens (the artifact's ``max_total_token_num`` on A10G), prefill budget 3,072
  tokens (``batch_max_tokens``), running requests capped at 1,000 (``_can_add_new_req``); every
  request reserves its full output at admission, as in the artifact, so at most 19 run at once;
- cost model (derived, not measured): prefill ~4.5k tokens/s (``b`` = 2.2e-4 s: 14 GFLOP/token
  at ~50 % of the A10G's 125 TFLOP/s), ``a`` = 10 ms, decode step ``c`` = 25 ms (14 GB of weights
  at 600 GB/s plus overhead), ``d`` = 0.1 ms per request. Capacity is then about 19 requests per
  ~6.9 s, ~2.7 req/s, against 4.5 req/s offered: both clients ask for more than half.

Policies: FCFS, VTC (``create("vtc")``: full-prompt charge, counter lift) and an **RPM** rate limit
(the paper's isolation baseline; not a scheduler, so it is emulated as admission control in front of
FCFS: each client's requests beyond ``rpm`` in a one-minute window are rejected, as an API gateway
would). Numbers: per-client service (client view, 1 x input + 2 x output) over the whole run and
the largest service difference between two continuously backlogged clients
(:func:`prefixsched.theory.metrics.max_service_gap`), checked against VTC's ``2U`` bound by
:func:`prefixsched.theory.bounds.check_vtc_two_backlogged` (``U = max(w_e L_input, w_q M)``,
``M`` = KV pool); the accumulated service difference ``|W_0 - W_1|`` at the end of the arrivals;
throughput (prompt + output tokens per second over the span). Every trace is replayed by
:func:`prefixsched.theory.schedule.check_trace` before its numbers are used.

Outputs (atomic): ``<out>/overload.json`` (numbers + ``claims`` booleans computed from them) and
``<out>/overload.png`` (cumulative service per client, and the service difference over time).
Deterministic: same arguments, same bytes.
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from prefixsched._io import atomic_write, write_json
from prefixsched.reference.workloads import make_workload
from prefixsched.sweep import run
from prefixsched.sweep.cli import add_backend_arguments, backend_kwargs, default_cache_dir
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits

REPO = Path(__file__).resolve().parents[2]
RATES = (1.5, 3.0)
IN_LEN = 256
OUT_LEN = 256
BLOCK = 32
A10G = CostModel(prefill_base_s=0.01, prefill_per_token_s=2.2e-4, decode_base_s=0.025, decode_per_request_s=1e-4)
LIMITS = Limits(kv_capacity_tokens=10_000, max_prefill_tokens=3072, max_running_requests=1000, page_size=BLOCK)


def overload_instance(duration_s: float, seed: int, rpm: int | None = None) -> Instance:
    """The two-client overload suite (module docstring; the registered workload
    ``vtc-overload``); ``rpm`` drops each client's requests beyond ``rpm`` per minute window
    ``[60 j, 60 (j+1))`` (the RPM baseline)."""
    return make_workload("vtc-overload", seed=seed, duration_s=duration_s, rpm=rpm, limits=LIMITS, cost_model=A10G)


def cells(duration_s: float, seed: int, rpm: int) -> list[dict[str, Any]]:
    """The sweep: FCFS, VTC, and RPM-limited FCFS, each with the numbers of the table as probes."""
    base = {
        "workload": "vtc-overload", "seed": seed, "workload_params": {"duration_s": duration_s},
        "limits": asdict(LIMITS), "cost_model": asdict(A10G),
        "probes": ["service_gap_client", "vtc_2U", "backlog_s", "service_curve"],
        "probe_params": {"service_curve": {"t0": 0.0, "t1": duration_s, "n": 121}},
    }
    return [
        {**base, "policy": "fcfs", "label": "FCFS"},
        {**base, "policy": "vtc", "label": "VTC"},
        {**base, "policy": "fcfs", "label": f"RPM={rpm} + FCFS", "workload_params": {"duration_s": duration_s, "rpm": rpm}},
    ]


def row_of(record: dict[str, Any], offered: int) -> dict[str, Any]:
    """The table row of one sweep record (every number from the cell's summary and probes)."""
    res = record["result"]
    s, pr = res["summary"], res["probes"]
    gap = pr["service_gap_client"]
    return {
        "label": record["cell"]["label"],
        "policy": record["cell"]["policy"],
        "checker_ok": True,  # the cell replays its trace with check_trace (strict) or fails
        "offered_requests": offered,
        "served_requests": s["n_requests"],
        "span_s": s["span_s"],
        "tokens_per_s": s["tokens_per_s"],
        "service_client": {c: v["service_client"] for c, v in s["per_client"].items()},
        "backlogged_s": pr["backlog_s"],
        "max_backlogged_gap": gap["value"],
        "max_backlogged_gap_interval": gap["interval"],
        "vtc_2U": pr["vtc_2U"],
        "ttft_p50": s["ttft_p50"],
        "ttft_p99": s["ttft_p99"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced form (60 simulated seconds)")
    ap.add_argument("--out", default=str(REPO / "papers" / "vtc" / "results"), help="output directory")
    ap.add_argument("--seed", type=int, default=0, help="arrival-phase seed")
    ap.add_argument("--rpm", type=int, default=60, help="RPM limit per client for the RPM baseline")
    add_backend_arguments(ap, cache_default="$PREFIXSCHED_CACHE or ~/.cache/prefixsched/sweep")
    args = ap.parse_args(argv)
    dur = 60.0 if args.quick else 360.0
    n_off = len(overload_instance(dur, args.seed).requests)
    res_sweep = run(cells(dur, args.seed, args.rpm), name="vtc-overload", **backend_kwargs(args, default_cache_dir()))
    if res_sweep.failures:
        raise SystemExit(f"vtc reproduction: {len(res_sweep.failures)} cell(s) failed: {res_sweep.failures[0]['error']}")
    rows = [row_of(r, n_off) for r in res_sweep.records]
    # accumulated service difference at the end of the arrivals (Fig. 3's right panel)
    grid = np.linspace(0.0, dur, 121)
    curves = {}
    for rec, row in zip(res_sweep.records, rows):
        cum = rec["result"]["probes"]["service_curve"]["service"]
        curves[row["label"]] = cum
        row["accumulated_diff_at_end"] = float(abs(cum["c0"][-1] - cum["c1"][-1]))
    by = {r["label"]: r for r in rows}
    fc, vt, rp = by["FCFS"], by["VTC"], by[f"RPM={args.rpm} + FCFS"]
    res: dict[str, Any] = {
        "paper": "Sheng et al., Fairness in Serving Large Language Models, OSDI'24",
        "quick": args.quick,
        "seed": args.seed,
        "setup": {"rates_req_s": list(RATES), "input_len": IN_LEN, "output_len": OUT_LEN, "duration_s": dur,
                  "kv_capacity_tokens": LIMITS.kv_capacity_tokens, "max_prefill_tokens": LIMITS.max_prefill_tokens,
                  "cost_model": {k: getattr(A10G, k) for k in A10G.__dataclass_fields__}, "rpm": args.rpm},
        "rows": rows,
        "curves": {"t": grid.tolist(), "service_client": curves},
    }
    res["claims"] = {
        "vtc_gap_below_fcfs_gap": vt["max_backlogged_gap"] < fc["max_backlogged_gap"],
        "vtc_within_2U": vt["vtc_2U"]["holds"],
        "fcfs_exceeds_2U": not fc["vtc_2U"]["holds"],
        "vtc_throughput_within_5pct_of_fcfs": vt["tokens_per_s"] >= 0.95 * fc["tokens_per_s"],
        "rpm_loses_throughput": rp["tokens_per_s"] < vt["tokens_per_s"],
        "rpm_rejected_requests": n_off - rp["served_requests"],
        "claim_holds": vt["vtc_2U"]["holds"] and vt["max_backlogged_gap"] < fc["max_backlogged_gap"]
        and vt["tokens_per_s"] >= 0.95 * fc["tokens_per_s"],
    }
    head = f"{'policy':<16}{'served':>7}{'tok/s':>8}{'W_c0':>10}{'W_c1':>10}{'max gap':>10}{'2U':>8}{'acc diff':>10}{'P99 TTFT':>9}"
    print(f"VTC overload suite: rates {RATES} req/s, {IN_LEN}/{OUT_LEN} tokens, {dur:g} s, {n_off} requests offered")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['label']:<16}{r['served_requests']:>7}{r['tokens_per_s']:>8.0f}{r['service_client']['c0']:>10.0f}"
              f"{r['service_client']['c1']:>10.0f}{r['max_backlogged_gap']:>10.0f}{r['vtc_2U']['bound']:>8.0f}"
              f"{r['accumulated_diff_at_end']:>10.0f}{r['ttft_p99']:>9.1f}")
    print("claims:", res["claims"])
    out = Path(args.out)
    write_json(out / "overload.json", res)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for j, label in enumerate(curves):
        c0, c1 = np.asarray(curves[label]["c0"]), np.asarray(curves[label]["c1"])
        axes[0].plot(grid, c0 / 1e3, color=f"C{j}", ls="-", label=f"{label} c0 (1.5 req/s)")
        axes[0].plot(grid, c1 / 1e3, color=f"C{j}", ls="--", label=f"{label} c1 (3 req/s)")
        axes[1].plot(grid, np.abs(c1 - c0) / 1e3, color=f"C{j}", label=label)
    axes[1].axhline(vt["vtc_2U"]["bound"] / 1e3, color="grey", ls=":", label="VTC 2U")
    axes[0].set_ylabel("cumulative service (k cost units)")
    axes[1].set_ylabel("|W_c1 - W_c0| (k cost units)")
    for ax in axes:
        ax.set_xlabel("time (s)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    with atomic_write(out / "overload.png", "wb") as fh:
        fh.write(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
