"""Fuzz the ``prefixsched`` command with mutated traces and instances (issue #7 target).

Target: 0 tracebacks and 0 hangs in 10,000 fuzzed inputs; every input either accepted (exit 0,
valid JSON output) or refused with exactly one ``prefixsched...: error:`` line (exit 2), and no
temporary file left behind. The mutations and the harness are :mod:`prefixsched.testing.fuzz`;
everything is in-process (one Python process, no shelling out per input).

    python benchmarks/fuzz_cli.py --inputs 10000 --seed 0 [--real-trace PATH] [--timeout 60]

Case ``i`` is drawn from ``random.Random(f"{seed}:{i}")``, so ``--only I`` reruns one case
exactly (and ``--show`` prints its bytes and command line). With ``--real-trace`` half of the
trace seeds are windows of that trace (the Mooncake conversation trace by default when it is
beside the checkout). Prints the counts by outcome and exits 1 if any outcome is bad.
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = REPO.parent / "shared/data/mooncake/conversation_trace.jsonl"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=10_000, help="number of fuzzed inputs (default: 10000)")
    ap.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    ap.add_argument("--real-trace", default=str(DEFAULT_TRACE),
                    help="Mooncake trace whose windows seed half of the trace cases; '' for none "
                    "(default: ../shared/data/mooncake/conversation_trace.jsonl if present)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds after which an input counts as a hang (default: 60)")
    ap.add_argument("--only", type=int, default=None, help="run only case I (default: all)")
    ap.add_argument("--show", action="store_true", help="print each failing case's command line and bytes")
    args = ap.parse_args()

    from prefixsched.cli import main as cli_main
    from prefixsched.testing.fuzz import GOOD, OUTCOMES, make_case, run_case

    real_lines = None
    if args.real_trace and Path(args.real_trace).exists():
        with open(args.real_trace, encoding="utf-8") as fh:
            real_lines = fh.read().splitlines()[:20_000]
    counts: collections.Counter[str] = collections.Counter()
    by_command: collections.Counter[tuple[str, str]] = collections.Counter()
    failures = []
    slowest = (0.0, -1)
    t0 = time.perf_counter()
    cases = [args.only] if args.only is not None else range(args.inputs)
    for i in cases:
        case = make_case(random.Random(f"{args.seed}:{i}"), real_lines)
        work = Path(tempfile.mkdtemp(prefix="prefixsched-fuzz-"))
        t = time.perf_counter()
        try:
            res = run_case(cli_main, case, work, timeout_s=args.timeout)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        dt = time.perf_counter() - t
        slowest = max(slowest, (dt, i))
        counts[res.outcome] += 1
        by_command[(case.argv[0] + (" " + case.argv[3] if case.argv[0] == "solve" else ""), res.outcome)] += 1
        if res.outcome not in GOOD:
            failures.append((i, case, res))
            print(f"case {i}: {res.outcome}: {res.detail.strip().splitlines()[-1] if res.detail else ''}", file=sys.stderr)
            if args.show:
                print(f"  argv: {' '.join(case.argv)}\n  data: {case.data[:600]!r}\n  stderr: {res.stderr[-800:]}",
                      file=sys.stderr)
        if (i + 1) % 1000 == 0:
            print(f"... {i + 1} inputs, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    wall = time.perf_counter() - t0
    n = sum(counts.values())
    print(f"prefixsched CLI fuzz: {n} inputs, seed {args.seed}, real trace windows: {'yes' if real_lines else 'no'}, "
          f"{wall:.0f} s ({1000 * wall / max(n, 1):.1f} ms/input, slowest case {slowest[1]}: {slowest[0]:.1f} s)")
    for k in OUTCOMES:
        print(f"  {k:<11} {counts.get(k, 0):>6}")
    print("by command (outcome: count):")
    for cmd in sorted({c for c, _ in by_command}):
        print(f"  {cmd:<16} " + ", ".join(f"{o} {by_command[(cmd, o)]}" for o in OUTCOMES if by_command[(cmd, o)]))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
