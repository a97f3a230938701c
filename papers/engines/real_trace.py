"""The real Mooncake trace on both engines, side by side (issue #8's results).

One row per (engine, policy): hit rate, TTFT P50/P99, the largest service gap between two
continuously backlogged clients, the sglang engine's retractions and chunks, and the wall time of
the simulation. Every trace is replayed by the independent checker first. The default limits of
the trace (512-token pages, the H100 KV pool, chunked prefill 8192) and the default cost profile
(``h100-llama3.1-8b``), at each ``--loads`` entry: ``native`` (the trace's own timestamps, an
offered load of about 3.1 x one worker's capacity) or a number rho (arrivals rescaled by
:func:`prefixsched.reference.scenarios.scale_to_load`, the CLI's ``--load``).

Usage::

    python papers/engines/real_trace.py [--trace PATH] [--loads native 0.8] [--out papers/engines/results/real_trace.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from prefixsched._io import write_json
from prefixsched._table import _table
from prefixsched.reference.policies import create
from prefixsched.reference.scenarios import offered_load, scale_to_load
from prefixsched.reference.simulator import simulate
from prefixsched.reference.traces import load_mooncake
from prefixsched.theory.metrics import summarize
from prefixsched.theory.schedule import check_trace

POLICIES = ("fcfs", "lpm", "k-lpm", "vtc", "dlpm")
DEFAULT_TRACE = Path(__file__).resolve().parents[3] / "shared/data/mooncake/conversation_trace.jsonl"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "real_trace.json"))
    ap.add_argument("--engines", nargs="+", default=["sglang", "ideal"])
    ap.add_argument("--loads", nargs="+", default=["native", "0.8"],
                    help="'native' or an offered load rho to rescale the arrivals to (default: native 0.8)")
    a = ap.parse_args(argv)
    if not Path(a.trace).exists():
        print(f"real_trace.py: error: no trace at {a.trace}", file=sys.stderr)
        return 2
    base = load_mooncake(a.trace)
    rows, out = [], []
    for load in a.loads:
        inst = base if load == "native" else scale_to_load(base, float(load))
        rho = round(offered_load(inst)["rho"], 3)
        for eng in a.engines:
            for pol in POLICIES:
                t0 = time.perf_counter()
                tr = simulate(inst, create(pol), engine=eng)
                wall = time.perf_counter() - t0
                check_trace(inst, tr)
                s = summarize(tr, inst.weights)
                rec = {
                    "load": load, "rho": rho, "engine": eng, "policy": pol, "hit_rate": s["hit_rate"], "ttft_p50": s["ttft_p50"],
                    "ttft_p99": s["ttft_p99"], "max_gap": s["max_service_gap"]["value"],
                    "retractions": tr.meta.get("retractions", 0), "chunks": tr.meta.get("chunks", len(tr.requests)),
                    "steps": tr.n_steps,
                }
                out.append({**rec, "wall_s": wall})
                rows.append([load, rho, eng, pol, rec["hit_rate"], rec["ttft_p50"], rec["ttft_p99"], rec["max_gap"],
                             rec["retractions"], rec["chunks"], round(wall, 1)])
                print(f"{load} {eng} {pol} done in {wall:.1f} s", file=sys.stderr)
    print(_table(["load", "rho", "engine", "policy", "hit rate", "TTFT P50 s", "TTFT P99 s", "max gap", "retractions", "chunks", "wall s"], rows))
    # wall times are measurements, not results: kept apart so the results file is deterministic
    write_json(a.out, {"trace": Path(a.trace).name, "requests": len(base.requests), "cost_model": dataclasses.asdict(base.cost_model),
                       "limits": dataclasses.asdict(base.limits),
                       "rows": [{k: v for k, v in r.items() if k != "wall_s"} for r in out]})
    write_json(Path(a.out).with_suffix(".timing.json"), {"rows": [{"load": r["load"], "engine": r["engine"], "policy": r["policy"], "wall_s": r["wall_s"]} for r in out]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
