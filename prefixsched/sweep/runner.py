"""Running a sweep: the cache, the backends (serial, local processes, Ray) and the result.

Execution model
---------------
:func:`run` expands the grid (:func:`prefixsched.sweep.grid.expand`), validates every cell, then
looks each one up in the cache; only the missing cells run. Backends:

- ``jobs = 1``: in this process, one cell after another;
- ``jobs > 1`` (default ``min(cpu_count, 2)``): a :class:`concurrent.futures.ProcessPoolExecutor`
  with ``jobs`` processes;
- ``backend = "ray"``: one Ray task per cell (``num_cpus = 1`` each). ``ray_address = None``
  starts a local runtime (``ray.init(num_cpus=jobs)``), an address joins a cluster whose nodes
  have prefixsched installed (same version: each result carries the worker's code version and a
  mismatch fails the cell). Ray is imported only here, and only when asked for.

The driver writes each result to the cache as it arrives, so an interrupted sweep keeps every
finished cell and the next run computes only the rest. Results are identical whichever backend
computed them: a cell is a pure function of its configuration and the code, every result goes
through one JSON round trip before it is used (fresh and cached results are the same objects),
and the table lists cells in grid order, never in completion order.

Cache
-----
A cell's key is the SHA-256 of the canonical JSON of ``{"cell": cell, "code": code_version()}``
(plus the trace or instance file's SHA-256 when the cell reads one). :func:`code_version` is the
package version and a hash of every ``.py`` file of the installed ``prefixsched`` package, so any
code change invalidates the cache (safe, not clever). Entries are JSON files
``<cache>/<key[:2]>/<key>.json`` written atomically. A cell that raised is cached as a failure
with its error (it would raise again on the same code); ``retry_failed=True`` reruns those. A cell
whose process died (killed, out of memory) is reported but not cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import prefixsched
from prefixsched.errors import InputError
from prefixsched.sweep.cells import execute, file_digest, validate
from prefixsched.sweep.grid import canonical, expand

__all__ = ["run", "SweepResult", "code_version", "cell_key", "default_jobs", "CACHE_FORMAT"]

CACHE_FORMAT = "prefixsched.sweep-cell/1"
_CODE_VERSION: str | None = None


def code_version() -> str:
    """``"<version>+<sha256[:16]>"`` of every ``.py`` file under the installed ``prefixsched``
    package (relative path and bytes, sorted by path); computed once per process."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        root = Path(prefixsched.__file__).resolve().parent
        h = hashlib.sha256()
        for p in sorted(root.rglob("*.py")):
            rel = p.relative_to(root).as_posix()
            h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
        _CODE_VERSION = f"{prefixsched.__version__}+{h.hexdigest()[:16]}"
    return _CODE_VERSION


def default_jobs() -> int:
    """``min(cpu_count, 2)``: the project's machines have 2 cores shared by many jobs."""
    return max(1, min(os.cpu_count() or 1, 2))


def _with_digests(cell: dict[str, Any], digests: dict[str, str]) -> dict[str, Any]:
    """The cell plus the SHA-256 of the file it reads (cached per path in ``digests``)."""
    out = dict(cell)
    for key, dkey in (("trace", "trace_sha256"), ("instance", "instance_sha256")):
        path = cell.get(key)
        if isinstance(path, str):
            if not os.path.isfile(path):
                raise InputError(key, f"no such file: {path}")
            if path not in digests:
                digests[path] = file_digest(path)
            out[dkey] = digests[path]
    return out


def cell_key(cell: dict[str, Any], code: str | None = None) -> str:
    """The cache key of a (digest-completed) cell under ``code`` (default :func:`code_version`)."""
    return hashlib.sha256(canonical({"cell": cell, "code": code or code_version()}).encode()).hexdigest()


def _roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj, allow_nan=True))


def _worker(cell: dict[str, Any], fn: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """Run one cell in whatever process this is; never raises for an error of the cell."""
    f = fn or execute
    t0 = time.perf_counter()
    try:
        res = f(cell)
        out = {"status": "ok", "result": _roundtrip(res), "error": None}
    except Exception as e:  # noqa: BLE001 - a cell's failure is data
        tb = traceback.format_exc(limit=8)
        out = {"status": "error", "result": None, "error": f"{type(e).__name__}: {e}", "traceback": tb}
    out["wall_s"] = time.perf_counter() - t0
    out["code"] = code_version()
    out["pid"] = os.getpid()
    return out


@dataclass
class SweepResult:
    """The outcome of :func:`run`.

    Attributes
    ----------
    cells:
        The expanded cells, in grid order (digest keys included).
    records:
        One dict per cell, same order: ``index``, ``key``, ``cell``, ``status`` (``ok`` /
        ``error`` / ``lost``), ``error``, ``result`` (the cell's JSON result or None), ``cached``
        (True if read from the cache).
    computed, cached:
        How many cells ran now / came from the cache.
    """

    name: str
    code: str
    cells: list[dict[str, Any]]
    records: list[dict[str, Any]]
    computed: int = 0
    cached: int = 0
    wall_s: dict[str, float] = field(default_factory=dict)

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The records whose status is not ``ok``."""
        return [r for r in self.records if r["status"] != "ok"]

    def rows(self) -> list[dict[str, Any]]:
        """The tidy table's rows (:func:`prefixsched.sweep.table.rows`)."""
        from prefixsched.sweep.table import rows

        return rows(self.records)

    def write(self, out: str | os.PathLike[str], *, formats: tuple[str, ...] = ("parquet", "csv")) -> list[Path]:
        """Write ``results.*``, ``per_client.*`` and ``sweep.json`` into ``out``
        (:func:`prefixsched.sweep.table.write_tables`). Returns the paths written."""
        from prefixsched.sweep.table import write_tables

        return write_tables(self, Path(out), formats=formats)


class _Cache:
    def __init__(self, root: Path | None) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if self.root is None:
            return None
        p = self.path(key)
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return d if d.get("format") == CACHE_FORMAT and d.get("key") == key else None

    def put(self, key: str, cell: dict[str, Any], out: dict[str, Any]) -> None:
        if self.root is None:
            return
        from prefixsched._io import atomic_write

        entry = {"format": CACHE_FORMAT, "key": key, "cell": cell, **out}
        with atomic_write(self.path(key)) as fh:
            fh.write(json.dumps(entry, allow_nan=True) + "\n")  # key order kept: results round-trip exactly


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="cell", file=sys.stderr, disable=not enabled, leave=False)


def _run_serial(todo, fn, on_done):
    for i, cell in todo:
        on_done(i, _worker(cell, fn))


def _run_processes(todo, fn, on_done, jobs):
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=jobs) as ex:
        futs = {ex.submit(_worker, cell, fn): i for i, cell in todo}
        for fut in as_completed(futs):
            i = futs[fut]
            try:
                out = fut.result()
            except BrokenProcessPool as e:
                out = {"status": "lost", "result": None, "error": f"worker process died: {e}"}
            except Exception as e:  # noqa: BLE001 - e.g. a result that does not pickle
                out = {"status": "lost", "result": None, "error": f"{type(e).__name__}: {e}"}
            on_done(i, out)


def _run_ray(todo, fn, on_done, jobs, address, init_kwargs):
    try:
        import ray
    except ModuleNotFoundError:
        raise InputError("--ray", "Ray is not installed: pip install 'prefixsched[ray]'") from None
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None:
            kw["num_cpus"] = jobs
        else:
            kw["address"] = address
        kw.update(init_kwargs or {})
        ray.init(**kw)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_worker)
        refs = {remote.remote(cell, fn): i for i, cell in todo}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                i = refs[ref]
                try:
                    out = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - worker died, object lost, ...
                    out = {"status": "lost", "result": None, "error": f"{type(e).__name__}: {e}"}
                on_done(i, out)
    finally:
        if started:
            ray.shutdown()


def run(
    grid: dict[str, Any] | list[dict[str, Any]],
    *,
    out: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    jobs: int | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    ray_init: dict[str, Any] | None = None,
    progress: bool = False,
    retry_failed: bool = False,
    cell_fn: Callable[[dict[str, Any]], Any] | None = None,
    name: str | None = None,
    formats: tuple[str, ...] = ("parquet", "csv"),
) -> SweepResult:
    """Run every cell of ``grid`` that the cache does not hold (module docstring).

    Parameters
    ----------
    grid:
        A grid dict (:mod:`prefixsched.sweep.grid`) or a list of cell dicts.
    out:
        If given, the tables are written there (:meth:`SweepResult.write`); the cache defaults to
        ``<out>/cache``.
    cache_dir:
        The cache directory; default ``<out>/cache``, or no cache without ``out``.
    use_cache:
        False: compute every cell and write nothing to the cache.
    jobs:
        Parallel processes or Ray CPUs (default :func:`default_jobs`); 1 runs in this process.
    backend:
        ``"local"`` or ``"ray"``.
    ray_address, ray_init:
        Ray cluster address (None: start a local runtime) and extra ``ray.init`` keywords.
    progress:
        A tqdm bar on stderr.
    retry_failed:
        Recompute cells cached as failures.
    cell_fn:
        Replaces :func:`prefixsched.sweep.cells.execute` (a module-level, picklable function of
        the cell dict); for tests and extensions.
    name:
        Shown on the progress bar and in ``sweep.json`` (default: the grid's ``name``).
    formats:
        Table formats written to ``out``.

    Returns
    -------
    SweepResult

    Raises
    ------
    InputError
        A bad grid or cell (before anything runs), an unknown backend, Ray not installed.
    """
    if backend not in ("local", "ray"):
        raise InputError("backend", f"must be 'local' or 'ray', got {backend!r}")
    if jobs is None:
        jobs = default_jobs()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise InputError("jobs", f"must be an integer >= 1, got {jobs!r}")
    if name is None:
        name = grid.get("name", "sweep") if isinstance(grid, dict) else "sweep"
    raw = expand(grid)
    for i, c in enumerate(raw):
        validate(c, f"cells[{i}]")
    digests: dict[str, str] = {}
    cells = [_with_digests(c, digests) for c in raw]
    code = code_version()
    keys = [cell_key(c, code) for c in cells]
    if cache_dir is None and out is not None and use_cache:
        cache_dir = Path(out) / "cache"
    cache = _Cache(Path(cache_dir) if (cache_dir is not None and use_cache) else None)
    records: list[dict[str, Any]] = [None] * len(cells)  # type: ignore[list-item]
    todo: list[tuple[int, dict[str, Any]]] = []
    n_cached = 0
    for i, (c, k) in enumerate(zip(cells, keys)):
        hit = cache.get(k)
        if hit is not None and (hit["status"] == "ok" or not retry_failed):
            records[i] = {"index": i, "key": k, "cell": c, "status": hit["status"], "error": hit.get("error"),
                          "result": hit.get("result"), "cached": True}
            n_cached += 1
        else:
            todo.append((i, c))
    bar = _progress(len(todo), name, progress)
    walls: dict[str, float] = {}

    def on_done(i: int, res: dict[str, Any]) -> None:
        k = keys[i]
        status = res["status"]
        if status != "lost" and res.get("code") not in (None, code):
            status, res = "lost", {**res, "status": "lost", "result": None,
                                   "error": f"code version mismatch: worker {res.get('code')} != driver {code}"}
        if status in ("ok", "error"):
            cache.put(k, cells[i], {kk: res.get(kk) for kk in ("status", "result", "error", "traceback", "wall_s", "code")})
        if "wall_s" in res:
            walls[k] = res["wall_s"]
        records[i] = {"index": i, "key": k, "cell": cells[i], "status": status, "error": res.get("error"),
                      "result": res.get("result"), "cached": False}
        if status != "ok":
            bar.write(f"prefixsched sweep: cell {i} failed: {res.get('error')}", file=sys.stderr)
        bar.update(1)

    try:
        if todo:
            if backend == "ray":
                _run_ray(todo, cell_fn, on_done, jobs, ray_address, ray_init)
            elif jobs == 1 or len(todo) == 1:
                _run_serial(todo, cell_fn, on_done)
            else:
                _run_processes(todo, cell_fn, on_done, min(jobs, len(todo)))
    finally:
        bar.close()
    res = SweepResult(name=name, code=code, cells=cells, records=records, computed=len(todo), cached=n_cached, wall_s=walls)
    if out is not None:
        res.write(out, formats=formats)
    return res
