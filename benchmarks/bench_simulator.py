"""Simulator throughput on the real Mooncake conversation trace (12,031 requests).

Target (issue brief): the full trace under DLPM in < 10 s wall and < 2 GiB RSS on one core.

Loading (a minimal local JSONL reader, independent of the workload package): one request per line,
``BlockPrompt(hash_ids, input_length, 512)``, ``output_len = output_length``, arrival =
``timestamp / 1000`` s, ``Limits(page_size=512)`` (other limits at their defaults), and the client
is ``hash_ids[1]`` (``hash_ids[0]`` for one-block prompts) folded onto 8 clients with
``zlib.crc32``.

Usage::

    python benchmarks/bench_simulator.py [--policies dlpm,lpm,...] [--limit N] [--trace PATH]

Prints one line per policy: wall and CPU seconds, steps, steps/s, peak RSS, hit rate, makespan. Exits 2
with a message if the trace file is absent.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import zlib
from pathlib import Path

from prefixsched.reference.policies import create
from prefixsched.reference.simulator import simulate
from prefixsched.theory.model import BlockPrompt, Instance, Limits, Request

DEFAULT_TRACE = Path(__file__).resolve().parents[2] / "shared/data/mooncake/conversation_trace.jsonl"


def load_mooncake(path: Path, limit: int | None = None, n_clients: int = 8) -> Instance:
    reqs = []
    with open(path) as f:
        for k, line in enumerate(f):
            if limit is not None and k >= limit:
                break
            d = json.loads(line)
            h = d["hash_ids"]
            key = h[1] if len(h) > 1 else h[0]
            client = f"c{zlib.crc32(str(key).encode()) % n_clients}"
            reqs.append(
                Request(
                    id=f"m{k}",
                    client=client,
                    arrival=d["timestamp"] / 1000.0,
                    prompt=BlockPrompt(h, d["input_length"], 512),
                    output_len=max(1, int(d["output_length"])),
                )
            )
    return Instance(tuple(reqs), limits=Limits(page_size=512))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--policies", default="dlpm")
    ap.add_argument("--limit", type=int, default=None, help="only the first N requests")
    args = ap.parse_args(argv)
    if not args.trace.exists():
        print(f"trace not found: {args.trace}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    inst = load_mooncake(args.trace, args.limit)
    t_load = time.perf_counter() - t0
    print(f"loaded {len(inst.requests)} requests in {t_load:.2f} s; RSS {rss_mib():.0f} MiB")
    for spec in args.policies.split(","):
        t0 = time.perf_counter()
        c0 = time.process_time()
        tr = simulate(inst, create(spec))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        m = tr.meta
        print(
            f"{spec:12s} wall {wall:6.2f} s  cpu {cpu:6.2f} s  steps {tr.n_steps:7d}  ({tr.n_steps / wall:8.0f} steps/s)  "
            f"decisions {m['decisions']:6d}  peak RSS {rss_mib():6.0f} MiB  "
            f"hit {m['hit_tokens'] / m['prompt_tokens']:.3f}  evicted {m['evicted_tokens']}  "
            f"peak_running {m['peak_running']}  makespan {tr.step_end[-1]:.1f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
