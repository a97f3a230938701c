"""Planted semantic mutants (issue #13): apply each to a throw-away copy and run the tests.

A mutant is a small JSON file under ``benchmarks/mutants/`` (one per mutant)::

    {"id": "vtc-lift-to-max",
     "file": "prefixsched/reference/policies/vtc.py",
     "edits": [{"old": "<exact snippet>", "new": "<replacement>"}, ...],
     "description": "what a careful developer got wrong",
     "caught_by": ["INV-28 lockstep vtc", "INV-23 VTC lift"],
     "tests": ["tests/test_lockstep_oracles.py"]}      # optional: the named subset

The edits are SEARCH/REPLACE pairs, not diffs, so a mutant survives unrelated edits of its file;
each ``old`` must occur **exactly once** in the file, otherwise the run stops with an error
naming the mutant (a stale mutant is a broken benchmark, not a survivor).

For every mutant: the repository (tracked and untracked, non-ignored files: ``git ls-files -co
--exclude-standard``) is copied to a temporary directory, the edits are applied there, and
``python -m pytest -x -q -p no:cacheprovider TESTS`` runs in the copy with
``PYTHONPATH=<copy>`` and the hypothesis ``ci`` profile (derandomised: a kill is reproducible),
with shrinking switched off in the copy's ``tests/conftest.py`` (shrinking a failure only turns a
kill into a timeout). ``TESTS`` is ``tests/`` (the whole default suite) unless ``--subset`` asks
for the mutant's own ``tests``; ``tests/test_semantic_mutants.py`` is always left out (it checks
that each mutant still applies to the tree, which a mutated copy fails by construction). A mutant is **killed** if pytest fails, **timeout** (counted as
killed, as mutmut does) if it runs past ``--timeout`` seconds, **survived** if the tests pass.
Before the mutants, the unmutated copy must pass the same tests (``--no-baseline`` skips it).
The repository itself is never modified.

Usage::

    python benchmarks/run_semantic_mutants.py                       # every mutant, whole suite
    python benchmarks/run_semantic_mutants.py --subset              # each mutant's named tests
    python benchmarks/run_semantic_mutants.py vtc-lift-to-max dlpm-charges-prompt --json out.json
    python benchmarks/run_semantic_mutants.py --check               # only check the mutants apply

Exit status: 0 if every mutant was killed, 1 if some survived, 2 on a bad mutant or a failing
baseline. Results and the kill rate are in ``benchmarks/mutation.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "benchmarks" / "mutants"
REQUIRED = ("id", "file", "description", "caught_by")

#: appended to the copy's tests/conftest.py: the ci profile without the shrink phase
NO_SHRINK = """

# --- added by benchmarks/run_semantic_mutants.py (mutant copy only) ---
from hypothesis import Phase as _Phase  # noqa: E402

settings.register_profile(
    "mutation", settings.get_profile("ci"), phases=[_Phase.explicit, _Phase.reuse, _Phase.generate]
)
settings.load_profile("mutation")
"""


class MutantError(Exception):
    """A mutant file is malformed or does not apply (message names the mutant)."""


def load_mutant(path: Path) -> dict[str, Any]:
    """Read and validate one mutant file.

    Raises
    ------
    MutantError
        Missing field, no edits, an edit without ``old``/``new``, or ``old == new``.
    """
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise MutantError(f"{path.name}: cannot read: {e}") from None
    if not isinstance(m, dict):
        raise MutantError(f"{path.name}: not a JSON object")
    for k in REQUIRED:
        if not m.get(k):
            raise MutantError(f"{path.name}: field {k!r} is missing or empty")
    if m["id"] != path.stem:
        raise MutantError(f"{path.name}: id {m['id']!r} differs from the file name")
    edits = m.get("edits")
    if edits is None and "old" in m:
        edits = [{"old": m["old"], "new": m.get("new")}]
    if not isinstance(edits, list) or not edits:
        raise MutantError(f"{path.name}: needs 'edits' (a non-empty list) or 'old'/'new'")
    for i, e in enumerate(edits):
        if not isinstance(e, dict) or not isinstance(e.get("old"), str) or not isinstance(e.get("new"), str):
            raise MutantError(f"{path.name}: edits[{i}] needs string 'old' and 'new'")
        if not e["old"] or e["old"] == e["new"]:
            raise MutantError(f"{path.name}: edits[{i}]: 'old' is empty or equal to 'new'")
    m["edits"] = edits
    m.setdefault("tests", [])
    return m


def apply_mutant(m: dict[str, Any], root: Path) -> None:
    """Apply ``m``'s edits to the file under ``root``, in order.

    Raises
    ------
    MutantError
        If the file is missing or an ``old`` snippet does not occur exactly once (counted after
        the previous edits).
    """
    path = root / m["file"]
    if not path.is_file():
        raise MutantError(f"mutant {m['id']!r}: file {m['file']!r} does not exist")
    text = path.read_text(encoding="utf-8")
    for i, e in enumerate(m["edits"]):
        n = text.count(e["old"])
        if n != 1:
            raise MutantError(
                f"mutant {m['id']!r}: edits[{i}]['old'] occurs {n} times in {m['file']} (must be exactly once): "
                f"{e['old'][:80]!r}"
            )
        text = text.replace(e["old"], e["new"])
    path.write_text(text, encoding="utf-8")


def repo_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True, capture_output=True
    ).stdout.decode()
    return sorted(f for f in out.split("\0") if f and (root / f).is_file())


def make_copy(root: Path, dest: Path, files: list[str]) -> None:
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, target)
    conf = dest / "tests" / "conftest.py"
    conf.write_text(conf.read_text(encoding="utf-8") + NO_SHRINK, encoding="utf-8")


def run_tests(copy: Path, tests: list[str], timeout: float) -> tuple[str, float, str]:
    """``(status, seconds, tail of the output)``, status killed / survived / timeout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy)
    env["PREFIXSCHED_HYPOTHESIS_PROFILE"] = "ci"
    env["MPLBACKEND"] = "Agg"
    env.pop("PREFIXSCHED_SLOW", None)
    # test_semantic_mutants.py checks that every mutant applies to the tree: in a mutated copy it
    # fails by construction, which would count as a kill
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
           "--ignore=tests/test_semantic_mutants.py", *tests]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, ""
    dt = time.perf_counter() - t0
    out = (p.stdout + p.stderr).strip().splitlines()
    tail = "\n".join(out[-3:])
    if p.returncode == 0:
        return "survived", dt, tail
    if p.returncode in (4, 5):  # usage error / nothing collected: not a verdict
        raise MutantError(f"pytest could not run {tests} (exit {p.returncode}): {tail}")
    failed = next((ln for ln in out if ln.startswith("FAILED") or ln.startswith("ERROR")), tail)
    return "killed", dt, failed


def check_copy_imports_itself(copy: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(copy))
    got = subprocess.run(
        [sys.executable, "-c", "import prefixsched, sys; sys.stdout.write(prefixsched.__file__)"],
        cwd=copy, env=env, capture_output=True, text=True, check=True,
    ).stdout
    if not Path(got).resolve().is_relative_to(copy.resolve()):
        raise MutantError(f"the copy imports prefixsched from {got}, not from the copy {copy}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mutants", nargs="*", help="mutant ids (default: every file in benchmarks/mutants/)")
    ap.add_argument("--subset", action="store_true", help="run each mutant's own 'tests' instead of tests/ (default: off)")
    ap.add_argument("--tests", nargs="+", default=None, help="run these pytest paths for every mutant (default: tests/)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant before it counts as a timeout (default: 900)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run of the unmutated copy (default: run it)")
    ap.add_argument("--check", action="store_true", help="only validate the mutants and check they apply (default: off)")
    ap.add_argument("--json", metavar="FILE", default=None, help="write the results as JSON ('-' = stdout; default: none)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr (default: shown)")
    args = ap.parse_args(argv)

    try:
        paths = sorted(MUTANTS.glob("*.json"))
        if args.mutants:
            by_id = {p.stem: p for p in paths}
            missing = [m for m in args.mutants if m not in by_id]
            if missing:
                raise MutantError(f"unknown mutant(s) {missing}; known: {sorted(by_id)}")
            paths = [by_id[m] for m in args.mutants]
        mutants = [load_mutant(p) for p in paths]
        files = repo_files(ROOT)
        with tempfile.TemporaryDirectory(prefix="prefixsched-mut-") as tmp:
            check_root = Path(tmp) / "check"
            for m in mutants:  # every mutant applies to a fresh copy of its file, before anything runs
                src = ROOT / m["file"]
                dst = check_root / m["file"]
                dst.parent.mkdir(parents=True, exist_ok=True)
                if src.is_file():
                    shutil.copy2(src, dst)
                apply_mutant(m, check_root)
        if args.check:
            print(f"{len(mutants)} mutants apply")
            return 0

        def tests_for(m: dict[str, Any]) -> list[str]:
            if args.tests:
                return list(args.tests)
            if args.subset and m["tests"]:
                return list(m["tests"])
            return ["tests/"]

        results: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="prefixsched-mut-") as tmp:
            base = Path(tmp) / "base"
            make_copy(ROOT, base, files)
            check_copy_imports_itself(base)
            if not args.no_baseline:
                for tests in sorted({tuple(tests_for(m)) for m in mutants}):
                    status, dt, tail = run_tests(base, list(tests), args.timeout)
                    print(f"baseline {' '.join(tests)}: {'passes' if status == 'survived' else status} ({dt:.0f} s)", file=sys.stderr)
                    if status != "survived":
                        raise MutantError(f"the unmutated copy does not pass {list(tests)}: {tail}")
            bar = None
            if not args.no_progress:
                try:
                    from tqdm import tqdm

                    bar = tqdm(total=len(mutants), unit="mutant", file=sys.stderr)
                except ImportError:  # pragma: no cover - tqdm is a dependency
                    bar = None
            for m in mutants:
                work = Path(tmp) / m["id"]
                shutil.copytree(base, work)
                apply_mutant(m, work)
                tests = tests_for(m)
                status, dt, tail = run_tests(work, tests, args.timeout)
                shutil.rmtree(work)
                results.append({
                    "id": m["id"], "file": m["file"], "status": status, "seconds": round(dt, 1),
                    "tests": tests, "first_failure": tail if status == "killed" else None,
                    "caught_by": m["caught_by"],
                })
                if bar is not None:
                    bar.set_postfix_str(f"{m['id']}: {status}")
                    bar.update(1)
            if bar is not None:
                bar.close()
    except MutantError as e:
        print(f"run_semantic_mutants: error: {e}", file=sys.stderr)
        return 2

    n = len(results)
    killed = sum(r["status"] == "killed" for r in results)
    timeouts = sum(r["status"] == "timeout" for r in results)
    survived = [r["id"] for r in results if r["status"] == "survived"]
    w = max([len(r["id"]) for r in results] + [6])
    for r in results:
        print(f"{r['id']:<{w}}  {r['status']:<8}  {r['seconds']:>6.1f} s  {r['first_failure'] or ''}")
    rate = 100.0 * (killed + timeouts) / n if n else 0.0
    print(f"killed {killed} + timeout {timeouts} of {n} mutants: {rate:.1f} %; survived: {survived or 'none'}")
    if args.json:
        summary = {"mutants": n, "killed": killed, "timeout": timeouts, "survived": survived,
                   "kill_rate_percent": round(rate, 1), "results": results}
        if args.json == "-":
            sys.stdout.write(json.dumps(summary, sort_keys=True, indent=1) + "\n")
        else:
            sys.path.insert(0, str(ROOT))
            from prefixsched._io import write_json

            write_json(args.json, summary)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
