"""Preemptive policies: preemptive VTC, a FastSwitch-style priority policy and SGLang's own
priority preemption (``PrefillAdder.preempt_to_schedule``).

They preempt only on an engine with preemption (``simulate(..., engine="sglang",
preemption=PreemptionConfig(...))``, :mod:`prefixsched.reference.engine.preemption`); on any
other engine (``getattr(snap, "preemption", None) is None``) each runs as its non-preemptive
admission rule alone, so they keep every invariant of the non-preemptive suite there.

The preemption protocol (:class:`~prefixsched.reference.policies.base.Decision`): a policy walks
the queue in its order with the pass's builder; at the first request that does not fit (KV
memory, ``NO_TOKEN``, or running slots, ``SLOTS``) it may choose victims among the decode batch
(:meth:`~prefixsched.reference.policies.base.PreemptionView.running`) and return them *without
admissions*; the engine preempts them and asks again in the same step, and the walk starts over
on the state after the preemption. Counters are charged only for the admissions of the decision
that admits, so discarded walks leave no trace.

Victim sizing (ours, for preemptive VTC and the FastSwitch-style policy; SGLang's rule has its
own): preempting request ``v`` frees up to ``v.kv_tokens`` (page-rounded) ``+ v.reserved_tokens``
of the admission budget (its KV and its reserved output);
the blocked request ``e`` needs ``e.extend_tokens + min(e.out_left, clip) + page`` tokens
(SGLang's ``add_one_req`` check) plus up to ``e.cached_tokens`` (pinning its cached prefix takes
it out of the evictable tokens the budget counts); room in flight (asynchronous swap-outs that have not freed
their pages yet, ``pending_free_tokens``) counts as room, so a policy does not preempt again
for a request whose room is on its way. If all the candidates together could cover the
shortfall (or a slot is what is missing), the first candidate alone is preempted and the engine's
next ``decide`` call re-walks on the exact budget left, preempting the next one only if the
request still does not fit: victims are taken one at a time, so none is preempted for nothing
but the last; if the candidates cannot cover it, nothing is preempted (as SGLang's
``preempt_to_schedule``).

Sources: VTC (Sheng et al., OSDI'24; spec ``vtc_fastswitch_preble.md`` §A; its Appendix C.3
reportedly sketches a preemptive variant, §B.6, [2nd]); FastSwitch (Shen, Li, Gao, arXiv
2411.18424; §B.1, §B.6: priorities re-drawn with a per-iteration probability under "Random" and
"Markov" patterns following Yin et al. 2024, [2nd]); SGLang 0.5.23
``managers/schedule_policy.py::PrefillAdder.preempt_to_schedule`` and
``managers/scheduler.py::_get_new_batch_prefill_raw`` (spec ``sglang.md`` §1.7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from prefixsched.errors import InputError
from prefixsched.reference.policies import register
from prefixsched.reference.policies.base import Decision, FinishedInfo, Policy, Snapshot
from prefixsched.reference.policies.vtc import VTC, vtc_pass
from prefixsched.theory.model import Request

__all__ = ["PreemptiveVTC", "FastSwitchPriority", "SGLangPriority", "PrioritySource", "SOURCES"]

#: Priority sources of the priority policies.
SOURCES = ("vtc", "random", "markov")
_MASK = (1 << 64) - 1


def _mix(*xs: int) -> int:
    """splitmix64 over the arguments: a counter-based hash, so a priority depends only on (seed,
    request, update epoch), not on the order of the draws."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (x & _MASK)) & _MASK
        h = (h + 0x9E3779B97F4A7C15) & _MASK
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        h = z ^ (z >> 31)
    return h


def _num(name: str, v: Any, lo: float, hi: float | None = None, *, integer: bool = False) -> Any:
    bad = isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < lo or (hi is not None and v > hi)
    if integer and not isinstance(v, int):
        bad = True
    if bad:
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InputError(name, f"must be {'an integer' if integer else 'a number'} {rng}, got {v!r}")
    return v


class PrioritySource:
    """Synthetic per-request priorities (FastSwitch's evaluation, spec §B.6; *inferred*: the
    digests say priorities are re-drawn with a per-iteration probability under "Random" and
    "Markov" patterns; the exact processes are not public).

    Levels are integers ``0 .. levels-1``, larger = more important. Iteration ``k`` (engine step)
    is an *update epoch* iff ``u(seed, k) < update_prob`` (a counter-based uniform, so the epochs
    are fixed ahead of the run, as the digests say). Let ``E`` be the number of epochs so far:

    - ``"random"``: request ``q``'s level is ``hash(seed, q, E) mod levels`` (re-drawn uniformly at
      every epoch, independently per request);
    - ``"markov"``: request ``q`` starts at ``hash(seed, q) mod levels`` and at every epoch moves
      one level up or down with equal probability (``hash(seed, q, epoch)``), reflecting at the
      ends: a birth-death Markov chain (*ours*).
    """

    def __init__(self, kind: str, update_prob: float, levels: int, seed: int) -> None:
        if kind not in ("random", "markov"):
            raise InputError("source", f"must be 'random' or 'markov' here, got {kind!r}")
        self.kind = kind
        self.p = float(_num("update_prob", update_prob, 0.0, 1.0))
        self.levels = int(_num("levels", levels, 1, integer=True))
        self.seed = int(seed)
        self.epoch = 0
        self.updates = 0
        self._thr = int(self.p * (1 << 64))
        self._st: dict[int, list[int]] = {}

    def on_step(self, step: int) -> None:
        """After engine step ``step``: the next epoch starts if step ``step`` is an update epoch."""
        if _mix(self.seed, 0x5EED, step) < self._thr:
            self.epoch += 1
            self.updates += 1

    def level(self, seq: int) -> int:
        L = self.levels
        if self.kind == "random":
            return _mix(self.seed, seq, self.epoch) % L
        st = self._st.get(seq)
        if st is None:
            st = [_mix(self.seed, seq, 1 << 40) % L, self.epoch]
            self._st[seq] = st
        lvl, e = st
        while e < self.epoch:
            e += 1
            if L > 1:
                up = _mix(self.seed, seq, e) & 1
                if up:
                    lvl = lvl + 1 if lvl + 1 < L else lvl - 1
                else:
                    lvl = lvl - 1 if lvl > 0 else lvl + 1
        st[0], st[1] = lvl, e
        return lvl


# ---------------------------------------------------------------------------------------------
# shared pieces


def _need(e: Any, snap: Any) -> float:
    """Tokens SGLang's ``add_one_req`` wants for ``e`` beyond the builder's ``remaining_total``:
    extend + clipped output + a page, plus its cached prefix (locking it takes up to that much out
    of the evictable tokens the budget counts)."""
    clip = getattr(snap, "clip_max_new_tokens", 4096)
    left = e.out_left if hasattr(e, "out_left") else e.request.output_len
    return e.extend_tokens + e.cached_tokens + min(left, clip) + getattr(snap, "page_size", snap.limits.page_size)


def _victims(snap: Any, b: Any, e: Any, candidates: Sequence[Any]) -> list[Any]:
    """The next victim for ``e`` (module docstring): ``[first candidate]`` if all the candidates
    together could cover ``e``'s shortfall (or free a slot, when slots were the limit), else
    ``[]`` (preemption would not help, or the room is on its way)."""
    stop = getattr(b, "stop", None)
    if stop not in ("NO_TOKEN", "SLOTS") or not candidates:
        return []
    room = float(getattr(b, "remaining_total", 0.0)) + snap.pending_free_tokens
    short = _need(e, snap) - room + 1.0  # admission needs need < remaining (strict)
    if stop == "SLOTS":
        return [candidates[0]]
    if short <= 0:
        return []  # its room is on its way (asynchronous swap-outs)
    ps = getattr(snap, "page_size", 1)
    for v in candidates:
        short -= -(-v.kv_tokens // ps) * ps + v.reserved_tokens
        if short <= 0:
            return [candidates[0]]
    return []


class _Counters:
    """VTC's per-client counters, counter lift and decode charge (a wrapped
    :class:`~prefixsched.reference.policies.vtc.VTC`), with a preemption-aware admission charge:
    ``charge="prompt"`` charges ``w_e * prompt_len`` at a request's *first* admission only (the
    client view counts the prompt once; a re-prefill after a preemption or a swap-in is not
    charged again), ``charge="extend"`` charges ``w_e * extend_tokens`` at every prefill (the
    actual view: recomputation is real work) and nothing for a swap-in. Decode tokens are charged
    ``w_q`` each as they are produced."""

    def __init__(self, charge: str, weights: Mapping[str, float] | None) -> None:
        self.vtc = VTC(charge=charge, weights=weights)
        self.charge = charge
        self.weights = self.vtc.weights
        self.c = self.vtc.counters

    @property
    def last_left(self) -> str | None:
        return self.vtc.last_left

    @last_left.setter
    def last_left(self, u: str) -> None:
        self.vtc.last_left = u

    @property
    def lifts(self) -> int:
        return self.vtc.lifts

    def w(self, client: str) -> float:
        return self.weights.get(client, 1.0)

    def arrive(self, request: Request, snap: Snapshot) -> None:
        self.vtc.on_arrival(request, snap.now, snap)

    def cost(self, e: Any, snap: Any) -> float:
        """Admission charge of ``e`` (class docstring), cost units / weight."""
        r = e.request
        is_swap = getattr(snap, "preemption", None) is not None and snap.is_swapped(r.id)
        if self.charge == "prompt":
            first = getattr(e, "fill_len", r.prompt_len) == r.prompt_len
            tokens = r.prompt_len if first and not is_swap else 0
        else:
            tokens = 0 if is_swap else e.extend_tokens
        return snap.weights.w_e * tokens / self.w(r.client)

    def decoded(self, decoded: Mapping[str, int], snap: Snapshot) -> None:
        self.vtc.on_step_end(decoded, (), snap)


def _vtc_walk(snap: Any, cnt: _Counters) -> tuple[Any, list[tuple[Any, float]], Any]:
    """VTC's pass (:func:`.vtc.vtc_pass`) on a copy of the counters, with the preemption-aware
    charge. Returns ``(builder, [(entry, charge)], blocked entry or None)``."""
    b, taken, blocked, _ = vtc_pass(snap, dict(cnt.c), lambda e: cnt.cost(e, snap))
    return b, taken, blocked


def _commit(cnt: _Counters, taken: list[tuple[Any, float]], snap: Any) -> Decision:
    left: dict[str, int] = {}
    for e, ch in taken:
        u = e.request.client
        cnt.c[u] += ch
        left[u] = left.get(u, 0) + 1
    for e, _ in taken:  # VTC's "last client to leave the queue" (its last waiting request admitted)
        u = e.request.client
        if snap.waiting_count(u) == left[u]:
            cnt.last_left = u
    return Decision(tuple(e.request.id for e, _ in taken))


# ---------------------------------------------------------------------------------------------
# preemptive VTC


@register
class PreemptiveVTC(Policy):
    """VTC with preemption: every ``interval`` steps, running and waiting requests are re-ranked
    by client counter, and a running request is preempted when a waiting request that does not fit
    belongs to a client whose counter is lower by more than ``margin`` (cost units).

    Each pass is VTC's (least counter first, oldest request of that client, stop at the first
    misfit). In a *re-rank step* (the first step with a waiting request at least ``interval``
    steps after the previous re-rank), when the walk stops at a request ``e`` of client ``u`` that
    does not fit, the candidates are the decode-batch requests of clients with counter ``> c_u +
    margin``, highest counter first, newest (latest to join) first among them (SGLang's tie-break),
    and the fewest of them that cover ``e``'s shortfall are preempted (module docstring); the walk
    then starts over. With ``interval=1`` this re-ranks at every step. Counters: :class:`_Counters`
    (the charge rule differs from :class:`~prefixsched.reference.policies.vtc.VTC` only for
    re-admissions, which VTC charges again).

    Parameters
    ----------
    interval:
        ``K``, steps between re-ranks (integer >= 1).
    margin:
        Counter gap, cost units (>= 0), a victim's client must exceed the waiting client's by.
        ``None`` (default): ``w_e`` times the largest prompt seen so far (``w_e * L_input`` once
        every request has arrived). *Decision:* one admission charges up to ``w_e * L_input``, so a
        smaller margin lets the client just admitted be preempted at once by the next one, and the
        policy thrashes (measured on the Mooncake trace: margin 2048 gave five preemptions per
        request); the service-gap bound of :func:`prefixsched.theory.bounds.vtc_preemptive_bound`
        has ``max(margin, w_e * L_input)`` in it, so this choice costs the bound nothing.
    charge, weights:
        As :class:`~prefixsched.reference.policies.vtc.VTC`.

    Raises
    ------
    InputError
        Bad ``interval``, ``margin``, ``charge`` or weight.
    """

    name: ClassVar[str] = "vtc-preempt"
    description: ClassVar[str] = "preemptive VTC: re-rank running and waiting every K steps, preempt past a counter margin"
    primary_param: ClassVar[str | None] = "interval"

    def __init__(self, interval: int = 16, margin: float | None = None, charge: str = "prompt",
                 weights: Mapping[str, float] | None = None) -> None:
        self.interval = int(_num("interval", interval, 1, integer=True))
        self.margin = None if margin is None else float(_num("margin", margin, 0.0))
        self.longest = 0
        self.cnt = _Counters(charge, weights)
        self.last_rerank = -(1 << 60)
        self.rerank_step = -1
        self.reranks = 0
        self.preemptions = 0

    def on_arrival(self, request: Request, now: float, snap: Snapshot) -> None:
        self.cnt.arrive(request, snap)
        if request.prompt_len > self.longest:
            self.longest = request.prompt_len

    def current_margin(self, snap: Snapshot) -> float:
        """The margin in force (the adaptive default: ``w_e`` times the longest prompt so far)."""
        return self.margin if self.margin is not None else snap.weights.w_e * self.longest

    def decide(self, snap: Snapshot) -> Decision:
        b, taken, blocked = _vtc_walk(snap, self.cnt)
        if blocked is not None and getattr(snap, "preemption", None) is not None:
            step = snap.step
            if step != self.rerank_step and step - self.last_rerank >= self.interval:
                self.rerank_step = step
                self.last_rerank = step
                self.reranks += 1
            if step == self.rerank_step:
                c = self.cnt.c
                floor = c[blocked.request.client] + self.current_margin(snap)
                cand = [v for v in snap.running() if c.get(v.request.client, 0.0) > floor]  # type: ignore[attr-defined]
                cand.sort(key=lambda v: (-c[v.request.client], -v.joined_step, -v.seq))
                vic = _victims(snap, b, blocked, cand)
                if vic:
                    self.preemptions += len(vic)
                    return Decision(preempt=tuple(v.request.id for v in vic))
        return _commit(self.cnt, taken, snap)

    def on_step_end(self, decoded: Mapping[str, int], finished: Sequence[FinishedInfo], snap: Snapshot) -> None:
        self.cnt.decoded(decoded, snap)

    def params(self) -> dict[str, Any]:
        return {"interval": self.interval, "margin": self.margin, "charge": self.cnt.charge,
                "weights": dict(sorted(self.cnt.weights.items()))}

    def state(self) -> dict[str, Any]:
        return {"counters": dict(self.cnt.c), "last_left": self.cnt.last_left, "lifts": self.cnt.lifts,
                "reranks": self.reranks, "preemptions": self.preemptions}


# ---------------------------------------------------------------------------------------------
# priority policies


class _PriorityBase(Policy):
    """Priorities from a fairness source (``"vtc"``: a request's priority is minus its client's
    counter, :class:`_Counters`) or a synthetic one (:class:`PrioritySource`)."""

    def __init__(self, source: str, update_prob: float, levels: int, seed: int, charge: str,
                 weights: Mapping[str, float] | None) -> None:
        if source not in SOURCES:
            raise InputError("source", f"must be one of {', '.join(SOURCES)}, got {source!r}")
        self.source = source
        self.seed = int(_num("seed", seed, -(1 << 62), integer=True))
        self.update_prob = float(_num("update_prob", update_prob, 0.0, 1.0))
        self.levels = int(_num("levels", levels, 1, integer=True))
        self.cnt = _Counters(charge, weights)
        self.src = None if source == "vtc" else PrioritySource(source, update_prob, levels, self.seed)
        self.preemptions = 0

    def prio(self, seq: int, request: Request) -> float:
        if self.src is None:
            return -self.cnt.c.get(request.client, 0.0)
        return float(self.src.level(seq))

    def on_arrival(self, request: Request, now: float, snap: Snapshot) -> None:
        self.cnt.arrive(request, snap)

    def on_step_end(self, decoded: Mapping[str, int], finished: Sequence[FinishedInfo], snap: Snapshot) -> None:
        self.cnt.decoded(decoded, snap)
        if self.src is not None:
            self.src.on_step(snap.step)

    def _commit(self, taken: list[Any], snap: Snapshot) -> Decision:
        return _commit(self.cnt, [(e, self.cnt.cost(e, snap)) for e in taken], snap)

    def _params(self) -> dict[str, Any]:
        return {"source": self.source, "update_prob": self.update_prob, "levels": self.levels, "seed": self.seed,
                "charge": self.cnt.charge}

    def state(self) -> dict[str, Any]:
        st: dict[str, Any] = {"vtc_counters": dict(self.cnt.c), "preemptions": self.preemptions}
        if self.src is not None:
            st["priority_updates"] = self.src.updates
        return st


@register
class FastSwitchPriority(_PriorityBase):
    """A FastSwitch-style priority policy (vLLM's priority scheduling with preemption, which
    FastSwitch evaluates; spec §B.1, §B.6).

    Every pass walks the waiting queue in priority order (higher first, then the engine's queue
    order) and stops at the first request that does not fit; if that request's priority exceeds
    some running request's by more than ``margin``, the lowest-priority running requests (newest
    first among equals) are preempted to make room (module docstring). Priorities: ``source`` =
    ``"vtc"`` (minus the client's VTC counter: the fairness source), ``"random"`` or ``"markov"``
    (:class:`PrioritySource`, re-drawn at update epochs of per-iteration probability
    ``update_prob``: FastSwitch's evaluation used 0.04 for LLaMA-8B and 0.02 for Qwen-32B, spec
    §B.6, [2nd]).

    Parameters
    ----------
    source, update_prob, levels, seed:
        The priority source (``levels``: synthetic levels ``0..levels-1``; ``seed``: its hash seed).
    margin:
        Priority gap needed to preempt (levels, or cost units for ``"vtc"``); default 0: any
        strictly higher priority preempts (vLLM).
    charge, weights:
        The VTC counters' charge rule and weights (used by ``source="vtc"``; kept for the state
        otherwise).

    Raises
    ------
    InputError
        A bad parameter, naming it.
    """

    name: ClassVar[str] = "fastswitch"
    description: ClassVar[str] = "FastSwitch-style priority preemption (VTC counters or Random/Markov priorities)"
    primary_param: ClassVar[str | None] = "update_prob"

    def __init__(self, source: str = "random", update_prob: float = 0.04, levels: int = 8, seed: int = 0,
                 margin: float = 0.0, charge: str = "prompt", weights: Mapping[str, float] | None = None) -> None:
        super().__init__(source, update_prob, levels, seed, charge, weights)
        self.margin = float(_num("margin", margin, 0.0))

    def decide(self, snap: Snapshot) -> Decision:
        b = snap.batch()
        q = [(-self.prio(e.seq, e.request), k, e) for k, e in enumerate(snap.queue())]
        q.sort(key=lambda t: (t[0], t[1]))
        taken: list[Any] = []
        blocked = None
        for _, _, e in q:
            if b.full:
                blocked = e
                break
            if not b.try_add(e):
                blocked = e
                break
            taken.append(e)
        if blocked is not None and getattr(snap, "preemption", None) is not None:
            pe = self.prio(blocked.seq, blocked.request)
            cand = [v for v in snap.running() if self.prio(v.seq, v.request) + self.margin < pe]  # type: ignore[attr-defined]
            cand.sort(key=lambda v: (self.prio(v.seq, v.request), -v.joined_step, -v.seq))
            vic = _victims(snap, b, blocked, cand)
            if vic:
                self.preemptions += len(vic)
                return Decision(preempt=tuple(v.request.id for v in vic))
        return self._commit(taken, snap)

    def params(self) -> dict[str, Any]:
        return {**self._params(), "margin": self.margin, "weights": dict(sorted(self.cnt.weights.items()))}


@register
class SGLangPriority(_PriorityBase):
    """SGLang's priority scheduling with priority preemption, the engine-faithful baseline
    (SGLang 0.5.23 ``--enable-priority-scheduling``, preemption on by default; spec ``sglang.md``
    §1.7).

    ``calc_priority`` with priority scheduling on FCFS: the queue sorted by ``(priority desc,
    wait_queue_entry_time)`` (a stable sort of the engine's queue order, which is entry order).
    The admission loop walks it; when the running slots are exhausted (``batch_is_full``) for a
    request ``req``, ``PrefillAdder.preempt_to_schedule(req)``: the running requests sorted by
    ``(priority asc, entry time desc)`` (least important, newest first) are taken while ``priority
    (req) - priority(running) > threshold``, until ``extend(req) + min(max_new_tokens, clip) -
    rem_total_tokens`` minus their running offsets (``reserved_tokens``) is ``<= 0``; if that
    fails nothing is preempted and the loop breaks. Any other misfit (``NO_TOKEN``, ``OTHER``)
    breaks the loop **without** preempting: SGLang preempts for running *slots*, not for KV memory.
    Victims are released (drop mode: SGLang recomputes them) and re-queued.

    Parameters
    ----------
    threshold:
        ``--priority-scheduling-preemption-threshold`` (default 10).
    source, update_prob, levels, seed, charge, weights:
        As :class:`FastSwitchPriority` (SGLang takes priorities from requests; here they come
        from the same sources so the baseline runs on the same priorities). Default ``levels`` 32
        so that the default threshold of 10 can be exceeded.

    Raises
    ------
    InputError
        A bad parameter, naming it.
    """

    name: ClassVar[str] = "sglang-priority"
    description: ClassVar[str] = "SGLang priority scheduling + preempt_to_schedule (threshold 10, slots only)"
    primary_param: ClassVar[str | None] = "threshold"

    def __init__(self, threshold: float = 10.0, source: str = "random", update_prob: float = 0.04, levels: int = 32,
                 seed: int = 0, charge: str = "prompt", weights: Mapping[str, float] | None = None) -> None:
        super().__init__(source, update_prob, levels, seed, charge, weights)
        self.threshold = float(_num("threshold", threshold, 0.0))

    def decide(self, snap: Snapshot) -> Decision:
        b = snap.batch()
        q = [(-self.prio(e.seq, e.request), k, e) for k, e in enumerate(snap.queue())]
        q.sort(key=lambda t: (t[0], t[1]))
        taken: list[Any] = []
        for _, _, e in q:
            if b.try_add(e):
                taken.append(e)
                continue
            if getattr(b, "stop", None) == "SLOTS" and getattr(snap, "preemption", None) is not None:
                vic = self._preempt_to_schedule(snap, b, e)
                if vic:
                    self.preemptions += len(vic)
                    return Decision(preempt=tuple(v.request.id for v in vic))
            break
        return self._commit(taken, snap)

    def _preempt_to_schedule(self, snap: Any, b: Any, req: Any) -> list[Any]:
        pr = self.prio(req.seq, req.request)
        clip = snap.clip_max_new_tokens
        run = sorted(snap.running(), key=lambda v: (self.prio(v.seq, v.request), -v.queued_at, -v.seq))
        need = req.extend_tokens + min(req.request.output_len, clip) - float(getattr(b, "remaining_total", 0.0))
        out: list[Any] = []
        for v in run:
            if pr - self.prio(v.seq, v.request) > self.threshold:
                out.append(v)
                need -= v.reserved_tokens
                if need <= 0:
                    break
            else:
                break
        if not out or need > 0:
            return []
        return out

    def params(self) -> dict[str, Any]:
        return {"threshold": self.threshold, **self._params(), "weights": dict(sorted(self.cnt.weights.items()))}
