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


class Interrupted(KeyboardInterrupt):
    """A termination signal (SIGTERM, SIGHUP) turned into the ``KeyboardInterrupt`` path.

    The CLI installs a handler that raises it, so a terminated run unwinds exactly like a Ctrl-C:
    temporary files are removed, no output is half-written, and the exit status is
    ``128 + signum`` (143 for SIGTERM; 130 for SIGINT, the plain ``KeyboardInterrupt``).
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"signal {self.signum}")


#: Signals the CLI's handlers received during this command (:func:`note_signal`); a
#: ``KeyboardInterrupt`` raised where Python swallows it (a finaliser, a GC callback: "Exception
#: ignored in ...") still stops the next :func:`raise_if_interrupted` check.
_PENDING: list[int] = []


def note_signal(signum: int) -> None:
    """Record that ``signum`` arrived (the CLI's signal handlers call it before raising)."""
    _PENDING.append(int(signum))


def clear_signals() -> None:
    """Forget recorded signals (the CLI calls it when a command starts and ends)."""
    _PENDING.clear()


def raise_if_interrupted() -> None:
    """Raise the interrupt for a recorded signal that was lost on its way (long loops call this
    between iterations): :class:`Interrupted` for SIGTERM/SIGHUP, ``KeyboardInterrupt`` for SIGINT.
    Does nothing when no signal was recorded (always, outside the CLI)."""
    if _PENDING:
        signum = _PENDING[0]
        if signum == 2:
            raise KeyboardInterrupt
        raise Interrupted(signum)


class SolveInterrupted(KeyboardInterrupt):
    """An exact solve stopped by an interrupt (Ctrl-C, SIGTERM), carrying what it had.

    ``result`` is the best :class:`~prefixsched.theory.exact.result.SolveResult` found so far, with
    ``interrupted=True`` and status FEASIBLE (an incumbent, never claimed optimal) or UNKNOWN; it
    was replayed by the checker like every result. It is a ``KeyboardInterrupt``, so a caller that
    does not look for it (a loop over many solves) stops as on any Ctrl-C, never swallowing it.
    ``signum`` is the signal that stopped it (2 = SIGINT).
    """

    def __init__(self, result: object, signum: int = 2) -> None:
        self.result = result
        self.signum = int(signum)
        super().__init__("solve interrupted")
