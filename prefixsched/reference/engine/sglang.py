"""The ``sglang`` engine: one worker scheduling as SGLang 0.5.23 does.

Source: SGLang 0.5.23, paths under ``python/sglang/srt/`` (spec: ``shared/specs/sglang.md``). The
engine follows ``Scheduler.event_loop_normal``; each iteration is one of SGLang's passes:

1. **Arrivals** (``ingest_requests``): requests with ``arrival <= now`` join the waiting queue
   (``_add_request_to_queue``: appended to the list), ``policy.on_arrival`` first.
2. **Scheduling** (``get_next_batch_to_run`` -> ``get_new_batch_prefill`` ->
   ``_get_new_batch_prefill_raw``): no prefill if ``batch_is_full`` (or the queue is empty) and no
   request is being chunked; no prefill (and ``batch_is_full``) if no request slot is left
   (``max_running_requests`` minus the decode batch). Otherwise ``SchedulePolicy.calc_priority``
   runs for the policies that are SGLang's own ``--schedule-policy`` (FCFS, LPM;
   :meth:`~prefixsched.reference.policies.base.Policy.native_policy`): LPM matches every waiting
   request (refreshing its LRU stamps), de-prioritises in-batch duplicates and sorts the queue in
   place (stable), unless more than 128 wait, when it acts as FCFS; FCFS refreshes the LRU stamps of
   the first 128 waiting prefixes every 32nd pass (:mod:`.native`). Then a ``PrefillAdder``
   (:class:`AdderBuilder`) resumes the chunked request first (``add_chunked_req``) and the
   policy's ``decide`` walks the queue through it: each ``try_add`` is one iteration of SGLang's
   admission loop (``init_next_round_input`` then ``add_one_req``); the pass stops at the first
   result other than CONTINUE. Other policies (DLPM, VTC, k-LPM, ...) run as the prefixsched SGLang
   plugin runs them (:mod:`prefixsched.integration.sglang`): ``calc_priority`` is a no-op and the
   policy drives the adder directly, with the same builder.
3. **Admission** (``ScheduleBatch.init_new`` / ``prepare_for_extend``): every visited request's
   prefix is matched (split and LRU-touched) in visit order, admitted prefixes are locked, the
   batch's KV pages are allocated (LRU eviction of unlocked leaves if short).
4. **Forward**: a prefill step (kind ``"P"``) takes ``CostModel.prefill_time`` of its weighted
   extend tokens; a decode step (kind ``"D"``) ``CostModel.decode_time`` of the decode batch. A
   pass that forms a prefill batch runs it *instead of* a decode step (SGLang prefers prefill;
   ``--enable-mixed-chunk`` is off by default and not modelled).
5. **Results** (``process_batch_result_prefill`` / ``_decode``): a request whose prefill completes
   produces a token; if it is done it is released with its KV inserted (``release_kv_cache``),
   else its computed pages are inserted and locked (``checkpoint_kv_cache``) and it joins the
   decode batch; a chunked request's pages are checkpointed between chunks. Decode: SGLang's
   ``update_running_batch`` first checks the next step's KV (``check_decode_mem``: one page per
   request whose KV length is page-aligned); if short it retracts (``retract_decode``: the request
   with the fewest output tokens, then the longest prompt, first; KV freed without insert,
   ``remaining * 20`` tokens evicted after each; the request re-enters the queue at the end and
   later re-prefills ``prompt + outputs`` reusing what the cache still holds) and re-estimates
   ``new_token_ratio``; else the ratio decays. Every decode step produces one token per request.

Preemption (``preemption=PreemptionConfig(...)``, :mod:`.preemption`). In phase 2 a decision may
preempt decode-batch requests (SGLang's priority preemption, drop mode, or vLLM/FastSwitch swap
mode); the engine applies them, rebuilds the adder and asks the policy again while it preempts
without admitting (:meth:`SGLangWorker._preempt_rounds`). Small hooks elsewhere: asynchronous copies
complete at the start of a pass, swap-ins leave the prefill batch after admission and join the
decode batch at a decode pass once their copy is done, and a synchronous pass stalls for its
copies before its step. Without it none of this runs and the traces are those of SGLang as above.

KV pool. One pool of ``kv_capacity_tokens`` holds the tree's pages and every request's private
pages (allocated page by page, as SGLang's paged allocator: an extend of ``x`` tokens from an
aligned prefix takes ``ceil(x / page)`` pages, a decode step a new page when the request's KV
length is a multiple of the page size). A request's own full pages move into the tree when it is
checkpointed (duplicates of pages another request inserted meanwhile are freed).

The admission budget (``PrefillAdder`` + ``mem_cache/prefill_budget.py::PrefillBudget``).
``remaining_total = free + evictable - total_offset`` with ``total_offset`` = sum over the decode
batch of ``min(max_new - generated, 4096) * ratio`` (ratio 1 for ``ignore_eos`` requests) plus,
per admitted request, its page-rounded extend + one page + ``min(max_new, 4096)`` (0 while it is
being chunked). A candidate (its prefix temporarily locked) needs ``extend + min(max_new -
generated, 4096) + page < remaining_total``; without chunking a later request may not reach
``max_prefill_tokens``; with chunking a request whose page-rounded extend exceeds the chunk budget
left is cut to it (page-aligned) and becomes the one chunked request. ``max_prefill_tokens`` and
the chunk budget are charged with page-rounded extends.

Decisions where SGLang leaves a choice or where the simulator must simplify (documented):

- The non-overlap event loop is modelled (``--disable-overlap-schedule``); SGLang's default
  overlap loop sees each batch's results one step later.
- A request's ``max_new_tokens`` is its ``output_len`` (it stops by length exactly there, as an
  EOS would in a trace replay), or ``max(SGLangConfig.max_new_tokens, output_len)`` when that is
  set; ``SGLangConfig.ignore_eos`` marks requests as SGLang's ``ignore_eos`` (then the running
  reservation uses ratio 1, as ``PrefillAdder._get_running_request_total_token_offset``).
- The tree is SGLang's Python ``RadixCache`` (LRU) with its ``supports_fast_match_prefix() ==
  False`` behaviour; the production ``UnifiedRadixCache`` is compared by the conformance tests.
- Policy charging: a policy sees each waiting request's ``extend_tokens`` at its decision; a
  chunked request is charged by the policy once, at its admission, for all of it; a retracted
  request's re-prefill is a new admission and is charged again (no refund: it is real work).
- Every ``try_add`` call is one visit of SGLang's loop (match, split, LRU touch), also for a
  request that does not fit; ``fits`` does not visit.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from prefixsched.errors import CheckerError, IllegalDecisionError, InputError, PrefixschedError
from prefixsched.reference.engine import native
from prefixsched.reference.engine.core import EngineBase, fill_keys, lock_walk, output_token
from prefixsched.reference.engine.snapshot import EngineSnapshot
from prefixsched.reference.policies.base import Decision, FinishedInfo
from prefixsched.reference.waiting import Entry
from prefixsched.theory.model import BlockPrompt, Request, WKey, key_tokens

__all__ = ["SGLangConfig", "SGLangWorker", "AdderBuilder", "PassRecord", "CONTINUE", "NO_TOKEN", "OTHER"]

#: ``AddReqResult`` (``managers/schedule_policy.py``).
CONTINUE, NO_TOKEN, OTHER = "CONTINUE", "NO_TOKEN", "OTHER"


@dataclass(frozen=True)
class SGLangConfig:
    """The ``sglang`` engine's SGLang knobs (server limits live in
    :class:`~prefixsched.theory.model.Limits`: ``page_size``, ``max_prefill_tokens``,
    ``chunked_prefill_size``, ``max_running_requests``, ``kv_capacity_tokens``).

    Attributes
    ----------
    schedule_conservativeness:
        ``--schedule-conservativeness`` (default 1.0): scales the initial ``new_token_ratio``.
    init_new_token_ratio, min_new_token_ratio_factor, new_token_ratio_decay_steps:
        Env ``SGLANG_INIT_NEW_TOKEN_RATIO`` (0.7), ``SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR`` (0.14),
        ``SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS`` (600).
    clip_max_new_tokens:
        ``CLIP_MAX_NEW_TOKENS`` (env ``SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION``, 4096).
    retract_decode_steps:
        Env ``SGLANG_RETRACT_DECODE_STEPS`` (20).
    in_batch_check_threshold, in_batch_deprioritize_threshold:
        Env ``IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD`` / ``..._DEPRIORITIZE_THRESHOLD`` (32, 32).
    waiting_queue_prefix_match_max:
        ``WAITING_QUEUE_PREFIX_MATCH_MAX`` (128): native LPM acts as FCFS above this queue length
        (a policy's own ``fcfs_fallback`` overrides it).
    waiting_prefix_refresh, waiting_prefix_refresh_interval:
        Env ``SGLANG_ENABLE_WAITING_PREFIX_REFRESH`` (True) and ``WAITING_PREFIX_REFRESH_INTERVAL``
        (32).
    max_new_tokens:
        ``None``: every request's ``max_new_tokens`` is its ``output_len``; an int: ``max(value,
        output_len)`` (the request still stops at ``output_len``, by EOS).
    ignore_eos:
        Requests are sent with ``ignore_eos`` (a live replay that forces exact output lengths):
        running requests are then reserved in full (ratio 1).

    Raises
    ------
    InputError
        From :meth:`validate`, naming the field.
    """

    schedule_conservativeness: float = 1.0
    init_new_token_ratio: float = 0.7
    min_new_token_ratio_factor: float = 0.14
    new_token_ratio_decay_steps: int = 600
    clip_max_new_tokens: int = native.CLIP_MAX_NEW_TOKENS
    retract_decode_steps: int = native.RETRACT_DECODE_STEPS
    in_batch_check_threshold: int = native.IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD
    in_batch_deprioritize_threshold: int = native.IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD
    waiting_queue_prefix_match_max: int = native.WAITING_QUEUE_PREFIX_MATCH_MAX
    waiting_prefix_refresh: bool = True
    waiting_prefix_refresh_interval: int = native.WAITING_PREFIX_REFRESH_INTERVAL
    max_new_tokens: int | None = None
    ignore_eos: bool = False

    def validate(self) -> None:
        for name in ("schedule_conservativeness", "init_new_token_ratio", "min_new_token_ratio_factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise InputError(f"sglang.{name}", f"must be a finite number > 0, got {v!r}")
        for name, lo in (("new_token_ratio_decay_steps", 1), ("clip_max_new_tokens", 1), ("retract_decode_steps", 0),
                         ("waiting_queue_prefix_match_max", 0), ("waiting_prefix_refresh_interval", 1)):
            native.check_config_int(f"sglang.{name}", getattr(self, name), lo)
        for name in ("in_batch_check_threshold", "in_batch_deprioritize_threshold"):
            native.check_config_int(f"sglang.{name}", getattr(self, name), -1)
        if self.max_new_tokens is not None:
            native.check_config_int("sglang.max_new_tokens", self.max_new_tokens, 1)
        for name in ("waiting_prefix_refresh", "ignore_eos"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"sglang.{name}", f"must be true or false, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Any, where: str = "sglang") -> "SGLangConfig":
        if not isinstance(d, dict):
            raise InputError(where, f"must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(SGLangConfig)}
        for k in d:
            if k not in names:
                raise InputError(f"{where}.{k}", f"unknown field (known: {', '.join(sorted(names))})")
        cfg = SGLangConfig(**d)
        cfg.validate()
        return cfg


@dataclass
class PassRecord:
    """One scheduling pass of the ``sglang`` engine, for conformance checks (``on_pass``).

    Attributes
    ----------
    step, now:
        The step the pass produced (or would have) and the engine time.
    kind:
        ``"prefill"`` (a prefill batch ran), ``"decode"`` (a decode step ran) or ``"idle"``.
    queue_before:
        Waiting-queue ids before ``calc_priority``.
    walk_order:
        The queue after ``calc_priority``: the order SGLang's admission loop walks.
    queue_after:
        The waiting queue after the pass (``walk_order`` minus the admitted requests; a request left
        chunked is not in it): what the next pass starts from.
    deprioritized:
        Ids in SGLang's ``temporary_deprioritized`` (native LPM only).
    admitted:
        ``can_run_list`` ids in order (a continuing chunked request first).
    extend:
        ``{id: extend tokens this pass}`` for the admitted.
    cached:
        ``{id: prefix hit}`` for the requests admitted from the queue (not a resumed chunk).
    chunked:
        ``(id, tokens this pass)`` of the request left being chunked after the pass, or None.
    stop:
        Why the admission loop stopped: ``"CONTINUE"`` (queue exhausted), ``"NO_TOKEN"``,
        ``"OTHER"``, ``"SLOTS"``, ``"POLICY"`` (the policy stopped) or None (no loop ran).
    batch_is_full:
        SGLang's ``running_batch.batch_is_full`` after the pass.
    retracted:
        Decode passes: ids retracted, in retraction order.
    state:
        The AdmissionState (JSON-able; see :meth:`SGLangWorker.admission_state`) taken at the
        start of the pass, after arrivals.
    cache_after:
        ``(free, evictable, total)`` tokens of the KV pool and radix tree after the step's
        results were processed (``token_to_kv_pool_allocator.available_size()``,
        ``tree_cache.evictable_size()``, ``tree_cache.total_size()``); None for an idle pass.
    """

    step: int
    now: float
    kind: str
    queue_before: tuple[str, ...]
    walk_order: tuple[str, ...] = ()
    queue_after: tuple[str, ...] = ()
    deprioritized: tuple[str, ...] = ()
    admitted: tuple[str, ...] = ()
    extend: dict[str, int] | None = None
    cached: dict[str, int] | None = None
    chunked: tuple[str, int] | None = None
    stop: str | None = None
    batch_is_full: bool = False
    retracted: tuple[str, ...] = ()
    state: dict[str, Any] | None = None
    cache_after: tuple[int, int, int] | None = None


class AdderBuilder:
    """SGLang's ``PrefillAdder`` for one pass, as a
    :class:`~prefixsched.reference.policies.base.BatchBuilder` (module docstring, "The admission
    budget").

    ``try_add(entry)`` is one iteration of ``_get_new_batch_prefill_raw``'s loop: it returns False
    without visiting if the loop has stopped, the pass budget is spent (``budget_state() ==
    OTHER``) or no request slot is left; otherwise it visits the request (the engine matches and
    LRU-touches it) and runs ``add_one_req``: True iff the request was committed (whole or as the
    chunked request). After any result other than CONTINUE the builder is ``full`` (SGLang breaks
    out of the loop). ``admitted`` lists the ids committed from the queue; ``ids`` holds the seqs of
    the whole batch (a resumed chunked request first).
    """

    __slots__ = (
        "_eng", "ps", "slots", "rem_input", "rem_chunk", "total_offset", "current_offset", "avail0",
        "locked", "_counted", "_root", "ids", "_set", "extend_of", "new_chunked", "continued", "full",
        "stop", "no_token", "slots_full", "_record", "_cont_truncated",
    )

    def __init__(self, eng: "SGLangWorker", slots: int) -> None:
        cache = eng.cache
        self._eng = eng
        self.ps = eng.page_size
        self.slots = slots
        self.rem_input = eng.max_prefill
        self.rem_chunk = eng.chunk_size
        ratio = eng.ratio.current
        clip = eng.cfg.clip_max_new_tokens
        off = 0.0
        r1 = 1.0 if eng.cfg.ignore_eos else ratio
        for s in eng.running:
            left = eng.max_new[s] - eng.out_at(s)
            off += (left if left < clip else clip) * r1
        if eng.pre is not None:  # admitted swap-ins not in the decode batch yet
            off += eng.pre.held_offset(r1, clip)
        self.total_offset = off
        self.current_offset = 0.0
        self.avail0 = cache.free_tokens + cache.evictable_tokens
        self.locked = 0
        self._counted: dict[int, int] = {}
        self._root = cache.root
        self.ids: list[int] = []  # seqs, in can_run_list order
        self._set: set[int] = set()
        self.extend_of: dict[int, int] = {}
        self.new_chunked: int | None = None
        self.continued: int | None = None
        self._cont_truncated = False
        self.full = False
        self.stop: str | None = None
        self.no_token = False
        self.slots_full = False
        self._record = False

    # ------------------------------------------------------------------ budget

    def _ceil(self, tokens: int) -> int:
        ps = self.ps
        return -(-tokens // ps) * ps

    @property
    def remaining_total(self) -> float:
        return self.avail0 - self.locked - self.total_offset

    @property
    def remaining_current(self) -> float:
        return self.avail0 - self.locked - self.current_offset

    def budget_state(self) -> str:
        """``PrefillAdder.budget_state``."""
        if not (self.remaining_total > 0 and self.remaining_current > 0):
            return NO_TOKEN
        if self.rem_input <= 0:
            return OTHER
        if self.rem_chunk is not None and self.rem_chunk <= 0:
            return OTHER
        return CONTINUE

    def _charge(self, extend_len: int, max_new: int) -> None:
        """``_update_prefill_budget`` (page-rounded extend; one page of slack per request)."""
        paged = self._ceil(extend_len)
        ps = self.ps
        self.total_offset += paged + ps + max_new
        self.current_offset += paged + ps
        self.rem_input -= paged
        if self.rem_chunk is not None:
            self.rem_chunk -= paged

    def _charge_swap_in(self, tokens: int, max_new: int) -> None:
        """A swap-in's charge: its KV, a page and its output, but no prefill-token or chunk budget
        (it computes nothing; :mod:`.preemption`)."""
        paged = self._ceil(tokens)
        ps = self.ps
        self.total_offset += paged + ps + max_new
        self.current_offset += paged + ps

    def clone(self, record: bool) -> "AdderBuilder":
        b = object.__new__(AdderBuilder)
        for k in AdderBuilder.__slots__:
            v = getattr(self, k)
            if isinstance(v, (list, dict, set)):
                v = type(v)(v)
            setattr(b, k, v)
        b._record = record
        return b

    # ------------------------------------------------------------------ the chunked request

    def add_chunked(self, seq: int) -> None:
        """``add_chunked_req``: resume the chunked request with the chunk budget left (or all of
        it when the pool has less than that: a continuation must progress)."""
        eng = self._eng
        rem_chunk = self.rem_chunk
        assert rem_chunk is not None
        rem = min(rem_chunk, int(self.remaining_total))
        if rem <= 0:
            rem = rem_chunk
        cand = eng.fill_n[seq] - eng.kv_len[seq]
        truncated = cand > rem
        new_len = cand if cand < rem else rem
        self.ids.append(seq)
        self._set.add(seq)
        self.extend_of[seq] = new_len
        self.continued = seq
        self._cont_truncated = truncated
        clip = eng.cfg.clip_max_new_tokens
        mn = eng.max_new[seq]
        self._charge(new_len, 0 if truncated else (mn if mn < clip else clip))

    @property
    def chunked_after(self) -> int | None:
        """The request left being chunked after this pass (new or still truncated), or None."""
        if self.new_chunked is not None:
            return self.new_chunked
        if self.continued is not None and self._cont_truncated:
            return self.continued
        return None

    # ------------------------------------------------------------------ one candidate

    def _add_one(self, e: Entry) -> tuple[str, bool, int, bool, list[tuple[int, int]], int]:
        """``add_one_req`` without side effects: ``(result, committed, extend_len, chunked,
        lock updates, lock tokens)``."""
        eng = self._eng
        ps = self.ps
        s = e.seq
        clip = eng.cfg.clip_max_new_tokens
        mn = eng.max_new[s]
        left = mn - (e.fill_len - e.request.prompt_len)
        if left < 0:
            left = 0
        max_new = left if left < clip else clip
        prefix = e.cached_tokens
        cand = e.fill_len - prefix
        total = cand + max_new + ps
        lock, updates = lock_walk(eng.cache.watched_node(s), e.used, self._counted, self._root, eng.cache)
        if not total < self.avail0 - self.locked - lock - self.total_offset:
            return NO_TOKEN, False, 0, False, [], 0
        sw = eng.swap_ok
        if sw is not None and s in sw:  # resumes by swap-in: fill - 1 - prefix tokens come back from host
            return CONTINUE, True, cand - 1, False, updates, lock
        input_tokens = self._ceil(cand)
        if self.rem_chunk is None and self.ids and input_tokens >= self.rem_input:
            return OTHER, False, 0, False, [], 0
        extend = cand
        chunked = False
        if self.rem_chunk is not None and input_tokens > self.rem_chunk:
            extend = self.rem_chunk // ps * ps
            end = (prefix + extend) // ps * ps
            extend = end - prefix
            if extend <= 0:
                return OTHER, False, 0, False, [], 0
            chunked = True
        return CONTINUE, True, extend, chunked, updates, lock

    def why_not(self, e: Entry) -> str | None:
        """None if ``e`` would be committed now, else SGLang's reason (text)."""
        if self.full:
            return f"the pass has stopped ({self.stop})"
        if self.budget_state() == OTHER:
            return "the pass budget is spent (max_prefill_tokens / chunked_prefill_size)"
        if len(self.ids) >= self.slots:
            return f"no request slot left (max_running_requests = {self._eng.max_running})"
        res, ok, *_ = self._add_one(e)
        if ok:
            return None
        if res == NO_TOKEN:
            return (
                f"NO_TOKEN: needs extend {e.fill_len - e.cached_tokens} + reserved output + a page; "
                f"remaining_total {self.remaining_total:.1f} tokens"
            )
        return "OTHER: the prefill budget does not admit it"

    def fits(self, entry: Any) -> bool:
        if self.full or entry.seq in self._set or self.budget_state() == OTHER or len(self.ids) >= self.slots:
            return False
        return self._add_one(entry)[1]

    def try_add(self, entry: Any) -> bool:
        e = entry
        if self.full:
            return False
        if e.seq in self._set:
            return False
        if self.budget_state() == OTHER:
            self.full = True
            self.stop = OTHER
            return False
        eng = self._eng
        if len(self.ids) >= self.slots:
            self.full = True
            self.stop = "SLOTS"
            self.slots_full = True
            return False
        if self._record:
            eng.pass_visits.append(e)
        res, ok, extend, chunked, updates, lock = self._add_one(e)
        if ok:
            counted = self._counted
            for nid, hi in updates:
                counted[nid] = hi
            self.locked += lock
            s = e.seq
            self.ids.append(s)
            self._set.add(s)
            self.extend_of[s] = extend
            clip = eng.cfg.clip_max_new_tokens
            mn = eng.max_new[s]
            if chunked:
                self.new_chunked = s
                self._charge(extend, 0)
            elif eng.swap_ok is not None and s in eng.swap_ok:
                self._charge_swap_in(extend, mn if mn < clip else clip)
            else:
                self._charge(extend, mn if mn < clip else clip)
            res = self.budget_state()
        if res != CONTINUE:
            self.full = True
            self.stop = res
            if res == NO_TOKEN:
                self.no_token = True
        return ok

    def client_full(self, client: str) -> bool:
        return self.full

    @property
    def admitted(self) -> tuple[str, ...]:
        """Ids committed from the waiting queue, in order (the resumed chunked request, which is
        the engine's, not the policy's, is not among them)."""
        reqs = self._eng.reqs
        c = self.continued
        return tuple(reqs[s].id for s in self.ids if s != c)

    def loop_open(self) -> bool:
        """Would SGLang's loop visit a candidate now?"""
        return not self.full and self.budget_state() != OTHER and len(self.ids) < self.slots


class SGLangWorker(EngineBase):
    """The ``sglang`` engine (module docstring).

    Parameters
    ----------
    instance, policy, requests, seed, progress, record_states, log_events:
        As :class:`~prefixsched.reference.engine.core.EngineBase`.
    sglang:
        The SGLang knobs (:class:`SGLangConfig`; defaults are SGLang 0.5.23's).
    on_pass:
        Optional ``callable(PassRecord)`` called after every scheduling pass (conformance checks;
        it makes the run slower: each record carries the full state as token lists).
    preemption:
        ``None`` (default: SGLang without priority preemption; a decision that preempts is
        illegal) or a :class:`~prefixsched.reference.engine.preemption.PreemptionConfig`: policies
        may preempt decoding requests, in drop or swap mode (:mod:`.preemption`). The engine then
        asks the policy at every pass with a waiting request, even when no running slot is free
        (SGLang's ``enable_priority_preemption`` resets ``batch_is_full`` each pass).

    Raises
    ------
    InputError
        Bad arguments, or a request that SGLang could never admit into an empty pool
        (``prompt + min(max_new, 4096) + page >= kv_capacity_tokens``).
    """

    name = "sglang"
    version = "prefixsched.engine.sglang/1 (SGLang 0.5.23)"

    def __init__(self, instance: Any, policy: Any, *, sglang: SGLangConfig | None = None,
                 on_pass: Callable[[PassRecord], None] | None = None, preemption: Any = None, **kw: Any) -> None:
        super().__init__(instance, policy, **kw)
        self.pre: Any = None  # the preemption phase (preemption.Preemptor), None without preemption
        self.swap_ok: Any = None  # seqs that would resume by swap-in (a complete host copy)
        cfg = SGLangConfig() if sglang is None else sglang
        if not isinstance(cfg, SGLangConfig):
            raise InputError("sglang", f"must be an SGLangConfig, got {type(cfg).__name__}")
        cfg.validate()
        self.cfg = cfg
        self.on_pass = on_pass
        self.chunk_size = instance.limits.chunked_prefill_size
        if self.chunk_size is not None and self.chunk_size < self.page_size:
            raise InputError(
                "limits.chunked_prefill_size",
                f"{self.chunk_size} is below page_size {self.page_size}: SGLang cuts chunks at whole pages, so "
                "a chunk would be empty and no request could ever be admitted",
            )
        self.ratio = native.NewTokenRatio.from_config(
            cfg.schedule_conservativeness, cfg.init_new_token_ratio, cfg.min_new_token_ratio_factor,
            cfg.new_token_ratio_decay_steps,
        )
        nat = policy.native_policy()
        self.native: tuple[str, int] | None = None
        if nat is not None:
            name, opts = nat
            if name not in ("fcfs", "lpm"):
                raise InputError("policy", f"native SGLang policy {name!r} is not modelled (fcfs, lpm)")
            fb = opts.get("fcfs_fallback")
            self.native = (name, cfg.waiting_queue_prefix_match_max if fb is None else int(fb))
        self.queue: dict[int, None] = {}  # SGLang's waiting_queue list (seqs, in list order)
        self.running: dict[int, None] = {}  # the decode batch, in batch order
        self.chunked: int | None = None
        self.stash: int | None = None  # the chunked request whose chunk is not in the tree yet
        self.batch_is_full = False
        self.refresh_calls = 0
        self.dstep = 0  # decode steps run
        self.last_dstep_index = -1  # trace step index of the latest decode step
        n = len(self.reqs)
        self.kv_len = [0] * n  # tokens of the current run with KV
        self.lk_tok = [0] * n  # tokens of the locked node's path (the run's tree-owned prefix)
        self.fill_n = [0] * n  # fill of the current run
        self.out_n = [0] * n  # tokens produced (decode members: at join time, see out_at)
        self.d0 = [0] * n  # decode index at which it joined the decode batch
        self.join_step = [0] * n  # trace step of its prefill completion (current run)
        self.max_new = [0] * n
        for s, r in enumerate(self.reqs):
            self.max_new[s] = self._max_new_of(r)
        self.heap: list[tuple[int, int, int]] = []  # (finishing decode index, seq, run number)
        self.run_no = [0] * n
        self.dec_by = [0] * len(instance.clients)  # decode batch members per client
        self.dec_sum = 0  # sum over the decode batch of (kv_len at join - d0)
        ps = self.page_size
        self.bucket = [0] * ps if ps > 1 else []  # decode members per page residue
        self.pass_visits: list[Entry] = []
        self._base: AdderBuilder | None = None
        self._policy_builder: AdderBuilder | None = None
        self.n_retracted = 0
        self.n_chunks = 0
        self.snap = EngineSnapshot(self)
        if preemption is not None:
            self._init_preemption(preemption)
        if not self.online:
            for r in self.reqs:
                self._check_admissible(r)

    # ------------------------------------------------------------------ per-request helpers

    def _max_new_of(self, r: Request) -> int:
        m = self.cfg.max_new_tokens
        return r.output_len if m is None else max(m, r.output_len)

    def _check_admissible(self, r: Request) -> None:
        clip = self.cfg.clip_max_new_tokens
        mn = self._max_new_of(r)
        need = r.prompt_len + min(mn, clip) + self.page_size
        if need >= self.instance.limits.kv_capacity_tokens:
            raise InputError(
                f"request {r.id!r}",
                f"prompt {r.prompt_len} + reserved output {min(mn, clip)} + one page {self.page_size} = {need} "
                f"tokens: SGLang admits a request only if that is < kv_capacity_tokens = "
                f"{self.instance.limits.kv_capacity_tokens}, so it could never run",
            )

    def _grow(self) -> None:
        super()._grow()
        for a in (self.kv_len, self.lk_tok, self.fill_n, self.out_n, self.d0, self.join_step, self.max_new, self.run_no):
            a.append(0)

    def submit(self, request: Request, keys: tuple | None = None) -> int:
        seq = super().submit(request, keys)
        self.max_new[seq] = self._max_new_of(request)
        self._check_admissible(request)
        return seq

    def out_at(self, s: int) -> int:
        """Tokens request ``s`` has produced so far (decode members: computed from the decode
        steps since it joined)."""
        if s in self.running:
            return self.out_n[s] + (self.dstep - self.d0[s])
        return self.out_n[s]

    def kv_at(self, s: int) -> int:
        if s in self.running:
            return self.kv_len[s] + (self.dstep - self.d0[s])
        return self.kv_len[s]

    def _private(self, s: int, kv: int) -> int:
        ps = self.page_size
        return -(-kv // ps) * ps - self.lk_tok[s]

    def _busy(self) -> bool:
        return self.n_running > 0 or (self.pre is not None and self.pre.busy)

    def _on_idle_gap(self) -> None:
        self.ratio.reset()  # Scheduler.on_idle: a fully idle server resets new_token_ratio

    # ------------------------------------------------------------------ snapshot hooks

    def new_builder(self) -> AdderBuilder:
        base = self._base
        if base is None:
            base = AdderBuilder(self, self._free_slots())
        b = base.clone(record=True)
        self._policy_builder = b
        return b

    def queue_order(self) -> Iterator[Entry]:
        entries = self.index.entries
        return (entries[s] for s in list(self.queue))

    def _enqueue(self, seq: int, request: Request) -> None:
        self.index.add(Entry(request, seq, self.prompt_keys(seq), self.ci_of[request.client]))
        self.queue[seq] = None

    # ------------------------------------------------------------------ the pass

    def _iterate(self, final: bool) -> bool:
        self._arrivals()
        self._stash_chunked()
        pre = self.pre
        if pre is not None:
            pre.complete()  # asynchronous copies that ended by now
        rec = self._pass_record() if self.on_pass is not None else None
        b = self._schedule(rec)
        if pre is not None:
            pre.after_schedule(b)  # requeue victims, issue swap-ins, synchronous stall
        if b is not None and b.ids:
            self._admit(b)
            if rec is not None:
                rec.queue_after = tuple(self.reqs[s].id for s in self.queue)
            if pre is None or pre.after_admit(b):
                end = self._forward_prefill(b)
                self._results_prefill(b, end)
                if rec is not None:
                    rec.kind = "prefill"
                    rec.cache_after = self._cache_sizes()
                    self.on_pass(rec)
                return False
        elif b is not None and self.pass_visits:
            if self.log_events:
                self.cache.event_time = self.now  # type: ignore[attr-defined]
            self._match_visits(())
        if rec is not None:
            rec.batch_is_full = self.batch_is_full
        if self.running or (pre is not None and pre.ready):
            if pre is not None:
                pre.ensure_decode_room()  # wait for swap-outs rather than retract
            retracted = self._schedule_decode()
            if pre is not None:
                pre.join_ready()  # swapped-in requests join the decode batch
            if self.running:
                end = self._forward_decode()
                if pre is not None:
                    pre.on_decode_step()
                self._results_decode(end)
                if rec is not None:
                    rec.kind = "decode"
                    rec.retracted = tuple(self.reqs[s].id for s in retracted)
                    rec.cache_after = self._cache_sizes()
                    self.on_pass(rec)
                return False
        if rec is not None:
            self.on_pass(rec)
        if pre is not None and pre.wait_link():
            return False  # nothing runnable while copies are in flight: idle until one ends
        return self._idle(final)

    def _cache_sizes(self) -> tuple[int, int, int]:
        c = self.cache
        return (c.free_tokens, c.evictable_tokens, c.total_tokens)

    # phase 2: scheduling ------------------------------------------------------------------

    def _schedule(self, rec: PassRecord | None) -> AdderBuilder | None:
        """``_get_new_batch_prefill_raw`` up to the end of the admission loop."""
        self._base = None
        pre = self.pre
        if not self.running or pre is not None:  # priority preemption resets it every pass
            self.batch_is_full = False
        if (self.batch_is_full or not self.queue) and self.chunked is None:
            return None
        slots = self._free_slots()
        if slots <= 0 and self.chunked is None and pre is None:
            self.batch_is_full = True
            return None
        self._calc_priority(rec)
        base = self._new_base(slots)
        self._base = base
        self.pass_visits = []
        self._policy_builder = None
        b = base
        if self.queue and (base.loop_open() or pre is not None):
            snap = self.snap
            snap.now = self.now
            snap.step = self.step
            decision = self.policy.decide(snap)
            self.decisions += 1
            if pre is not None and isinstance(decision, Decision) and decision.preempt:
                decision, base = self._preempt_rounds(decision)
            b = self._validate(decision, base)
        # batch_is_full as SGLang's loop leaves it: from the loop events of the policy's builder
        # (the one whose commits are the decision), else from the replay
        pb = self._policy_builder
        stop = pb.stop if pb is not None and pb.ids == b.ids else b.stop
        if stop == "SLOTS":
            self.batch_is_full = True
        elif stop == NO_TOKEN:
            self.batch_is_full = bool(b.ids) or bool(self.running)
        if rec is not None:
            rec.walk_order = rec.queue_after = tuple(self.reqs[s].id for s in self.queue)
            rec.admitted = tuple(self.reqs[s].id for s in b.ids)
            rec.extend = {self.reqs[s].id: b.extend_of[s] for s in b.ids}
            ents = self.index.entries
            rec.cached = {self.reqs[s].id: ents[s].cached_tokens for s in b.ids if s != b.continued}
            ca = b.chunked_after
            rec.chunked = None if ca is None else (self.reqs[ca].id, b.extend_of[ca])
            rec.stop = stop
            rec.batch_is_full = self.batch_is_full
        self._base = None
        return b

    def _validate(self, decision: Any, base: AdderBuilder) -> AdderBuilder:
        """Replay ``decision`` through a fresh clone of the pass's builder; returns it.

        Raises
        ------
        IllegalDecisionError
            Naming the policy, the request and the violated rule: not a Decision, an unknown,
            duplicated, not-yet-arrived or not-waiting request, or one SGLang's adder would not
            commit at that point (the pass stopped, no slot, the budget).
        """
        policy = self.policy
        if not isinstance(decision, Decision):
            raise IllegalDecisionError(f"policy {policy.name!r} returned {type(decision).__name__}, expected a Decision")
        if decision.preempt and self.pre is None:
            raise IllegalDecisionError(
                f"policy {policy.name!r} at t={self.now}: preempts {decision.preempt[0]!r}, but this engine runs "
                "without preemption (build it with preemption=PreemptionConfig(...))"
            )
        b = base.clone(record=False)
        seen: set[str] = set()
        entries = self.index.entries
        for rid in decision.admit:
            where = f"policy {policy.name!r} at t={self.now}: request {rid!r}"
            if not isinstance(rid, str):
                raise IllegalDecisionError(f"{where}: ids must be strings")
            if rid in seen:
                raise IllegalDecisionError(f"{where}: admitted twice in one decision")
            seen.add(rid)
            seq = self.seq_of.get(rid)
            if seq is None:
                raise IllegalDecisionError(f"{where}: no such request in the instance")
            e = entries.get(seq)
            if e is None:
                r = self.reqs[seq]
                if r.arrival > self.now:
                    raise IllegalDecisionError(f"{where}: has not arrived yet (arrival {r.arrival})")
                raise IllegalDecisionError(f"{where}: is not waiting (already admitted)")
            why = b.why_not(e)
            if why is not None:
                raise IllegalDecisionError(f"{where}: SGLang's adder would not commit it: {why}")
            ok = b.try_add(e)
            assert ok
        return b

    def _free_slots(self) -> int:
        """Running slots left: ``max_running_requests`` minus the decode batch (and the admitted
        swap-ins not in it yet)."""
        n = self.max_running - len(self.running)
        return n if self.pre is None else n - len(self.pre.held)

    def _new_base(self, slots: int) -> AdderBuilder:
        """The pass's ``PrefillAdder``, the chunked request resumed first."""
        base = AdderBuilder(self, slots)
        if self.chunked is not None:
            base.add_chunked(self.chunked)
            if base.budget_state() == OTHER:
                base.full = True
                base.stop = OTHER
        return base

    # preemption -----------------------------------------------------------------------------

    def _init_preemption(self, cfg: Any) -> None:
        from prefixsched.reference.engine.preemption import PreemptionConfig, PreemptionSnapshot, Preemptor

        if not isinstance(cfg, PreemptionConfig):
            raise InputError("preemption", f"must be a PreemptionConfig or None, got {type(cfg).__name__}")
        self.pre = Preemptor(self, cfg)
        self.snap = PreemptionSnapshot(self)

    def _preempt_rounds(self, decision: Decision) -> tuple[Decision, AdderBuilder]:
        """Apply a decision's preemptions (validated), rebuild the pass's adder on the state after
        them and, while the policy preempts without admitting, ask it again (each round removes
        running requests, so this ends). Returns the decision whose admissions are replayed and the
        adder to replay them on (:class:`~prefixsched.reference.policies.base.Decision`)."""
        pre = self.pre
        snap = self.snap
        while True:
            pre.check(decision)
            for rid in decision.preempt:
                pre.preempt(self.seq_of[rid])
            base = self._new_base(self._free_slots())
            self._base = base
            self.pass_visits = []
            self._policy_builder = None
            if decision.admit or not self.queue:
                return decision, base
            decision = self.policy.decide(snap)
            self.decisions += 1
            if not isinstance(decision, Decision) or not decision.preempt:
                if isinstance(decision, Decision):
                    pre.check(decision)
                return decision, base

    def _calc_priority(self, rec: PassRecord | None) -> None:
        """``SchedulePolicy.calc_priority`` for a native policy (module docstring): sorts the
        queue in place and refreshes LRU stamps as SGLang does."""
        if rec is not None:
            rec.queue_before = tuple(self.reqs[s].id for s in self.queue)
        nat = self.native
        if nat is None or not self.queue:
            return
        name, match_max = nat
        cache = self.cache
        entries = self.index.entries
        act = native.active_policy(name, len(self.queue), match_max)
        if act == "lpm":
            q = [entries[s] for s in self.queue]
            for e in q:  # _compute_prefix_matches: match_kv_cache of every waiting request
                if e.pages:
                    cache.match_prefix(e.keys[: e.pages], split=True, touch=True)
            cfg = self.cfg
            dep = native.in_batch_deprioritized(
                q, lambda e: e.match_tokens, self._lead,
                check_threshold=cfg.in_batch_check_threshold, deprioritize_threshold=cfg.in_batch_deprioritize_threshold,
            )
            order = native.lpm_sort(q, lambda e: native.lpm_sort_key(e.match_tokens, e.fill_len), dep)
            self.queue = dict.fromkeys(e.seq for e in order)
            if rec is not None:
                rec.deprioritized = tuple(q[k].request.id for k in sorted(dep))
            return
        # FCFS (native or LPM's fallback): _touch_waiting_prefixes
        if not self.cfg.waiting_prefix_refresh:
            return
        due = native.refresh_due(self.refresh_calls, self.cfg.waiting_prefix_refresh_interval)
        self.refresh_calls += 1
        if not due:
            return
        head = []
        for s in self.queue:
            head.append(entries[s])
            if len(head) >= native.WAITING_QUEUE_PREFIX_MATCH_MAX:
                break
        for e in reversed(head):
            if e.pages:
                cache.match_prefix(e.keys[: e.pages], split=True, touch=True)

    def _lead(self, e: Entry) -> Hashable | None:
        """What stands for the first ``D`` tokens of the fill (native.in_batch_deprioritized)."""
        D = self.cfg.in_batch_deprioritize_threshold
        if e.fill_len < D:
            return None
        r = e.request
        p = r.prompt
        if r.prompt_len >= D:
            if isinstance(p, BlockPrompt):
                nb = -(-D // p.block_size)
                return ("B", p.blocks[:nb])
            return tuple(p[:D])
        return ("O", r.id)  # outputs are unique to the request

    # phase 3: admission -------------------------------------------------------------------

    def _match_visits(self, admitted: set[int] | dict[int, Any]) -> dict[int, Any]:
        """``req.init_next_round_input`` of every request the pass visited, in visit order
        (``match_prefix``: split and LRU touch), also in a pass that admitted nothing: SGLang
        matches each request before ``add_one_req`` decides. Returns ``seq -> matched node`` of
        the admitted ones."""
        cache = self.cache
        nodes: dict[int, Any] = {}
        for e in self.pass_visits:
            if e.used:
                m = cache.match_prefix(e.keys[: e.used], split=True, touch=True)
                if e.seq in admitted:
                    nodes[e.seq] = m.node
            elif e.seq in admitted:
                nodes[e.seq] = cache.root
        return nodes

    def _admit(self, b: AdderBuilder) -> None:
        """``init_next_round_input`` of every visited request (match, split, LRU touch, in visit
        order), locks, then ``prepare_for_extend``'s KV allocation (evicting if short)."""
        cache = self.cache
        if self.log_events:
            cache.event_time = self.now  # type: ignore[attr-defined]
        ps = self.page_size
        index = self.index
        nodes = self._match_visits(b._set)
        step = self.step
        now = self.now
        total = 0
        for s in b.ids:
            x = b.extend_of[s]
            if s == b.continued:
                kv = self.kv_len[s]
                self.runs_of[s][-1][2].append([step, x])  # type: ignore[index]
            else:
                e = index.entries[s]
                index.remove(e)
                del self.queue[s]
                node = nodes.get(s)
                if node is None:  # admitted without a recorded visit (a policy that built its own list)
                    node = cache.match_prefix(e.keys[: e.used], split=True, touch=True).node if e.used else cache.root
                if node is not cache.root:
                    cache.inc_lock_ref(node)
                self.node_of[s] = node
                c = e.cached_tokens
                cache.stats.hit_tokens += c
                kv = c
                self.lk_tok[s] = c
                self.fill_n[s] = e.fill_len
                first = self.runs_of[s] is None and self.run_no[s] == 0
                if first:
                    self.admit_s[s] = step
                    self.admit_t[s] = now
                    self.cached_r[s] = c
                    self.hit_total += c
                    self.runs_of[s] = [[step, c, [[step, x]], None, None]]
                else:
                    self.runs_of[s].append([step, c, [[step, x]], None, None])  # type: ignore[union-attr]
                self.run_no[s] += 1
                self.n_running += 1
                self._client_started(e.ci)
            total += (-(-(kv + x) // ps) - (-(-kv // ps))) * ps
            self.kv_len[s] = kv + x
            self.extend_r[s] += x
            self.extend_total += x
            self.n_chunks += 1
        free = cache.free_tokens
        if total > free:
            cache.evict(total - free)
        cache.reserve(total)
        if self.n_running > self.peak_running:
            self.peak_running = self.n_running
        used = cache.total_tokens + cache.reserved_tokens
        if used > self.peak_kv:
            self.peak_kv = used

    # phase 4: forward ---------------------------------------------------------------------

    def _forward_prefill(self, b: AdderBuilder) -> float:
        cost = self.instance.cost_model
        cat = cost.c_attn
        w = 0.0
        for s in b.ids:
            w += (1.0 + cat * self.fill_n[s]) * b.extend_of[s]
        dt = cost.prefill_base_s + cost.prefill_per_token_s * w if w > 0 else 0.0
        start = self.now
        end = start + dt
        self._record_step(start, end, "P")
        if self.log_events:
            self.cache.event_time = end  # type: ignore[attr-defined]
        return end

    def _forward_decode(self) -> float:
        cost = self.instance.cost_model
        n = len(self.running)
        ctx = self.dec_sum + n * (self.dstep + 1)
        dt = cost.decode_base_s + cost.decode_per_request_s * n + cost.decode_per_context_token_s * ctx
        start = self.now
        end = start + dt
        self._record_step(start, end, "D")
        self.last_dstep_index = self.step
        if self.log_events:
            self.cache.event_time = end  # type: ignore[attr-defined]
        return end

    # phase 5: results ---------------------------------------------------------------------

    def _stash_chunked(self) -> None:
        """``get_next_batch_to_run``'s ``stash_chunked_request``: the chunk the last prefill
        computed enters the tree at the start of the next pass, not in that prefill's results
        (admission sees the same tree either way; the pool and tree sizes between the two
        agree with SGLang's)."""
        s = self.stash
        if s is None:
            return
        self.stash = None
        if self.log_events:
            self.cache.event_time = self.now  # type: ignore[attr-defined]
        self._checkpoint(s)

    def _checkpoint(self, s: int) -> None:
        """``checkpoint_kv_cache``: the run's computed full pages enter the tree and are locked."""
        cache = self.cache
        ps = self.page_size
        kv = self.kv_len[s]
        r = self.reqs[s]
        keys = fill_keys(r, ps, kv, self.prompt_keys(s))
        new = key_tokens(keys, ps)
        old = self.lk_tok[s]
        if new <= old:
            return
        cache.release(new - old)
        res = cache.insert(keys)
        cache.inc_lock_ref(res.node)
        if self.node_of[s] is not None and self.node_of[s] is not cache.root:
            cache.dec_lock_ref(self.node_of[s])
        self.node_of[s] = res.node
        self.lk_tok[s] = new

    def _release(self, s: int, kv: int, insert: bool) -> None:
        """``release_kv_cache``: free the private pages (after inserting the computed pages with
        ``insert``) and unlock."""
        cache = self.cache
        cache.release(self._private(s, kv))
        if insert:
            cache.insert(fill_keys(self.reqs[s], self.page_size, kv, self.prompt_keys(s)))
        node = self.node_of[s]
        if node is not None and node is not cache.root:
            cache.dec_lock_ref(node)
        self.node_of[s] = None
        self.lk_tok[s] = 0

    def _finish(self, s: int, end: float, kv: int, finished: list[FinishedInfo]) -> None:
        r = self.reqs[s]
        self._release(s, kv, insert=True)
        self.keys_of[s] = None  # a finished prompt's keys are not needed again (memory at 1M requests)
        self.finish_t[s] = end
        self.finish_s[s] = self.step
        run = self.runs_of[s][-1]  # type: ignore[index]
        run[3] = self.step
        run[4] = "finish"
        self._client_stopped(self.ci_of[r.client])
        self.n_running -= 1
        finished.append(FinishedInfo(r.id, r.client))
        if self.log_events:
            self.finish_log.append((end, r))

    def _join_decode(self, s: int) -> None:
        self.running[s] = None
        self.d0[s] = self.dstep
        self.join_step[s] = self.step
        kv = self.kv_len[s]
        self.dec_sum += kv - self.dstep
        ci = self.ci_of[self.reqs[s].client]
        self.dec_by[ci] += 1
        ps = self.page_size
        if ps > 1:
            self.bucket[(self.dstep - kv) % ps] += 1
        left = self.reqs[s].output_len - self.out_n[s]
        heapq.heappush(self.heap, (self.dstep + left - 1, s, self.run_no[s]))

    def _leave_decode(self, s: int) -> None:
        del self.running[s]
        kv0 = self.kv_len[s]
        self.dec_sum -= kv0 - self.d0[s]
        ci = self.ci_of[self.reqs[s].client]
        self.dec_by[ci] -= 1
        ps = self.page_size
        if ps > 1:
            self.bucket[(self.d0[s] - kv0) % ps] -= 1

    def _results_prefill(self, b: AdderBuilder, end: float) -> None:
        finished: list[FinishedInfo] = []
        decoded: dict[str, int] = {}
        step = self.step
        # batch_is_full is a flag of SGLang's running-batch object: when the decode batch is empty,
        # get_next_batch_to_run makes this prefill batch the running batch (a fresh object whose
        # flag is False) instead of merging it, so a flag this pass set is gone by the next one
        left_out = not self.running
        chunked_after = b.chunked_after
        for s in b.ids:
            if s == chunked_after:
                continue
            r = self.reqs[s]
            self.out_n[s] += 1
            decoded[r.client] = decoded.get(r.client, 0) + 1
            if self.out_n[s] == 1:
                self.first_t[s] = end
            run = self.runs_of[s][-1]  # type: ignore[index]
            run[3] = step
            if self.out_n[s] >= r.output_len:
                self._finish(s, end, self.kv_len[s], finished)
                left_out = True
            else:
                self._checkpoint(s)
                self._join_decode(s)
        if chunked_after is not None:
            self.stash = chunked_after  # checkpointed by the next pass (_stash_chunked)
            left_out = True
        self.chunked = chunked_after
        if left_out:
            self.batch_is_full = False  # the merge dropped members (last_batch.filter_batch), or replaced the batch
        self._end_step(end, decoded, finished)

    def _decode_need(self, members: Any) -> int:
        ps = self.page_size
        if ps == 1:
            return len(members)
        d = self.dstep
        if members is self.running:
            return self.bucket[d % ps] * ps
        return sum(ps for s in members if self.kv_at(s) % ps == 0)

    def _evict_for(self, need: int) -> None:
        """``evict_to_free_tokens``: evict unlocked LRU leaves for a shortfall."""
        cache = self.cache
        short = need - cache.free_tokens
        if short > 0:
            cache.evict(short)

    def _schedule_decode(self) -> list[int]:
        """``update_running_batch``: ``check_decode_mem``, then ``retract_decode`` if short, or
        the ``new_token_ratio`` decay. Returns the retracted seqs in order."""
        if self.log_events:
            self.cache.event_time = self.now  # type: ignore[attr-defined]
        need = self._decode_need(self.running)
        self._evict_for(need)
        if self.cache.free_tokens >= need:
            self.ratio.decay_step()
            return []
        order = native.decode_retraction_order(list(self.running), self.out_at, lambda s: self.reqs[s].prompt_len)
        retracted: list[int] = []
        first = True
        while first or not self._fits(order):
            if len(order) == 1:
                break
            first = False
            s = order.pop()
            self._retract(s)
            retracted.append(s)
            self._evict_for(len(order) * self.cfg.retract_decode_steps)
        if not self._fits(order):
            s = order[0]
            raise PrefixschedError(
                f"sglang engine: request {self.reqs[s].id!r} cannot decode even alone "
                f"(kv_capacity_tokens {self.instance.limits.kv_capacity_tokens}); SGLang would abort it"
            )
        self.running = dict.fromkeys(order)  # filter_batch(keep_indices=sorted order)
        self.ratio.current = native.NewTokenRatio.after_retract(
            [self.out_at(s) for s in order], [self.max_new[s] for s in order], self.cfg.retract_decode_steps
        )
        self.batch_is_full = False
        self.n_retracted += len(retracted)
        return retracted

    def _fits(self, members: list[int]) -> bool:
        need = self._decode_need(members)
        self._evict_for(need)
        return self.cache.free_tokens >= need

    def _retract(self, s: int) -> None:
        """``release_req`` of a retracted request, then ``_add_request_to_queue``."""
        r = self.reqs[s]
        kv = self.kv_at(s)
        out = self.out_at(s)
        self._leave_decode(s)
        self._release(s, kv, insert=False)
        run = self.runs_of[s][-1]  # type: ignore[index]
        run[3] = max(self.join_step[s], self.last_dstep_index)
        run[4] = "retract"
        self.out_n[s] = out
        self.kv_len[s] = 0
        self._client_stopped(self.ci_of[r.client])
        self.n_running -= 1
        fill = r.prompt_len + out
        keys = fill_keys(r, self.page_size, fill, self.prompt_keys(s))
        self.index.add(Entry(r, s, keys, self.ci_of[r.client], fill_len=fill, out_left=r.output_len - out))
        self.queue[s] = None

    def _results_decode(self, end: float) -> None:
        need = self._decode_need(self.running)
        self.cache.reserve(need)
        d = self.dstep
        clients = self.clients
        decoded = {clients[ci]: k for ci, k in enumerate(self.dec_by) if k}
        finished: list[FinishedInfo] = []
        heap = self.heap
        fin: list[int] = []
        while heap and heap[0][0] <= d:
            _, s, rn = heapq.heappop(heap)
            if s in self.running and self.run_no[s] == rn:
                fin.append(s)
        if len(fin) > 1:  # process_batch_result_decode walks the batch in order
            pos = {x: i for i, x in enumerate(self.running)}
            fin.sort(key=pos.__getitem__)
        for s in fin:
            kv = self.kv_len[s] + (d - self.d0[s]) + 1
            out = self.out_n[s] + (d - self.d0[s]) + 1
            self._leave_decode(s)
            self.out_n[s] = out
            self.kv_len[s] = kv
            self._finish(s, end, kv, finished)
        if fin:
            self.batch_is_full = False  # running_batch.filter_batch shrank it
        self.dstep += 1
        self._end_step(end, decoded, finished)

    def _end_step(self, end: float, decoded: dict[str, int], finished: list[FinishedInfo]) -> None:
        self.done += len(finished)
        self.now = end
        snap = self.snap
        snap.now = end
        snap.step = self.step
        self.policy.on_step_end(decoded, finished, snap)
        self._log_state()
        self.step += 1
        if self.progress is not None and finished:
            self.progress(self.done, len(self.reqs))

    # ------------------------------------------------------------------ trace and conformance

    def _meta(self) -> dict[str, Any]:
        meta = super()._meta()
        meta["sglang"] = self.cfg.to_dict()
        meta["retractions"] = self.n_retracted
        meta["chunks"] = self.n_chunks
        if self.pre is not None:
            meta["preemption"] = self.pre.meta()
        return meta

    def _switches(self) -> Any:
        pre = self.pre
        return None if pre is None or not pre.swap else list(pre.events)

    def _pass_record(self) -> PassRecord:
        return PassRecord(step=self.step, now=self.now, kind="idle", queue_before=(), state=self.admission_state())

    def keys_to_tokens(self, keys: tuple) -> list[int]:
        """Token ids of a page-key path (for SGLang conformance states)."""
        ps = self.page_size
        out: list[int] = []
        for k in keys:
            if type(k) is int:
                out.append(k)
            elif type(k) is WKey:  # ("BT", block, start, n): n tokens of block from start
                base = k[1] * self._block_size + k[2]
                out.extend(range(base, base + k[3]))
            elif isinstance(k, tuple) and k and k[0] == "B" and len(k) == 3:
                blk, sub = k[1], k[2]
                bs = None
                # block prompts: block b, page sub: tokens b*bs + sub*ps + (0..ps-1)
                bs = self._block_size
                base = blk * bs + sub * ps
                out.extend(range(base, base + ps))
            elif isinstance(k, tuple) and k and k[0] == "O":
                rid, p = k[1], k[2]
                seq = self.seq_of[rid]
                r = self.reqs[seq]
                plen = r.prompt_len
                for pos in range(p * ps, (p + 1) * ps):
                    out.append(r.prompt[pos] if pos < plen else output_token(seq, pos - plen))
            elif isinstance(k, tuple):
                out.extend(k)
            else:  # pragma: no cover - unknown key kind
                raise CheckerError(f"cannot turn page key {k!r} into tokens")
        return out

    @property
    def _block_size(self) -> int:
        for r in self.reqs:
            if isinstance(r.prompt, BlockPrompt):
                return r.prompt.block_size
        return self.page_size

    def _fill_tokens(self, s: int, n: int) -> list[int]:
        r = self.reqs[s]
        plen = r.prompt_len
        toks = list(r.prompt[: min(n, plen)]) if plen else []
        toks.extend(output_token(s, j) for j in range(n - plen))
        return toks

    def admission_state(self) -> dict[str, Any]:
        """The AdmissionState of the current engine state (JSON-able; the format
        :func:`prefixsched.integration.conformance.replay_prefill_pass` rebuilds in SGLang):
        limits, ``new_token_ratio``, ``batch_is_full``, the tree as its leaves' token sequences,
        one lock per in-flight request (its locked path), the private KV tokens, the decode batch
        (max_new_tokens and outputs so far), the chunked request and the waiting queue in list
        order with each fill's token ids."""
        cache = self.cache
        lim = self.instance.limits

        def path_tokens(node: Any) -> Any:
            """The token ids of the root-to-``node`` path."""
            path = []
            x = node
            while x is not cache.root:
                path.append(x.key)
                x = x.parent
            keys: tuple = ()
            for k in reversed(path):
                keys += k
            return self.keys_to_tokens(keys)

        tree = [path_tokens(node) for node in cache.iter_nodes() if node is not cache.root and not node.children]
        holders = list(self.running) + ([self.chunked] if self.chunked is not None else [])
        locks = [path_tokens(self.node_of[s]) for s in holders
                 if self.node_of[s] is not None and self.node_of[s] is not cache.root]
        entries = self.index.entries
        chunked = None
        if self.chunked is not None:
            c = self.chunked
            chunked = {"id": self.reqs[c].id, "fill": self._fill_tokens(c, self.fill_n[c]),
                       "prefix_len": self.kv_len[c], "max_new_tokens": self.max_new[c]}
        return {
            "page_size": self.page_size,
            "kv_capacity_tokens": lim.kv_capacity_tokens,
            "max_prefill_tokens": lim.max_prefill_tokens,
            "chunked_prefill_size": lim.chunked_prefill_size,
            "max_running_requests": lim.max_running_requests,
            "new_token_ratio": self.ratio.current,
            "batch_is_full": self.batch_is_full,
            "tree": tree,
            "locks": locks,
            "private_tokens": cache.reserved_tokens,
            "running": [{"id": self.reqs[s].id, "max_new_tokens": self.max_new[s], "output_len": self.out_at(s)}
                        for s in self.running],
            "chunked": chunked,
            "queue": [{"id": self.reqs[s].id, "fill": self._fill_tokens(s, entries[s].fill_len),
                       "max_new_tokens": self.max_new[s], "output_len": entries[s].fill_len - self.reqs[s].prompt_len}
                      for s in self.queue],
        }
