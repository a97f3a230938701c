"""``prefixsched conformance sglang``: agreement counts of prefixsched against SGLang itself.

Registered in :mod:`prefixsched.cli` by :func:`add_parser`. Runs, on a trace (or the built-in
``default`` workload):

1. the radix comparison of :func:`prefixsched.integration.conformance.compare_radix_trees`
   for every page size and capacity asked for (default: pages 1, 16 and 512; page 1 on the first
   2,000 requests only; capacities: no eviction, 1x, 4x and 16x the longest prompt), with
   prefixsched's tree, SGLang's ``RadixCache`` (the reference) and its ``UnifiedRadixCache``;
2. the engine comparison of :func:`~prefixsched.integration.conformance.run_engine_comparison`
   (sampled scheduling passes of prefixsched's ``sglang`` engine replayed in SGLang's
   scheduler), when this build's simulator offers it; otherwise it says so.

It prints one line per comparison and a verdict; ``--json OUT`` writes everything. Exit status:
0 when every comparison agrees, 1 when one disagrees or SGLang cannot be loaded, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from prefixsched.errors import InputError

__all__ = ["add_parser", "cmd_conformance", "DEFAULT_PAGES", "DEFAULT_CAPACITIES"]

DEFAULT_PAGES = (1, 16, 512)
DEFAULT_CAPACITIES = ("none", "1", "4", "16")


def add_parser(sub: Any, int_at_least: Callable[[str, int], Callable[[str], int]]) -> None:
    """Add ``conformance`` (with its ``sglang`` target) to the ``prefixsched`` subparsers.

    ``int_at_least(option, minimum)`` is the CLI's argparse type for bounded integers (passed in
    because this layer does not import the CLI)."""
    _int_min = int_at_least
    k_times = int_at_least("--capacities ('none' or K)", 1)

    def _capacity(text: str) -> str:
        return "none" if text.strip().lower() == "none" else str(k_times(text))
    from prefixsched.integration.conformance import RADIX_TREES

    p = sub.add_parser(
        "conformance",
        help="agreement counts of prefixsched against SGLang's own classes",
        description=(
            "Replay a trace through prefixsched and through SGLang's real classes (CPU build) and print "
            "how many decisions agree: radix match lengths against RadixCache and UnifiedRadixCache, and, "
            "when the simulator offers it, sampled scheduling passes of the sglang engine replayed in "
            "SGLang's scheduler. Exit 0: everything agrees; 1: a disagreement or SGLang missing; 2: bad input."
        ),
    )
    p.add_argument("target", choices=["sglang"], help="what to compare against (only 'sglang')")
    p.add_argument("--trace", metavar="T", help="Mooncake-format JSONL trace or instance .json (default: the built-in 'default' workload, seed 0)")
    p.add_argument("--max-requests", type=_int_min("--max-requests", 1), default=None, metavar="M", help="use only the first M requests (default: all)")
    p.add_argument("--pages", type=_int_min("--pages", 1), nargs="+", default=list(DEFAULT_PAGES), metavar="P", help="page sizes in tokens (default: %(default)s)")
    p.add_argument(
        "--page1-requests", type=_int_min("--page1-requests", 0), default=2000, metavar="N",
        help="requests replayed at page size 1, token by token (default: %(default)s; 0: all)",
    )
    p.add_argument(
        "--capacities", type=_capacity, nargs="+", default=list(DEFAULT_CAPACITIES), metavar="X",
        help="KV capacities: 'none' (no eviction) or K (K x the longest prompt) (default: %(default)s)",
    )
    p.add_argument("--trees", nargs="+", choices=list(RADIX_TREES), default=list(RADIX_TREES), help="trees compared with SGLang's RadixCache (default: all)")
    p.add_argument("--policy", choices=["lpm", "fcfs"], default="lpm", help="policy of the engine comparison (default: %(default)s)")
    p.add_argument("--engine-windows", type=_int_min("--engine-windows", 1), default=20, metavar="W", help="windows of consecutive passes replayed (default: %(default)s)")
    p.add_argument("--engine-window", type=_int_min("--engine-window", 1), default=10, metavar="K", help="passes per window (default: %(default)s)")
    p.add_argument("--engine-every", type=_int_min("--engine-every", 1), default=200, metavar="E", help="a window starts every E passes (default: %(default)s)")
    p.add_argument("--no-engine", action="store_true", help="skip the engine comparison (default: run it)")
    p.add_argument("--json", metavar="OUT", help="write all counts as JSON to OUT ('-': stdout, the report then goes to stderr) (default: none)")
    # the output path is checked before any work by the CLI's shared check (prefixsched.cli._check_outputs)
    p.set_defaults(_outputs=[("json", "--json", True)])
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: bars on a terminal)")
    p.set_defaults(func=cmd_conformance)


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    if args.trace is not None:
        from prefixsched.instance_io import load_any

        path = Path(args.trace)
        if not path.exists():
            raise InputError("--trace", f"no such file: {args.trace}")
        return load_any(path, max_requests=args.max_requests), {"trace": str(args.trace)}
    from prefixsched.reference.workloads import make_workload

    return make_workload("default", seed=0, n_requests=args.max_requests), {"workload": "default", "seed": 0}


def cmd_conformance(args: argparse.Namespace) -> int:
    """Run the comparisons (module docstring); returns the exit status."""
    from tqdm import tqdm

    from prefixsched._io import dumps_json, write_json
    from prefixsched.integration import conformance as C
    from prefixsched.integration import sglang_env

    report = sys.stderr if args.json == "-" else sys.stdout
    inst, source = _load(args)
    trees = list(dict.fromkeys(["sglang_radix", *args.trees]))
    mods = sglang_env.load()  # raises SGLangUnavailable (exit 1) with the reason
    st = sglang_env.status()
    unified = C.unified_radix_cache_report()
    if not unified["constructible"] and "sglang_unified" in trees:
        trees.remove("sglang_unified")
    print(
        f"SGLang {st.version}{' (torchvision stand-in)' if st.torchvision_stand_in else ''}; "
        f"scheduler module: {'imported' if mods.scheduler is not None else 'failed: ' + str(mods.scheduler_error)}; "
        f"UnifiedRadixCache: {'constructible, ' + str(unified['tree_core']) if unified['constructible'] else 'not constructible: ' + str(unified['reason'])}",
        file=report,
    )
    longest = max(len(r.prompt) for r in inst.requests)
    show = not args.no_progress and sys.stderr.isatty()
    radix = []
    others = [t for t in trees if t != "sglang_radix"]
    print(f"radix match lengths, agreeing requests / requests (reference: SGLang RadixCache; {', '.join(others)}):", file=report)
    all_agree = True
    for ps in args.pages:
        n = args.page1_requests if ps == 1 and args.page1_requests else None
        if args.max_requests is not None:
            n = min(n, args.max_requests) if n else args.max_requests
        total = min(n or len(inst.requests), len(inst.requests))
        for c in args.capacities:
            cap = None if c == "none" else int(c) * longest
            bar = tqdm(total=total, desc=f"page {ps}, capacity {c}", unit="req", file=sys.stderr, disable=not show, leave=False)
            try:
                r = C.compare_radix_trees(inst, ps, cap, trees=trees, max_requests=n, progress=lambda d: bar.update(d - bar.n))
            finally:
                bar.close()
            r["capacity"] = c
            radix.append(r)
            cells = "  ".join(f"{t} {r['trees'][t]['agree']}/{r['requests']}" for t in others)
            ok = all(r["trees"][t]["agree"] == r["requests"] for t in others)
            all_agree &= ok
            cap_txt = "no eviction" if cap is None else f"{c}x longest ({r['capacity_tokens']:,} tokens)"
            print(f"  page {ps:>4}  {cap_txt:<32} {cells}{'' if ok else '  DISAGREE'}", file=report)
    engine: dict[str, Any]
    if args.no_engine:
        engine = {"available": False, "reason": "skipped (--no-engine)"}
    else:
        engine = C.run_engine_comparison(
            inst, args.policy, window=args.engine_window, every=args.engine_every, max_windows=args.engine_windows
        )
    if not engine["available"]:
        print(engine["reason"], file=report)
    else:
        print(f"engine comparison ({args.policy}; {engine['replayed']} passes replayed of {engine['passes_seen']}):", file=report)
        for f, v in engine["fields"].items():
            if v["compared"]:
                ok = v["agree"] == v["compared"]
                all_agree &= ok
                print(f"  {f:<14} {v['agree']}/{v['compared']}{'' if ok else '  DISAGREE'}", file=report)
        for d in engine["first_disagreements"]:
            print(f"  step {d['step']} {d['field']}: engine {d['engine']!r}, SGLang {d['sglang']!r}", file=report)
    print("all comparisons agree" if all_agree else "some comparisons DISAGREE", file=report)
    out = {
        "source": source,
        "sglang": {"version": st.version, "torchvision_stand_in": st.torchvision_stand_in, "scheduler_error": mods.scheduler_error},
        "unified_radix_cache": unified,
        "radix": radix,
        "engine": engine,
        "all_agree": all_agree,
    }
    if args.json == "-":
        sys.stdout.write(dumps_json(out))
    elif args.json:
        write_json(args.json, out)
    return 0 if all_agree else 1
