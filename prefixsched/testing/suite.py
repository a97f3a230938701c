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
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st

from prefixsched.errors import InputError
from prefixsched.reference.policies.base import Decision, FinishedInfo, Policy, Snapshot
from prefixsched.reference.simulator import simulate as _simulate
from prefixsched.testing.strategies import backlogged_instances, instances
from prefixsched.theory import bounds
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
    admitted. ``name``, ``params()``, ``state()`` and ``describe()`` are the inner policy's, so
    the trace is the same as without the wrapper.
    """

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # per-instance, mirrors the inner policy
        self.log: list[tuple[int, float, tuple[str, ...], tuple[str, ...], dict[str, float]]] = []

    def on_arrival(self, request: Request, now: float, snap: Snapshot) -> None:
        self.inner.on_arrival(request, now, snap)

    def decide(self, snap: Snapshot) -> Decision:
        entries = list(snap.fcfs())
        waiting = tuple(e.request.id for e in entries)
        arrivals = {e.request.id: e.request.arrival for e in entries}
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


@dataclass
class PolicyReport:
    """What :func:`check_policy` found. ``results`` has one entry per applicable invariant."""

    policy: dict[str, Any]
    examples: int
    results: dict[str, InvariantResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True iff no applicable invariant was violated."""
        return all(r.holds for r in self.results.values())

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
        return "\n".join(lines)


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
        Shrink counterexamples (slower on violations).

    Returns
    -------
    PolicyReport
        Per invariant: instances, checks, violations and the minimal counterexample.

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
            instance, make, starvation_k=starvation_k, determinism=determinism, online=online
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
    return report


def _flatten(eg: BaseExceptionGroup) -> list[_Violation]:
    out: list[_Violation] = []
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            out.extend(_flatten(e))
        elif isinstance(e, _Violation):
            out.append(e)
    return out
