"""Scaling of the exact backends on Mooncake-trace windows (issue #3; write-up papers/klpm/exact_scaling.md).

For each backend (cpsat, dp, z3, brute), cache model (prev, radix) and window size ``n`` this
solves min max TTFT on windows of ``n`` consecutive requests of the Mooncake conversation trace
and records wall seconds, status, objective, proven bound and gap. Output: ``scaling.json`` and
``scaling.png`` in ``--out`` (default ``benchmarks/out/``, git-ignored).

Instance construction (block granularity; documented decision)
----------------------------------------------------------------
- Tokens: one "token" per 512-token block, i.e. ``tokens = tuple(hash_ids)`` (the trace's block
  hashes), so ``|x_j| = len(hash_ids)`` and LCPs count shared blocks. Expanding to real tokens
  (BlockPrompt) would make every number 512x larger without changing the structure.
- Time: one unit = the prefill time of one uncached block. With the cost model's default
  ``b = 3.3e-5`` s/token (prefixsched.theory.cost, ~30k tokens/s on an H100 for an 8B model),
  one block takes ``512 * 3.3e-5 = 16.9`` ms, so ``arrival = round((timestamp_ms - t0_ms) /
  ms_per_unit)`` with ``ms_per_unit = 16.896`` (``--ms-per-unit``), ``t0_ms`` the window's first
  timestamp. Rounding to whole units keeps the data integral; ``c_attn = 0``.
- Load rescaling (``--load RHO``): the raw arrivals are multiplied by ``W / (RHO * span)`` with
  ``W = sum_j |x_j|`` the total work without reuse (blocks = time units, ``c_attn = 0``) and
  ``span`` the window's raw last-minus-first arrival, then rounded; so (up to rounding) total
  no-reuse work / span = RHO. RHO < 1 is sub-saturated even without reuse; RHO > 1 needs reuse
  (or queueing) to keep up. The order of arrivals and the prompts are unchanged.
- At this scale the trace offers ~1.4x the server's capacity without reuse (24 blocks per request
  every ~294 ms = 17.4 units), so windows build real queues.

Usage::

    python benchmarks/bench_exact_scaling.py --sizes 5,10,20 --max-seconds 5 --backends cpsat
    nice python benchmarks/bench_exact_scaling.py            # the full curve (slow)

``--family def4`` runs the synthetic shuffled Definition-4 family instead (:func:`def4_instance`;
``--starts`` are then its seeds), where the relaxation bound is not tight.

Each (backend, model) series stops at the first size that is not proven optimal (or raises the
backend's SolverLimitError), unless ``--no-stop``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from prefixsched.errors import SolverLimitError
from prefixsched.theory.sequential import SeqInstance, SeqQuery

TRACE = Path(__file__).resolve().parents[2] / "shared/data/mooncake/conversation_trace.jsonl"
DEFAULT_SIZES = (5, 8, 10, 12, 14, 16, 18, 20, 25, 30, 40, 50, 75, 100, 150, 200)


def load_rows(path: Path, start: int, count: int) -> list[dict]:
    rows = []
    with path.open() as fh:
        for k, line in enumerate(fh):
            if k < start:
                continue
            if len(rows) >= count:
                break
            rows.append(json.loads(line))
    return rows


def window_instance(rows: list[dict], ms_per_unit: float = 16.896, c_attn: float = 0.0,
                    load: float | None = None) -> SeqInstance:
    """A block-granular SeqInstance from consecutive trace rows (module docstring).

    ``load = rho`` rescales the arrival times (module docstring, "Load rescaling"): raw arrivals
    ``(ts - ts0) / ms_per_unit`` are multiplied by ``W / (rho * span)`` with ``W`` the total
    no-reuse work (blocks) and ``span`` the raw last-minus-first arrival, then rounded.
    """
    t0 = rows[0]["timestamp"]
    raw = [(r["timestamp"] - t0) / ms_per_unit for r in rows]
    if load is not None:
        if not load > 0:
            raise ValueError(f"load must be > 0, got {load!r}")
        work = sum(len(r["hash_ids"]) for r in rows)
        span = max(raw) - min(raw)
        if span > 0:
            f = work / (load * span)
            raw = [x * f for x in raw]
    qs = tuple(
        SeqQuery(
            id=f"r{k}",
            client="c0",
            arrival=float(round(raw[k])),
            tokens=tuple(int(h) for h in r["hash_ids"]),
            output_len=int(r.get("output_length", 1)),
        )
        for k, r in enumerate(rows)
    )
    return SeqInstance(qs, c_attn=c_attn)


def def4_instance(n: int, seed: int = 0, u: int = 8, d: int = 2, k: int = 4, gap: int = 4) -> SeqInstance:
    """A shuffled "regular arrival" instance (our reading of klpm.md §4 Definition 4).

    ``ceil(n / k)`` users, each with a private ``u``-token prefix, ``k`` queries per user with a
    unique ``d``-token document; the ``n`` queries are shuffled (seeded) and arrive every ``gap``
    units. With these defaults the load is 2.5x capacity without reuse and ~1x with full per-user
    reuse, so the order matters and the relaxation bound is *not* tight.
    """
    import random

    rng = random.Random(seed)
    users = -(-n // k)
    prompts = [tuple([10_000 + usr] * u) + tuple(100_000 + usr * k + q for _ in range(d)) for usr in range(users)
               for q in range(k)][:n]
    rng.shuffle(prompts)
    qs = tuple(SeqQuery(id=f"r{i}", client="c0", arrival=float(i * gap), tokens=p) for i, p in enumerate(prompts))
    return SeqInstance(qs)


def run_one(inst: SeqInstance, backend: str, model: str, limit: float, workers: int) -> dict:
    from prefixsched.theory.exact import solve
    from prefixsched.theory.exact.cpsat import solve_cpsat

    t = time.perf_counter()
    try:
        if backend == "cpsat-plain":  # ablation: circuit only, no bounds/hints/dominance
            res = solve_cpsat(inst, model, "max-ttft", time_limit=limit, workers=workers, strengthen=False)
        else:
            res = solve(inst, model=model, objective="max-ttft", solver=backend, time_limit=limit, workers=workers)
    except (SolverLimitError, ImportError) as e:
        return {"status": "REFUSED", "reason": str(e), "wall_s": time.perf_counter() - t}
    except TypeError as e:  # a backend without time_limit/workers support
        return {"status": "ERROR", "reason": repr(e), "wall_s": time.perf_counter() - t}
    return {
        "status": res.status.value,
        "objective": res.objective,
        "bound": res.bound,
        "gap": res.gap,
        "wall_s": time.perf_counter() - t,
        "anytime": [list(p) for p in res.anytime],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated window sizes n")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time limit per solve (s)")
    ap.add_argument("--backends", default="cpsat,cpsat-plain,dp,z3,brute",
                    help="cpsat-plain = the CP-SAT model without bounds, hints or dominance rules")
    ap.add_argument("--models", default="prev,radix")
    ap.add_argument("--starts", default="1000", help="comma-separated trace row offsets of the windows")
    ap.add_argument("--ms-per-unit", type=float, default=16.896)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trace", type=Path, default=TRACE)
    ap.add_argument("--family", choices=("trace", "def4"), default="trace",
                    help="trace windows (default) or the synthetic shuffled Definition-4 family")
    ap.add_argument("--load", type=float, default=None,
                    help="rescale trace arrivals so that no-reuse work / span = LOAD (module docstring)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    ap.add_argument("--no-stop", action="store_true", help="keep going after a size is not proven")
    args = ap.parse_args(argv)
    if args.family == "trace" and not args.trace.exists():
        print(f"trace not found: {args.trace}", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s]
    starts = [int(s) for s in args.starts.split(",") if s]
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for start in starts:
        rows_all = load_rows(args.trace, start, max(sizes)) if args.family == "trace" else []
        for backend in args.backends.split(","):
            for model in args.models.split(","):
                for n in sizes:
                    if args.family == "trace":
                        inst = window_instance(rows_all[:n], args.ms_per_unit, load=args.load)
                    else:
                        inst = def4_instance(n, seed=start)
                    rec = {"family": args.family, "load": args.load, "start": start, "backend": backend, "model": model, "n": n,
                           **run_one(inst, backend, model, args.max_seconds, args.workers)}
                    records.append(rec)
                    print(json.dumps({k: v for k, v in rec.items() if k != "anytime"}), flush=True)
                    if not args.no_stop and rec["status"] != "OPTIMAL":
                        break
    meta = {"family": args.family, "load": args.load, "max_seconds": args.max_seconds, "workers": args.workers, "ms_per_unit": args.ms_per_unit,
            "objective": "max-ttft", "sizes": sizes, "starts": starts}
    stem = "scaling" if args.family == "trace" else f"scaling_{args.family}"
    if args.load is not None:
        stem += f"_load{args.load:g}"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return 0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for backend in args.backends.split(","):
        for model in args.models.split(","):
            pts = [(r["n"], r["wall_s"], r["status"]) for r in records
                   if r["backend"] == backend and r["model"] == model and r["status"] != "REFUSED"]
            if not pts:
                continue
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{backend}/{model}")
            for nn, w, s in pts:
                if s != "OPTIMAL":
                    ax.plot([nn], [w], marker="x", color=line.get_color(), markersize=12)
    ax.axhline(args.max_seconds, color="grey", ls=":", lw=1)
    ax.set_xlabel("window size n (requests)")
    ax.set_ylabel("wall seconds to proven optimum (x = limit hit)")
    ax.set_yscale("log")
    ax.set_title("min max TTFT: " + ("Mooncake windows (block granularity)" if args.family == "trace"
                                      else "shuffled Definition-4 instances"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / f"{stem}.png", dpi=120)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
