"""The invariant suite: run a (third-party) policy inside the reference simulator on
hypothesis-generated instances and report which invariants hold.

Usage::

    from prefixsched.testing import check_policy
    report = check_policy(MyPolicy, params={"quantum": 16}, max_examples=50, seed=0)
    print(report)            # one line per invariant: holds / VIOLATED (+ minimal counterexample)
    assert report.ok, report

Every invariant has an ID shared with the registry ``docs/invariants.md`` (statement, tests,
what it caught). The policy is wrapped in a recorder that logs every ``decide`` call (the FCFS
order of the waiting queue and the admitted ids) without changing what the policy sees or does.

Which invariants apply (``applies`` in the report):

- ``INV-1`` .. ``INV-5`` and ``INV-13``: every policy (``INV-13`` needs two distinct arrival
  times).
- ``INV-6`` (oldest request within every k picks): policies with a finite integer parameter
  ``k`` (k-LPM), or any policy when ``starvation_k`` is given.
- ``INV-7``, ``INV-8``, ``INV-10``, ``INV-11`` (DLPM): policies whose ``params()`` has ``quantum``
  and whose ``state()`` has ``deficits`` (and ``refills`` for ``INV-8``), unweighted.
- ``INV-9``, ``INV-12`` (VTC): policies whose ``state()`` has ``counters``, unweighted;
  ``INV-12`` reads the client view unless ``params()["charge"] == "extend"``.

Counterexamples are shrunk by hypothesis: each invariant raises its own exception type, so with
``report_multiple_bugs`` every violated invariant gets its own minimal instance.

Measured figures (:data:`MEASURES`, issue #9), for every policy whatever its kind: the largest
service gap of two backlogged clients against VTC's bound with ``M`` = the batch token capacity,
and starvation of the oldest waiting request while it fitted (picks made ahead of it, and for how
long). They are reported as the worst value over the generated instances with an instance that
attains it, shrunk by :func:`shrink_instance` (greedy delta debugging from that instance, so the
shrunk one still attains it); they pass or fail only against a bound the caller gives. The report
also compares the policy with LPM, VTC and DLPM on the same generated instances. From the command
line: ``prefixsched check module:Class``.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st

from prefixsched.errors import InputError
from prefixsched.reference.policies.base import Decision, FinishedInfo, Policy, Snapshot
from prefixsched.reference.simulator import simulate as _simulate
from prefixsched.testing.strategies import backlogged_instances, instances
from prefixsched.theory import bounds
from prefixsched.theory.metrics import hit_rate, percentiles, request_latencies
from prefixsched.theory.model import Instance, Request
from prefixsched.theory.schedule import check_trace, idle_with_waiting
from prefixsched.theory.trace import Trace

#: The engine the invariant suite runs policies on: the papers' model (``ideal``), whose premises
#: the theorem checks assume (whole-output reservation, no chunking, no retraction).
SUITE_ENGINE = "ideal"


def simulate(instance: Instance, policy: Policy, **kw: Any) -> Trace:
    kw.setdefault("engine", SUITE_ENGINE)
    return _simulate(instance, policy, **kw)


if sys.version_info >= (3, 11):  # pragma: no cover - version switch
    from builtins import BaseExceptionGroup
else:  # pragma: no cover - Python 3.10: hypothesis depends on the backport
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "INVARIANTS",
    "Outcome",
    "InvariantResult",
    "PolicyReport",
    "RecordingPolicy",
    "run_invariants",
    "check_policy",
    "default_instances",
    "MEASURES",
    "MeasuredFigure",
    "Comparison",
    "measure_run",
    "shrink_instance",
]

#: ID -> statement, in report order (the registry ``docs/invariants.md`` uses the same IDs).
INVARIANTS: dict[str, str] = {
    "INV-1": "progress: the simulation completes (no illegal decision, no server idled forever)",
    "INV-2": "model: the independent checker check_trace accepts the trace",
    "INV-3": "causality: every admitted request had arrived and was waiting at the decision",
    "INV-4": "work conservation (P3): no idle gap while a request waits (idle_with_waiting is empty)",
    "INV-5": "determinism: the same instance and parameters give a byte-identical trace",
    "INV-6": "no starvation: the oldest waiting request is served at least once in every k picks",
    "INV-7": "DLPM deficits stay in (-U, Q_u]",
    "INV-8": "DLPM counter accounting: q(s) - q(s-1) = refills*Q_u - service of step s",
    "INV-9": "VTC counters of waiting clients stay within w_e*L_input + w_q*M (output-only M)",
    "INV-10": "DLPM Thm 4.1 / 4.2: backlogged service gaps <= 2(U + Q_u)",
    "INV-11": "DLPM Thm A.2: a rejoining client is served within 2(n-1)(Q_u+U)/a",
    "INV-12": "VTC two-backlogged bound: |W_f - W_g| <= 2*max(w_e*L_input, w_q*M)",
    "INV-13": "online: steps before time T are identical when the requests arriving at or after T are removed",
}


# ---------------------------------------------------------------------------------------------
# recording wrapper


class RecordingPolicy(Policy):
    """Delegates everything to ``inner`` and logs each decision.

    ``log`` holds one ``(step, now, waiting_fcfs_ids, admitted_ids, waiting_arrivals)`` tuple
    per ``decide`` call: the waiting queue in FCFS order as the policy saw it, and the ids it
    admitted; ``oldest_fit`` says, per call, whether the oldest waiting request fitted the step's
    admission budget before the policy chose. ``name``, ``params()``, ``state()`` and ``describe()`` are the inner policy's, so
    the trace is the same as without the wrapper.
    """

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # per-instance, mirrors the inner policy
        self.log: list[tuple[int, float, tuple[str, ...], tuple[str, ...], dict[str, float]]] = []
        #: per ``decide`` call (parallel to ``log``): could the oldest waiting request have been
        #: admitted, i.e. does it fit a fresh admission budget of the step (``snap.batch().fits``)?
        self.oldest_fit: list[bool] = []

    def on_arrival(self, request: Request, now: float, snap: Snapshot) -> None:
        self.inner.on_arrival(request, now, snap)

    def decide(self, snap: Snapshot) -> Decision:
        entries = list(snap.fcfs())
        waiting = tuple(e.request.id for e in entries)
        arrivals = {e.request.id: e.request.arrival for e in entries}
        self.oldest_fit.append(bool(entries) and snap.batch().fits(entries[0]))
        d = self.inner.decide(snap)
        admit = tuple(d.admit) if isinstance(d, Decision) else ()
        self.log.append((snap.step, snap.now, waiting, admit, arrivals))
        return d

    def on_step_end(self, decoded: Mapping[str, int], finished: Sequence[FinishedInfo], snap: Snapshot) -> None:
        self.inner.on_step_end(decoded, finished, snap)

    def params(self) -> dict[str, Any]:
        return self.inner.params()

    def state(self) -> dict[str, Any]:
        return self.inner.state()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


# ---------------------------------------------------------------------------------------------
# one instance


@dataclass
class Outcome:
    """Result of one invariant on one instance: ``checked`` premise instances examined (0 =
    vacuous here) and ``violation`` (None, or a message with the counterexample's details)."""

    checked: int
    violation: str | None = None


def _oldest_flags(log: Sequence[tuple[Any, ...]]) -> list[tuple[str, bool, int]]:
    """For every pick in decision order: (id, was it the oldest remaining waiting request, step)."""
    out = []
    for step, _now, waiting, admit, _arr in log:
        remaining = list(waiting)
        for rid in admit:
            out.append((rid, bool(remaining) and remaining[0] == rid, step))
            if rid in remaining:
                remaining.remove(rid)
    return out


def _kind(policy: Policy) -> dict[str, Any]:
    p = policy.params()
    s = policy.state()
    weighted = bool(p.get("weights"))
    k = p.get("k")
    return {
        "dlpm": "quantum" in p and "deficits" in s and not weighted,
        "dlpm_refills": "refills" in s,
        "vtc": "counters" in s and not weighted,
        "k": k if isinstance(k, int) and not isinstance(k, bool) else None,
        "quantum": p.get("quantum"),
        "view": "actual" if p.get("charge") == "extend" else "client",
    }


def run_invariants(
    instance: Instance,
    make_policy: Callable[..., Policy],
    *,
    starvation_k: int | None = None,
    determinism: bool = True,
    online: bool = True,
    observe: Callable[[Instance, Trace, RecordingPolicy], None] | None = None,
) -> dict[str, Outcome]:
    """Run one fresh policy on ``instance`` and evaluate every applicable invariant.

    Parameters
    ----------
    instance:
        The instance.
    make_policy:
        Factory returning a *fresh* policy (called once per simulation). If it takes one
        required positional argument it receives the instance being simulated (for ``INV-13``
        that is the cut instance: an instance-aware policy sees only what a run of the cut
        instance would give it).
    starvation_k:
        Apply ``INV-6`` with this k to any policy (default: only policies with a finite ``k``).
    determinism:
        Also run ``INV-5`` (a second simulation).
    online:
        Also run ``INV-13`` (a simulation of the instance cut at a later arrival).
    observe:
        Called as ``observe(instance, trace, recorder)`` after the main simulation completed (what
        :func:`check_policy` measures its figures on).

    Returns
    -------
    dict
        ``{invariant id: Outcome}`` for the invariants that apply (``INV-1`` always present).
    """
    out: dict[str, Outcome] = {}
    rec = RecordingPolicy(_make(make_policy, instance))
    kind = _kind(rec.inner)
    try:
        trace = simulate(instance, rec, record_states=True)
    except Exception as e:  # noqa: BLE001 - any failure of the run is a progress violation
        out["INV-1"] = Outcome(1, f"{type(e).__name__}: {e}")
        return out
    out["INV-1"] = Outcome(1)
    if observe is not None:
        observe(instance, trace, rec)

    rep = check_trace(instance, trace, strict=False)
    out["INV-2"] = Outcome(1, None if rep.ok else "; ".join(rep.violations[:5]))

    bad = []
    for step, now, waiting, admit, arrivals in rec.log:
        for rid in admit:
            if rid not in arrivals:
                bad.append(f"step {step}: admitted {rid!r} that was not waiting")
            elif arrivals[rid] > now:
                bad.append(f"step {step}: admitted {rid!r} at t={now} before its arrival {arrivals[rid]}")
    for r in trace.requests:
        if r.admit < r.arrival:
            bad.append(f"request {r.id!r} admitted at {r.admit} < arrival {r.arrival}")
    out["INV-3"] = Outcome(len(rec.log) + len(trace.requests), "; ".join(bad[:3]) or None)

    gaps = idle_with_waiting(instance, trace)
    out["INV-4"] = Outcome(
        max(trace.n_steps, 1),
        None if not gaps else (
            f"{len(gaps)} idle gap(s); first [{gaps[0].t_start}, {gaps[0].t_end}) while "
            f"{gaps[0].first_waiting!r} waited"
        ),
    )

    if determinism:
        try:
            again = simulate(instance, _make(make_policy, instance), record_states=True)
            same = json.dumps(again.to_dict(), sort_keys=True) == json.dumps(trace.to_dict(), sort_keys=True)
            out["INV-5"] = Outcome(1, None if same else "a second run with the same inputs gave a different trace")
        except Exception as e:  # noqa: BLE001
            out["INV-5"] = Outcome(1, f"second run raised {type(e).__name__}: {e}")

    if online:
        res = _online_check(instance, trace, make_policy)
        if res is not None:
            out["INV-13"] = res

    k = starvation_k if starvation_k is not None else kind["k"]
    if k is not None:
        flags = _oldest_flags(rec.log)
        run, worst, where = 0, 0, None
        for rid, oldest, step in flags:
            run = 0 if oldest else run + 1
            if run > worst:
                worst, where = run, (rid, step)
        msg = None
        if worst > k - 1:
            msg = f"{worst} consecutive picks without the oldest waiting request (k={k}); last one {where[0]!r} in step {where[1]}"  # type: ignore[index]
        out["INV-6"] = Outcome(len(flags), msg)

    def add(inv: str, r: bounds.BoundReport) -> None:
        prev = out.get(inv)
        msg = None if r.holds else str(r)
        if prev is None:
            out[inv] = Outcome(r.checked, msg)
        else:
            out[inv] = Outcome(prev.checked + r.checked, prev.violation or msg)

    if kind["dlpm"]:
        Q = float(kind["quantum"])
        add("INV-7", bounds.check_dlpm_deficit_range(instance, trace, Q))
        if kind["dlpm_refills"]:
            add("INV-8", bounds.check_dlpm_accounting(instance, trace, Q))
        add("INV-10", bounds.check_dlpm_thm_4_1(instance, trace, Q))
        add("INV-10", bounds.check_dlpm_thm_4_2(instance, trace, Q))
        add("INV-11", bounds.check_dlpm_thm_a2_latency(instance, trace, Q))
    if kind["vtc"]:
        add("INV-9", bounds.check_vtc_counter_spread(instance, trace))
        add("INV-12", bounds.check_vtc_two_backlogged(instance, trace, view=kind["view"]))
    return out


def _make(factory: Callable[..., Policy], instance: Instance) -> Policy:
    """Call ``factory()`` or ``factory(instance)`` (one required positional parameter)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return factory()
    required = [
        p for p in sig.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return factory(instance) if required else factory()


def _online_check(instance: Instance, trace: Trace, make_policy: Callable[..., Policy]) -> Outcome | None:
    """INV-13 (BLIS's oracle-knowledge boundary): cut the instance at ``T`` = the first arrival
    after the middle request's and compare every step that started before ``T``. None if every
    request arrives at the same time (nothing to cut)."""
    reqs = instance.requests
    i = len(reqs) // 2
    while i < len(reqs) and reqs[i].arrival <= reqs[max(i - 1, 0)].arrival and i > 0:
        i += 1
    if i == 0 or i >= len(reqs):
        return None
    t_cut = reqs[i].arrival
    sub = Instance(reqs[:i], instance.cost_model, instance.limits, instance.weights)
    try:
        short = simulate(sub, _make(make_policy, sub))
    except Exception as e:  # noqa: BLE001
        return Outcome(1, f"the instance cut at t={t_cut} failed to run: {type(e).__name__}: {e}")
    k = sum(1 for x in trace.step_start if x < t_cut)
    k2 = sum(1 for x in short.step_start if x < t_cut)
    if k != k2 or trace.step_start[:k] != short.step_start[:k] or trace.step_end[:k] != short.step_end[:k]:
        return Outcome(1, f"steps before t={t_cut} differ when requests arriving at or after it are removed ({k} vs {k2} steps)")
    full = {r.id: r for r in trace.requests}
    for r in short.requests:
        f = full[r.id]
        if r.admit_step < k or f.admit_step < k:
            a = (r.admit_step, r.admit, r.cached_tokens, r.extend_tokens)
            b = (f.admit_step, f.admit, f.cached_tokens, f.extend_tokens)
            if a != b:
                return Outcome(1, f"request {r.id!r} admitted differently before t={t_cut}: {b} with the future, {a} without")
    return Outcome(1)


# ---------------------------------------------------------------------------------------------
# hypothesis-driven report


@dataclass
class InvariantResult:
    """Aggregate of one invariant over every evaluated instance.

    ``examples``: instances on which it applied; ``checks``: premise instances examined (sum of
    :attr:`Outcome.checked`; 0 means the invariant was never exercised: *vacuous*);
    ``violations``: instances that violated it; ``counterexample``: a violating instance as JSON
    (:meth:`Instance.to_dict`) and its ``message``; ``shrunk`` says whether hypothesis minimised
    it (an invariant violated only together with a lower-numbered one keeps its first, unshrunk
    example). Counts include the shrinker's replays.
    """

    id: str
    statement: str
    examples: int = 0
    checks: int = 0
    violations: int = 0
    message: str | None = None
    counterexample: dict[str, Any] | None = None
    shrunk: bool = False

    @property
    def holds(self) -> bool:
        return self.violations == 0

    @property
    def vacuous(self) -> bool:
        return self.examples > 0 and self.checks == 0


#: Measured figures of :func:`check_policy` (id -> statement), for every policy. Reported as the
#: worst value found; they pass or fail only against a bound the caller gives.
MEASURES: dict[str, str] = {
    "gap_ratio": "largest service gap of two backlogged clients / VTC's 2*max(w_e*L_input, w_q*M), "
    "M = batch token capacity (KV pool), client view",
    "starvation_picks": "most picks made ahead of the oldest waiting request while it could have been admitted",
    "starvation_s": "longest time from the first pick made ahead of a fitting oldest request to its admission "
    "(the instance's clock)",
}


@dataclass
class MeasuredFigure:
    """One measured figure (:data:`MEASURES`) over the generated instances.

    ``worst`` and ``where`` (what attained it) are over the instances of the generate phase;
    ``counterexample`` is an instance attaining at least ``worst`` (or exceeding ``bound``), shrunk
    by :func:`shrink_instance` when ``shrunk``; ``holds`` is None without a ``bound``, else whether
    no instance exceeded it (``violations`` counts those that did).
    """

    id: str
    statement: str
    worst: float = 0.0
    examples: int = 0
    where: str | None = None
    bound: float | None = None
    violations: int = 0
    counterexample: dict[str, Any] | None = None
    shrunk: bool = False

    @property
    def holds(self) -> bool | None:
        return None if self.bound is None else self.violations == 0


@dataclass
class Comparison:
    """One policy on the generated instances: mean prefix hit rate (over instances with prompt
    tokens), the worst gap ratio (:data:`MEASURES` ``gap_ratio``) and the P99 TTFT of all their
    requests pooled (each instance in its own clock: token units or seconds, the same instances for
    every policy)."""

    policy: str
    instances: int
    hit_rate: float | None
    max_gap_ratio: float
    ttft_p99: float | None


def measure_run(instance: Instance, trace: Trace, rec: RecordingPolicy) -> dict[str, tuple[float, str]]:
    """The measured figures (:data:`MEASURES`) of one run: ``{id: (value, where)}``.

    Starvation: at every decision whose oldest waiting request o fitted the step's budget
    (``rec.oldest_fit``), the requests admitted before o (all of them if o was not admitted) are
    picks made ahead of o; they add up over the decisions until o is admitted. ``starvation_s`` runs
    from the first such decision to o's admission.
    """
    rep = bounds.check_vtc_two_backlogged(instance, trace, view="client")
    w = rep.witness
    gap_where = f"pair {w['pair']} over {tuple(round(t, 6) for t in w['interval'])}" if w else "no two clients backlogged together"
    admit = {r.id: r.admit for r in trace.requests}
    picks: dict[str, int] = {}
    first: dict[str, float] = {}
    for (step, now, waiting, admitted, _arr), fit in zip(rec.log, rec.oldest_fit):
        if not waiting or not fit:
            continue
        o = waiting[0]
        ahead = admitted.index(o) if o in admitted else len(admitted)
        if ahead:
            picks[o] = picks.get(o, 0) + ahead
            first.setdefault(o, now)
    worst_p = max(picks.items(), key=lambda kv: (kv[1], kv[0]), default=(None, 0))
    walls = {o: admit[o] - t for o, t in first.items()}
    worst_w = max(walls.items(), key=lambda kv: (kv[1], kv[0]), default=(None, 0.0))
    return {
        "gap_ratio": (float(rep.ratio), f"gap {rep.worst:g} against bound {rep.bound:g}, {gap_where}"),
        "starvation_picks": (float(worst_p[1]), f"request {worst_p[0]!r}" if worst_p[0] is not None else "never"),
        "starvation_s": (float(worst_w[1]), f"request {worst_w[0]!r}" if worst_w[0] is not None else "never"),
    }


def _variants(inst: Instance) -> Any:
    """Smaller neighbours of ``inst`` for :func:`shrink_instance`, most aggressive first."""
    reqs = list(inst.requests)
    n = len(reqs)
    size = n // 2
    while size >= 1:  # drop chunks of requests (ddmin)
        for start in range(0, n, size):
            if n - size >= 1:
                yield reqs[:start] + reqs[start + size:]
        size //= 2
    for i, r in enumerate(reqs):  # shorter outputs
        for o in sorted({1, max(1, r.output_len // 2)}):  # >= 1: Instance() does not check it
            if o < r.output_len:
                yield reqs[:i] + [replace(r, output_len=o)] + reqs[i + 1:]
    for i, r in enumerate(reqs):  # shorter token prompts (block prompts are left as they are)
        if isinstance(r.prompt, tuple) and len(r.prompt) > 1:
            for m in sorted({1, len(r.prompt) // 2, len(r.prompt) - 1}):
                yield reqs[:i] + [replace(r, prompt=r.prompt[:m])] + reqs[i + 1:]
    for i, r in enumerate(reqs):  # earlier arrivals (same order)
        lo = reqs[i - 1].arrival if i else 0.0
        if r.arrival > lo:
            yield reqs[:i] + [replace(r, arrival=lo)] + reqs[i + 1:]


def shrink_instance(instance: Instance, keep: Callable[[Instance], bool], *, max_evals: int = 300) -> tuple[Instance, bool]:
    """Greedy delta-debugging: the smallest instance found, by repeatedly taking the first smaller
    neighbour (fewer requests, shorter outputs and token prompts, earlier arrivals) for which
    ``keep`` still holds. Deterministic. Returns ``(instance, changed)``; at most ``max_evals``
    calls of ``keep``."""
    cur, evals, changed = instance, 0, False
    progress = True
    while progress and evals < max_evals:
        progress = False
        for cand in _variants(cur):
            if evals >= max_evals:
                break
            try:
                nxt = Instance(tuple(cand), cur.cost_model, cur.limits, cur.weights)
            except InputError:
                continue
            evals += 1
            if keep(nxt):
                cur, changed, progress = nxt, True, True
                break
    return cur, changed


@dataclass
class PolicyReport:
    """What :func:`check_policy` found. ``results`` has one entry per applicable invariant."""

    policy: dict[str, Any]
    examples: int
    results: dict[str, InvariantResult] = field(default_factory=dict)
    #: measured figures (:data:`MEASURES`), worst over the generated instances
    measures: dict[str, MeasuredFigure] = field(default_factory=dict)
    #: the same generated instances under the comparison policies (the policy itself first)
    comparison: list[Comparison] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True iff no applicable invariant was violated and no measured figure exceeded a bound
        the caller gave."""
        return all(r.holds for r in self.results.values()) and all(m.holds is not False for m in self.measures.values())

    @property
    def violated(self) -> list[str]:
        return [i for i, r in self.results.items() if not r.holds]

    @property
    def total_checks(self) -> int:
        return sum(r.checks for r in self.results.values())

    def __str__(self) -> str:
        lines = [f"policy {self.policy} on {self.examples} evaluated instances (shrinking replays included):"]
        for inv, r in self.results.items():
            if not r.holds:
                status = f"VIOLATED on {r.violations}/{r.examples} instance(s)"
            elif r.vacuous:
                status = "vacuous (premise never met)"
            else:
                status = "holds"
            lines.append(f"  {inv:<7} {status:<34} {r.checks:>6} checks  {r.statement}")
            if not r.holds:
                lines.append(f"          counterexample: {r.message}")
                if r.counterexample is not None:
                    label = "minimal instance" if r.shrunk else "instance"
                    lines.append(f"          {label}: {json.dumps(r.counterexample, sort_keys=True)}")
        if self.measures:
            lines.append("measured (worst over the generated instances; pass/fail only against a bound you give):")
            for m in self.measures.values():
                verdict = "" if m.holds is None else (f"  holds (bound {m.bound:g})" if m.holds else f"  EXCEEDS bound {m.bound:g}")
                lines.append(f"  {m.id:<17} {m.worst:>10.4g}{verdict}  {m.statement}")
                if m.where:
                    lines.append(f"          worst: {m.where}")
                if m.counterexample is not None and m.worst > 0:
                    label = "shrunk instance" if m.shrunk else "instance"
                    lines.append(f"          {label}: {json.dumps(m.counterexample, sort_keys=True)}")
        if self.comparison:
            lines.append(f"compared on the same {self.comparison[0].instances} generated instances "
                         "(P99 TTFT pooled over them, each in its own clock):")
            lines.append(f"  {'policy':<24} {'hit rate':>9} {'max gap/VTC bound':>18} {'P99 TTFT':>10}")
            for c in self.comparison:
                hr = "-" if c.hit_rate is None else f"{c.hit_rate:.3f}"
                p99 = "-" if c.ttft_p99 is None else f"{c.ttft_p99:.4g}"
                lines.append(f"  {c.policy:<24} {hr:>9} {c.max_gap_ratio:>18.4g} {p99:>10}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form of the whole report."""
        return {
            "policy": self.policy,
            "examples": self.examples,
            "ok": self.ok,
            "invariants": {
                i: {"statement": r.statement, "holds": r.holds, "vacuous": r.vacuous, "examples": r.examples,
                    "checks": r.checks, "violations": r.violations, "message": r.message,
                    "counterexample": r.counterexample, "shrunk": r.shrunk}
                for i, r in self.results.items()
            },
            "measures": {m.id: asdict(m) | {"holds": m.holds} for m in self.measures.values()},
            "comparison": [asdict(c) for c in self.comparison],
        }


class _Violation(AssertionError):
    """Base of the per-invariant exception types raised inside the hypothesis run."""

    instance: Instance
    invariant: str
    message: str


def _violation_type(inv: str) -> type[_Violation]:
    return type(f"Violation_{inv.replace('-', '_')}", (_Violation,), {})


def default_instances() -> st.SearchStrategy[Instance]:
    """The suite's default workload mix: :func:`~.strategies.instances` (up to 3 clients of every
    kind) or two flooding clients (:func:`~.strategies.backlogged_instances`)."""
    return st.one_of(instances(max_clients=3), backlogged_instances(max_requests_per_client=8))


def check_policy(
    policy_class: type[Policy] | str,
    *,
    params: Mapping[str, Any] | None = None,
    max_examples: int = 50,
    seed: int = 0,
    strategy: st.SearchStrategy[Instance] | None = None,
    starvation_k: int | None = None,
    determinism: bool = True,
    online: bool = True,
    shrink: bool = True,
    max_gap_ratio: float | None = None,
    max_starvation_picks: float | None = None,
    max_starvation_s: float | None = None,
    compare: Sequence[str] | None = ("lpm", "vtc", "dlpm"),
    measure: bool = True,
) -> PolicyReport:
    """Run the invariant suite against ``policy_class(**params)`` on generated instances.

    Parameters
    ----------
    policy_class:
        A :class:`Policy` subclass (need not be registered) or a registry name.
    params:
        Constructor keyword arguments (a fresh policy per simulation).
    max_examples:
        Generated instances (hypothesis ``max_examples``; shrinking adds runs on violation).
    seed:
        Hypothesis seed: same seed, same instances, same report.
    strategy:
        Instances to draw (default :func:`default_instances`).
    starvation_k:
        Apply ``INV-6`` with this k to any policy.
    determinism:
        Check ``INV-5`` (one more simulation per instance).
    online:
        Check ``INV-13`` (one more simulation per instance).
    shrink:
        Shrink counterexamples (slower on violations), the measured figures' too.
    max_gap_ratio, max_starvation_picks, max_starvation_s:
        Bounds on the measured figures (:data:`MEASURES`): given, a figure passes or fails (and
        :attr:`PolicyReport.ok` with it); omitted, it is only reported. Every policy is measured,
        whatever its kind: the backlogged service gap against VTC's bound with ``M`` = the batch
        token capacity (``kv_capacity_tokens``), and starvation of the oldest waiting request.
    compare:
        Policy specs (registry ``NAME`` or ``NAME:VALUE``) to run on the same generated instances
        (hit rate, worst gap ratio, pooled P99 TTFT), next to the checked policy; ``None`` or ``()``
        skips it. A bare ``"dlpm"`` runs with ``Q_u = U`` of each instance
        (:func:`~prefixsched.theory.bounds.dlpm_U`), because its default quantum (8000 cost units)
        makes it LPM on instances of a few hundred tokens.
    measure:
        Compute the measured figures (and the comparison) at all.

    Returns
    -------
    PolicyReport
        Per invariant: instances, checks, violations and the minimal counterexample; the measured
        figures and the comparison.

    Raises
    ------
    InputError
        If ``policy_class`` is not a Policy subclass or a known name, or ``max_examples < 1``.
    """
    if isinstance(policy_class, str):
        from prefixsched.reference.policies import get

        policy_class = get(policy_class)
    if not (isinstance(policy_class, type) and issubclass(policy_class, Policy)):
        raise InputError("policy_class", f"must be a Policy subclass, got {policy_class!r}")
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise InputError("max_examples", f"must be an integer >= 1, got {max_examples!r}")
    kwargs = dict(params or {})
    cls = policy_class

    def make() -> Policy:
        return cls(**kwargs)

    probe = make()
    report = PolicyReport(policy=probe.describe(), examples=0)
    types = {inv: _violation_type(inv) for inv in INVARIANTS}
    strat = strategy if strategy is not None else default_instances()
    user_bounds = {"gap_ratio": max_gap_ratio, "starvation_picks": max_starvation_picks, "starvation_s": max_starvation_s}
    for k, v in user_bounds.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0):
            raise InputError(f"max_{k}", f"must be a number >= 0, got {v!r}")
    if measure:
        report.measures = {k: MeasuredFigure(k, MEASURES[k], bound=user_bounds[k]) for k in MEASURES}
    worst_inst: dict[str, Instance] = {}
    collected: list[tuple[Instance, Trace, float]] = []

    def observe(instance: Instance, trace: Trace, rec: RecordingPolicy) -> None:
        vals = measure_run(instance, trace, rec)
        for k, (v, where) in vals.items():
            m = report.measures[k]
            m.examples += 1
            if m.bound is not None and v > m.bound:
                m.violations += 1
            if v > m.worst or m.where is None:
                m.worst, m.where = v, where
                worst_inst[k] = instance
        if len(collected) < max_examples:
            collected.append((instance, trace, vals["gap_ratio"][0]))

    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])

    @hyp_seed(seed)
    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=False,
        report_multiple_bugs=True,
        phases=phases,
        verbosity=Verbosity.quiet,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(strat)
    def _run(instance: Instance) -> None:
        report.examples += 1
        outcomes = run_invariants(
            instance, make, starvation_k=starvation_k, determinism=determinism, online=online,
            observe=observe if measure else None,
        )
        first_bad = None
        for inv, o in outcomes.items():
            r = report.results.setdefault(inv, InvariantResult(inv, INVARIANTS[inv]))
            r.examples += 1
            r.checks += o.checked
            if o.violation is not None:
                r.violations += 1
                if r.counterexample is None:  # fallback until a shrunk one replaces it
                    r.message, r.counterexample, r.shrunk = o.violation, instance.to_dict(), False
                if first_bad is None:
                    first_bad = (inv, o.violation)
        if first_bad is not None:
            inv, msg = first_bad
            exc = types[inv](f"{inv}: {msg}")
            exc.instance = instance
            exc.invariant = inv
            exc.message = msg
            raise exc

    found: list[_Violation] = []
    try:
        _run()
    except _Violation as e:
        found.append(e)
    except BaseExceptionGroup as eg:  # several invariants violated: one minimal example each
        match, rest = eg.split(_Violation)
        if rest is not None:
            raise rest from None
        assert match is not None
        found.extend(_flatten(match))
    for e in found:
        r = report.results.setdefault(e.invariant, InvariantResult(e.invariant, INVARIANTS[e.invariant]))
        if not r.shrunk:
            r.message, r.counterexample, r.shrunk = e.message, e.instance.to_dict(), shrink
    # the shrinker's replays count as evaluations; violations stay >= 1 where one was found
    report.results = dict(sorted(report.results.items(), key=lambda kv: int(kv[0].split("-")[1])))
    if measure:
        _finish_measures(report, worst_inst, make, shrink)
        if compare:
            report.comparison = _compare(report, collected, compare)
    return report


def _finish_measures(report: PolicyReport, worst_inst: dict[str, Instance], make: Callable[[], Policy], shrink: bool) -> None:
    """Attach (and shrink) the instance behind each measured figure's worst value."""

    def value(k: str, inst: Instance) -> float:
        rec = RecordingPolicy(_make(make, inst))
        try:
            tr = simulate(inst, rec)
        except Exception:  # noqa: BLE001 - a failing run has no figure
            return -math.inf
        return measure_run(inst, tr, rec)[k][0]

    for k, m in report.measures.items():
        inst = worst_inst.get(k)
        if inst is None or m.worst <= 0:
            continue
        if m.bound is not None and m.worst <= m.bound:
            m.counterexample = inst.to_dict()  # the worst instance; not a counterexample
            continue
        target = m.bound if m.bound is not None else m.worst
        if shrink:
            strict = m.bound is not None
            small, m.shrunk = shrink_instance(
                inst, lambda i, k=k: (value(k, i) > target) if strict else (value(k, i) >= target * (1 - 1e-9))
            )
            inst = small
        m.counterexample = inst.to_dict()


def _compare(report: PolicyReport, collected: list[tuple[Instance, Trace, float]], names: Sequence[str]) -> list[Comparison]:
    """The checked policy and each of ``names`` on the instances collected in the generate phase."""
    from prefixsched.reference.policies import create

    def row(label: str, runs: list[tuple[Trace, float]]) -> Comparison:
        hits = [h for t, _ in runs if (h := hit_rate(t)) is not None]
        ttft = np.concatenate([request_latencies(t)["ttft"] for t, _ in runs]) if runs else np.empty(0)
        return Comparison(
            label, len(runs), float(np.mean(hits)) if hits else None,
            float(max((r for _, r in runs), default=0.0)), percentiles(ttft, (99,))[99],
        )

    out = [row(f"{report.policy.get('name')} (checked)", [(t, r) for _, t, r in collected])]
    for name in names:
        runs = []
        for inst, _t, _r in collected:
            if name == "dlpm":  # the quantum at the instance's scale: Q_u = U (bounds.dlpm_U)
                w = inst.weights
                q = bounds.dlpm_U(bounds.max_input_tokens(inst), bounds.batch_output_capacity(inst), w.w_e, w.w_q)
                pol = create("dlpm", quantum=q)
            else:
                pol = create(name)
            tr = simulate(inst, pol)
            runs.append((tr, bounds.check_vtc_two_backlogged(inst, tr, view="client").ratio))
        out.append(row(name, runs))
    return out


def _flatten(eg: BaseExceptionGroup) -> list[_Violation]:
    out: list[_Violation] = []
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            out.extend(_flatten(e))
        elif isinstance(e, _Violation):
            out.append(e)
    return out
