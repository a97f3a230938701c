"""``prefixsched sweep`` and the backend options shared with ``prefixsched reproduce`` and the
paper scripts (``--jobs``, ``--ray``, ``--ray-address``, ``--cache``, ``--no-cache``,
``--no-progress``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_backend_arguments", "backend_kwargs", "add_parser", "cmd_sweep", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$PREFIXSCHED_CACHE`` or ``$XDG_CACHE_HOME/prefixsched/sweep`` (``~/.cache/...``)."""
    import os

    env = os.environ.get("PREFIXSCHED_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prefixsched" / "sweep"


def add_backend_arguments(p: argparse.ArgumentParser, *, cache_default: str = "<out>/cache") -> None:
    """Add the execution options to ``p``."""
    from prefixsched._argtypes import _positive_int
    from prefixsched.sweep.runner import default_jobs

    p.add_argument("--jobs", type=_positive_int("--jobs"), default=default_jobs(), metavar="N",
                   help="parallel processes, or CPUs of a local Ray runtime (default: %(default)s = min(cpu_count, 2)); "
                   "1 runs the cells in this process")
    p.add_argument("--ray", action="store_true", help="run the cells as Ray tasks on a local Ray runtime (pip install 'prefixsched[ray]'; default: local processes)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join the Ray cluster at ADDR (implies --ray; nodes need the same prefixsched installed; default: none)")
    p.add_argument("--cache", default=None, metavar="DIR", help=f"result cache directory (default: {cache_default})")
    p.add_argument("--no-cache", action="store_true", help="compute every cell and cache nothing (default: use the cache)")
    p.add_argument("--retry-failed", action="store_true", help="recompute cells cached as failures (default: keep their error)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: a bar on stderr)")


def backend_kwargs(args: argparse.Namespace, cache_dir: Any = None) -> dict[str, Any]:
    """Keywords of :func:`prefixsched.sweep.run` from the parsed backend options."""
    ray = bool(args.ray or args.ray_address)
    return {
        "jobs": args.jobs,
        "backend": "ray" if ray else "local",
        "ray_address": args.ray_address,
        "cache_dir": args.cache if args.cache is not None else cache_dir,
        "use_cache": not args.no_cache,
        "retry_failed": args.retry_failed,
        "progress": not args.no_progress and sys.stderr.isatty(),
    }


def cmd_sweep(args: argparse.Namespace) -> int:
    from prefixsched.sweep.grid import load_grid
    from prefixsched.sweep.runner import run

    grid = load_grid(args.grid)
    formats = tuple(args.format)
    res = run(grid, out=args.out, formats=formats, **backend_kwargs(args))
    ok = sum(r["status"] == "ok" for r in res.records)
    print(f"{res.name}: {len(res.records)} cells, {ok} ok, {len(res.failures)} failed; "
          f"computed {res.computed}, from cache {res.cached}; tables in {args.out}")
    for r in res.failures:
        print(f"  cell {r['index']} ({r['status']}): {r['error']}")
    if args.plot:
        from prefixsched.sweep import plots

        rows = res.rows()
        if args.plot == "pareto":
            fig = plots.plot_pareto(rows, x=args.x or "service_rate_client", y=args.y or "jain", by=args.by)
        elif args.plot == "metric":
            if not args.x or not args.y:
                from prefixsched.errors import InputError

                raise InputError("--plot metric", "needs --x PARAM and --y METRIC")
            fig = plots.plot_metric(rows, args.x, args.y, by=args.by)
        else:
            fig = plots.plot_worker_load(rows, label=args.by or "dispatch")
        plots.save_png(fig, Path(args.out) / f"{args.plot}.png")
    return 1 if res.failures and args.strict else 0


def add_parser(sub: Any) -> None:
    """Register ``sweep`` on the CLI's subparsers."""
    s = sub.add_parser(
        "sweep",
        help="run a grid of simulations or exact solves (local processes or Ray), cached, into one table",
        description=(
            "Expand the grid file (TOML; see prefixsched/sweep/grid.py for the format and prefixsched/sweep/cells.py "
            "for the cell parameters), run every cell not in the cache, and write OUT/results.{parquet,csv} (one row "
            "per cell: parameters and every summary metric), OUT/per_client.{parquet,csv} and OUT/sweep.json. "
            "A re-run recomputes nothing; an interrupted run resumes. Failed cells are listed with their error."
        ),
    )
    s.add_argument("grid", metavar="GRID.toml", help="the grid file")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory (tables; the cache defaults to DIR/cache)")
    s.add_argument("--format", nargs="+", choices=["parquet", "csv"], default=["parquet", "csv"],
                   help="table formats (default: parquet csv; parquet needs pyarrow)")
    s.add_argument("--plot", choices=["pareto", "metric", "worker-load"], default=None,
                   help="also draw OUT/<kind>.png: Pareto front of --y against --x, --y against --x, or requests per worker (default: no plot)")
    s.add_argument("--x", default=None, help="x column of --plot (pareto default: service_rate_client)")
    s.add_argument("--y", default=None, help="y column of --plot (pareto default: jain)")
    s.add_argument("--by", default="policy", help="group column of --plot (default: %(default)s)")
    s.add_argument("--strict", action="store_true", help="exit 1 if any cell failed (default: exit 0, failures listed)")
    add_backend_arguments(s)
    s.set_defaults(func=cmd_sweep)
