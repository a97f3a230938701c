"""Parameter sweeps (issue #12): grids of simulations or exact solves, run locally in parallel
processes or on Ray, cached by configuration and code version, written as one tidy table.

Public API: :func:`run`, :func:`expand`, :func:`load_grid`, :class:`SweepResult`,
:func:`code_version`. See :mod:`prefixsched.sweep.runner` for the execution model and
:mod:`prefixsched.sweep.cells` for the cell parameters.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run", "expand", "load_grid", "SweepResult", "code_version"]


def __getattr__(name: str) -> Any:  # lazy: importing the package does not import numpy or ray
    if name in ("run", "SweepResult", "code_version"):
        from prefixsched.sweep import runner

        return getattr(runner, name)
    if name in ("expand", "load_grid"):
        from prefixsched.sweep import grid

        return getattr(grid, name)
    raise AttributeError(name)
