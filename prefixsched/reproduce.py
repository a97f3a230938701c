"""``prefixsched reproduce PAPER``: regenerate a paper's tables and figures, as sweeps.

Registry
--------
A reproduction is a function ``main(argv: list[str]) -> int`` that accepts at least ``--quick``,
``--out DIR``, ``--seed N`` and the sweep backend options
(:func:`prefixsched.sweep.cli.add_backend_arguments`: ``--jobs``, ``--ray``, ``--ray-address``,
``--cache``, ``--no-cache``, ``--no-progress``, ``--retry-failed``). Reproductions come from:

1. the source checkout: every ``papers/<name>/reproduce.py`` beside the package (the
   repository's ``papers/`` directory) is the reproduction ``<name>``; the file is imported only
   when it is run, and it registers itself by calling :func:`register` at import (a file that
   does not, but defines ``main``, is taken as is);
2. the entry-point group ``prefixsched.reproductions`` (``name = "module:main"``), for
   reproductions shipped by other packages;
3. :func:`register` called by any code before :func:`get`.

So adding a paper is adding ``papers/<name>/reproduce.py`` (the lead's ``fastswitch``) or an
entry point; nothing here changes. A name registered twice by different functions raises.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from prefixsched.errors import InputError

__all__ = [
    "Reproduction", "register", "get", "available", "papers_dir", "add_parser", "cmd_reproduce", "PAPER_SETUP", "pinned",
]

#: The setup the papers' committed results were made with (before issues #8 and #9), as sweep-cell
#: keys: the ``ideal`` engine (the papers' own abstraction of a server) and the ``linear`` cost
#: profile (``CostModel()``, ``Limits()``: a 480k-token pool, 256 running requests). Decision: the
#: reproductions keep it so that their committed numbers stay reproducible byte for byte; the
#: SGLang-engine view of the headline claims is ``papers/engines/``.
PAPER_SETUP: dict[str, Any] = {"profile": "linear", "engine": "ideal"}


def pinned(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``cells`` on :data:`PAPER_SETUP` (a cell's own keys win). Returns new dicts."""
    return [{**PAPER_SETUP, **c} for c in cells]


@dataclass(frozen=True)
class Reproduction:
    name: str
    main: Callable[[list[str]], int]
    description: str = ""


_REGISTRY: dict[str, Reproduction] = {}


def register(name: str, main: Callable[[list[str]], int], *, description: str = "") -> Reproduction:
    """Register ``main`` as the reproduction ``name`` (idempotent for the same function).

    Raises
    ------
    ValueError
        If ``name`` is empty or already registered to another function.
    """
    if not name:
        raise ValueError("a reproduction needs a name")
    old = _REGISTRY.get(name)
    if old is not None and getattr(old.main, "__code__", None) is not getattr(main, "__code__", None):
        raise ValueError(f"duplicate reproduction name {name!r}")
    rep = Reproduction(name, main, description)
    _REGISTRY[name] = rep
    return rep


def papers_dir() -> Path | None:
    """The repository's ``papers/`` directory beside the installed package, if there is one."""
    p = Path(__file__).resolve().parent.parent / "papers"
    return p if p.is_dir() else None


def _files() -> dict[str, Path]:
    d = papers_dir()
    if d is None:
        return {}
    return {f.parent.name: f for f in sorted(d.glob("*/reproduce.py"))}


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in metadata.entry_points(group="prefixsched.reproductions")}


def _first_line(path: Path) -> str:
    import ast

    try:
        doc = ast.get_docstring(ast.parse(path.read_text()))
    except (OSError, SyntaxError):
        return ""
    return " ".join((doc or "").split("\n\n")[0].split())


def available() -> dict[str, str]:
    """``{name: description}`` of every known reproduction, sorted by name (nothing imported)."""
    out = {n: r.description for n, r in _REGISTRY.items()}
    for n, f in _files().items():
        out.setdefault(n, _first_line(f))
    for n, ep in _entry_points().items():
        out.setdefault(n, f"entry point {ep.value}")
    return dict(sorted(out.items()))


def get(name: str) -> Reproduction:
    """The reproduction ``name`` (importing its file or entry point if needed).

    Raises
    ------
    InputError
        Unknown name (listing the known ones), or a paper file without ``main``.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    files = _files()
    if name in files:
        path = files[name]
        spec = importlib.util.spec_from_file_location(f"prefixsched_papers_{name}", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        if name in _REGISTRY:
            return _REGISTRY[name]
        main = getattr(mod, "main", None)
        if main is None:
            raise InputError("paper", f"{path} neither registers a reproduction nor defines main()")
        return register(name, main, description=_first_line(path))
    eps = _entry_points()
    if name in eps:
        return register(name, eps[name].load(), description=f"entry point {eps[name].value}")
    known = ", ".join(available()) or "none (no papers/ directory beside the package)"
    raise InputError("paper", f"unknown reproduction {name!r}; known: {known}")


def cmd_reproduce(args: argparse.Namespace) -> int:
    if args.list:
        for n, d in available().items():
            print(f"{n:<12} {d}")
        return 0
    if args.paper is None:
        raise InputError("PAPER", f"name a paper ({', '.join(available())}) or use --list")
    rep = get(args.paper)
    argv: list[str] = []
    if args.quick:
        argv.append("--quick")
    if args.out is not None:
        argv += ["--out", args.out]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    argv += ["--jobs", str(args.jobs)]
    if args.ray:
        argv.append("--ray")
    if args.ray_address:
        argv += ["--ray-address", args.ray_address]
    if args.cache is not None:
        argv += ["--cache", args.cache]
    for flag in ("no_cache", "retry_failed", "no_progress"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    extra = list(args.extra or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    return int(rep.main(argv + extra) or 0)


def add_parser(sub: Any) -> None:
    """Register ``reproduce`` on the CLI's subparsers."""
    from prefixsched.sweep.cli import add_backend_arguments

    s = sub.add_parser(
        "reproduce",
        help="regenerate a paper's tables and figures (dlpm, klpm, vtc, ...) as sweeps",
        description=(
            "Run the reproduction of PAPER (papers/<PAPER>/reproduce.py in a source checkout, or an entry point of "
            "the group prefixsched.reproductions): its sweeps run on local processes or Ray, cached, and its JSON, "
            "PNG and tables are written to papers/<PAPER>/results (or --out). Options after '--' go to the paper's "
            "own script (e.g. -- --trace FILE)."
        ),
    )
    s.add_argument("paper", nargs="?", metavar="PAPER", help="the paper (see --list)")
    s.add_argument("--list", action="store_true", help="list the known reproductions and exit (default: run the one named)")
    s.add_argument("--quick", action="store_true", help="the reduced form, a minute or two (default: the full run)")
    s.add_argument("--out", default=None, metavar="DIR", help="output directory (default: papers/<PAPER>/results)")
    s.add_argument("--seed", type=int, default=None, help="workload seed (default: the paper script's, 0)")
    add_backend_arguments(s, cache_default="$PREFIXSCHED_CACHE or ~/.cache/prefixsched/sweep")
    s.add_argument("extra", nargs=argparse.REMAINDER, help="options passed to the paper's script after '--'")
    s.set_defaults(func=cmd_reproduce)
