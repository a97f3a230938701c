"""Reading and writing instances: our JSON format and Mooncake JSONL traces.

- ``.json``: prefixsched's instance format (:mod:`prefixsched.theory.model` module docstring,
  :meth:`Instance.to_dict` / :meth:`Instance.from_dict`), written canonically and atomically.
- ``.jsonl``: a Mooncake-format trace (:func:`prefixsched.reference.traces.load_mooncake`).

Every read error is an :class:`~prefixsched.errors.InputError` whose message starts with the file
(``file:line:`` for JSON syntax errors and trace lines), so the CLI can print it and exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from prefixsched._io import write_json
from prefixsched.errors import InputError
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits

__all__ = ["load_instance", "save_instance", "load_any"]


def load_instance(path: str | os.PathLike[str]) -> Instance:
    """Read an instance in prefixsched's JSON format.

    Raises
    ------
    InputError
        ``path: path: cannot read ...`` for a missing/unreadable file; ``path:line: json: ...`` for
        a JSON syntax error; ``path: <field>: <problem>`` for a schema or validation error
        (the field as :meth:`Instance.from_dict` names it, e.g. ``requests[3].output_len``).
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise InputError("path", f"cannot read instance {name!r}: {e.strerror}", name) from None
    except UnicodeDecodeError as e:
        raise InputError("path", f"not UTF-8 text ({e.reason} at byte {e.start})", name) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError("json", f"{e.msg} (column {e.colno})", f"{name}:{e.lineno}") from None
    try:
        return Instance.from_dict(data)
    except InputError as e:
        if e.where:
            raise
        raise InputError(e.field, e.problem, name) from None


def save_instance(path: str | os.PathLike[str], instance: Instance) -> None:
    """Write ``instance`` as canonical JSON (sorted keys; same instance, same bytes), atomically
    (:func:`prefixsched._io.write_json`: the file is either the old one or the complete new one)."""
    write_json(path, instance.to_dict())


def load_any(
    path: str | os.PathLike[str],
    *,
    limits: Limits | None = None,
    cost_model: CostModel | None = None,
    **mooncake_kwargs: Any,
) -> Instance:
    """Load ``path`` by its suffix: ``.jsonl`` -> Mooncake trace, ``.json`` -> instance format.

    Parameters
    ----------
    limits, cost_model:
        When given, they replace the file's own (for ``.json``) or the trace defaults (``.jsonl``).
    **mooncake_kwargs:
        ``clients``, ``strategy``, ``block_size``, ``max_requests`` of
        :func:`~prefixsched.reference.traces.load_mooncake`. A keyword whose value is ``None`` is
        ignored (so a CLI can pass its unset options through). A ``.json`` instance already names
        its clients and holds its requests, so these options do not apply to it and are ignored
        (decided so that one CLI command line serves both formats); unknown option names are
        always an error.

    Raises
    ------
    InputError
        Unknown suffix (``path``), an unknown option (its name), or any error of the two loaders.
    """
    from prefixsched.reference.traces import load_mooncake

    given = {k: v for k, v in mooncake_kwargs.items() if v is not None}
    known = {"clients", "strategy", "block_size", "max_requests"}
    for k in given:
        if k not in known:
            raise InputError(k, f"unknown loader option (known: {', '.join(sorted(known))})")
    name = os.fspath(path)
    suffix = os.path.splitext(name)[1].lower()
    if suffix == ".jsonl":
        return load_mooncake(name, limits=limits, cost_model=cost_model, **given)
    if suffix == ".json":
        inst = load_instance(name)
        if limits is None and cost_model is None:
            return inst
        return dataclasses.replace(
            inst,
            limits=limits if limits is not None else inst.limits,
            cost_model=cost_model if cost_model is not None else inst.cost_model,
        )
    raise InputError("path", f"unknown file type {suffix or '(none)'!r} of {name!r}: expected .jsonl or .json")
