"""Exceptions shared by every area of prefixsched.

Every input error names the offending field and value, so that the CLI can print it as
``where: field: problem`` and exit with status 2 without a traceback.
"""

from __future__ import annotations


class PrefixschedError(Exception):
    """Base class of every error prefixsched raises on purpose."""


class InputError(PrefixschedError, ValueError):
    """Bad user input: a malformed instance, trace line, parameter or CLI value.

    Parameters
    ----------
    field:
        The name of the offending field (``"requests[3].output_len"``, ``"--quantum"``).
    problem:
        What is wrong, including the value (``"must be > 0, got -4"``).
    where:
        Optional location, e.g. ``"trace.jsonl:17"``.
    """

    def __init__(self, field: str, problem: str, where: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.where = where
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}{field}: {problem}")


class IllegalDecisionError(PrefixschedError, AssertionError):
    """A policy returned a decision the engine cannot apply (over a limit, not waiting, ...)."""


class CheckerError(PrefixschedError, AssertionError):
    """The independent checker found a schedule or trace that violates the model.

    A checker error on a schedule produced by prefixsched itself is a bug and is raised loudly.
    """


class SolverLimitError(PrefixschedError, ValueError):
    """An instance is too large for the requested exact backend (the message names the limit
    and the alternative)."""
