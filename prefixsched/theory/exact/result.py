"""One result type for every exact backend (CP-SAT, z3, DP, brute force).

A result is called OPTIMAL only when the backend *proved* it: the objective equals the proven
bound (gap 0). A timeout with an incumbent is FEASIBLE with the bound and gap it proved; a proven
absence of any schedule (or of one meeting a decision bound) is INFEASIBLE with ``proof`` naming
the source. Every schedule is replayed by the independent checker
(:func:`prefixsched.theory.sequential.evaluate`) before a result leaves the solver module.

Units: the sequential models' time unit (one uncached token, see
:mod:`prefixsched.theory.sequential`); ``objective``/``bound``/``ttft`` are in that unit.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Status", "SolveResult", "relative_gap"]


class Status(str, enum.Enum):
    OPTIMAL = "OPTIMAL"
    FEASIBLE = "FEASIBLE"
    INFEASIBLE = "INFEASIBLE"
    UNKNOWN = "UNKNOWN"


def relative_gap(objective: float | None, bound: float | None) -> float | None:
    """``(objective - bound) / max(|objective|, 1e-9)`` for minimisation; 0.0 when equal."""
    if objective is None or bound is None:
        return None
    if math.isclose(objective, bound, rel_tol=0, abs_tol=1e-9):
        return 0.0
    return max(0.0, (objective - bound) / max(abs(objective), 1e-9))


@dataclass(frozen=True)
class SolveResult:
    """What an exact backend returns.

    Attributes
    ----------
    status:
        OPTIMAL (proven, gap 0), FEASIBLE (incumbent, not proven), INFEASIBLE (proven none),
        UNKNOWN (nothing found, nothing proven).
    objective:
        Value of the returned schedule (None without one). For the decision objective
        (``ttft-feasible``) it is the schedule's max TTFT.
    bound:
        Proven lower bound on the optimum (None if none was proven).
    gap:
        :func:`relative_gap` of objective and bound.
    wall_s:
        Wall-clock seconds spent (informational; never part of byte-compared output).
    order:
        Request ids in service order (empty without a schedule).
    start, ttft:
        Per request id: start time and TTFT of the returned schedule.
    model, objective_name, solver:
        What was solved and by which backend.
    proof:
        For OPTIMAL/INFEASIBLE: the source of the proof (``"cpsat"``, ``"z3 unsat"``,
        ``"dp exhaustion"``, ``"brute force"``, ``"lower bound"``...).
    anytime:
        ``[(wall_s, objective), ...]``: improving incumbents (CP-SAT solution callback).
    interrupted:
        True when an interrupt (Ctrl-C, SIGTERM) stopped the search: the result is what the search
        had (never claimed OPTIMAL unless it was proven before the interrupt), and it reaches the
        caller inside :class:`~prefixsched.errors.SolveInterrupted`, not as a normal return.
    """

    status: Status
    objective: float | None
    bound: float | None
    gap: float | None
    wall_s: float
    order: tuple[str, ...] = ()
    start: dict[str, float] = field(default_factory=dict)
    ttft: dict[str, float] = field(default_factory=dict)
    model: str = ""
    objective_name: str = ""
    solver: str = ""
    proof: str | None = None
    anytime: tuple[tuple[float, float], ...] = ()
    interrupted: bool = False

    @property
    def optimal(self) -> bool:
        return self.status is Status.OPTIMAL and self.gap == 0.0

    def to_dict(self, *, include_wall: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "status": self.status.value,
            "objective": self.objective,
            "bound": self.bound,
            "gap": self.gap,
            "order": list(self.order),
            "start": dict(self.start),
            "ttft": dict(self.ttft),
            "model": self.model,
            "objective_name": self.objective_name,
            "solver": self.solver,
            "proof": self.proof,
            "interrupted": self.interrupted,
        }
        if include_wall:
            d["wall_s"] = self.wall_s
            d["anytime"] = [list(p) for p in self.anytime]
        return d
