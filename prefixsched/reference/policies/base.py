"""The policy contract: a policy reads a read-only snapshot and returns a decision.

This is the one interface between scheduling policies and the engines that run them (the
simulator in :mod:`prefixsched.reference.simulator` and, through an adapter, SGLang). Policies
never mutate the engine; the engine applies a :class:`Decision` and asserts it is legal
(:class:`~prefixsched.errors.IllegalDecisionError` otherwise).

Call sequence, per run (the engine guarantees it):

1. ``policy.on_arrival(request, now, snap)`` when a request arrives, *before* it joins the waiting
   queue (so ``snap`` shows the queue without it: VTC's counter lift and DLPM's "rejoin" reset need
   exactly that view).
2. Once per forward step, if the waiting queue is non-empty and a running slot is free:
   ``decision = policy.decide(snap)``. A policy may charge its own counters for the requests it
   admits here (DLPM Algorithm 1 line 11): the engine applies the decision in full or aborts the run.
   A decision may also preempt running requests (:class:`Decision`); preemptive policies read the
   decode batch through :class:`PreemptionView` (``getattr(snap, "preemption", None)`` is the
   engine's preemption mode, ``None`` where it cannot preempt).
3. After the step: ``policy.on_step_end(decoded, finished, snap)`` with the output tokens each
   client's requests produced in the step (every running request produces one; a request admitted
   in this step produces its first) and the requests that finished.

Snapshot orders are total and deterministic:

- FCFS order: ``(arrival, seq)``, ``seq`` = position in the instance.
- LPM order: ``(-cached_tokens, arrival, seq)``: longest prefix match first, ties by arrival
  (issue #2 item 7).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Limits, Request, ServiceWeights

__all__ = [
    "WaitingEntry", "BatchBuilder", "CacheView", "Snapshot", "Decision", "Policy", "FinishedInfo", "client_weights",
    "RunningEntry", "PreemptionView",
]


@runtime_checkable
class WaitingEntry(Protocol):
    """One waiting request as a policy sees it (read-only).

    Attributes
    ----------
    request:
        The request.
    seq:
        Its position in the instance (the final tie-break).
    cached_tokens:
        Prefix tokens the cache would serve if it were admitted now (page-aligned match, capped at
        ``prompt_len - 1`` so that at least one token is prefilled, as in SGLang).
    extend_tokens:
        ``prompt_len - cached_tokens``: what admitting it now would prefill and charge (DLPM).
    """

    @property
    def request(self) -> Request: ...
    @property
    def seq(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...
    @property
    def extend_tokens(self) -> int: ...


class BatchBuilder(Protocol):
    """Cumulative admission budget of one step (SGLang's ``PrefillAdder``); CAN_ADD in DLPM.

    ``try_add(entry)`` returns True and records the request if it fits next to those already added
    (prefill-token budget, running slots, KV capacity including its full reserved output); it
    returns False and records nothing otherwise. ``admitted`` lists the ids added so far, in order.
    ``full`` is True once no further request of any size could be added (no running slot left, or
    the prefill-token budget is spent).
    """

    def try_add(self, entry: WaitingEntry) -> bool: ...
    def fits(self, entry: WaitingEntry) -> bool: ...
    @property
    def admitted(self) -> Sequence[str]: ...
    @property
    def full(self) -> bool: ...


class CacheView(Protocol):
    """Read-only view of the engine's radix prefix cache."""

    def match_tokens(self, request: Request) -> int:
        """Cached tokens of ``request`` (same rule as ``WaitingEntry.cached_tokens``)."""
        ...

    def dfs_weight_order(self, entries: Sequence[WaitingEntry]) -> list[WaitingEntry]:
        """SGLang's ``dfs-weight`` order: walk the tree, heavier subtrees (more waiting requests
        below) first; ties by the FCFS order of the lightest entry."""
        ...


class Snapshot(Protocol):
    """What a policy may read at a scheduling point. Nothing here mutates the engine."""

    now: float
    step: int
    limits: Limits
    weights: ServiceWeights
    cost_model: CostModel
    cache: CacheView

    def waiting_count(self, client: str | None = None) -> int: ...
    def waiting_clients(self) -> Sequence[str]:
        """Clients with at least one waiting request, in order of first appearance in the instance."""
        ...
    def running_count(self, client: str | None = None) -> int: ...
    def running_clients(self) -> Sequence[str]: ...
    def fcfs(self, client: str | None = None) -> Iterator[WaitingEntry]:
        """Waiting requests (of one client, or all) in FCFS order."""
        ...
    def lpm(self, client: str | None = None) -> Iterator[WaitingEntry]:
        """Waiting requests (of one client, or all) in LPM order."""
        ...
    def queue(self) -> Iterator[WaitingEntry]:
        """Waiting requests in the engine's queue order: FCFS on the ``ideal`` engine; SGLang's
        ``waiting_queue`` list (after ``calc_priority`` for native policies) on ``sglang``."""
        ...
    def entry(self, request_id: str) -> WaitingEntry: ...
    def batch(self) -> BatchBuilder:
        """A fresh, empty admission budget for this step."""
        ...


@runtime_checkable
class RunningEntry(Protocol):
    """One request of the decode batch as a preemptive policy sees it (read-only).

    Attributes
    ----------
    request, seq:
        The request and its position in the instance.
    produced:
        Output tokens produced so far (over all its runs).
    kv_tokens:
        KV tokens it holds now (prompt + outputs whose KV is written).
    out_left:
        Output tokens still to produce.
    reserved_tokens:
        What SGLang's admission budget reserves for it now (``PrefillAdder``'s running offset:
        ``min(max_new - produced, clip) * new_token_ratio``), tokens.
    queued_at:
        When it last entered the waiting queue (SGLang's ``wait_queue_entry_time``), seconds.
    joined_step:
        The step in which its current run joined the decode batch.
    """

    @property
    def request(self) -> Request: ...
    @property
    def seq(self) -> int: ...
    @property
    def produced(self) -> int: ...
    @property
    def kv_tokens(self) -> int: ...
    @property
    def out_left(self) -> int: ...
    @property
    def reserved_tokens(self) -> float: ...
    @property
    def queued_at(self) -> float: ...
    @property
    def joined_step(self) -> int: ...


class PreemptionView(Protocol):
    """What an engine with preemption adds to the :class:`Snapshot`.

    ``preemption`` is ``"drop"`` or ``"swap"``; ``running()`` lists the decode batch in batch
    order; ``pending_free_tokens`` is GPU KV that in-flight swap-outs will free when their copies
    complete (asynchronous swapping); ``page_size`` and ``clip_max_new_tokens`` are the engine's.
    """

    preemption: str
    pending_free_tokens: int

    def running(self) -> Iterator[RunningEntry]: ...
    def is_swapped(self, request_id: str) -> bool:
        """True iff the request waits with a complete KV copy in host memory (it would resume by
        swap-in)."""
        ...


def client_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """Validate optional per-client weights (weighted VTC / DLPM): ``{client: finite number > 0}``.

    Raises
    ------
    InputError
        Naming ``weights[client]`` and the bad value.
    """
    import math

    from prefixsched.errors import InputError

    out: dict[str, float] = {}
    for c, v in (weights or {}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise InputError(f"weights[{c!r}]", f"must be a finite number > 0, got {v!r}")
        out[str(c)] = float(v)
    return out


@dataclass(frozen=True)
class Decision:
    """The requests to admit in this step, in admission order (ids), and the running requests to
    preempt (ids).

    ``preempt`` is honoured only by an engine built with preemption (the ``sglang`` engine with
    ``preemption=PreemptionConfig(...)``, :mod:`prefixsched.reference.engine.preemption`); any
    other engine raises :class:`~prefixsched.errors.IllegalDecisionError` for a non-empty
    ``preempt``. The engine validates every id (it must name a request of the decode batch, at
    most once, and not one preempted earlier in the same step), applies the preemptions first
    (drop or swap-out), then replays ``admit`` on the state after them (a larger budget, so an
    admission list built on the snapshot's builder stays valid). A request preempted in a step
    cannot be admitted in that step. A decision that preempts and admits nothing is followed, in
    the same step, by another ``decide`` call on the new state (so the room just freed is used at
    once); that repeats while decisions preempt, and ends because each round removes running
    requests.
    """

    admit: tuple[str, ...] = ()
    preempt: tuple[str, ...] = ()


@dataclass(frozen=True)
class FinishedInfo:
    """A request that produced its last token in the step just run."""

    id: str
    client: str


class Policy(abc.ABC):
    """Base class of every scheduling policy.

    Subclasses set ``name`` (registry key, as used on the CLI), ``description`` (one line for
    ``prefixsched policies``), and optionally ``primary_param`` (so ``"k-lpm:4"`` means
    ``k=4``). Constructor keyword arguments are the policy's parameters; :meth:`params` returns
    them (JSON-able) for the trace. :meth:`state` returns the inspectable counters (deficits,
    virtual counters) as a JSON-able dict; tests read them.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    primary_param: ClassVar[str | None] = None

    def on_arrival(self, request: Request, now: float, snap: Snapshot) -> None:
        """A request arrives (before it joins the queue). Default: nothing."""

    def native_policy(self) -> tuple[str, dict[str, Any]] | None:
        """If this policy *is* one of SGLang's own ``--schedule-policy`` values: ``(name,
        options)`` (``"fcfs"`` or ``"lpm"``; LPM passes ``{"fcfs_fallback": N or None}``). The
        ``sglang`` engine then applies SGLang's ``SchedulePolicy.calc_priority`` to its waiting
        queue before each pass (sorting it, refreshing LRU stamps) and the policy walks
        :meth:`Snapshot.queue`. ``None`` (default): the policy runs as the prefixsched SGLang plugin
        runs it (``calc_priority`` a no-op, the policy drives the adder)."""
        return None

    @abc.abstractmethod
    def decide(self, snap: Snapshot) -> Decision:
        """Choose the requests to admit in this step."""

    def on_step_end(
        self, decoded: Mapping[str, int], finished: Sequence[FinishedInfo], snap: Snapshot
    ) -> None:
        """After a forward step: ``decoded[client]`` output tokens produced. Default: nothing."""

    def params(self) -> dict[str, Any]:
        """The policy's parameters (JSON-able)."""
        return {}

    def state(self) -> dict[str, Any]:
        """Inspectable internal counters (JSON-able). Default: none."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.params()}
