"""Exact solvers of the sequential scheduling models (issue #3).

The models, objectives, units and result conventions are specified in
:mod:`prefixsched.theory.sequential` (the independent checker); read it first.

Backends (each a module exposing the same function, see :data:`BACKEND_SIGNATURE`)::

    solve(inst: SeqInstance, model: str, objective: str, *, bound=None, delta=None,
          time_limit=None, workers=None, hint_orders=None) -> SolveResult

- ``"cpsat"``: OR-tools CP-SAT, the optimiser (:mod:`.cpsat`, imported lazily).
- ``"z3"``: SMT (z3), the independent cross-check and prover of "no schedule with objective < X"
  on tiny instances (:mod:`.z3_backend`).
- ``"dp"``: exact subset dynamic programs (:mod:`.dp`; klpm.md §2.2 earliest-finish dominance).
- ``"brute"``: all permutations (:mod:`.brute`), the tiniest sizes.

Every backend builds its result with :func:`prefixsched.theory.sequential.to_result`, which replays
the schedule with the checker and raises :class:`~prefixsched.errors.CheckerError` on any mismatch.
An instance over a backend's size limit raises :class:`~prefixsched.errors.SolverLimitError`
naming the limit and an alternative backend.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Union

from prefixsched.errors import InputError, SolverLimitError
from prefixsched.theory.exact.result import SolveResult, Status, relative_gap

if TYPE_CHECKING:  # pragma: no cover
    from prefixsched.theory.model import Instance
    from prefixsched.theory.sequential import SeqInstance

__all__ = ["solve", "SOLVERS", "SolveResult", "Status", "relative_gap", "size_limit", "MAX_TOKENS"]

#: Backend name -> module (relative to this package).
SOLVERS: Mapping[str, str] = MappingProxyType({
    "cpsat": "cpsat",
    "z3": "z3_backend",
    "dp": "dp",
    "brute": "brute",
})

#: Most prompt tokens (summed over the queries) the sequential models expand an instance to: they
#: work on token ids, so a block prompt of L tokens becomes L ints (about 40 bytes each with the
#: LCP work). 2 million tokens is ~100 MB, far above what any exact backend can solve.
MAX_TOKENS = 2_000_000


def size_limit(solver: str, model: str, timed: bool) -> int:
    """Largest number of queries ``solver`` accepts for ``model`` (``timed``: a time limit is
    given; only the dp backend's limit depends on it). Reads each backend's own ``MAX_N``.

    Raises
    ------
    InputError
        Unknown solver or model.
    """
    if solver not in SOLVERS:
        raise InputError("solver", f"unknown solver {solver!r} (choices: {', '.join(SOLVERS)})")
    mod: Any = importlib.import_module(f"{__name__}.{SOLVERS[solver]}")
    limits = mod.MAX_N_TIMED if (timed and hasattr(mod, "MAX_N_TIMED")) else mod.MAX_N
    if isinstance(limits, int):
        return limits
    if model not in limits:
        raise InputError("model", f"unknown model {model!r} (choices: {', '.join(limits)})")
    return int(limits[model])


BACKEND_SIGNATURE = (
    "solve(inst: SeqInstance, model: str, objective: str, *, bound: float | None = None, "
    "delta: float | None = None, time_limit: float | None = None, workers: int | None = None, "
    "hint_orders: Sequence[Sequence[str]] | None = None) -> SolveResult"
)


def solve(
    instance: Union["Instance", "SeqInstance"],
    model: str = "prev",
    objective: str = "max-ttft",
    solver: str = "cpsat",
    bound: float | None = None,
    delta: float | None = None,
    time_limit: float | None = None,
    workers: int | None = None,
    hint_orders: Sequence[Sequence[str]] | None = None,
) -> SolveResult:
    """Solve a sequential scheduling model exactly (or as far as the time limit allows).

    Parameters
    ----------
    instance:
        A :class:`~prefixsched.theory.model.Instance` (read by
        :meth:`~prefixsched.theory.sequential.SeqInstance.from_instance`: arrivals as token units)
        or a :class:`~prefixsched.theory.sequential.SeqInstance`.
    model:
        ``"prev"``, ``"radix"`` or ``"fair"``.
    objective:
        ``"max-ttft"``, ``"mean-ttft"``, ``"makespan"`` or ``"ttft-feasible"``.
    solver:
        ``"cpsat"``, ``"z3"``, ``"dp"`` or ``"brute"``.
    bound:
        The TTFT bound ``T`` (time units); required for, and only for, ``ttft-feasible``.
    delta:
        The service-gap bound (cost units); required for, and only for, model ``fair``.
    time_limit:
        Seconds (> 0) for backends that honour it (cpsat, z3, dp); on expiry the result is
        FEASIBLE with the proven bound and gap, or UNKNOWN, never a claimed optimum.
    workers:
        Solver threads (cpsat).
    hint_orders:
        Orders (query ids) given to the backend as hints / upper bounds.

    Returns
    -------
    SolveResult
        Replayed by :func:`prefixsched.theory.sequential.evaluate` (and
        :func:`~prefixsched.theory.sequential.check_fair` for ``fair``).

    Raises
    ------
    InputError
        Unknown model/objective/solver (the message lists the choices), a missing or spurious
        ``bound``/``delta``, a non-positive ``time_limit``/``workers``, or a hint that is not a
        permutation of the ids.
    SolverLimitError
        The instance is too large for the backend (message names the limit and an alternative).
    ImportError
        The CP-SAT backend module is missing.
    """
    from prefixsched.theory import sequential as seq  # lazy: sequential imports this package

    if model not in seq.MODELS:
        raise InputError("model", f"unknown model {model!r} (choices: {', '.join(seq.MODELS)})")
    if objective not in seq.OBJECTIVES:
        raise InputError("objective", f"unknown objective {objective!r} (choices: {', '.join(seq.OBJECTIVES)})")
    if solver not in SOLVERS:
        raise InputError("solver", f"unknown solver {solver!r} (choices: {', '.join(SOLVERS)})")
    if objective == "ttft-feasible":
        if bound is None:
            raise InputError("bound", "objective ttft-feasible needs the TTFT bound T (time units)")
        if not isinstance(bound, (int, float)) or isinstance(bound, bool) or bound != bound or bound < 0:
            raise InputError("bound", f"must be a number >= 0, got {bound!r}")
        bound = float(bound)
    elif bound is not None:
        raise InputError("bound", f"only objective ttft-feasible takes a bound, got objective {objective!r}")
    if model == "fair":
        if delta is None:
            raise InputError("delta", "model fair needs the service-gap bound delta (cost units)")
        if not isinstance(delta, (int, float)) or isinstance(delta, bool) or delta != delta or delta < 0:
            raise InputError("delta", f"must be a number >= 0, got {delta!r}")
        delta = float(delta)
    elif delta is not None:
        raise InputError("delta", f"only model fair takes delta, got model {model!r}")
    if time_limit is not None and not (time_limit > 0):
        raise InputError("time_limit", f"must be > 0 seconds, got {time_limit!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise InputError("workers", f"must be an integer >= 1, got {workers!r}")

    if not isinstance(instance, seq.SeqInstance):
        # size checks before the sequential view expands every prompt to token ids (and builds
        # the n x n LCP table): a 12k-request trace must be refused at once, not after minutes
        n_req = len(instance.requests)
        limit = size_limit(solver, model, time_limit is not None)
        if n_req > limit:
            raise SolverLimitError(
                f"{solver} backend: model {model!r} is limited to n <= {limit} queries (got {n_req}); "
                + ("use solver='cpsat' (n <= 200, anytime with a proven bound)" if solver != "cpsat"
                   else "use a window of the instance or the simulator")
            )
        tokens = sum(r.prompt_len for r in instance.requests)
        if tokens > MAX_TOKENS:
            raise SolverLimitError(
                f"the sequential models expand prompts to token ids: this instance has {tokens:,} prompt "
                f"tokens, more than {MAX_TOKENS:,}; shorten the prompts (e.g. one token per block)"
            )
    inst = instance if isinstance(instance, seq.SeqInstance) else seq.SeqInstance.from_instance(instance)
    hints: list[tuple[str, ...]] | None = None
    if hint_orders is not None:
        hints = []
        ids = set(inst.index)
        for k, h in enumerate(hint_orders):
            h = tuple(h)
            if len(h) != inst.n or set(h) != ids:
                raise InputError(f"hint_orders[{k}]", "must be a permutation of the query ids")
            hints.append(h)

    try:
        mod: Any = importlib.import_module(f"{__name__}.{SOLVERS[solver]}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{SOLVERS[solver]}":
            raise ImportError(
                f"the {solver!r} backend ({__name__}.{SOLVERS[solver]}) is not installed in this build; "
                f"use solver='dp' (n <= 20; prev up to 56 with a time limit) or solver='z3' (n <= 8) instead"
            ) from e
        raise
    return mod.solve(
        inst,
        model,
        objective,
        bound=bound,
        delta=delta,
        time_limit=time_limit,
        workers=workers,
        hint_orders=hints,
    )
