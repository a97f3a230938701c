"""The import layering of DESIGN.md, checked (import-linter contracts in pyproject.toml), and no
import circles anywhere in the package (grimp's import graph, cycles found with networkx).

grimp reads every import statement, including those under ``if TYPE_CHECKING:`` and inside
functions, so a layer cannot reach upwards even for type hints or lazily.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    # in a subprocess: import-linter reconfigures logging, which would silence other tests' loggers
    code = (
        "import sys; from importlinter import cli; "
        f"sys.exit(cli.lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


def test_no_import_circles():
    import grimp

    g = grimp.build_graph("prefixsched")
    graph = nx.DiGraph()
    for m in g.modules:
        for d in g.find_modules_directly_imported_by(m):
            graph.add_edge(m, d)
    cycles = sorted((sorted(c) for c in nx.simple_cycles(graph)), key=len)
    assert cycles == [], f"import circles: {cycles[:5]}"


def test_the_contracts_are_not_vacuous():
    # the layers contract names every top-level part of the package that has code
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    layers = conf["tool"]["importlinter"]["contracts"][0]["layers"]
    named = {part.strip() for layer in layers for part in layer.split("|")}
    pkg = ROOT / "prefixsched"
    parts = {f"prefixsched.{p.stem}" for p in pkg.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    utilities = {"prefixsched.errors", "prefixsched._io", "prefixsched._table", "prefixsched._argtypes", "prefixsched.validation"}
    assert parts - utilities <= named, f"not placed in a layer: {sorted(parts - utilities - named)}"
    if not named <= parts:
        pytest.fail(f"layers name modules that do not exist: {sorted(named - parts)}")


def test_utilities_import_nothing_of_the_layers():
    # errors, validation, _io and _table sit below theory: they may import only each other
    import grimp

    g = grimp.build_graph("prefixsched")
    utilities = {"prefixsched.errors", "prefixsched._io", "prefixsched._table", "prefixsched._argtypes", "prefixsched.validation"}
    for m in utilities:
        deps = {d for d in g.find_modules_directly_imported_by(m) if d.startswith("prefixsched")}
        assert deps <= utilities, f"{m} imports {sorted(deps - utilities)}"
