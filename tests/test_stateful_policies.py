"""Stateful tests (issue #4): every registered policy inside the steppable simulator, with the
invariants checked after every single forward step.

:class:`PolicyMachine` is a hypothesis ``RuleBasedStateMachine``. ``@initialize`` draws a policy
(every name of the built-in registry, DLPM with small quanta, k-LPM with k = 3) and a small
*instance skeleton*: up to 3 clients, a prefix tree (:func:`~prefixsched.testing.strategies.prefix_trees`),
``page_size`` 1 or 2, limits small enough that KV memory, the prefill budget and the running slots
bind, and a cost model whose decode cost is positive. The worker is a
:class:`~prefixsched.reference.simulator.Worker` in online mode (``requests=()``), the policy
wrapped in a :class:`~prefixsched.testing.suite.RecordingPolicy` (decision log).

Rules:

- ``arrive``: submit a request (prompt = tree node + private suffix, drawn output length) with
  arrival = the worker's current time, or a few ticks later;
- ``step``: advance the worker by **exactly one** forward step. The ``Worker`` has no single-step
  method; ``run(until)`` runs every step whose start is ``< until``. The driver computes the start
  of the next step (the current time if something runs or waits, else the next submitted
  arrival) and calls ``run(until=math.nextafter(start, inf))``. Since every step has positive
  duration under the cost models drawn here (positive decode base, positive prefill cost) the
  step after it starts at ``> until``, so exactly one step runs; the driver asserts it.
  (``CostModel.token_units()`` is *not* drawn: its decode-only steps take 0 s and several would
  run in one call.)
- ``drain`` (a rule once ``MAX_REQUESTS`` requests were submitted, and the teardown): one step at
  a time until every submitted request finished (the invariants checked after each), then
  ``run(final=True)``; the worker's trace must pass
  :func:`~prefixsched.theory.schedule.check_trace` on the instance of all submitted requests and
  equal ``simulate`` on it byte for byte.

Invariants after every rule (IDs of docs/invariants.md):

- ``INV-3`` causality: every admitted request had arrived and was waiting at its decision;
  ``admit >= arrival``.
- ``INV-4`` work conservation, as the engine guarantees it: a request always fits an empty batch
  (only the used prefix pages are pinned, ``kv_capacity_tokens >= prompt + output``, and the
  first request of a step may exceed the prefill budget alone), so a step that starts with
  nothing running and a request waiting must run and admit at least one request. With a
  non-empty batch the engine and policies promise nothing (DLPM and the head-of-line policies
  may leave fitting requests waiting). ``INV-22``: for the head-of-line policies the admitted
  one is the head: FCFS's oldest request, VTC's oldest request of the least-counter client.
- ``INV-6`` k-LPM (k = 2, 3) and FCFS (k = 1): among every k consecutive admissions at least one
  was the oldest waiting request at its pick.
- ``INV-7`` DLPM: every deficit in ``(-U, Q_u]``, ``U = dlpm_U(L_input, M)`` with ``M =
  batch_output_capacity`` (the documented DLPM ``M``) of the requests submitted so far.
- ``INV-9`` VTC: the counters of the clients with a waiting request differ by at most
  ``w_e*L_input + w_q*M`` (the bound documented in ``check_vtc_counter_spread``).

Negative checks: the deliberately broken policies of :mod:`prefixsched.testing.broken` driven
through the same machine make the matching invariant fire (scripted runs, and one hypothesis
search).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from prefixsched.reference.policies import available, create
from prefixsched.reference.policies.base import Policy, Snapshot
import functools

from prefixsched.reference.simulator import Worker as _Worker
from prefixsched.reference.simulator import simulate as _simulate
from prefixsched.testing.broken import (
    DLPMEagerRefill,
    DLPMNeverRefills,
    LazyBatcher,
    ReverseOrder,
    VTCNoLift,
)
from prefixsched.testing.strategies import prefix_trees, prompts_from_tree
from prefixsched.testing.suite import RecordingPolicy, _oldest_flags
from prefixsched.theory import bounds as B
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request
from prefixsched.theory.schedule import check_trace

simulate = functools.partial(_simulate, engine="ideal")  # the papers' model these tests state
Worker = functools.partial(_Worker, engine="ideal")

MAX_REQUESTS = 12  # per run; the skeleton holds as many placeholders (the waiting index sizes its keys by it)
MAX_OUTPUT = 5
MAX_SUFFIX = 3

#: Cost models with positive step durations: one step per ``run`` call (module docstring).
COST_MODELS: dict[str, tuple[CostModel, float]] = {  # name -> (model, arrival tick in seconds)
    "unit-decode": (
        CostModel(prefill_base_s=0.0, prefill_per_token_s=1.0, decode_base_s=1.0, decode_per_request_s=0.0),
        1.0,
    ),
    "default": (CostModel(), 5e-3),
}

#: (label, registry name, constructor parameters, k for INV-6 or None).
PolicySpec = tuple[str, str, dict[str, Any], "int | None"]


def _builtin_specs() -> list[PolicySpec]:
    out: list[PolicySpec] = []
    for name in sorted(available()):
        k = 1 if name == "fcfs" else (2 if name == "k-lpm" else None)  # k-lpm's default k is 2
        out.append((name, name, {}, k))
    out += [(f"dlpm:{q:g}", "dlpm", {"quantum": q}, None) for q in (1.0, 4.0, 16.0)]
    out.append(("k-lpm:3", "k-lpm", {"k": 3}, 3))
    return out


POLICY_SPECS = _builtin_specs()


class Recorder(RecordingPolicy):
    """:class:`RecordingPolicy` that also keeps, per decision, the inner policy's ``state()`` and
    the waiting clients *before* ``decide`` (VTC's head needs the counters the pass starts from)."""

    def __init__(self, inner: Policy) -> None:
        super().__init__(inner)
        self.pre: list[tuple[dict[str, Any], list[str]]] = []

    def decide(self, snap: Snapshot):  # noqa: ANN201 - Decision
        self.pre.append((self.inner.state(), list(snap.waiting_clients())))
        return super().decide(snap)


class PolicyMachine(RuleBasedStateMachine):
    """One policy in one online worker; invariants after every step (module docstring)."""

    #: Policies drawn by ``setup``; subclasses (the negative tests) replace it.
    SPECS: list[tuple[str, Callable[[], Policy], int | None]] = [
        (label, (lambda n=name, p=params: create(n, **p)), k) for label, name, params, k in POLICY_SPECS
    ]

    # ------------------------------------------------------------------ plain helpers (scripted tests call these)

    def _setup(
        self,
        spec: int,
        n_clients: int,
        tree: list[tuple[int, ...]],
        page_size: int,
        cost: str,
        kv_extra: int,
        max_prefill: int,
        max_running: int,
    ) -> None:
        self.label, self.make, self.k = self.SPECS[spec]
        self.tree = tree
        self.clients = [f"c{i}" for i in range(n_clients)]
        self.cost_model, self.tick = COST_MODELS[cost]
        longest = max(len(x) for x in tree) + MAX_SUFFIX
        self.limits = Limits(
            kv_capacity_tokens=longest + MAX_OUTPUT + kv_extra,
            max_prefill_tokens=max_prefill,
            max_running_requests=max_running,
            page_size=page_size,
        )
        skeleton = Instance(
            tuple(
                Request(id=f"skeleton{i}", client=self.clients[i % n_clients], arrival=0.0, prompt=(1,), output_len=1)
                for i in range(MAX_REQUESTS)
            ),
            self.cost_model,
            self.limits,
        )
        self.policy = Recorder(self.make())
        self.worker = Worker(skeleton, self.policy, requests=(), record_states=True)
        self.submitted: list[Request] = []
        self.client_of: dict[str, str] = {}
        self.checked_log = 0  # decision-log entries already checked for INV-3
        self.last_step: dict[str, Any] | None = None  # what the step just run must satisfy (INV-4)
        self.picks_without_oldest = 0  # INV-6 streak over the whole run
        self.flags_seen = 0
        self._inst_cache: tuple[int, Instance] | None = None
        self.failed = False
        self.drained_at = -1

    def _arrive(self, client: int, prompt: tuple[int, ...], output_len: int, delay: int) -> None:
        w = self.worker
        t = w.now + delay * self.tick
        if self.submitted:
            t = max(t, self.submitted[-1].arrival)
        r = Request(
            id=f"r{len(self.submitted)}", client=self.clients[client % len(self.clients)], arrival=t,
            prompt=prompt, output_len=output_len,
        )
        w.submit(r)
        self.submitted.append(r)
        self.client_of[r.id] = r.client

    def _next_start(self) -> float | None:
        """Start time of the next step the worker would run (None: nothing to do)."""
        w = self.worker
        pending = w.reqs[w.nxt] if w.nxt < w.n_submitted else None
        if w.blocked:
            return None if pending is None else pending.arrival
        if w.n_running == 0 and w.n_waiting == 0:
            return None if pending is None else max(w.now, pending.arrival)
        return w.now

    def _step(self) -> None:
        w = self.worker
        start = self._next_start()
        assert start is not None
        idle = w.n_running == 0
        waiting = [e.request.id for e in w.snap.fcfs()]
        waiting += [r.id for r in w.reqs[w.nxt :] if r.arrival <= start]
        n_steps, n_log = len(w.step_start), len(self.policy.log)
        w.run(until=math.nextafter(start, math.inf))
        ran = len(w.step_start) - n_steps
        assert ran <= 1, f"run(until=just after {start}) ran {ran} steps: a step of zero duration?"
        if ran:
            assert w.step_start[-1] == start, (w.step_start[-1], start)
        admitted: tuple[str, ...] = ()
        pre = None
        for i in range(n_log, len(self.policy.log)):
            if ran and self.policy.log[i][0] == len(w.step_start) - 1:
                admitted = self.policy.log[i][3]
                pre = self.policy.pre[i]
        self.last_step = {
            "start": start, "ran": bool(ran), "idle": idle, "waiting": waiting, "admitted": admitted, "pre": pre,
        }

    def _instance(self) -> Instance:
        n = len(self.submitted)
        if self._inst_cache is None or self._inst_cache[0] != n:
            self._inst_cache = (n, Instance(tuple(self.submitted), self.cost_model, self.limits))
        return self._inst_cache[1]

    def _drain(self) -> None:
        """Step until nothing is left (invariants after each step), then ``run(final=True)`` and the
        whole-run checks (``check_trace``, equality with ``simulate``). The ``drain`` rule and teardown."""
        if not getattr(self, "submitted", None):
            return
        w = self.worker
        if w.outstanding == 0 and self.drained_at == len(w.step_start):
            return  # nothing happened since the last drain: its whole-run checks still stand
        budget = 4 * sum(r.output_len + 1 for r in self.submitted) + 10
        while w.outstanding and self._next_start() is not None and budget:
            self._step()
            self._check_all()
            budget -= 1
        w.run(final=True)  # raises IllegalDecisionError if the policy idles the server forever (INV-1)
        assert w.outstanding == 0, f"{w.outstanding} requests never finished"
        inst = self._instance()
        trace = w.trace()
        rep = check_trace(inst, trace, strict=False)
        assert rep.ok, f"INV-2: check_trace rejects the stepped trace: {rep.violations[:5]}"
        ref = simulate(inst, self.make(), record_states=True)
        a = json.dumps(trace.to_dict(), sort_keys=True)
        b = json.dumps(ref.to_dict(), sort_keys=True)
        assert a == b, "INV-21: driving the worker step by step changed the trace (vs simulate)"
        self.drained_at = len(w.step_start)

    # ------------------------------------------------------------------ invariants

    def _check_causality(self) -> None:  # INV-3
        w = self.worker
        log = self.policy.log
        for step, now, waiting, admit, arrivals in log[self.checked_log :]:
            for rid in admit:
                assert rid in arrivals, f"INV-3: step {step}: admitted {rid!r}, which was not waiting"
                assert arrivals[rid] <= now, (
                    f"INV-3: step {step}: admitted {rid!r} at t={now} before its arrival {arrivals[rid]}"
                )
                s = w.seq_of[rid]
                assert w.admit_t[s] >= w.reqs[s].arrival, f"INV-3: {rid!r} admit {w.admit_t[s]} < arrival"
        self.checked_log = len(log)

    def _check_work_conservation(self) -> None:  # INV-4, INV-22
        ls = self.last_step
        if ls is None or not (ls["idle"] and ls["waiting"]):
            return
        assert ls["ran"] and ls["admitted"], (
            f"INV-4: policy {self.label!r} idled the server at t={ls['start']} with nothing running while "
            f"{ls['waiting']} waited (each fits an empty batch)"
        )
        first = ls["admitted"][0]
        if self.label == "fcfs":
            assert first == ls["waiting"][0], f"INV-22: FCFS on an empty batch admitted {first!r}, head {ls['waiting'][0]!r}"
        elif self.label == "vtc" and ls["pre"] is not None:
            state, wclients = ls["pre"]
            c = state["counters"]
            head_client = min(wclients, key=lambda u: (c[u], wclients.index(u)))
            head = next(r for r in ls["waiting"] if self.client_of[r] == head_client)
            assert first == head, (
                f"INV-22: VTC on an empty batch admitted {first!r}; head is {head!r} of the least-counter "
                f"client {head_client!r} (counters {c})"
            )

    def _check_oldest_within_k(self) -> None:  # INV-6
        if self.k is None:
            return
        flags = _oldest_flags(self.policy.log)
        for rid, oldest, step in flags[self.flags_seen :]:
            self.picks_without_oldest = 0 if oldest else self.picks_without_oldest + 1
            assert self.picks_without_oldest <= self.k - 1, (
                f"INV-6: {self.picks_without_oldest} consecutive picks without the oldest waiting request "
                f"(k={self.k}); last {rid!r} in step {step}"
            )
        self.flags_seen = len(flags)

    def _check_counters(self) -> None:  # INV-7, INV-9
        if not self.submitted:
            return
        p, s = self.policy.params(), self.policy.state()
        if p.get("weights"):
            return
        inst = self._instance()
        L, M = B.max_input_tokens(inst), B.batch_output_capacity(inst)
        wts = inst.weights
        if "quantum" in p and "deficits" in s:
            Q = float(p["quantum"])
            U = B.dlpm_U(L, M, wts.w_e, wts.w_q)
            for u, q in s["deficits"].items():
                assert -U < q <= Q + 1e-9 * max(1.0, Q), (
                    f"INV-7: deficit of {u!r} = {q} outside (-U, Q_u] = ({-U}, {Q}] after step {self.worker.step - 1}"
                )
        if "counters" in s:
            live = [u for u in self.worker.snap.waiting_clients() if u in s["counters"]]
            if len(live) >= 2:
                vals = [s["counters"][u] for u in live]
                bound = wts.w_e * L + wts.w_q * M
                assert max(vals) - min(vals) <= bound + 1e-9 * max(1.0, bound), (
                    f"INV-9: VTC counters of waiting clients {dict(zip(live, vals))} spread "
                    f"{max(vals) - min(vals)} > w_e*L_input + w_q*M = {bound}"
                )

    def _check_all(self) -> None:
        try:
            self._check_causality()
            self._check_work_conservation()
            self._check_oldest_within_k()
            self._check_counters()
        except AssertionError:
            self.failed = True  # teardown must not mask the violation with its own error
            raise

    # ------------------------------------------------------------------ hypothesis interface

    @initialize(
        spec=st.integers(0, len(POLICY_SPECS) - 1),
        n_clients=st.integers(1, 3),
        tree=prefix_trees(max_roots=2, max_children=2, max_depth=3, max_segment=3),
        page_size=st.sampled_from([1, 2]),
        cost=st.sampled_from(sorted(COST_MODELS)),
        kv_extra=st.integers(0, 8),
        max_prefill=st.integers(1, 16),
        max_running=st.integers(1, 4),
    )
    def setup(self, spec, n_clients, tree, page_size, cost, kv_extra, max_prefill, max_running):
        self._setup(spec % len(self.SPECS), n_clients, tree, page_size, cost, kv_extra, max_prefill, max_running)

    @precondition(lambda self: len(self.submitted) < MAX_REQUESTS)
    @rule(
        data=st.data(),
        client=st.integers(0, 2),
        output_len=st.integers(1, MAX_OUTPUT),
        delay=st.sampled_from([0, 0, 0, 1, 3]),
    )
    def arrive(self, data, client, output_len, delay):
        prompt = data.draw(prompts_from_tree(self.tree, max_suffix=MAX_SUFFIX), label="prompt")
        self._arrive(client, prompt, output_len, delay)

    @precondition(lambda self: self._next_start() is not None)
    @rule()
    def step(self):
        self._step()

    @precondition(lambda self: len(self.submitted) >= MAX_REQUESTS)
    @rule()
    def drain(self):
        self._drain()

    @invariant()
    def invariants_hold(self):
        self._check_all()

    def teardown(self):
        if hasattr(self, "worker") and not self.failed:
            self._drain()


PolicyMachine.TestCase.settings = settings(
    stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
TestPolicyMachine = PolicyMachine.TestCase


# ---------------------------------------------------------------------------------------------
# the machine checks something: broken policies make it fail


def _machine_for(make: Callable[[], Policy], k: int | None = None) -> PolicyMachine:
    class One(PolicyMachine):
        SPECS = [("broken", make, k)]

    return One()


def _scripted(
    make: Callable[[], Policy],
    arrivals: list[tuple[int, tuple[int, ...], int, int]],
    *,
    steps_between: int = 1,
    k: int | None = None,
    n_clients: int = 2,
    kv_extra: int = 20,
    max_prefill: int = 16,
    max_running: int = 2,
) -> str:
    """Run arrivals (client, prompt, output, delay), each followed by ``steps_between`` steps, then
    drain; return the first invariant violation's message (AssertionError), or '' if none."""
    m = _machine_for(make, k)
    tree = [(1, 2, 3), (1, 2, 3, 4, 5), (6, 7)]
    try:
        m._setup(0, n_clients, tree, 1, "unit-decode", kv_extra, max_prefill, max_running)
        m._check_all()
        for client, prompt, out, delay in arrivals:
            m._arrive(client, prompt, out, delay)
            m._check_all()
            for _ in range(steps_between):
                if m._next_start() is None:
                    break
                m._step()
                m._check_all()
        m._drain()
    except AssertionError as e:
        return str(e)
    return ""


def test_scripted_run_of_a_correct_policy_reports_nothing():
    for label, name, params, k in POLICY_SPECS:
        msg = _scripted(lambda n=name, p=params: create(n, **p),
                        [(0, (1, 2, 3, 9), 3, 0), (1, (1, 2, 3, 4, 5), 2, 0), (0, (6, 7), 4, 1), (1, (6, 7, 8), 1, 0)],
                        k=k)
        assert msg == "", (label, msg)


def test_lazy_batcher_violates_work_conservation_at_the_step():
    msg = _scripted(LazyBatcher, [(0, (1, 2, 3), 2, 0)])
    assert msg.startswith("INV-4"), msg


def test_dlpm_that_never_refills_idles_the_server():
    # c0's two requests arrive together: its one quantum pays for the first only, the second then
    # waits on an idle server (c0 stays active, so it never gets a fresh quantum)
    msg = _scripted(lambda: DLPMNeverRefills(quantum=2.0),
                    [(0, (1, 2, 3), 2, 0), (1, (6, 7), 2, 0), (0, (1, 2, 3, 4), 2, 0)], steps_between=0)
    assert msg.startswith("INV-4"), msg


def test_dlpm_that_refills_eagerly_leaves_the_deficit_range():
    # the first pass lifts c0 to Q_u and admits; the next pass (a slot is free, c1 waits) tops c0
    # up again although q > 0: q > Q_u
    msg = _scripted(lambda: DLPMEagerRefill(quantum=20.0),
                    [(0, (1, 2, 3), 3, 0), (1, (1, 2, 3, 4), 3, 0), (0, (6, 7, 8), 2, 0)],
                    steps_between=1, max_running=3)
    assert msg.startswith("INV-7"), msg


def test_vtc_without_the_lift_breaks_the_counter_spread():
    # c0 floods and accumulates counter; c1 joins late with counter 0 (no lift) while c0 still waits
    flood = [(0, (1, 2, 3, 4, 5), 5, 0)] * 6
    msg = _scripted(VTCNoLift, flood + [(1, (6, 7), 1, 0), (1, (6, 7, 8), 1, 0)],
                    steps_between=2, max_running=1)
    assert msg.startswith("INV-9"), msg
    assert _scripted(lambda: create("vtc"), flood + [(1, (6, 7), 1, 0), (1, (6, 7, 8), 1, 0)],
                     steps_between=2, max_running=1) == ""


def test_reverse_order_starves_the_oldest_request():
    msg = _scripted(ReverseOrder, [(0, (1, 2, 3), 2, 0)] * 5, steps_between=0, k=2, max_running=1)
    assert msg.startswith("INV-6"), msg


@pytest.mark.parametrize("broken", [LazyBatcher, lambda: DLPMNeverRefills(quantum=1.0)], ids=["lazy", "never-refills"])
def test_hypothesis_search_finds_the_broken_policy(broken):
    """The machine itself (random rules, no script) finds each bug: the run must fail with an
    invariant's message."""

    class Broken(PolicyMachine):
        SPECS = [("broken", broken, None)]

    with pytest.raises(Exception) as err:  # noqa: PT011 - AssertionError or IllegalDecisionError (INV-1)
        run_state_machine_as_test(
            Broken,
            settings=settings(
                stateful_step_count=30, deadline=None, phases=[Phase.generate], database=None,
                suppress_health_check=list(HealthCheck), print_blob=False,
            ),
        )
    assert "INV-4" in str(err.value) or "INV-7" in str(err.value), str(err.value)


def test_submitting_more_requests_than_the_skeleton_holds_is_refused_or_harmless():
    """Found by this machine: the waiting index sizes its LPM keys (-cached * N + seq) by
    N = len(instance.requests), so a sixth request on a one-request skeleton collided (KeyError)
    or could silently misorder LPM. submit() now refuses it with an InputError."""
    from prefixsched.errors import InputError

    lim = Limits(kv_capacity_tokens=1000, max_prefill_tokens=1000, max_running_requests=1, page_size=1)
    reqs = [Request("r0", "a", 0.0, (1, 2, 3, 4, 5, 6, 7, 8), 3)]
    reqs += [Request(f"r{i}", "a", 0.001, tuple(range(1, 1 + i)) + (100 + i,), 1) for i in range(1, 6)]
    skeleton = Instance((Request("s0", "a", 0.0, (1,), 1),), CostModel(), lim)
    w = Worker(skeleton, create("lpm"), requests=())
    try:
        for r in reqs:
            w.submit(r)
    except InputError as e:
        assert "at most 1 requests" in str(e)
        return  # refusing is fine
    w.run(final=True)
    ref = simulate(Instance(tuple(reqs), CostModel(), lim), create("lpm"))
    assert json.dumps(w.trace().to_dict(), sort_keys=True) == json.dumps(ref.to_dict(), sort_keys=True)
