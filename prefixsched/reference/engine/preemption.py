"""Preemption for the ``sglang`` engine: drop and swap modes, the host KV pool and the link.

A policy preempts by naming requests of the decode batch in
:attr:`~prefixsched.reference.policies.base.Decision.preempt`; the engine validates and applies
the preemption in its scheduling phase (:meth:`~prefixsched.reference.engine.sglang.SGLangWorker._preempt_rounds`).
What happens to the victim's KV is :attr:`PreemptionConfig.mode`:

- ``"drop"``: the KV is freed without insert, the request rejoins the waiting queue at the end of
  the step and later re-prefills ``prompt + outputs so far``, reusing what the radix cache still
  holds (the prompt pages its prefill checkpointed into the tree stay there, evictable). This is
  SGLang's priority preemption (``PrefillAdder.preempt_to_schedule`` -> ``release_req`` ->
  ``release_kv_cache(checkpoint=False)``) and its decode retraction. The run ends ``"preempt"``.
- ``"swap"``: the KV is copied to a host KV pool of ``host_capacity_tokens`` (GPU -> host, a
  *swap-out*), the GPU pages are freed, and when a policy admits the request again the KV is
  copied back (host -> GPU, a *swap-in*) instead of being recomputed: vLLM's ``SWAP``
  preemption, the mechanism FastSwitch speeds up (spec ``vtc_fastswitch_preble.md`` §B.1, §B.3).
  The run ends ``"swap"``; the resumed run has :attr:`~prefixsched.theory.trace.Run.swapped_in`
  set. SGLang's own host tier is its hierarchical cache (``--enable-hierarchical-cache``: a host
  pool of ``--hicache-ratio`` (default 2.0) times the device pool, written *through* from the
  radix tree and loaded back on a prefix hit, keyed by radix nodes, not by requests) and, in
  decode disaggregation, ``release_req``'s ``backup_kv_cache`` of a retracted request to host
  memory (``resume_retracted_reqs`` loads it back): that second one is exactly a swap-out on
  retraction. Our host pool is per request like vLLM's swap space, but (with ``reuse``) keyed
  by page keys like SGLang's host tier, so turns of one conversation share host pages.

The host pool as a cache (FastSwitch's KV Cache Reuse Mechanism, spec §B.3):

- ``reuse=True``: the host pool is a radix tree over page keys
  (:class:`~prefixsched.reference.radix_cache.RadixCache`, LRU). A swap-out sends only the pages
  the host does not hold yet (a request swapped out before and not changed since sends only its
  new tokens; a later turn of a conversation finds the earlier turn's prompt pages). After a
  swap-in the host copy stays valid (unlocked, evictable). The partial last page (``kv %
  page_size`` tokens) is sent every time and kept privately until the swap-in.
- ``reuse=False``: every swap-out sends the whole KV into a private host copy, freed when the
  swap-in completes (vLLM's swap space).
- Either way, when a swap-out does not fit, the pool evicts least-recently-used host data that no
  in-flight copy is using. **A request whose host copy was evicted (wholly or in part) while it
  waited recomputes**: it is re-prefilled like a drop-mode victim, reusing the GPU radix cache.
- If a swap-out does not fit even after evicting everything evictable, :class:`HostMemoryError`
  is raised (host memory exhaustion is an engine error, not a silent fallback).

Time (the link, :mod:`prefixsched.theory.switch_cost` prices each copy):

- ``sync=True`` (vLLM 0.3.3): the pass waits for its copies; they run one after the other on one
  stream, right after the scheduling pass, and the next step starts when the last one ends (the
  GPU stall is the gap before that step). A swapped-out request's GPU pages are free for the same
  pass's admissions; a swapped-in request joins the decode batch at the next decode step.
- ``sync=False`` (FastSwitch's Multithreading Swap Manager): copies run in the background, one
  queue per direction (PCIe is full duplex), overlapping compute, which they do not slow down
  (*decision*: copy engines are separate from the SMs; no contention factor). A swapped-out
  request's GPU pages stay held, and the request stays out of the waiting queue, until its copy
  completes ("blocks being swapped out are not reused until the copy completes", §B.3); if the
  decode batch's next tokens need those pages, the engine waits for the copy (a stall) instead of
  retracting; a request
  being swapped in holds its GPU pages and a running slot but is not runnable until its copy
  completes (it joins the decode batch at the first decode step starting at or after that). With
  nothing runnable the engine idles until the next copy completes or request arrives.

Decisions where the sources are silent (documented):

- Victims rejoin the waiting queue at its end (SGLang's ``_add_request_to_queue``), at the end
  of the step that preempted them (drop, sync swap) or when their swap-out completes (async): a
  request is never admitted in the step it was preempted in.
- A waiting request with a complete host copy always resumes by swap-in (no recompute-vs-swap
  choice for short contexts, open choice (5) of §B.5); the admission budget charges it like a
  re-prefill (its KV, a page, its clipped remaining output) but not the prefill-token or chunk
  budgets (it computes nothing) and it is never chunked.
- A swap-in brings back ``fill - 1`` tokens minus what the GPU radix cache still holds (the KV of
  the last produced token was never written: the first decode step writes it).
- The fragmentation rule of block groups uses the GPU KV utilisation at the moment of the copy
  (:meth:`SwitchCostModel.group_size`).
- Errors: preempting a request that is not in the decode batch, twice, or admitting a request in
  the step it was preempted is an :class:`~prefixsched.errors.IllegalDecisionError` naming the
  request; a swap-in of a request that has no complete host copy (dropped, evicted, never
  swapped) is a :class:`HostKVError`; host exhaustion a :class:`HostMemoryError`.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prefixsched.errors import InputError, PrefixschedError
from prefixsched.reference.engine.core import fill_keys
from prefixsched.reference.engine.snapshot import EngineSnapshot
from prefixsched.reference.radix_cache import CapacityError, RadixCache
from prefixsched.theory.switch_cost import SwitchCostModel
from prefixsched.theory.trace import SwitchEvent

__all__ = [
    "PreemptionConfig", "HostKVError", "HostMemoryError", "TreeHostPool", "PlainHostPool", "Preemptor",
    "PreemptionSnapshot", "RunningView", "MODES",
]

#: Preemption modes (module docstring).
MODES = ("drop", "swap")


class HostKVError(PrefixschedError):
    """A swap-in of a request whose KV is not (wholly) in host memory: dropped, evicted or never
    swapped out."""


class HostMemoryError(PrefixschedError):
    """Host memory exhausted: a swap-out does not fit even after evicting every host page no
    in-flight copy uses."""


@dataclass(frozen=True)
class PreemptionConfig:
    """How the ``sglang`` engine preempts (module docstring).

    Attributes
    ----------
    mode:
        ``"drop"`` (recompute later) or ``"swap"`` (KV to host memory and back).
    host_capacity_tokens:
        Host KV pool size in tokens (swap mode). ``None``: twice the GPU pool
        (``kv_capacity_tokens``), SGLang's ``--hicache-ratio`` default of 2.0.
    sync:
        Synchronous copies (the GPU stalls) or asynchronous ones (they overlap compute).
    reuse:
        Keep host copies valid after swap-in and share host pages by prefix (FastSwitch's KV
        reuse), or send every swap-out in full into a private copy.
    switch:
        The copy cost model (:class:`~prefixsched.theory.switch_cost.SwitchCostModel`); default
        Llama-3-8B over PCIe 5.0 x16, per-block copies (vLLM's baseline).

    Raises
    ------
    InputError
        From :meth:`validate` / :meth:`from_dict`, naming the field.
    """

    mode: str = "swap"
    host_capacity_tokens: int | None = None
    sync: bool = True
    reuse: bool = False
    switch: SwitchCostModel = field(default_factory=lambda: SwitchCostModel(granularity="block"))

    def validate(self) -> None:
        if self.mode not in MODES:
            raise InputError("preemption.mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        h = self.host_capacity_tokens
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 0):
            raise InputError("preemption.host_capacity_tokens", f"must be an integer >= 0 or None, got {h!r}")
        for name in ("sync", "reuse"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"preemption.{name}", f"must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.switch, SwitchCostModel):
            raise InputError("preemption.switch", f"must be a SwitchCostModel, got {type(self.switch).__name__}")
        self.switch.validate()

    @staticmethod
    def fastswitch(**kw: Any) -> "PreemptionConfig":
        """FastSwitch's configuration: swap mode, block groups, asynchronous copies, KV reuse."""
        sw = kw.pop("switch", None) or SwitchCostModel(granularity="group")
        kw.setdefault("sync", False)
        kw.setdefault("reuse", True)
        cfg = PreemptionConfig(mode="swap", switch=sw, **kw)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "host_capacity_tokens": self.host_capacity_tokens, "sync": self.sync,
                "reuse": self.reuse, "switch": self.switch.to_dict()}

    @staticmethod
    def from_dict(d: Any, where: str = "preemption") -> "PreemptionConfig":
        """Parse :meth:`to_dict`'s output (unknown fields raise :class:`InputError`)."""
        from prefixsched.theory.model import _dataclass_from_dict

        def reader(v: Any, name: str) -> Any:
            return SwitchCostModel.from_dict(v, name) if name == f"{where}.switch" else v

        return _dataclass_from_dict(PreemptionConfig, d, where, reader)


# ---------------------------------------------------------------------------------------------
# host pools


class TreeHostPool:
    """Host KV pool with reuse: a radix tree over page keys (LRU) plus private partial pages.

    Per request ``rid`` it tracks the copy of its last swap-out: the page keys and the tail
    (``kv % page_size`` tokens). ``valid(rid)`` is True while every page is still in the tree
    (watched: an eviction that cuts the copy invalidates it) and the tail is held.

    Parameters
    ----------
    capacity_tokens, page_size:
        Pool size (tokens) and tokens per page.
    """

    reuse = True

    def __init__(self, capacity_tokens: int, page_size: int) -> None:
        self.ps = page_size
        self.tree = RadixCache(capacity_tokens, page_size, on_match_change=self._on_change)
        self.copies: dict[Hashable, tuple[int, int]] = {}  # rid -> (pages, tail tokens)
        self.valid_set: set[Hashable] = set()
        self.locks: dict[Hashable, Any] = {}
        self.evicted = 0

    @property
    def capacity_tokens(self) -> int:
        return self.tree.capacity_tokens

    @property
    def used_tokens(self) -> int:
        return self.tree.total_tokens + self.tree.reserved_tokens

    def _on_change(self, rid: Hashable, pages: int) -> None:
        want = self.copies.get(rid)
        if want is not None and pages < want[0] and rid in self.valid_set:
            self._invalidate(rid, evicted=True)

    def _invalidate(self, rid: Hashable, evicted: bool) -> None:
        """The copy of ``rid`` is no longer whole: free its tail (an eviction when ``evicted``)."""
        self.valid_set.discard(rid)
        _, tail = self.copies[rid]
        if tail:
            self.tree.release(tail)
            self.copies[rid] = (self.copies[rid][0], 0)
            if evicted:
                self.evicted += tail

    def valid(self, rid: Hashable) -> bool:
        return rid in self.valid_set

    def swap_out(self, rid: Hashable, keys: tuple, kv: int, name: str | None = None) -> int:
        """Store request ``rid``'s KV (``keys`` = its full pages, ``kv`` tokens); returns the tokens
        to send (pages the tree lacked + the tail). The copy is locked until :meth:`unlock`.

        Raises
        ------
        HostMemoryError
            The new pages and the tail do not fit even after evicting every unlocked host page.
        """
        self.drop(rid)
        tree = self.tree
        ps = self.ps
        held = tree.match_prefix(keys, touch=False).pages
        tail = kv - len(keys) * ps
        need = (len(keys) - held) * ps + tail
        ev0 = tree.stats.evicted_tokens
        try:
            res = tree.insert(keys)
        except CapacityError as e:
            raise HostMemoryError(
                f"host KV pool exhausted: swap-out of request {name or rid!r} needs {need} tokens "
                f"(capacity {tree.capacity_tokens}, in use {self.used_tokens}, locked by in-flight copies "
                f"{tree.locked_tokens}): {e}"
            ) from None
        tree.inc_lock_ref(res.node)
        if tail:
            short = tail - tree.free_tokens
            if short > 0:
                tree.evict(short)
            if tail > tree.free_tokens:
                tree.dec_lock_ref(res.node)
                raise HostMemoryError(
                    f"host KV pool exhausted: swap-out of request {name or rid!r} needs {tail} more tokens for its partial "
                    f"page (capacity {tree.capacity_tokens}, in use {self.used_tokens})"
                )
            tree.reserve(tail)
        self.evicted += tree.stats.evicted_tokens - ev0  # (+ tails of copies cut by it, in _invalidate)
        self.locks[rid] = res.node
        self.copies[rid] = (len(keys), tail)
        tree.watch(rid, keys)
        self.valid_set.add(rid)
        return need

    def lock_for_read(self, rid: Hashable, keys: tuple) -> None:
        """Pin ``rid``'s copy while a swap-in reads it (async)."""
        if rid in self.locks:
            return
        node = self.tree.match_prefix(keys, touch=True).node
        self.tree.inc_lock_ref(node)
        self.locks[rid] = node

    def unlock(self, rid: Hashable) -> None:
        node = self.locks.pop(rid, None)
        if node is not None:
            self.tree.dec_lock_ref(node)

    def swap_in(self, rid: Hashable, keys: tuple, name: str | None = None) -> None:
        """The swap-in of ``rid`` has read its copy: touch it (LRU) and let it go (the pages stay,
        valid, for a later swap-out of the same prefix: reuse).

        Raises
        ------
        HostKVError
            ``rid`` has no complete copy.
        """
        if rid not in self.valid_set:
            raise HostKVError(f"swap-in of request {name or rid!r}: its KV is not in host memory (dropped, evicted or never swapped out)")
        self.tree.match_prefix(keys, touch=True)
        self.drop(rid)

    def drop(self, rid: Hashable) -> None:
        """Forget ``rid``'s copy bookkeeping (its tail is freed; shared pages stay cached)."""
        self.unlock(rid)
        if rid in self.copies:
            if rid in self.valid_set:
                self._invalidate(rid, evicted=False)
            self.copies.pop(rid, None)
            if self.tree.is_watched(rid):
                self.tree.unwatch(rid)


class PlainHostPool:
    """Host KV pool without reuse: one private copy per swapped-out request, LRU-evicted when a
    new copy does not fit, freed after its swap-in (vLLM's swap space)."""

    reuse = False

    def __init__(self, capacity_tokens: int, page_size: int) -> None:
        self.capacity_tokens = capacity_tokens
        self.copies: OrderedDict[Hashable, int] = OrderedDict()  # rid -> tokens, LRU order
        self.locked: set[Hashable] = set()
        self.used_tokens = 0
        self.evicted = 0

    def valid(self, rid: Hashable) -> bool:
        return rid in self.copies

    def swap_out(self, rid: Hashable, keys: tuple, kv: int, name: str | None = None) -> int:
        """Store ``kv`` tokens of ``rid``; returns ``kv`` (everything is sent).

        Raises
        ------
        HostMemoryError
            ``kv`` does not fit even after evicting every unlocked copy.
        """
        self.drop(rid)
        free = self.capacity_tokens - self.used_tokens
        if kv > free:
            evictable = sum(t for r, t in self.copies.items() if r not in self.locked)
            if kv > free + evictable:
                raise HostMemoryError(
                    f"host KV pool exhausted: swap-out of request {name or rid!r} needs {kv} tokens (capacity "
                    f"{self.capacity_tokens}, in use {self.used_tokens}, locked by in-flight copies "
                    f"{self.used_tokens - evictable})"
                )
            for r in [r for r in self.copies if r not in self.locked]:
                if kv <= self.capacity_tokens - self.used_tokens:
                    break
                t = self.copies.pop(r)
                self.used_tokens -= t
                self.evicted += t
        self.copies[rid] = kv
        self.used_tokens += kv
        self.locked.add(rid)
        return kv

    def lock_for_read(self, rid: Hashable, keys: tuple) -> None:
        self.locked.add(rid)

    def unlock(self, rid: Hashable) -> None:
        self.locked.discard(rid)

    def swap_in(self, rid: Hashable, keys: tuple, name: str | None = None) -> None:
        """The swap-in of ``rid`` has read its copy: free it.

        Raises
        ------
        HostKVError
            ``rid`` has no copy.
        """
        if rid not in self.copies:
            raise HostKVError(f"swap-in of request {name or rid!r}: its KV is not in host memory (dropped, evicted or never swapped out)")
        self.drop(rid)

    def drop(self, rid: Hashable) -> None:
        self.locked.discard(rid)
        t = self.copies.pop(rid, None)
        if t is not None:
            self.used_tokens -= t


# ---------------------------------------------------------------------------------------------
# the policy's view


class RunningView:
    """One request of the decode batch (:class:`~prefixsched.reference.policies.base.RunningEntry`)."""

    __slots__ = ("request", "seq", "produced", "kv_tokens", "out_left", "reserved_tokens", "queued_at", "joined_step")

    def __init__(self, eng: Any, s: int) -> None:
        r = eng.reqs[s]
        out = eng.out_at(s)
        self.request = r
        self.seq = s
        self.produced = out
        self.kv_tokens = eng.kv_at(s)
        self.out_left = r.output_len - out
        clip = eng.cfg.clip_max_new_tokens
        left = eng.max_new[s] - out
        ratio = 1.0 if eng.cfg.ignore_eos else eng.ratio.current
        self.reserved_tokens = (left if left < clip else clip) * ratio
        pre = eng.pre
        self.queued_at = pre.queued_at.get(s, r.arrival) if pre is not None else r.arrival
        self.joined_step = eng.join_step[s]

    def __repr__(self) -> str:
        return f"RunningView(id={self.request.id!r}, client={self.request.client!r}, produced={self.produced})"


class PreemptionSnapshot(EngineSnapshot):
    """The snapshot of an engine with preemption
    (:class:`~prefixsched.reference.policies.base.PreemptionView`)."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        pre = engine.pre
        assert pre is not None
        self.preemption = pre.cfg.mode
        self.page_size = engine.page_size
        self.clip_max_new_tokens = engine.cfg.clip_max_new_tokens

    @property
    def pending_free_tokens(self) -> int:
        pre = self._engine.pre  # type: ignore[attr-defined]
        return sum(pre.out_pending.values())

    def running(self) -> Iterator[RunningView]:
        eng = self._engine
        return (RunningView(eng, s) for s in list(eng.running))  # type: ignore[attr-defined]

    def is_swapped(self, request_id: str) -> bool:
        eng = self._engine
        s = eng.seq_of.get(request_id)
        ok = eng.swap_ok  # type: ignore[attr-defined]
        return s is not None and ok is not None and s in ok and s in eng.index.entries


# ---------------------------------------------------------------------------------------------
# the engine's preemption phase


class Preemptor:
    """The preemption state and phase of one :class:`~prefixsched.reference.engine.sglang.SGLangWorker`
    (module docstring). The worker calls it from small hooks in its phases; it mutates the worker's
    state through the worker's own helpers (``_leave_decode``, ``_release``, ``_checkpoint``,
    ``_join_decode``)."""

    def __init__(self, eng: Any, cfg: PreemptionConfig) -> None:
        cfg.validate()
        self.eng = eng
        self.cfg = cfg
        self.cost = cfg.switch
        self.swap = cfg.mode == "swap"
        self.sync = cfg.sync
        cap = cfg.host_capacity_tokens
        if cap is None:
            cap = 2 * eng.instance.limits.kv_capacity_tokens
        self.host_capacity = cap
        self.pool: TreeHostPool | PlainHostPool | None = None
        if self.swap:
            self.pool = (TreeHostPool if cfg.reuse else PlainHostPool)(cap, eng.page_size)
            eng.swap_ok = self.pool.valid_set if cfg.reuse else self.pool.copies  # type: ignore[union-attr]
        self.held: dict[int, None] = {}  # admitted swap-ins not yet in the decode batch
        self.ready: list[int] = []  # ... whose copy is done
        self.awaiting: list[int] = []  # joined this decode pass: admit_step set when the step is recorded
        self.heap: list[tuple[float, int, str, int]] = []  # async completions (t_end, order, kind, seq)
        self.order = 0
        self.out_pending: dict[int, int] = {}  # async swap-outs in flight: seq -> GPU KV tokens held
        self.victims: list[int] = []  # victims of this pass to requeue at its end
        self.now_step = -1
        self.preempted_now: set[int] = set()
        self.swapins_now: list[int] = []
        self.queued_at: dict[int, float] = {}
        self.link_free = [0.0, 0.0]
        self.events: list[SwitchEvent] = []
        self.evicted_seen = 0
        self.n_preempt = 0
        self.n_swap_out = 0
        self.n_swap_in = 0
        self.n_recompute = 0
        self.n_abort = 0
        self.aborted: set[int] = set()  # heap orders of cancelled asynchronous swap-ins
        self.in_order: dict[int, int] = {}  # seq -> heap order of its swap-in in flight
        self.stall_s = 0.0

    # ------------------------------------------------------------------ validation

    def check(self, decision: Any) -> None:
        """Validate ``decision.preempt`` (module docstring, "Errors").

        Raises
        ------
        IllegalDecisionError
            Naming the policy, the request and the rule.
        """
        from prefixsched.errors import IllegalDecisionError

        eng = self.eng
        if eng.step != self.now_step:
            self.now_step = eng.step
            self.preempted_now = set()
        seen: set[str] = set()
        for rid in decision.preempt:
            where = f"policy {eng.policy.name!r} at t={eng.now}: request {rid!r}"
            if not isinstance(rid, str):
                raise IllegalDecisionError(f"{where}: ids must be strings")
            if rid in seen:
                raise IllegalDecisionError(f"{where}: preempted twice in one decision")
            seen.add(rid)
            s = eng.seq_of.get(rid)
            if s is None:
                raise IllegalDecisionError(f"{where}: cannot preempt: no such request in the instance")
            if s in self.preempted_now:
                raise IllegalDecisionError(f"{where}: cannot preempt: already preempted in this step")
            if s not in eng.running:
                if s in self.held:
                    why = "it is being swapped in (not in the decode batch yet)"
                elif s in eng.index.entries:
                    why = "it is waiting"
                elif s in self.out_pending:
                    why = "it is being swapped out"
                elif eng.reqs[s].arrival > eng.now:
                    why = "it has not arrived"
                elif eng.runs_of[s] is not None and eng.runs_of[s][-1][4] == "finish":
                    why = "it has finished"
                elif s == eng.chunked:
                    why = "it is being prefilled in chunks"
                else:
                    why = "it is not in the decode batch"
                raise IllegalDecisionError(f"{where}: cannot preempt: {why}; only running (decoding) requests can be preempted")
        for rid in decision.admit:
            s = eng.seq_of.get(rid) if isinstance(rid, str) else None
            if s is not None and (s in self.preempted_now or rid in seen):
                raise IllegalDecisionError(
                    f"policy {eng.policy.name!r} at t={eng.now}: request {rid!r}: admitted in the step it is preempted in "
                    "(a victim rejoins the waiting queue at the end of the step)"
                )

    # ------------------------------------------------------------------ preemption

    def _util(self) -> float:
        c = self.eng.cache
        cap = c.capacity_tokens
        return (c.total_tokens + c.reserved_tokens) / cap if cap else 0.0

    def _issue(self, kind: str, s: int, kv: int, tokens: int) -> float:
        """Put one copy on the link; returns its end time."""
        eng = self.eng
        tr = self.cost.transfer(tokens, self._util())
        now = eng.now
        lf = self.link_free
        if self.sync:
            start = max(now, lf[0], lf[1])
            end = start + tr.seconds
            lf[0] = lf[1] = end
        else:
            d = 0 if kind == "out" else 1
            start = max(now, lf[d])
            end = start + tr.seconds
            lf[d] = end
        self.events.append(SwitchEvent(eng.step, eng.reqs[s].id, kind, kv, tokens, tr.bytes, tr.copies, start, end))
        return end

    def _log_evictions(self) -> None:
        pool = self.pool
        if pool is None:
            return
        ev = pool.evicted
        if ev > self.evicted_seen:
            t = self.eng.now
            self.events.append(SwitchEvent(self.eng.step, "", "evict", 0, ev - self.evicted_seen, 0, 0, t, t))
            self.evicted_seen = ev

    def preempt(self, s: int) -> None:
        """Take request ``s`` out of the decode batch and handle its KV by the mode."""
        eng = self.eng
        r = eng.reqs[s]
        kv = eng.kv_at(s)
        out = eng.out_at(s)
        eng._leave_decode(s)
        run = eng.runs_of[s][-1]  # type: ignore[index]
        run[3] = max(eng.join_step[s], eng.last_dstep_index)
        run[4] = "swap" if self.swap else "preempt"
        eng.out_n[s] = out
        eng.kv_len[s] = kv
        eng._client_stopped(eng.ci_of[r.client])
        eng.n_running -= 1
        eng.batch_is_full = False
        self.preempted_now.add(s)
        self.n_preempt += 1
        if not self.swap:
            eng._release(s, kv, insert=False)
            eng.kv_len[s] = 0
            self.victims.append(s)
            return
        pool = self.pool
        assert pool is not None
        keys = fill_keys(r, eng.page_size, kv, eng.prompt_keys(s))
        sent = pool.swap_out(s, keys, kv, r.id)
        self._log_evictions()
        end = self._issue("out", s, kv, sent)
        self.n_swap_out += 1
        if self.sync:
            pool.unlock(s)
            eng._release(s, kv, insert=False)
            eng.kv_len[s] = 0
            self.victims.append(s)
        else:
            self.out_pending[s] = kv
            heapq.heappush(self.heap, (end, self.order, "out", s))
            self.order += 1

    def _requeue(self, s: int) -> None:
        from prefixsched.reference.waiting import Entry

        eng = self.eng
        r = eng.reqs[s]
        out = eng.out_n[s]
        fill = r.prompt_len + out
        keys = fill_keys(r, eng.page_size, fill, eng.prompt_keys(s))
        eng.index.add(Entry(r, s, keys, eng.ci_of[r.client], fill_len=fill, out_left=r.output_len - out))
        eng.queue[s] = None
        self.queued_at[s] = eng.now

    # ------------------------------------------------------------------ hooks of the pass

    def after_schedule(self, b: Any) -> None:
        """End of the scheduling phase: requeue this pass's victims, issue the swap-ins of the
        admitted batch and, when synchronous, stall until the pass's copies are done."""
        eng = self.eng
        for s in self.victims:
            self._requeue(s)
        self.victims = []
        self.swapins_now = []
        ok = eng.swap_ok
        if b is not None and ok is not None and b.ids:
            pool = self.pool
            assert pool is not None
            for s in b.ids:
                if s == b.continued:
                    continue
                if s not in ok:
                    rl = eng.runs_of[s]
                    if rl is not None and rl[-1][4] == "swap":
                        self.n_recompute += 1  # its host copy was evicted while it waited
                    continue
                r = eng.reqs[s]
                x = b.extend_of[s]
                fill = r.prompt_len + eng.out_n[s]
                self._issue("in", s, fill - 1, x)
                self.swapins_now.append(s)
        if self.sync:
            t = max(self.link_free)
            if t > eng.now:
                self.stall_s += t - eng.now
                eng.now = t

    def after_admit(self, b: Any) -> bool:
        """After the admission phase: the swap-ins of the batch leave the prefill batch (their
        runs carry ``swapped_in``, no chunk) and wait for their copies. Returns True if prefill
        work remains."""
        if not self.swapins_now:
            return True
        eng = self.eng
        pool = self.pool
        assert pool is not None
        ends = {e.request: e.t_end for e in self.events[-len(self.swapins_now):] if e.kind == "in"}
        for s in self.swapins_now:
            x = b.extend_of[s]
            run = eng.runs_of[s][-1]  # type: ignore[index]
            run[0] = None  # its first decode step, set when it joins the decode batch
            run[2] = []
            run.append(x)
            eng.extend_r[s] -= x
            eng.extend_total -= x
            eng.n_chunks -= 1
            self.held[s] = None
            self.n_swap_in += 1
            r = eng.reqs[s]
            keys = fill_keys(r, eng.page_size, eng.kv_len[s], eng.prompt_keys(s))
            if self.sync:
                pool.swap_in(s, keys, r.id)
                self.ready.append(s)
            else:
                pool.lock_for_read(s, keys)
                heapq.heappush(self.heap, (ends[r.id], self.order, "in", s))
                self.in_order[s] = self.order
                self.order += 1
            b.ids.remove(s)
            b._set.discard(s)
            del b.extend_of[s]
        self.swapins_now = []
        return bool(b.ids)

    def complete(self) -> None:
        """Start of a pass: finish the asynchronous copies that ended by now."""
        heap = self.heap
        eng = self.eng
        now = eng.now
        pool = self.pool
        while heap and heap[0][0] <= now:
            _, order, kind, s = heapq.heappop(heap)
            if kind == "in" and order in self.aborted:
                self.aborted.discard(order)
                continue
            if kind == "out":
                kv = self.out_pending.pop(s)
                pool.unlock(s)  # type: ignore[union-attr]
                eng._release(s, kv, insert=False)
                eng.kv_len[s] = 0
                self._requeue(s)
            else:
                self.in_order.pop(s, None)
                r = eng.reqs[s]
                keys = fill_keys(r, eng.page_size, eng.kv_len[s], eng.prompt_keys(s))
                pool.unlock(s)  # type: ignore[union-attr]
                pool.swap_in(s, keys, r.id)  # type: ignore[union-attr]
                self.ready.append(s)

    def ensure_decode_room(self) -> None:
        """Decode pass, before ``check_decode_mem``: if the decode batch's next tokens do not fit
        while asynchronous swap-outs still hold GPU pages, wait (a GPU stall) for those copies to
        end rather than retract: their pages are on their way back to the pool. If that is not
        enough, admitted swap-ins that have not run yet give their pages back (:meth:`abort`),
        newest first."""
        if not self.out_pending and not self.held:
            return
        eng = self.eng
        need = eng._decode_need(eng.running)
        eng._evict_for(need)
        while self.out_pending and eng.cache.free_tokens < need:
            t = min(t for t, _, k, _s in self.heap if k == "out")
            if t > eng.now:
                eng.now = t
            self.complete()
            eng._evict_for(need)
        # still short: give back the pages of admitted swap-ins that have not run yet, newest first
        while self.held and eng.cache.free_tokens < need:
            self.abort(next(reversed(self.held)))
            eng._evict_for(need)

    def abort(self, s: int) -> None:
        """Cancel the swap-in of ``s`` before it ran (its pages are needed by the decode batch):
        free its GPU pages, drop its run, requeue it (an ``"abort"`` event). If its host copy is
        still whole (an asynchronous copy still reading it) it will swap in again; else it
        recomputes."""
        eng = self.eng
        r = eng.reqs[s]
        del self.held[s]
        if s in self.ready:
            self.ready.remove(s)
        order = self.in_order.pop(s, None)
        if order is not None:
            self.aborted.add(order)
        eng.runs_of[s].pop()  # type: ignore[union-attr]
        kv = eng.kv_len[s]
        eng._release(s, kv, insert=False)
        eng.kv_len[s] = 0
        eng._client_stopped(eng.ci_of[r.client])
        eng.n_running -= 1
        self.pool.unlock(s)  # type: ignore[union-attr]
        self.n_swap_in -= 1
        self.n_abort += 1
        t = eng.now
        self.events.append(SwitchEvent(eng.step, r.id, "abort", kv, 0, 0, 0, t, t))
        self._requeue(s)

    def join_ready(self) -> None:
        """Decode pass, after ``check_decode_mem``/retraction: swapped-in requests whose copy is
        done join the decode batch (in admission order) while the pool has a page for their next
        token."""
        if not self.ready:
            return
        eng = self.eng
        ps = eng.page_size
        base = eng._decode_need(eng.running)
        extra = 0
        keep: list[int] = []
        for s in self.ready:
            need = ps if eng.kv_len[s] % ps == 0 else 0
            eng._evict_for(base + extra + need)
            if eng.cache.free_tokens < base + extra + need:
                keep.append(s)
                continue
            extra += need
            eng._checkpoint(s)
            eng._join_decode(s)
            del self.held[s]
            self.awaiting.append(s)
        self.ready = keep

    def on_decode_step(self) -> None:
        """The decode step of this pass is recorded: the requests that joined in it start their
        swap-in runs there."""
        if self.awaiting:
            eng = self.eng
            for s in self.awaiting:
                eng.runs_of[s][-1][0] = eng.step  # type: ignore[index]
            self.awaiting = []

    def wait_link(self) -> bool:
        """Nothing runnable: if copies are in flight, idle until the next one ends (or the next
        arrival, if earlier). Returns True if the clock moved."""
        if not self.heap:
            return False
        eng = self.eng
        t = self.heap[0][0]
        if eng.nxt < len(eng.reqs):
            t = min(t, eng.reqs[eng.nxt].arrival)
        if t > eng.now:
            eng.now = t
        return True

    # ------------------------------------------------------------------ budget hooks

    def held_offset(self, ratio: float, clip: int) -> float:
        """``PrefillAdder``'s running offset of the held swap-ins (they will decode)."""
        eng = self.eng
        off = 0.0
        for s in self.held:
            left = eng.max_new[s] - eng.out_n[s]
            off += (left if left < clip else clip) * ratio
        return off

    @property
    def busy(self) -> bool:
        return bool(self.heap)

    # ------------------------------------------------------------------ trace

    def meta(self) -> dict[str, Any]:
        pool = self.pool
        return {
            **self.cfg.to_dict(),
            "host_capacity_tokens": self.host_capacity,
            "preemptions": self.n_preempt,
            "swap_outs": self.n_swap_out,
            "swap_ins": self.n_swap_in,
            "recomputes_after_host_eviction": self.n_recompute,
            "aborted_swap_ins": self.n_abort,
            "host_evicted_tokens": 0 if pool is None else self.evicted_seen,
            "sync_stall_s": self.stall_s,
        }
