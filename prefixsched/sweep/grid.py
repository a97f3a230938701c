"""Sweep grids: a TOML file or a dict describing cells, expanded into a list of cell dicts.

Format (TOML; the same structure as a Python dict for :func:`expand`)::

    name = "qu-sweep"          # optional, shown on the progress bar and in sweep.json
    kind = "simulate"          # default kind of every cell: "simulate" or "solve"

    [base]                     # every cell starts from these keys
    workload = "default"
    clients = 8
    n_requests = 2000

    [grid]                     # cartesian product; the first axis varies slowest
    policy = ["lpm", "vtc", "dlpm"]
    "policy_params.quantum" = [1000, 8000]     # a dotted key sets a nested table entry
    system = [                                  # a table-valued axis: each value is merged
      { label = "D2LPM", policy = "dlpm", dispatch = "d2lpm" },
      { label = "RR+LPM", policy = "lpm", dispatch = "round-robin" },
    ]

    [[exclude]]                # drop the cells matching every key of one exclude table
    system = "RR+LPM"          # a table-valued axis matches by its label
    workers = 1

    [[cells]]                  # extra explicit cells (base applies to them too)
    policy = "fcfs"

Decisions:

- A table-valued axis ``X`` merges the value's keys (except ``label``) into the cell and records
  ``tags[X] = label`` (the value's position if it has no ``label``); the tag is a column of the
  output table and can be matched by ``exclude``.
- A table value (``workload_params = {...}``) merges key by key into the table already there
  (from ``base``), it does not replace it.
- Cell order is the grid order (cartesian product, first axis slowest), then ``[[cells]]`` in file
  order. Excludes apply to both. Two identical cells are kept once (the first).
- Keys are validated by :mod:`prefixsched.sweep.cells` when the sweep starts (all cells, before
  any runs), so a typo fails in the first second, naming the cell and the key.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from pathlib import Path
from typing import Any

from prefixsched.errors import InputError

__all__ = ["load_grid", "expand", "set_dotted", "canonical"]

_TOP_KEYS = {"name", "kind", "base", "grid", "exclude", "cells", "description"}


def load_grid(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a grid file (``.toml``; ``.json`` also accepted) into a dict for :func:`expand`.

    Raises
    ------
    InputError
        Missing file, unknown suffix, or a syntax error (with the parser's message).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("grid", f"no such file: {path}")
    suffix = p.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # pragma: no cover - Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError:
                raise InputError("grid", "reading TOML needs Python >= 3.11 (tomllib) or the tomli package") from None
        try:
            with open(p, "rb") as fh:
                return tomllib.load(fh)
        except tomllib.TOMLDecodeError as e:
            raise InputError("grid", f"{path}: {e}") from None
    if suffix == ".json":
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise InputError("grid", f"{path}: {e}") from None
    raise InputError("grid", f"unknown grid file type {suffix!r} (use .toml or .json): {path}")


def set_dotted(cell: dict[str, Any], key: str, value: Any) -> None:
    """``cell["a"]["b"] = value`` for ``key = "a.b"`` (creating tables), else ``cell[key] = value``."""
    parts = key.split(".")
    d = cell
    for part in parts[:-1]:
        nxt = d.get(part)
        if nxt is None:
            nxt = d[part] = {}
        elif not isinstance(nxt, dict):
            raise InputError(key, f"{part!r} is not a table (it is {nxt!r})")
        d = nxt
    d[parts[-1]] = copy.deepcopy(value)


def _merge(cell: dict[str, Any], items: dict[str, Any]) -> None:
    """Set every key of ``items``; a table merged onto a table merges key by key."""
    for k, v in items.items():
        if isinstance(v, dict) and isinstance(cell.get(k), dict):
            _merge(cell[k], v)
        else:
            set_dotted(cell, k, v)


def _matches(cell: dict[str, Any], pattern: dict[str, Any]) -> bool:
    tags = cell.get("tags", {})
    for k, v in pattern.items():
        if k in tags:
            have = tags[k]
        else:
            have = cell
            for part in k.split("."):
                if not isinstance(have, dict) or part not in have:
                    return False
                have = have[part]
        if have != v:
            return False
    return True


def canonical(obj: Any) -> str:
    """Canonical JSON of a cell (sorted keys; non-finite floats as ``{"float": "inf"}``): equal
    cells give equal strings, across processes and machines."""

    def fix(x: Any) -> Any:
        if isinstance(x, float) and x != x or isinstance(x, float) and x in (float("inf"), float("-inf")):
            return {"float": repr(x)}
        if isinstance(x, dict):
            return {str(k): fix(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [fix(v) for v in x]
        return x

    return json.dumps(fix(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def expand(grid: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells of ``grid`` (module docstring), each a fresh dict; a list of cell dicts is
    returned as copies, unchanged.

    Raises
    ------
    InputError
        An unknown top-level key, an axis that is not a non-empty list, or an empty result.
    """
    if isinstance(grid, list):
        cells = [copy.deepcopy(c) for c in grid]
        for i, c in enumerate(cells):
            if not isinstance(c, dict):
                raise InputError(f"cells[{i}]", f"must be a table, got {type(c).__name__}")
        if not cells:
            raise InputError("grid", "no cells")
        return cells
    if not isinstance(grid, dict):
        raise InputError("grid", f"must be a table or a list of cells, got {type(grid).__name__}")
    for k in grid:
        if k not in _TOP_KEYS:
            raise InputError(k, f"unknown top-level key of a grid (known: {', '.join(sorted(_TOP_KEYS))})")
    base = grid.get("base", {})
    if not isinstance(base, dict):
        raise InputError("base", "must be a table")
    axes = grid.get("grid", {})
    if not isinstance(axes, dict):
        raise InputError("grid", "must be a table of axes")
    names = list(axes)
    for n in names:
        vals = axes[n]
        if not isinstance(vals, list) or not vals:
            raise InputError(f"grid.{n}", f"must be a non-empty list, got {vals!r}")
    excludes = grid.get("exclude", [])
    if isinstance(excludes, dict):
        excludes = [excludes]
    extra = grid.get("cells", [])
    if not isinstance(extra, list):
        raise InputError("cells", "must be a list of tables ([[cells]])")

    def start() -> dict[str, Any]:
        c: dict[str, Any] = {}
        if "kind" in grid:
            c["kind"] = grid["kind"]
        _merge(c, base)
        return c

    out: list[dict[str, Any]] = []
    seen: set[str] = set()

    def add(cell: dict[str, Any]) -> None:
        if any(_matches(cell, ex) for ex in excludes):
            return
        key = canonical(cell)
        if key in seen:
            return
        seen.add(key)
        out.append(cell)

    if names:
        for combo in itertools.product(*(range(len(axes[n])) for n in names)):
            cell = start()
            for n, i in zip(names, combo):
                v = axes[n][i]
                if isinstance(v, dict):
                    v = dict(v)
                    label = v.pop("label", i)
                    _merge(cell, v)
                    cell.setdefault("tags", {})[n] = label
                else:
                    set_dotted(cell, n, v)
            add(cell)
    elif not extra:
        add(start())
    for i, c in enumerate(extra):
        if not isinstance(c, dict):
            raise InputError(f"cells[{i}]", f"must be a table, got {type(c).__name__}")
        cell = start()
        _merge(cell, c)
        add(cell)
    if not out:
        raise InputError("grid", "the grid has no cells (every cell excluded?)")
    return out
