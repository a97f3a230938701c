"""Test a scheduling policy of your own against prefixsched's invariants.

- :func:`check_policy` runs the invariant suite (progress, the independent checker, causality,
  work conservation, determinism, starvation, DLPM/VTC counter invariants and fairness bounds)
  on hypothesis-generated instances, measures every policy's backlogged service gap against VTC's
  bound and its starvation of the oldest request, compares it with LPM, VTC and DLPM, and returns
  a readable :class:`PolicyReport` (:mod:`prefixsched.testing.suite`; CLI: ``prefixsched check``);
- the hypothesis strategies of :mod:`prefixsched.testing.strategies` build small valid instances
  (shared-prefix trees, mixed-rate and misbehaving clients, binding limits) for your own tests;
- :mod:`prefixsched.testing.broken` holds deliberately broken policies and a lock-ignoring cache
  that prove each checker fires.

Needs ``hypothesis`` (the ``test`` extra).
"""

from prefixsched.testing.strategies import (
    ARRIVAL_PROCESSES,
    CLIENT_KINDS,
    ClientSpec,
    arrival_ticks,
    backlogged_instances,
    client_specs,
    cost_models,
    instances,
    limits_for,
    lockstep_instances,
    prefix_trees,
    prompts_from_tree,
)
from prefixsched.testing.suite import (
    INVARIANTS,
    MEASURES,
    Comparison,
    MeasuredFigure,
    InvariantResult,
    Outcome,
    PolicyReport,
    RecordingPolicy,
    check_policy,
    default_instances,
    measure_run,
    run_invariants,
    shrink_instance,
)

__all__ = [
    "lockstep_instances",
    "check_policy",
    "run_invariants",
    "PolicyReport",
    "InvariantResult",
    "Outcome",
    "RecordingPolicy",
    "INVARIANTS",
    "MEASURES",
    "MeasuredFigure",
    "Comparison",
    "measure_run",
    "shrink_instance",
    "default_instances",
    "instances",
    "backlogged_instances",
    "prefix_trees",
    "prompts_from_tree",
    "arrival_ticks",
    "client_specs",
    "cost_models",
    "limits_for",
    "ClientSpec",
    "ARRIVAL_PROCESSES",
    "CLIENT_KINDS",
]
