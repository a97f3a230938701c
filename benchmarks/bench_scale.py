"""Scale: N synthetic requests on 8 workers under D²LPM (local DLPM), simulation and checker replay.

Issue #12 §2. Goal: N = 1,000,000 under 5 minutes on one core and under 4 GiB, close to linear.

Workload: ``make_workload("default", clients=8, n_requests=N, conv_rate=R)`` (the built-in
Mooncake-shaped multi-turn chat, c0 sends 3.5x) at ``R = 0.3 * workers`` conversations/s per
client, a load the workers sustain (stable queues: P99 TTFT ~0.3 s), and ``block_size`` tokens per prompt block (default 32, the workload
default; ``Limits(page_size=block_size)``). The same N-request stream for every N (the
N-request instance is a prefix of the 10N one).

Phases, each timed on its own (wall and CPU seconds) with the process's peak RSS after it
(``ru_maxrss``: cumulative, so the checker's figure includes the simulation's peak):

1. ``workload``: build the instance;
2. ``simulate``: ``simulate_cluster(inst, "dlpm", "d2lpm", workers=8)``;
3. ``check``: ``check_trace(sub_instance(w), traces[w])`` for every worker (the independent
   replay);
4. ``summary``: ``summarize_cluster`` (every metric of the CLI row, cluster-wide);
5. ``write``: the streaming trace writer :func:`prefixsched.sweep.stream.write_trace_stream`
   (one JSON line per request record, gzip; never a ``to_dict()`` of the whole trace), only with
   ``--trace-out``.

Usage (from the repository root)::

    python benchmarks/bench_scale.py --requests 10000 [--workers 8] [--trace-out /tmp/t.jsonl.gz]
    python benchmarks/bench_scale.py --requests 10000,100000,1000000   # one process per size

With several sizes each runs in a fresh subprocess (so peaks do not mix) and one table is printed;
``--json OUT`` writes the rows. Numbers measured on this project's machine are in
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cur_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - not Linux
        return float("nan")


class _Phases:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}

    def run(self, name: str, fn: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        self.rows[name] = {
            "wall_s": round(time.perf_counter() - t0, 2),
            "cpu_s": round(time.process_time() - c0, 2),
            "peak_rss_mib": round(_rss_mib(), 0),
            "rss_mib": round(_cur_rss_mib(), 0),
        }
        print(f"  {name:<9} {self.rows[name]}", file=sys.stderr, flush=True)
        return out


def one(n: int, workers: int, block_size: int, trace_out: str | None, policy: str, dispatch: str) -> dict[str, Any]:
    from prefixsched.reference.cluster import simulate_cluster
    from prefixsched.reference.workloads import make_workload
    from prefixsched.theory.metrics import summarize_cluster
    from prefixsched.theory.schedule import check_trace

    ph = _Phases()
    inst = ph.run(
        "workload",
        lambda: make_workload("default", clients=8, seed=0, n_requests=n, conv_rate=0.3 * workers, block_size=block_size),
    )
    ct = ph.run("simulate", lambda: simulate_cluster(inst, policy, dispatch, workers=workers))

    def check() -> None:
        for w in range(workers):
            sub = ct.sub_instance(w)
            if sub is not None:
                check_trace(sub, ct.traces[w])

    ph.run("check", check)
    s = ph.run("summary", lambda: summarize_cluster(ct))
    if trace_out:
        from prefixsched.sweep.stream import write_trace_stream

        ph.run("write", lambda: write_trace_stream(trace_out, ct))
    return {
        "requests": n,
        "workers": workers,
        "block_size": block_size,
        "policy": policy,
        "dispatch": dispatch,
        "steps": s["n_steps"],
        "span_s": s["span_s"],
        "hit_rate": s["hit_rate"],
        "requests_per_worker": s["requests_per_worker"],
        "phases": ph.rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", default="10000", help="N, or a comma list (one subprocess each; default: %(default)s)")
    ap.add_argument("--workers", type=int, default=8, help="data-parallel workers (default: %(default)s)")
    ap.add_argument("--block-size", type=int, default=32, help="tokens per prompt block and page (default: %(default)s)")
    ap.add_argument("--policy", default="dlpm", help="local policy (default: %(default)s)")
    ap.add_argument("--dispatch", default="d2lpm", help="dispatcher (default: %(default)s)")
    ap.add_argument("--trace-out", default=None, help="also stream the trace to this .jsonl(.gz) file")
    ap.add_argument("--json", default=None, help="write the rows as JSON")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.requests.split(",")]
    rows = []
    if len(sizes) == 1:
        rows.append(one(sizes[0], args.workers, args.block_size, args.trace_out, args.policy, args.dispatch))
    else:
        for n in sizes:
            cmd = [sys.executable, __file__, "--requests", str(n), "--workers", str(args.workers),
                   "--block-size", str(args.block_size), "--policy", args.policy, "--dispatch", args.dispatch,
                   "--json", "-"]
            if args.trace_out:
                cmd += ["--trace-out", f"{args.trace_out}.{n}"]
            print(f"N = {n:,}", file=sys.stderr, flush=True)
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            rows.extend(json.loads(out))
    if args.json == "-":
        sys.stdout.write(json.dumps(rows) + "\n")
        return 0
    head = f"{'requests':>10} {'steps':>10} {'sim s':>8} {'check s':>8} {'summary s':>9} {'write s':>8} {'peak RSS MiB':>12}"
    print(head)
    for r in rows:
        p = r["phases"]
        print(
            f"{r['requests']:>10,} {r['steps']:>10,} {p['simulate']['wall_s']:>8.1f} {p['check']['wall_s']:>8.1f} "
            f"{p['summary']['wall_s']:>9.1f} {p.get('write', {}).get('wall_s', float('nan')):>8.1f} "
            f"{max(v['peak_rss_mib'] for v in p.values()):>12,.0f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
