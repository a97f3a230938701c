"""Interrupts of exact solves: never swallowed, always reported (issue #7).

OR-Tools CP-SAT and z3 catch SIGINT themselves and stop "as if a time limit was reached", so a
Ctrl-C used to come back as an ordinary FEASIBLE result with exit status 0. Here instead:

- the C-level search runs in a helper thread while the main thread waits, with the libraries' own
  SIGINT catching turned off (CP-SAT ``catch_sigint_signal = False``, z3 ``ctrl_c = False``), so
  Python's handlers (SIGINT -> ``KeyboardInterrupt``; the CLI turns SIGTERM/SIGHUP into
  :class:`~prefixsched.errors.Interrupted`) run at once in the main thread;
- the handler's exception asks the search to stop (``stop_search()`` / ``ctx.interrupt()``),
  waits for it, and is recorded; the backend then builds its result from what the search had
  (an incumbent: FEASIBLE with the proven bound; nothing: UNKNOWN), exactly as on a timeout;
- :meth:`Guard.finish` marks that result ``interrupted=True`` and raises
  :class:`~prefixsched.errors.SolveInterrupted` carrying it. It is a ``KeyboardInterrupt``: the CLI
  prints the partial result, says "interrupted" and exits 130 (143 for SIGTERM), and any loop over
  many solves stops instead of carrying on.

Pure-Python backends (DP) catch ``KeyboardInterrupt`` around their search and call
:meth:`Guard.interrupted_with` with the incumbent result.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from prefixsched.errors import Interrupted, SolveInterrupted

__all__ = ["Guard"]

T = TypeVar("T")


class Guard:
    """Records an interrupt that arrived during a stoppable phase of one solve."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def tripped(self) -> bool:
        return self.signum is not None

    def note(self, exc: BaseException) -> None:
        """Record ``exc`` (a ``KeyboardInterrupt``) as the interrupt of this solve."""
        if self.signum is None:
            self.signum = int(getattr(exc, "signum", signal.SIGINT))

    def run(self, fn: Callable[[], T], stop: Callable[[], Any]) -> T:
        """``fn()`` (a C-level search) in a helper thread, waited for in this one; on an interrupt
        call ``stop()``, wait for ``fn`` to return, record the interrupt and return its value.

        Off the main thread (no signal handlers run there) ``fn()`` is simply called.
        """
        if threading.current_thread() is not threading.main_thread():
            return fn()
        box: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # re-raised in the caller's thread below
                box["error"] = e
            finally:
                done.set()

        threading.Thread(target=work, name="prefixsched-solver", daemon=True).start()
        try:
            while not done.wait(0.05):
                pass
        except KeyboardInterrupt as e:
            self.note(e)
            stop()
            while True:  # the search stops within milliseconds; a second Ctrl-C must not orphan it
                try:
                    if done.wait(0.05):
                        break
                except KeyboardInterrupt:
                    stop()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def interrupted_with(self, result: Any, exc: BaseException) -> SolveInterrupted:
        """The exception to raise for ``exc`` with the partial ``result`` (None: nothing found)."""
        self.note(exc)
        marked = None if result is None else dataclasses.replace(result, interrupted=True)
        return SolveInterrupted(marked, self.signum or signal.SIGINT)

    def finish(self, result: T) -> T:
        """``result`` unchanged, or :class:`SolveInterrupted` carrying it if an interrupt arrived."""
        if self.signum is None:
            return result
        raise SolveInterrupted(dataclasses.replace(result, interrupted=True), self.signum)

    def reraise(self) -> None:
        """Raise the recorded interrupt again (as :class:`~prefixsched.errors.Interrupted`, a
        ``KeyboardInterrupt``) if one arrived; for searches with no partial result to report."""
        if self.signum is not None:
            raise Interrupted(self.signum)
