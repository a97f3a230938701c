"""Cluster simulator throughput on the real Mooncake conversation trace (12,031 requests).

Default: the full trace on D=4 workers, local DLPM, D²LPM dispatch (``Q_w`` = the dispatcher's
default), the same loader as ``bench_simulator.py`` (``BlockPrompt(hash_ids, input_length, 512)``,
``Limits(page_size=512)`` per worker, 8 clients by ``crc32`` of the second block).

Usage::

    python benchmarks/bench_cluster.py [--workers 4] [--dispatch d2lpm,least-load,...]
                                       [--policy dlpm] [--limit N] [--trace PATH]

Prints one line per dispatcher: wall and CPU seconds, total steps, requests per worker, hit rate,
makespan, dispatcher events. Exits 2 with a message if the trace file is absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_simulator import DEFAULT_TRACE, load_mooncake, rss_mib  # noqa: E402

from prefixsched.reference.cluster import simulate_cluster  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--dispatch", default="d2lpm")
    ap.add_argument("--policy", default="dlpm")
    ap.add_argument("--limit", type=int, default=None, help="only the first N requests")
    args = ap.parse_args(argv)
    if not args.trace.exists():
        print(f"trace not found: {args.trace}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    inst = load_mooncake(args.trace, args.limit)
    print(f"loaded {len(inst.requests)} requests in {time.perf_counter() - t0:.2f} s; RSS {rss_mib():.0f} MiB")
    for spec in args.dispatch.split(","):
        t0 = time.perf_counter()
        c0 = time.process_time()
        ct = simulate_cluster(inst, args.policy, spec, workers=args.workers)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        steps = sum(t.n_steps for t in ct.traces)
        prompt = sum(t.meta["prompt_tokens"] for t in ct.traces)
        hit = sum(t.meta["hit_tokens"] for t in ct.traces)
        makespan = max((t.step_end[-1] for t in ct.traces if t.step_end), default=0.0)
        print(
            f"{spec:18s} D={args.workers} wall {wall:6.2f} s  cpu {cpu:6.2f} s  steps {steps:7d}  "
            f"per worker {ct.meta['requests_per_worker']}  hit {hit / prompt:.3f}  makespan {makespan:.1f} s  "
            f"finishes {ct.meta['finish_events']}  evictions {ct.meta['evict_events']}  peak RSS {rss_mib():.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
