"""Reading and writing instances: our JSON format and Mooncake JSONL traces.

- ``.json``: prefixsched's instance format (:mod:`prefixsched.theory.model` module docstring,
  :meth:`Instance.to_dict` / :meth:`Instance.from_dict`), written canonically and atomically.
- ``.jsonl``: a Mooncake-format trace (:func:`prefixsched.reference.traces.load_mooncake`).

Every read error is an :class:`~prefixsched.errors.InputError` whose message starts with the file
(``file:line:`` for JSON syntax errors and trace lines), so the CLI can print it and exit 2. Both
formats are read through :mod:`prefixsched.validation` (bytes, JSON, number literals, ranges).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from prefixsched import validation as _v
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
        ``path: path: cannot read ...`` for a missing/unreadable file; ``path: encoding: ...`` for
        bytes that are not UTF-8; ``path:line: json: ...`` for a JSON syntax error (and
        ``path: json: ...`` for nesting deeper than
        :data:`~prefixsched.validation.MAX_JSON_DEPTH`); ``path: <field>: <problem>`` for a schema,
        range or validation error (the field as :meth:`Instance.from_dict` names it, e.g.
        ``requests[3].output_len``; number literals such as ``NaN``, ``1e400`` or a 400-digit
        integer are refused by the field that holds them).
    """
    name = os.fspath(path)
    try:
        text = _v.read_text(name, "instance")
    except InputError as e:
        raise InputError(e.field, e.problem, e.where or name) from None
    data = _v.parse_json(text, name)
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
        ignored (so a CLI can pass its unset options through). For a ``.json`` instance
        ``max_requests`` keeps its first M requests, as for a trace; ``clients``, ``strategy`` and
        ``block_size`` do not apply to it (it names its clients and holds its prompts) and raise
        :class:`InputError` naming the option, never silently ignored. Unknown option names are
        always an error.

    Raises
    ------
    InputError
        Unknown suffix (``path``), an unknown option or one that does not apply to the format (its
        name), or any error of the two loaders.
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
        for k in sorted(set(given) - {"max_requests"}):
            raise InputError(k, f"does not apply to a .json instance ({name!r} names its own clients and prompts)")
        inst = load_instance(name)
        m = given.get("max_requests")
        if m is not None:
            _v.integer(m, "max_requests", lo=1)
        if (m is None or m >= len(inst.requests)) and limits is None and cost_model is None:
            return inst
        return dataclasses.replace(
            inst,
            requests=inst.requests[:m] if m is not None else inst.requests,
            limits=limits if limits is not None else inst.limits,
            cost_model=cost_model if cost_model is not None else inst.cost_model,
        )
    raise InputError("path", f"unknown file type {suffix or '(none)'!r} of {name!r}: expected .jsonl or .json")
