"""The simulator's output: what happened to every request and when every step ran.

A :class:`Trace` is raw facts only (times, token counts, step indices). Every metric and every
service curve is computed from it by :mod:`prefixsched.theory.metrics`; the independent checker
(:mod:`prefixsched.theory.schedule`) replays it against its :class:`~prefixsched.theory.model.Instance`.

Steps (DESIGN.md). Steps are numbered 0, 1, 2, ... and step ``s`` runs over
``[step_start[s], step_end[s])``. Each step has a *kind* (:attr:`Trace.step_kinds`, one character per
step):

- ``"M"`` (mixed; the ``ideal`` engine, the papers' model): the step prefills the requests admitted in
  it *and* decodes one token for every request already running;
- ``"P"`` (prefill; the ``sglang`` engine): an extend batch only (SGLang runs a new prefill batch
  instead of a decode step whenever it can form one: ``Scheduler.get_next_batch_to_run``);
- ``"D"`` (decode; the ``sglang`` engine): one token for every running request, no prefill.

``step_kinds=None`` means every step is ``"M"``. A step has zero length only where the cost model
says so (the token-unit clock of :meth:`CostModel.token_units` makes decode-only steps free).
Steps in which nothing runs are not recorded: the engine jumps to the next arrival.

Runs. A request's life is one or more *runs* (:class:`Run`). A run starts when the request is
admitted from the waiting queue (its prefix hit ``cached_tokens`` is claimed then), prefills its
fill in one or more *chunks* (chunked prefill: ``(step, tokens)`` pieces in prefill-capable steps),
produces one output token at the end of its last chunk's step, then one token in every
decode-capable step (``"M"`` or ``"D"``) up to and including ``end_step``, and ends with
``"finish"`` (the last output token) or ``"retract"`` (SGLang's decode retraction: its KV is freed,
it re-enters the waiting queue and a later run re-prefills ``prompt + outputs so far``, reusing what
the cache still holds). The fill of run ``k`` is ``prompt_len + (tokens produced by runs < k)``
tokens and its chunks add up to ``fill - cached_tokens``.

Preemption (:mod:`prefixsched.reference.engine.preemption`). A policy may also end a decoding run:
``"preempt"`` (drop mode: like a retraction, the next run re-prefills) or ``"swap"`` (swap mode:
its KV is copied to host memory). The run after a ``"swap"`` run either resumes by *swap-in*
(``Run.swapped_in`` is set, no chunks: module :class:`Run`) or, if the host copy was evicted
meanwhile, re-prefills like any other run. Every copy is a :class:`SwitchEvent` in
:attr:`Trace.switches`. A trace without preemption has neither (its JSON is unchanged).

A request of one run with one chunk in ``admit_step`` (every request of the ``ideal`` engine) stores
no runs (``runs=None``): its run is ``Run(admit_step, cached_tokens, ((admit_step, extend_tokens),),
finish_step, "finish")``. :meth:`RequestRecord.all_runs` gives the runs in either case.

In the ``ideal`` engine (all steps ``"M"``) a request admitted in step ``a`` produces output token
``j`` (0-based) in step ``a + j`` and finishes in ``a + output_len - 1``, so its service timeline is
fully determined by its record: ``w_e * extend_tokens`` in ``admit_step`` and ``w_q`` in each step
``admit_step .. finish_step``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from prefixsched.errors import InputError
from prefixsched.theory.model import Instance

__all__ = ["Run", "RequestRecord", "Trace", "ClusterTrace", "SwitchEvent", "STEP_KINDS", "RUN_ENDS", "SWITCH_KINDS"]

#: Step kinds (one character each): mixed (ideal engine), prefill, decode (sglang engine).
STEP_KINDS = ("M", "P", "D")
#: How a run ends: its last token, SGLang's decode retraction, a policy's preemption in *drop* mode
#: (KV freed, recomputed later) or in *swap* mode (KV copied to host memory).
RUN_ENDS = ("finish", "retract", "preempt", "swap")
#: Directions of a context-switch transfer (:attr:`Trace.switches`) and the host-eviction event.
SWITCH_KINDS = ("out", "in", "evict", "abort")


class Run(NamedTuple):
    """One admission of a request (module docstring, "Runs").

    Attributes
    ----------
    admit_step:
        The step of its first chunk.
    cached_tokens:
        Prefix tokens served by the cache at admission (page-aligned; at most ``fill - 1``).
    chunks:
        ``((step, tokens), ...)``: the prefill pieces, in step order (a chunked request's pieces lie
        in consecutive prefill steps); ``tokens`` are extend tokens, ``sum == fill - cached_tokens``.
    end_step:
        The last step in which it produced an output token (``>=`` its last chunk's step).
    end:
        ``"finish"``, ``"retract"``, ``"preempt"`` (a policy preempted it in drop mode) or
        ``"swap"`` (preempted in swap mode: its KV went to host memory).
    swapped_in:
        ``None`` for a run that starts with a prefill (every run of a trace without preemption).
        An int for a run that *resumes by swap-in* after a ``"swap"`` run: the KV tokens copied
        back from host memory. Such a run has no chunks; its KV is ``cached_tokens + swapped_in
        == fill - 1`` (everything but the last token produced before the swap, whose KV its first
        decode step writes); ``admit_step`` is its first decode-capable step, in which it produces
        its first token of the run, then one per decode-capable step up to ``end_step``.
    """

    admit_step: int
    cached_tokens: int
    chunks: tuple[tuple[int, int], ...]
    end_step: int
    end: str
    swapped_in: int | None = None


class SwitchEvent(NamedTuple):
    """One context-switch event of a run with preemption in swap mode (:attr:`Trace.switches`).

    Attributes
    ----------
    step:
        The step whose scheduling pass issued it (for ``"evict"``: the pass in which the host pool
        evicted).
    request:
        The request id (``""`` for ``"evict"``).
    kind:
        ``"out"`` (GPU -> host, a swap-out), ``"in"`` (host -> GPU, a swap-in), ``"evict"`` (the
        host pool dropped LRU pages to make room) or ``"abort"`` (the swap-in just issued for this
        request was cancelled before the request ran: the decode batch needed its GPU pages; the
        request waits again and no swap-in run follows that ``"in"``).
    kv_tokens:
        ``"out"``: the request's KV tokens at the swap-out; ``"in"``: the KV tokens the resumed run
        holds (``cached + swapped_in``); ``"evict"``: 0.
    tokens:
        Tokens actually moved (``"out"``: only those the host did not hold yet; ``"in"``: the run's
        ``swapped_in``; ``"evict"``: host tokens freed).
    bytes, copies:
        Bytes moved and copies issued (:mod:`prefixsched.theory.switch_cost`); 0 for ``"evict"``.
    t_start, t_end:
        The copy's interval on its direction of the link, seconds (``t_start == t_end`` for an
        empty copy and for ``"evict"``).
    """

    step: int
    request: str
    kind: str
    kv_tokens: int
    tokens: int
    bytes: int
    copies: int
    t_start: float
    t_end: float


@dataclass(frozen=True)
class RequestRecord:
    """What happened to one request. Times in seconds, lengths in tokens.

    Attributes
    ----------
    id, client, arrival:
        Copied from the request.
    admit:
        Start time of the step of its first admission (its first chunk).
    first_token:
        End time of the step that produced its first output token (TTFT = first_token - arrival).
    finish:
        End time of the step that produced its last output token.
    admit_step, finish_step:
        Step indices of the first admission and of the last output token.
    prompt_len, output_len:
        From the request.
    cached_tokens:
        The prefix hit claimed at the *first* admission (what the hit rate counts).
    extend_tokens:
        Every token prefilled for it, over all chunks and runs (the actual prefill work). With one
        run, ``cached_tokens + extend_tokens == prompt_len``.
    runs:
        ``None`` for a request of one run with one chunk (module docstring), else every
        :class:`Run` in order.
    """

    id: str
    client: str
    arrival: float
    admit: float
    first_token: float
    finish: float
    admit_step: int
    finish_step: int
    prompt_len: int
    cached_tokens: int
    extend_tokens: int
    output_len: int
    runs: tuple[Run, ...] | None = None

    def all_runs(self) -> tuple[Run, ...]:
        """The runs of this request (the implied single run when ``runs is None``)."""
        if self.runs is not None:
            return self.runs
        return (Run(self.admit_step, self.cached_tokens, ((self.admit_step, self.extend_tokens),),
                    self.finish_step, "finish"),)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.runs is None:
            del d["runs"]
        else:
            d["runs"] = [[r.admit_step, r.cached_tokens, [list(c) for c in r.chunks], r.end_step, r.end]
                         + ([] if r.swapped_in is None else [r.swapped_in])
                         for r in self.runs]
        return d

    @staticmethod
    def from_dict(d: Any, where: str = "trace.requests[?]") -> "RequestRecord":
        if not isinstance(d, dict):
            raise InputError(where, f"must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        raw = d.pop("runs", None)
        runs: tuple[Run, ...] | None = None
        if raw is not None:
            try:
                runs = tuple(_run_from(x) for x in raw)
            except (TypeError, ValueError) as e:
                raise InputError(f"{where}.runs", f"malformed runs: {e}") from None
        try:
            return RequestRecord(**d, runs=runs)
        except TypeError as e:
            raise InputError(where, str(e)) from None


def _run_from(x: Any) -> Run:
    """A :class:`Run` from its JSON list (5 fields, or 6 with ``swapped_in``)."""
    if len(x) not in (5, 6):
        raise TypeError(f"a run has 5 or 6 fields, got {len(x)}")
    sw = None if len(x) == 5 else int(x[5])
    return Run(int(x[0]), int(x[1]), tuple((int(s), int(t)) for s, t in x[2]), int(x[3]), str(x[4]), sw)


@dataclass
class Trace:
    """Per-request records plus the step clock of one simulator run.

    Attributes
    ----------
    policy:
        Name of the policy that produced it, with its parameters (``{"name": ..., **params}``).
    requests:
        One :class:`RequestRecord` per request of the instance, in instance order.
    step_start, step_end:
        Seconds; ``step_start[s] <= step_end[s] <= step_start[s+1]``.
    meta:
        Free-form run facts: seed, engine, cache statistics (hit tokens, evicted tokens); wall time
        is *never* stored here (it would break byte-identical output).
    step_kinds:
        One character per step, ``"M"``, ``"P"`` or ``"D"`` (module docstring); ``None`` = all
        ``"M"``.
    switches:
        ``None`` unless the run preempted in swap mode: every :class:`SwitchEvent` (swap-outs,
        swap-ins, host evictions) in issue order. The switch-cost model and the host pool's
        configuration are in ``meta["preemption"]``.
    """

    policy: dict[str, Any]
    requests: list[RequestRecord]
    step_start: list[float]
    step_end: list[float]
    meta: dict[str, Any] = field(default_factory=dict)
    step_kinds: str | None = None
    switches: list[SwitchEvent] | None = None

    @property
    def n_steps(self) -> int:
        return len(self.step_start)

    def kinds(self) -> str:
        """The step kinds as a string of length ``n_steps`` (``"M" * n_steps`` when unset)."""
        return "M" * self.n_steps if self.step_kinds is None else self.step_kinds

    def to_dict(self) -> dict[str, Any]:
        d = {
            "policy": self.policy,
            "requests": [r.to_dict() for r in self.requests],
            "step_start": list(self.step_start),
            "step_end": list(self.step_end),
            "meta": self.meta,
        }
        if self.step_kinds is not None:
            d["step_kinds"] = self.step_kinds
        if self.switches is not None:
            d["switches"] = [list(e) for e in self.switches]
        return d

    @staticmethod
    def from_dict(d: Any) -> "Trace":
        if not isinstance(d, dict):
            raise InputError("trace", f"must be a JSON object, got {type(d).__name__}")
        for key in ("policy", "requests", "step_start", "step_end"):
            if key not in d:
                raise InputError(f"trace.{key}", "missing")
        records = [RequestRecord.from_dict(r, f"trace.requests[{i}]") for i, r in enumerate(d["requests"])]
        kinds = d.get("step_kinds")
        if kinds is not None and (not isinstance(kinds, str) or set(kinds) - set(STEP_KINDS)):
            raise InputError("trace.step_kinds", f"must be a string of {'/'.join(STEP_KINDS)}, got {kinds!r:.40}")
        sw = d.get("switches")
        switches = None
        if sw is not None:
            try:
                switches = [SwitchEvent(int(a), str(b), str(c), int(e), int(f), int(g), int(h), float(i), float(j))
                            for a, b, c, e, f, g, h, i, j in sw]
            except (TypeError, ValueError) as e:
                raise InputError("trace.switches", f"malformed switch events: {e}") from None
            bad = [e.kind for e in switches if e.kind not in SWITCH_KINDS]
            if bad:
                raise InputError("trace.switches", f"unknown event kind {bad[0]!r} (known: {', '.join(SWITCH_KINDS)})")
        return Trace(
            policy=dict(d["policy"]),
            requests=records,
            step_start=[float(x) for x in d["step_start"]],
            step_end=[float(x) for x in d["step_end"]],
            meta=dict(d.get("meta", {})),
            step_kinds=kinds,
            switches=switches,
        )


@dataclass
class ClusterTrace:
    """The outcome of :func:`prefixsched.reference.cluster.simulate_cluster`: one trace per worker.

    Attributes
    ----------
    instance:
        The whole instance (not serialised by :meth:`to_dict`).
    dispatcher:
        ``{"name": ..., **params}`` of the dispatcher.
    traces:
        One :class:`Trace` per worker over the requests dispatched to it, in instance order; step
        indices and times are the worker's own. A worker that received nothing has an empty
        trace.
    dispatch:
        ``request id -> worker index``, in instance order.
    meta:
        ``workers``, ``seed``, ``engine``, the dispatcher's final ``dispatcher_state``, event
        counts, and with ``record_states=True`` the dispatcher's per-dispatch ``dispatch_log``
        (D²LPM only).
    """

    instance: Instance
    dispatcher: dict[str, Any]
    traces: list[Trace]
    dispatch: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def workers(self) -> int:
        return len(self.traces)

    def sub_instance(self, worker: int) -> Instance | None:
        """The requests dispatched to ``worker`` (instance order, same cost model, limits and
        weights), or None if it received none (an :class:`Instance` cannot be empty).

        Raises
        ------
        InputError
            If ``worker`` is not a worker index.
        """
        if isinstance(worker, bool) or not isinstance(worker, int) or not 0 <= worker < self.workers:
            raise InputError("worker", f"must be an integer in [0, {self.workers}), got {worker!r}")
        inst = self.instance
        reqs = tuple(r for r in inst.requests if self.dispatch[r.id] == worker)
        if not reqs:
            return None
        return Instance(reqs, cost_model=inst.cost_model, limits=inst.limits, weights=inst.weights)

    def merged_trace(self) -> Trace:
        """A :class:`Trace` whose records are the union of the workers' records, in instance
        order, for the per-request metrics (latencies, throughput, hit rate, backlog intervals,
        per-client totals). ``admit_step``/``finish_step`` stay *worker-local* and the step clock
        is empty (steps of different workers cannot be merged): use
        :func:`prefixsched.theory.metrics.cluster_service_timeline` for service curves, not the
        step-based functions. ``meta["worker_of"]`` gives each record's worker."""
        by_id: dict[str, RequestRecord] = {}
        for t in self.traces:
            for r in t.requests:
                by_id[r.id] = r
        recs = [by_id[r.id] for r in self.instance.requests]
        return Trace(
            policy={"name": self.traces[0].policy.get("name") if self.traces else None, "dispatcher": self.dispatcher},
            requests=recs,
            step_start=[],
            step_end=[],
            meta={"worker_of": dict(self.dispatch), "workers": self.workers, "merged": True},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dispatcher": self.dispatcher,
            "dispatch": dict(self.dispatch),
            "traces": [t.to_dict() for t in self.traces],
            "meta": self.meta,
        }
