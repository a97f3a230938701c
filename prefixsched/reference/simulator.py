"""Deterministic discrete-event simulator of one continuous-batching worker.

``simulate(instance, policy, engine=...)`` runs a
:class:`~prefixsched.reference.policies.base.Policy` over an
:class:`~prefixsched.theory.model.Instance` and returns a :class:`~prefixsched.theory.trace.Trace`.
Units: time in seconds (the instance's :class:`~prefixsched.theory.cost.CostModel`; with
``CostModel.token_units()`` one uncached token = one time unit), lengths in tokens.

Two engines share the policies, the radix cache, the checker and the metrics (DESIGN.md,
"Engines"):

- ``"sglang"`` (the default): schedules as SGLang 0.5.23 does: separate prefill and decode
  steps, SGLang's ``PrefillAdder`` (stop at the first misfit, chunked prefill with one chunked
  request at a time, ``new_token_ratio`` reservation with the 4096 clip and a page of slack per
  request), decode-time retraction, the native LPM order for ``lpm`` (in-batch de-prioritisation,
  stable ties, the FCFS fallback above 128 waiting requests) and its LRU refreshes.
  :mod:`prefixsched.reference.engine.sglang`.
- ``"ideal"``: the model the papers' theorems assume: mixed steps, whole-output reservation,
  skip-if-it-does-not-fit, no chunking and no retraction. :mod:`prefixsched.reference.engine.ideal`.

Each engine's phases (arrivals, scheduling, admission, forward, results) are methods of its
worker class, one place each (:mod:`prefixsched.reference.engine.core`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefixsched.errors import InputError
from prefixsched.reference.engine.core import EngineBase
from prefixsched.reference.engine.ideal import IdealBatchBuilder, IdealWorker
from prefixsched.reference.engine.snapshot import EngineSnapshot
from prefixsched.reference.policies.base import Policy
from prefixsched.theory.model import Instance
from prefixsched.theory.trace import Trace

__all__ = ["simulate", "Worker", "ENGINES", "DEFAULT_ENGINE", "BatchBuilder", "EngineSnapshot", "engine_class"]

#: The default engine of :func:`simulate`, the cluster and the CLI.
DEFAULT_ENGINE = "sglang"

BatchBuilder = IdealBatchBuilder  # historical name of the ideal engine's builder


def _engines() -> dict[str, type[EngineBase]]:
    out: dict[str, type[EngineBase]] = {"ideal": IdealWorker}
    try:
        from prefixsched.reference.engine.sglang import SGLangWorker
    except ImportError:  # pragma: no cover - while the sglang engine is being written
        return out
    out["sglang"] = SGLangWorker
    return out


ENGINES: dict[str, type[EngineBase]] = _engines()


def engine_class(engine: str) -> type[EngineBase]:
    """The worker class of ``engine`` (``"sglang"`` or ``"ideal"``).

    Raises
    ------
    InputError
        Unknown engine name.
    """
    cls = ENGINES.get(engine) if isinstance(engine, str) else None
    if cls is None:
        raise InputError("engine", f"unknown engine {engine!r}; known: {', '.join(sorted(ENGINES))}")
    return cls


def Worker(instance: Instance, policy: Policy, *, engine: str = DEFAULT_ENGINE, **kw: Any) -> EngineBase:
    """A steppable worker of ``engine`` (see :class:`~prefixsched.reference.engine.core.EngineBase`
    for the keyword arguments: ``requests=()`` for online mode, ``seed``, ``progress``,
    ``record_states``, ``log_events``, and the engine's own options, e.g. ``sglang=`` for the
    sglang engine)."""
    return engine_class(engine)(instance, policy, **kw)


def simulate(
    instance: Instance,
    policy: Policy,
    *,
    engine: str = DEFAULT_ENGINE,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    record_states: bool = False,
    **engine_options: Any,
) -> Trace:
    """Run ``policy`` on ``instance`` with ``engine`` and return the trace.

    Parameters
    ----------
    instance:
        The validated instance (requests sorted by arrival).
    policy:
        A fresh policy object (policies keep state across calls; do not reuse one across runs).
    engine:
        ``"sglang"`` or ``"ideal"`` (module docstring); recorded in ``trace.meta["engine"]``.
    seed:
        Recorded in ``trace.meta["seed"]``; the engines are deterministic.
    progress:
        Optional ``callable(done_requests, total)``, called after each step in which requests
        finished.
    record_states:
        Log ``policy.state()`` after every step in which it changed (``meta["states"]``).
    engine_options:
        Passed to the engine (the sglang engine takes ``sglang=SGLangConfig(...)`` and
        ``on_pass=callable``).

    Returns
    -------
    Trace
        Same instance, engine, policy parameters and seed give a byte-identical ``Trace.to_dict()``.

    Raises
    ------
    IllegalDecisionError
        If the policy admits a request that is unknown, not waiting, duplicated or does not fit,
        returns something that is not a :class:`Decision`, or idles the server forever.
    InputError
        If ``seed`` is not an int, ``policy`` is not a :class:`Policy`, or ``engine`` is unknown.
    """
    w = Worker(instance, policy, engine=engine, seed=seed, progress=progress, record_states=record_states, **engine_options)
    w.run(final=True)
    return w.trace()
