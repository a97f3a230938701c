"""The planted semantic mutants of ``benchmarks/mutants/`` stay well-formed and applicable, and
the runner refuses a mutant whose snippet is not found exactly once (issue #13).

Running the mutants themselves takes minutes (``benchmarks/run_semantic_mutants.py``; scores in
``benchmarks/mutation.md``); one end-to-end kill is a slow test.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run_semantic_mutants.py"


def _runner():
    spec = importlib.util.spec_from_file_location("run_semantic_mutants", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


RUN = _runner()
PATHS = sorted((ROOT / "benchmarks" / "mutants").glob("*.json"))


def test_there_are_enough_mutants_across_the_layers():
    ms = [RUN.load_mutant(p) for p in PATHS]
    assert len(ms) >= 15
    files = {m["file"] for m in ms}
    for part in ("policies/dlpm.py", "policies/vtc.py", "policies/klpm.py", "cluster.py", "radix_cache.py", "metrics.py"):
        assert any(f.endswith(part) for f in files), part


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_each_mutant_applies_exactly_once_to_the_current_tree(path, tmp_path):
    m = RUN.load_mutant(path)
    src = ROOT / m["file"]
    dst = tmp_path / m["file"]
    dst.parent.mkdir(parents=True)
    dst.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    RUN.apply_mutant(m, tmp_path)
    after = dst.read_text(encoding="utf-8")
    assert after != src.read_text(encoding="utf-8")
    compile(after, str(dst), "exec")  # a mutant is a behaviour change, not a syntax error


def test_a_snippet_that_is_missing_or_repeated_is_refused(tmp_path):
    (tmp_path / "f.py").write_text("x = 1\nx = 1\ny = 2\n", encoding="utf-8")
    twice = {"id": "t", "file": "f.py", "edits": [{"old": "x = 1\n", "new": "x = 3\n"}]}
    with pytest.raises(RUN.MutantError, match=r"occurs 2 times"):
        RUN.apply_mutant(twice, tmp_path)
    missing = {"id": "t", "file": "f.py", "edits": [{"old": "z = 1\n", "new": "z = 3\n"}]}
    with pytest.raises(RUN.MutantError, match=r"occurs 0 times"):
        RUN.apply_mutant(missing, tmp_path)
    assert (tmp_path / "f.py").read_text(encoding="utf-8") == "x = 1\nx = 1\ny = 2\n"
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "bad", "file": "f.py", "description": "d", "caught_by": ["x"], "edits": []}')
    with pytest.raises(RUN.MutantError, match="non-empty list"):
        RUN.load_mutant(bad)


@pytest.mark.slow
def test_runner_kills_a_mutant_end_to_end():
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "vtc-lift-to-max", "--no-progress", "--no-baseline",
         "--tests", "tests/test_lockstep_oracles.py::test_policy_equals_its_oracle_at_every_event"],
        capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "vtc-lift-to-max  killed" in p.stdout and "100.0 %" in p.stdout
