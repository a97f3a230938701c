"""Policy registry: names -> policy classes.

Built-in policies live one per module in this package and register themselves with
:func:`register`. Third-party policies register through the entry-point group
``prefixsched.policies`` (each entry point loads a :class:`~.base.Policy` subclass); they are read
the first time the registry is queried. A duplicate name raises :class:`ValueError`.

Policy specs on the CLI are ``NAME`` or ``NAME:VALUE``; the value sets the class's
``primary_param`` (``k-lpm:4`` -> ``k=4``, ``dlpm:8000`` -> ``quantum=8000``).
"""

from __future__ import annotations

import importlib
import inspect
from importlib import metadata
from typing import Any

from prefixsched.errors import InputError
from prefixsched.reference.policies.base import Decision, Policy

__all__ = ["register", "get", "create", "available", "parse_spec", "Policy", "Decision"]

_REGISTRY: dict[str, type[Policy]] = {}
_BUILTINS = ("fcfs", "lpm", "dfs_weight", "klpm", "vtc", "dlpm", "random", "preemptive")
_loaded = False


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: add ``cls`` under ``cls.name``.

    Raises
    ------
    ValueError
        If the name is empty or already registered to another class.
    """
    if not cls.name:
        raise ValueError(f"policy class {cls.__qualname__} has no name")
    other = _REGISTRY.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(
            f"duplicate policy name {cls.name!r}: {other.__module__}.{other.__qualname__} "
            f"and {cls.__module__}.{cls.__qualname__}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTINS:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:  # a built-in not written yet
            if e.name != f"{__name__}.{mod}":
                raise
    for ep in sorted(metadata.entry_points(group="prefixsched.policies"), key=lambda e: e.name):
        cls = ep.load()
        if not (inspect.isclass(cls) and issubclass(cls, Policy)):
            raise ValueError(f"entry point {ep.name!r} does not load a Policy subclass: {cls!r}")
        register(cls)


def available() -> dict[str, str]:
    """``{name: one-line description}``, sorted by name."""
    _load()
    return {n: _REGISTRY[n].description for n in sorted(_REGISTRY)}


def get(name: str) -> type[Policy]:
    """The policy class called ``name``.

    Raises
    ------
    InputError
        Naming the unknown policy and listing the known ones.
    """
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError("policy", f"unknown policy {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"NAME[:VALUE]"`` into the name and ``{primary_param: VALUE}``.

    ``VALUE`` is read as an int, else a float, else ``inf``/``infinity`` as ``math.inf``.
    """
    name, sep, value = spec.partition(":")
    cls = get(name)
    if not sep:
        return name, {}
    if cls.primary_param is None:
        raise InputError("policy", f"{name!r} takes no ':VALUE' (got {spec!r})")
    v: Any
    low = value.strip().lower()
    if low in ("inf", "infinity"):
        v = float("inf")
    else:
        try:
            v = int(value)
        except ValueError:
            try:
                v = float(value)
            except ValueError:
                raise InputError("policy", f"bad value in {spec!r}: {value!r} is not a number") from None
    return name, {cls.primary_param: v}


def create(spec: str, **params: Any) -> Policy:
    """Instantiate a policy from a spec (``"dlpm"``, ``"k-lpm:4"``) and keyword parameters.

    Keyword parameters the policy's constructor does not accept are ignored (the CLI passes
    ``quantum``, ``k`` and ``seed`` to every policy); the spec's ``:VALUE`` wins over them.
    """
    name, primary = parse_spec(spec)
    cls = get(name)
    if cls.__init__ is object.__init__:
        accepted: set[str] = set()
        accepts_any = False
    else:
        sig = inspect.signature(cls.__init__)
        accepted = set(sig.parameters) - {"self"}
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    kwargs = {k: v for k, v in params.items() if v is not None and (accepts_any or k in accepted)}
    kwargs.update(primary)
    return cls(**kwargs)
