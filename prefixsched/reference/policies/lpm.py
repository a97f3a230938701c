"""LPM: longest prefix match first (SGLang's ``lpm`` policy, sglang.md §1.2-1.5).

Order: ``(-cached_tokens, arrival, seq)`` over the whole radix cache (:meth:`Snapshot.lpm`);
``cached_tokens`` is the current page-aligned match capped at ``prompt_len - 1``. Ties go to the
older request (issue #2 item 7; k-LPM §7.4's natural default).

Decisions (documented choices):

- **Skip, do not stop.** A request that does not fit is skipped and the pass keeps filling the
  batch from the rest of the order until the builder is ``full`` or the order is exhausted.
  SGLang's ``PrefillAdder`` loop breaks at the first non-fitting request; we skip, so that LPM,
  DLPM, k-LPM's LPM slots, dfs-weight and random all share one work-conserving admission rule
  (DLPM §2: "a request that fits is never rejected outright"). FCFS and VTC keep SGLang's / the
  VTC artifact's head-of-line stop.
- **128-request FCFS fallback** (``fcfs_fallback``): SGLang's ``_determine_active_policy`` turns
  LPM into FCFS when more than ``WAITING_QUEUE_PREFIX_MATCH_MAX = 128`` requests wait. Off by
  default (``None``) so that "LPM" means LPM; ``fcfs_fallback=128`` reproduces SGLang. In fallback
  mode only the order changes to FCFS; the skip rule stays.
- On the ``sglang`` engine LPM is SGLang's own ``--schedule-policy lpm`` (:meth:`native_policy`):
  the engine runs ``SchedulePolicy.calc_priority`` on its waiting queue (every request matched,
  in-batch de-prioritisation, a *stable* sort by ``min(match, len - 1)`` so ties keep the previous
  pass's order, the FCFS fallback above ``fcfs_fallback`` waiting requests, default SGLang's 128)
  and the pass walks :meth:`Snapshot.queue` in that order, stopping at the first misfit as SGLang's
  loop does. On the ``ideal`` engine the order is ``(-cached_tokens, arrival, seq)`` and
  ``fcfs_fallback=None`` means no fallback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from prefixsched.errors import InputError
from prefixsched.reference.policies import register
from prefixsched.reference.policies.base import BatchBuilder, Decision, Policy, Snapshot, WaitingEntry

__all__ = ["LPM", "fill_skipping"]


def fill_skipping(b: BatchBuilder, order: Iterable[WaitingEntry]) -> Decision:
    """Add entries of ``order`` to ``b``, skipping those that do not fit, until ``b.full``."""
    for e in order:
        if b.full:
            break
        b.try_add(e)
    return Decision(tuple(b.admitted))


@register
class LPM(Policy):
    """Longest prefix match first over the whole cache; ties by arrival; skips non-fitting.

    Parameters
    ----------
    fcfs_fallback:
        ``None`` (default) or an int N >= 0: when more than N requests wait, use FCFS order
        (SGLang: N = 128).

    Raises
    ------
    InputError
        If ``fcfs_fallback`` is not None and not a non-negative int.
    """

    name: ClassVar[str] = "lpm"
    description: ClassVar[str] = "longest prefix match first (whole radix cache), ties by arrival; lpm:128 = SGLang's FCFS fallback"
    primary_param: ClassVar[str | None] = "fcfs_fallback"

    def __init__(self, fcfs_fallback: int | None = None) -> None:
        if fcfs_fallback is not None and (
            isinstance(fcfs_fallback, bool) or not isinstance(fcfs_fallback, int) or fcfs_fallback < 0
        ):
            raise InputError("fcfs_fallback", f"must be None or an integer >= 0, got {fcfs_fallback!r}")
        self.fcfs_fallback = fcfs_fallback
        self._fallback_steps = 0

    def native_policy(self) -> tuple[str, dict[str, Any]] | None:
        return ("lpm", {"fcfs_fallback": self.fcfs_fallback})

    def decide(self, snap: Snapshot) -> Decision:
        b = snap.batch()
        if getattr(snap, "engine", "ideal") == "sglang":  # the engine sorted its queue natively
            return fill_skipping(b, snap.queue())
        if self.fcfs_fallback is not None and snap.waiting_count() > self.fcfs_fallback:
            self._fallback_steps += 1
            return fill_skipping(b, snap.fcfs())
        return fill_skipping(b, snap.lpm())

    def params(self) -> dict[str, Any]:
        return {"fcfs_fallback": self.fcfs_fallback}

    def state(self) -> dict[str, Any]:
        return {"fallback_steps": self._fallback_steps}
