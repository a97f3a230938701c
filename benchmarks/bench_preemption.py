"""Preemption's speed on the real Mooncake conversation trace (12,031 requests).

Targets (issue #11, "Speed"):

1. preemption must not slow the non-preemptive path: the full trace under DLPM on the ``sglang``
   engine stays within 10 % of its wall time before preemption existed;
2. a preemptive VTC run on the full trace finishes in under 60 s on one core.

Usage (repository root)::

    python benchmarks/bench_preemption.py --trace PATH [--repeats 3] [--baseline-src DIR]

``--baseline-src DIR`` also times the DLPM run of another checkout (e.g. ``git archive`` of the
commit before preemption, unpacked in DIR) in a subprocess, interleaved with this one, and prints
the ratio of the medians of CPU seconds (CPU time, not wall time, because the machine is shared:
wall time under load says more about the neighbours than about the code). The preemptive runs
(``vtc-preempt`` with its default margin, which on this trace never needs to preempt, and with a
fixed margin of 16,384 cost units that does) are timed once each in drop, synchronous-swap and
FastSwitch (asynchronous, block groups, reuse) modes; the checker's replay is timed separately.
Loading uses :func:`prefixsched.reference.traces.load_mooncake`. Exits 2 if the trace is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_TRACE = Path(__file__).resolve().parents[2] / "shared/data/mooncake/conversation_trace.jsonl"

_DLPM = """
import json, sys, time
from prefixsched.reference.traces import load_mooncake
from prefixsched.reference.simulator import simulate
from prefixsched.reference.policies import create
inst = load_mooncake(sys.argv[1])
t, c = time.perf_counter(), time.process_time()
tr = simulate(inst, create("dlpm"), engine="sglang")
print(json.dumps({"wall": time.perf_counter() - t, "cpu": time.process_time() - c, "steps": tr.n_steps}))
"""


def _dlpm(src: str | None, trace: Path) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    out = subprocess.run([sys.executable, "-c", _DLPM, str(trace)], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=str(DEFAULT_TRACE), help=f"Mooncake JSONL (default: {DEFAULT_TRACE})")
    ap.add_argument("--repeats", type=int, default=3, help="DLPM timings per checkout (default: 3)")
    ap.add_argument("--baseline-src", default=None, help="another checkout to A/B the DLPM run against (default: none)")
    ap.add_argument("--skip-preemptive", action="store_true", help="only the DLPM timing (default: off)")
    args = ap.parse_args(argv)
    trace = Path(args.trace)
    if not trace.exists():
        print(f"bench_preemption: trace not found at {trace}; pass --trace", file=sys.stderr)
        return 2
    runs: dict[str, list[dict]] = {"this": [], "baseline": []}
    for _ in range(args.repeats):
        runs["this"].append(_dlpm(None, trace))
        if args.baseline_src:
            runs["baseline"].append(_dlpm(args.baseline_src, trace))
    print(f"{'DLPM, sglang engine, no preemption':<40}{'wall s (median)':>16}{'CPU s (median)':>16}{'steps':>9}")
    for name, rs in runs.items():
        if rs:
            print(f"{name:<40}{statistics.median(r['wall'] for r in rs):>16.2f}"
                  f"{statistics.median(r['cpu'] for r in rs):>16.2f}{rs[0]['steps']:>9}")
    if runs["baseline"]:
        ratio = statistics.median(r["cpu"] for r in runs["this"]) / statistics.median(r["cpu"] for r in runs["baseline"])
        print(f"CPU ratio this / baseline: {ratio:.3f} (target <= 1.10)")
    if args.skip_preemptive:
        return 0

    from prefixsched.reference.engine.preemption import PreemptionConfig
    from prefixsched.reference.policies import create
    from prefixsched.reference.simulator import simulate
    from prefixsched.reference.traces import load_mooncake
    from prefixsched.theory.metrics import switch_metrics
    from prefixsched.theory.schedule import check_trace

    inst = load_mooncake(str(trace))
    modes = {"drop": PreemptionConfig(mode="drop"), "swap, sync, block": PreemptionConfig(),
             "FastSwitch (async, group, reuse)": PreemptionConfig.fastswitch()}
    print(f"\n{'vtc-preempt on the full trace':<52}{'wall s':>8}{'CPU s':>8}{'check s':>8}{'steps':>8}{'preempt':>8}{'stall s':>9}")
    for margin in (None, 16384.0):
        for label, cfg in modes.items():
            t, c = time.perf_counter(), time.process_time()
            tr = simulate(inst, create("vtc-preempt", margin=margin), engine="sglang", preemption=cfg)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            t = time.perf_counter()
            check_trace(inst, tr)
            chk = time.perf_counter() - t
            m = switch_metrics(tr)
            name = f"margin {'w_e*L' if margin is None else int(margin)}, {label}"
            print(f"{name:<52}{wall:>8.2f}{cpu:>8.2f}{chk:>8.2f}{tr.n_steps:>8}{m['preemptions']:>8}{m['gpu_stall_s']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
