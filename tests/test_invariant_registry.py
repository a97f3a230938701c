"""docs/invariants.md and the tests stay in lock-step (BLIS's registry test).

Fails if a test named in the registry does not exist (names collected with ``ast`` from the test
files, no import), if an entry lists no test, if an ID is duplicated, or if an invariant of the
suite (``prefixsched.testing.suite.INVARIANTS``) has no entry. A registry that parses to nothing
fails too: a guard that scanned nothing proves nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from prefixsched.testing.suite import INVARIANTS

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "docs" / "invariants.md"
HEADING = re.compile(r"^## (INV-\d+): (.+)$", re.M)
REF = re.compile(r"`(tests/[\w/]+\.py)::([\w\[\]-]+)`")


def parse_registry(text: str) -> dict[str, list[tuple[str, str]]]:
    """``{ID: [(file, test name), ...]}`` from the registry markdown."""
    heads = list(HEADING.finditer(text))
    out: dict[str, list[tuple[str, str]]] = {}
    for i, h in enumerate(heads):
        body = text[h.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        if h.group(1) in out:
            raise AssertionError(f"duplicate registry entry {h.group(1)}")
        out[h.group(1)] = REF.findall(body)
    return out


def test_names(path: Path) -> set[str]:
    """Module-level test functions, ``Test*`` classes (and assignments such as
    ``TestMachine = Machine.TestCase``), and ``Class::method`` for test methods."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names.add(node.name)
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and sub.name.startswith("test"):
                    names.add(f"{node.name}::{sub.name}")
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id.startswith("Test"):
                    names.add(t.id)
    return names


test_names.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def registry() -> dict[str, list[tuple[str, str]]]:
    return parse_registry(REGISTRY.read_text())


def test_registry_is_not_empty(registry):
    assert len(registry) >= len(INVARIANTS)
    assert sum(len(v) for v in registry.values()) > len(registry)


def test_every_invariant_lists_at_least_one_test(registry):
    empty = [inv for inv, refs in registry.items() if not refs]
    assert not empty, f"registry entries without a test: {empty}"


def test_every_listed_test_exists(registry):
    cache: dict[str, set[str]] = {}
    missing = []
    for inv, refs in registry.items():
        for file, name in refs:
            path = ROOT / file
            if not path.exists():
                missing.append(f"{inv}: {file} does not exist")
                continue
            names = cache.setdefault(file, test_names(path))
            if name.split("[")[0] not in names:
                missing.append(f"{inv}: {file}::{name}")
    assert not missing, "registry names tests that do not exist:\n" + "\n".join(missing)


def test_suite_invariants_all_have_an_entry(registry):
    assert set(INVARIANTS) <= set(registry), sorted(set(INVARIANTS) - set(registry))


def test_parser_catches_a_missing_test(tmp_path):
    fake = "## INV-1: x\n- `tests/test_invariant_registry.py::test_does_not_exist`\n## INV-2: y\nno tests\n"
    reg = parse_registry(fake)
    assert reg["INV-2"] == []
    names = test_names(Path(__file__))
    assert "test_does_not_exist" not in names and "test_every_listed_test_exists" in names
