"""Conformance against SGLang's own classes: replay functions, pure data in, pure data out.

Every function here builds SGLang 0.5.23's real objects (``RadixCache``, ``Req``,
``SamplingParams``, ``TokenToKVPoolAllocator`` / ``PagedTokenToKVPoolAllocator``,
``ScheduleBatch``, ``SchedulePolicy``, ``PrefillAdder``, ``Scheduler``,
``NewTokenRatioTracker``) from JSON-able input, runs them, and returns JSON-able dicts, so that
prefixsched's ``sglang`` engine can be compared with SGLang decision by decision
(:func:`compare_passes`). SGLang is imported lazily through
:func:`prefixsched.integration.sglang_env.load` (CPU build, torchvision stand-in if needed);
importing this module imports neither SGLang nor torch. Paths below are under
``python/sglang/`` of SGLang 0.5.23.

Functions
---------
- :func:`compare_radix_trees` (and its two-tree form :func:`radix_match_lengths`): SGLang's
  ``srt/mem_cache/radix_cache.py::RadixCache``, its production ``UnifiedRadixCache`` and
  :class:`prefixsched.reference.radix_cache.RadixCache` replay an instance's prompts side by side.
- :func:`replay_prefill_pass`: one prefill scheduling pass, ``srt/managers/scheduler.py::
  Scheduler._get_new_batch_prefill_raw`` itself, on an *AdmissionState* (format below).
- :func:`replay_retraction_order`, :func:`replay_retract_decode`: decode-OOM retraction
  (``srt/managers/schedule_batch.py::ScheduleBatch._get_decode_retraction_order`` /
  ``retract_decode``).
- :func:`replay_new_token_ratio`: ``srt/managers/scheduler_components/new_token_ratio_tracker.py``.
- :func:`unified_radix_cache_report`: whether ``UnifiedRadixCache`` can be built on CPU.
- :func:`compare_passes`, :func:`run_engine_comparison`: engine pass records
  (``simulate(..., engine="sglang", on_pass=...)``) replayed in SGLang, agreements counted field
  by field.

Versions: written against and tested on SGLang 0.5.23 (CPU). 0.5.17, the GPU image's version,
passes :mod:`~prefixsched.integration.sglang_env`'s check and has the same module layout (read
from its wheel: ``NewTokenRatioTracker.from_server_args`` instead of ``from_config``, handled);
the replays are not exercised on it.

Determinism (and no threads). SGLang's radix tree stamps ``time.monotonic()`` for LRU. While a replay runs, the
``time`` name inside ``srt/mem_cache/radix_cache.py`` is swapped for a counter (each call one
tick later, strictly increasing, as the real clock is in practice), so the same input gives the
same bytes; SGLang's own code is not changed. The swap is process-wide while it lasts, so
the replays are not thread-safe. Nothing else is patched: instance attributes of
the objects built here wrap ``SchedulePolicy.calc_priority`` and
``SchedulePolicy._compute_prefix_matches`` to *record* their results, and a ``PrefillAdder``
subclass returned by ``Scheduler.get_prefill_adder_class`` (SGLang's documented override point)
records each ``add_one_req`` result.

AdmissionState (one per scheduling pass, taken before the pass; token ids are ints)::

    {"page_size": int, "kv_capacity_tokens": int, "max_prefill_tokens": int,
     "chunked_prefill_size": int | None, "max_running_requests": int,
     "new_token_ratio": float, "batch_is_full": bool,
     "tree": [[tok, ...], ...],      # sequences inserted into the radix tree, in this order
     "locks": [[tok, ...], ...],     # per lock held: the sequence whose match node gets inc_lock_ref
     "private_tokens": int,          # KV held by running requests outside the tree
     "running": [{"id", "max_new_tokens", "output_len", "input_len"?}, ...],
     "chunked": None | {"id", "fill": [tok...], "prefix_len", "max_new_tokens"},
     "queue": [{"id", "fill": [tok...], "max_new_tokens", "output_len"}, ...]}

See :func:`validate_admission_state` for every rule.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time as _time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prefixsched.errors import InputError

__all__ = [
    "SGLANG_POLICIES",
    "validate_admission_state",
    "radix_match_lengths",
    "replay_prefill_pass",
    "replay_retraction_order",
    "replay_retract_decode",
    "replay_new_token_ratio",
    "unified_radix_cache_report",
    "compare_passes",
    "PASS_FIELDS",
]

#: SGLang ``--schedule-policy`` values :func:`replay_prefill_pass` accepts.
SGLANG_POLICIES = ("fcfs", "lpm", "dfs-weight")


def _sgl():
    from prefixsched.integration import sglang_env

    return sglang_env.load()


class _Ticks:
    """Stand-in for the ``time`` module inside SGLang's radix_cache: ``monotonic()`` ticks."""

    def __init__(self) -> None:
        self.t = 0

    def monotonic(self) -> float:
        self.t += 1
        return float(self.t)

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


@contextlib.contextmanager
def _deterministic_clock() -> Iterator[None]:
    rc = _sgl().radix_cache
    saved = rc.time
    rc.time = _Ticks()
    try:
        yield
    finally:
        rc.time = saved


def _tokens(prompt: Sequence[int]) -> array:
    """Token ids of a prompt (tuple or BlockPrompt) as ``array('q')`` without a Python-level
    walk for block prompts."""
    from prefixsched.theory.model import BlockPrompt

    if isinstance(prompt, BlockPrompt):
        import numpy as np

        b = np.asarray(prompt.blocks, dtype=np.int64)
        bs = prompt.block_size
        a = (b[:, None] * bs + np.arange(bs, dtype=np.int64)).ravel()[: prompt.length]
        out = array("q")
        out.frombytes(a.astype("<i8", copy=False).tobytes())
        return out
    return array("q", prompt)


# ----------------------------------------------------------------------------------------------
# a. radix match lengths


class _CountingAllocator:
    """The smallest allocator SGLang's ``RadixCache`` accepts for eviction (spec §2): it has a
    ``device`` and ``free_segment(values, start_pos)``, and counts free tokens."""

    device = "cpu"

    def __init__(self, size: int, page_size: int) -> None:
        self.size = size
        self.page_size = page_size
        self.free = size

    def available_size(self) -> int:
        return self.free

    def free_segment(self, values: Any, start_pos: int = 0) -> None:
        self.free += len(values)


#: Trees :func:`compare_radix_trees` can replay side by side.
RADIX_TREES = ("prefixsched", "sglang_radix", "sglang_unified")


class _OursTree:
    """prefixsched's RadixCache, driven as an engine admits a prompt."""

    def __init__(self, cap: int, page_size: int, requests: Sequence[Any]) -> None:
        from prefixsched.reference.radix_cache import RadixCache
        from prefixsched.theory.model import PageKeys, key_tokens

        self.cache = RadixCache(cap, page_size)
        # the engines' keys: consistent across the replayed prompts (at page 1 a block prompt's
        # compressed keys are cut where any prompt ends inside the block)
        self.page_keys = PageKeys(requests, page_size).keys
        self.key_tokens = key_tokens
        self.ps = page_size

    def admit(self, prompt: Any, tokens: array) -> int:
        keys = self.page_keys(prompt)
        c = self.cache
        m = c.match_prefix(keys, split=True, touch=True)
        c.inc_lock_ref(m.node)
        c.insert(keys)  # evicts the shortfall itself, the matched path pinned
        c.dec_lock_ref(m.node)
        return self.key_tokens(keys[: m.pages], self.ps)  # page-1 keys of a BlockPrompt cover several tokens

    def totals(self) -> tuple[int, int]:
        return self.cache.stats.evicted_tokens, self.cache.total_tokens


class _SGLangTree:
    """SGLang's RadixCache or UnifiedRadixCache with a counting allocator."""

    def __init__(self, kind: str, cap: int, page_size: int) -> None:
        m = _sgl()
        rc = m.radix_cache
        self.bp, self.rc = m.base_prefix_cache, rc
        self.alloc = _CountingAllocator(cap, page_size)
        params = rc.CacheInitParams(disable=False, req_to_token_pool=None, token_to_kv_pool_allocator=self.alloc, page_size=page_size)
        if kind == "sglang_unified":
            urc = importlib.import_module("sglang.srt.mem_cache.unified_radix_cache")
            comps = importlib.import_module("sglang.srt.mem_cache.unified_cache.components")
            params.tree_components = (comps.ComponentType.FULL,)  # as registry.create_unified_radix_cache
            self.tree = urc.UnifiedRadixCache(params)
        else:
            self.tree = rc.RadixCache(params)
        self.kind = kind
        self.ps = page_size
        self.cap = cap
        self.evicted = 0

    def admit(self, prompt: Any, tokens: array) -> int:
        import torch

        bp, t, a = self.bp, self.tree, self.alloc
        res = t.match_prefix(bp.MatchPrefixParams(key=self.rc.RadixKey(tokens)))
        lock = t.lock(res.last_device_node)
        pre = res.device_prefix_len
        aligned = len(tokens) // self.ps * self.ps
        need = aligned - pre
        if need > a.free:
            self.evicted += t.evict(bp.EvictParams(num_tokens=need - a.free)).num_tokens_evicted
        a.free -= need
        # the counting allocator never reads the slots, so the values stay uninitialised; the
        # unified tree wants int64 and frees value[prev_prefix_len:matched] itself
        value = torch.empty(aligned, dtype=torch.int64 if self.kind == "sglang_unified" else torch.bool)
        t.insert(bp.InsertParams(key=self.rc.RadixKey(tokens), value=value, prev_prefix_len=pre))
        t.unlock(lock)
        return pre

    def totals(self) -> tuple[int, int]:
        return self.evicted, self.cap - self.alloc.free


def compare_radix_trees(
    instance: Any,
    page_size: int,
    capacity_tokens: int | None = None,
    *,
    trees: Sequence[str] = ("prefixsched", "sglang_radix"),
    reference: str = "sglang_radix",
    max_requests: int | None = None,
    keep: int = 5,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Replay the prompts of ``instance`` in arrival order through several radix trees side by
    side and count, per tree, the requests whose match length equals the ``reference`` tree's.

    Per request, on every tree, the way an engine admits a prompt: match (split at the match,
    LRU touch), lock the matched node, evict LRU leaves for the shortfall if the new pages do
    not fit, insert the page-aligned prompt, unlock.

    - ``"sglang_radix"``: ``srt/mem_cache/radix_cache.py::RadixCache`` -- ``match_prefix`` ->
      ``lock(last_device_node)`` -> ``evict(EvictParams(shortfall))`` ->
      ``insert(InsertParams(key, value, prev_prefix_len=hit))`` -> ``unlock``, over an
      allocator that counts free tokens (``free_segment``) and never hands out real slots.
    - ``"sglang_unified"``: ``srt/mem_cache/unified_radix_cache.py::UnifiedRadixCache`` (the
      production tree, ``registry.create_unified_radix_cache`` with the ``FULL`` component;
      its tree core is the Rust one by default), same calls. It frees the duplicate part of
      ``value`` itself, from ``prev_prefix_len`` on, so ``prev_prefix_len`` is the hit.
    - ``"prefixsched"``: :class:`prefixsched.reference.radix_cache.RadixCache` over
      :class:`prefixsched.theory.model.PageKeys` of the replayed requests (the engines' keys) --
      ``match_prefix(split=True, touch=True)`` ->
      ``inc_lock_ref`` -> ``insert`` (which evicts the same shortfall, the path pinned) ->
      ``dec_lock_ref``.

    The ``len - 1`` cap of ``srt/mem_cache/common.py::match_kv_cache`` is not part of this
    comparison (it belongs to the LPM key: :func:`replay_prefill_pass`).

    Parameters
    ----------
    instance:
        A :class:`prefixsched.theory.model.Instance` (e.g. from
        :func:`prefixsched.reference.traces.load_mooncake`).
    page_size:
        Tokens per page (>= 1).
    capacity_tokens:
        KV pool in tokens (rounded down to whole pages), or None: no eviction.
    trees:
        Names from :data:`RADIX_TREES`; must include ``reference``.
    max_requests:
        Only the first M requests.
    keep:
        How many disagreements to keep per tree (the first ones).
    progress:
        Optional ``callback(requests_done)``.

    Returns
    -------
    dict
        ``{"page_size", "capacity_tokens" (None: no eviction), "requests", "reference",
        "trees": {name: {"agree", "hit_tokens", "evicted_tokens", "tree_tokens",
        "first_disagreements": [{"index", "id", name, reference}]}}}``, all in tokens
        (``agree`` counts requests; the reference agrees with itself).

    Raises
    ------
    InputError
        Bad ``page_size``, ``capacity_tokens``, ``max_requests`` or tree names, or a capacity
        below the longest page-aligned prompt.
    prefixsched.integration.sglang_env.SGLangUnavailable
        SGLang missing or unsupported.
    """
    _positive_int("page_size", page_size)
    if max_requests is not None:
        _positive_int("max_requests", max_requests)
    names = list(trees)
    for n in names:
        if n not in RADIX_TREES:
            raise InputError("trees", f"unknown tree {n!r}; known: {', '.join(RADIX_TREES)}")
    if reference not in names or len(set(names)) != len(names):
        raise InputError("trees", f"must be distinct and include the reference {reference!r}, got {names}")
    reqs = list(instance.requests[:max_requests] if max_requests else instance.requests)
    if capacity_tokens is None:
        cap = sum(len(r.prompt) for r in reqs) // page_size * page_size + page_size
    else:
        _positive_int("capacity_tokens", capacity_tokens)
        cap = capacity_tokens // page_size * page_size
        longest = max((len(r.prompt) // page_size * page_size for r in reqs), default=0)
        if longest > cap:
            raise InputError("capacity_tokens", f"{capacity_tokens} holds no prompt of {longest} page-aligned tokens")
    uses_sglang = any(n.startswith("sglang") for n in names)
    if uses_sglang:
        _sgl()
    result: dict[str, Any] = {
        "page_size": page_size,
        "capacity_tokens": None if capacity_tokens is None else cap,
        "requests": len(reqs),
        "reference": reference,
        "trees": {},
    }
    per = {n: {"agree": 0, "hit_tokens": 0, "first_disagreements": []} for n in names}
    clock = _deterministic_clock() if uses_sglang else contextlib.nullcontext()
    with clock:
        drivers = {n: (_OursTree(cap, page_size, reqs) if n == "prefixsched" else _SGLangTree(n, cap, page_size)) for n in names}
        for i, r in enumerate(reqs):
            toks = _tokens(r.prompt) if uses_sglang else array("q")
            got = {n: d.admit(r.prompt, toks) for n, d in drivers.items()}
            ref = got[reference]
            for n, v in got.items():
                st = per[n]
                st["hit_tokens"] += v
                if v == ref:
                    st["agree"] += 1
                elif len(st["first_disagreements"]) < keep:
                    st["first_disagreements"].append({"index": i, "id": r.id, n: v, reference: ref})
            if progress is not None:
                progress(i + 1)
        for n, d in drivers.items():
            per[n]["evicted_tokens"], per[n]["tree_tokens"] = d.totals()
    result["trees"] = per
    return result


def radix_match_lengths(
    instance: Any,
    page_size: int,
    capacity_tokens: int | None = None,
    *,
    max_requests: int | None = None,
    keep: int = 5,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """prefixsched's RadixCache against SGLang's on ``instance``: :func:`compare_radix_trees`
    with ``trees=("prefixsched", "sglang_radix")``, flattened to ``{"page_size",
    "capacity_tokens", "requests", "agree", "hit_tokens_sglang", "hit_tokens_prefixsched",
    "evicted_tokens_sglang", "evicted_tokens_prefixsched", "tree_tokens_sglang",
    "tree_tokens_prefixsched", "first_disagreements": [{"index", "id", "prefixsched",
    "sglang_radix"}]}`` (tokens). Raises as :func:`compare_radix_trees`."""
    r = compare_radix_trees(
        instance, page_size, capacity_tokens, max_requests=max_requests, keep=keep, progress=progress
    )
    ours, theirs = r["trees"]["prefixsched"], r["trees"]["sglang_radix"]
    return {
        "page_size": r["page_size"],
        "capacity_tokens": r["capacity_tokens"],
        "requests": r["requests"],
        "agree": ours["agree"],
        "hit_tokens_sglang": theirs["hit_tokens"],
        "hit_tokens_prefixsched": ours["hit_tokens"],
        "evicted_tokens_sglang": theirs["evicted_tokens"],
        "evicted_tokens_prefixsched": ours["evicted_tokens"],
        "tree_tokens_sglang": theirs["tree_tokens"],
        "tree_tokens_prefixsched": ours["tree_tokens"],
        "first_disagreements": ours["first_disagreements"],
    }


# ----------------------------------------------------------------------------------------------
# AdmissionState validation

_STATE_FIELDS = {
    "page_size", "kv_capacity_tokens", "max_prefill_tokens", "chunked_prefill_size",
    "max_running_requests", "new_token_ratio", "batch_is_full", "tree", "locks",
    "private_tokens", "running", "chunked", "queue",
}  # fmt: skip


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(name: str, v: Any) -> int:
    if not _is_int(v) or v < 1:
        raise InputError(name, f"must be an integer >= 1, got {v!r}")
    return v


def _nonneg_int(name: str, v: Any) -> int:
    if not _is_int(v) or v < 0:
        raise InputError(name, f"must be an integer >= 0, got {v!r}")
    return v


def _list(name: str, v: Any) -> Sequence[Any]:
    if not isinstance(v, (list, tuple)):
        raise InputError(name, f"must be a list, got {type(v).__name__}")
    return v


def _token_list(name: str, v: Any, *, nonempty: bool = True) -> list[int]:
    _list(name, v)
    if nonempty and not v:
        raise InputError(name, "must not be empty")
    for j, t in enumerate(v):
        if not _is_int(t) or not 0 <= t < 1 << 62:
            raise InputError(f"{name}[{j}]", f"must be a token id (int in [0, 2^62)), got {t!r}")
    return list(v)


def _record(name: str, v: Any, fields: dict[str, str], optional: Iterable[str] = ()) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise InputError(name, f"must be an object, got {type(v).__name__}")
    extra = set(v) - set(fields) - set(optional)
    if extra:
        raise InputError(f"{name}.{sorted(extra)[0]}", f"unknown field (known: {', '.join(fields)})")
    for f in fields:
        if f not in v:
            raise InputError(f"{name}.{f}", "missing")
    if not isinstance(v["id"], str) or not v["id"]:
        raise InputError(f"{name}.id", f"must be a non-empty string, got {v['id']!r}")
    return dict(v)


def validate_admission_state(state: Any) -> dict[str, Any]:
    """Check an AdmissionState (module docstring) and return a normalized copy.

    Rules: the 13 fields are present and no other; ``page_size``, ``kv_capacity_tokens``,
    ``max_prefill_tokens``, ``max_running_requests`` are ints >= 1 and ``chunked_prefill_size``
    is an int >= 1 or None; ``kv_capacity_tokens`` and ``private_tokens`` (int >= 0) are whole
    pages (SGLang's paged allocator hands out whole pages only); ``new_token_ratio`` is a
    finite number in [0, 1]; ``batch_is_full`` is a bool; token lists hold ints in [0, 2^62);
    every ``fill`` is non-empty; ``output_len`` is in ``[0, len(fill))`` for queued requests
    (the prompt is ``fill[:len(fill) - output_len]``) and >= 0 for running ones; a running
    request may carry ``input_len`` (int >= 1, default 1; only the retraction order reads it);
    ``max_new_tokens`` >= 1; the chunked request's ``prefix_len`` is in ``[0, len(fill))``;
    request ids are non-empty strings, unique over running, chunked and queue.

    Raises
    ------
    InputError
        Naming the field (``state.queue[3].fill``) and the value.
    """
    if not isinstance(state, Mapping):
        raise InputError("state", f"must be an object, got {type(state).__name__}")
    extra = set(state) - _STATE_FIELDS
    if extra:
        raise InputError(f"state.{sorted(extra)[0]}", "unknown field")
    missing = _STATE_FIELDS - set(state)
    if missing:
        raise InputError(f"state.{sorted(missing)[0]}", "missing")
    s: dict[str, Any] = {}
    for f in ("page_size", "kv_capacity_tokens", "max_prefill_tokens", "max_running_requests"):
        s[f] = _positive_int(f"state.{f}", state[f])
    ps = s["page_size"]
    c = state["chunked_prefill_size"]
    s["chunked_prefill_size"] = None if c is None else _positive_int("state.chunked_prefill_size", c)
    s["private_tokens"] = _nonneg_int("state.private_tokens", state["private_tokens"])
    for f in ("kv_capacity_tokens", "private_tokens"):
        if s[f] % ps:
            raise InputError(f"state.{f}", f"must be a multiple of page_size {ps}, got {s[f]}")
    r = state["new_token_ratio"]
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or not 0 <= r <= 1:
        raise InputError("state.new_token_ratio", f"must be a number in [0, 1], got {r!r}")
    s["new_token_ratio"] = float(r)
    if not isinstance(state["batch_is_full"], bool):
        raise InputError("state.batch_is_full", f"must be true or false, got {state['batch_is_full']!r}")
    s["batch_is_full"] = state["batch_is_full"]
    for f in ("tree", "locks"):
        s[f] = [_token_list(f"state.{f}[{i}]", x) for i, x in enumerate(_list(f"state.{f}", state[f]))]
    ids: set[str] = set()

    def fresh(name: str, rid: str) -> None:
        if rid in ids:
            raise InputError(name, f"duplicate request id {rid!r}")
        ids.add(rid)

    s["running"] = []
    for i, x in enumerate(_list("state.running", state["running"])):
        name = f"state.running[{i}]"
        x = _record(name, x, {"id": "", "max_new_tokens": "", "output_len": ""}, optional=("input_len",))
        _positive_int(f"{name}.max_new_tokens", x["max_new_tokens"])
        _nonneg_int(f"{name}.output_len", x["output_len"])
        x["input_len"] = _positive_int(f"{name}.input_len", x.get("input_len", 1))
        fresh(f"{name}.id", x["id"])
        s["running"].append(x)
    ch = state["chunked"]
    if ch is None:
        s["chunked"] = None
    else:
        x = _record("state.chunked", ch, {"id": "", "fill": "", "prefix_len": "", "max_new_tokens": ""})
        x["fill"] = _token_list("state.chunked.fill", x["fill"])
        _positive_int("state.chunked.max_new_tokens", x["max_new_tokens"])
        p = _nonneg_int("state.chunked.prefix_len", x["prefix_len"])
        if p >= len(x["fill"]):
            raise InputError("state.chunked.prefix_len", f"must be < len(fill) = {len(x['fill'])}, got {p}")
        fresh("state.chunked.id", x["id"])
        s["chunked"] = x
    s["queue"] = []
    for i, x in enumerate(_list("state.queue", state["queue"])):
        name = f"state.queue[{i}]"
        x = _record(name, x, {"id": "", "fill": "", "max_new_tokens": "", "output_len": ""})
        x["fill"] = _token_list(f"{name}.fill", x["fill"])
        _positive_int(f"{name}.max_new_tokens", x["max_new_tokens"])
        o = _nonneg_int(f"{name}.output_len", x["output_len"])
        if o >= len(x["fill"]):
            raise InputError(f"{name}.output_len", f"must be < len(fill) = {len(x['fill'])} (the prompt is not empty), got {o}")
        fresh(f"{name}.id", x["id"])
        s["queue"].append(x)
    return s


# ----------------------------------------------------------------------------------------------
# b. one prefill pass


class _StopAfterAdmission(Exception):
    """Raised when ``_get_new_batch_prefill_raw`` reads ``self.model_config`` to build the
    batch: the admission decision is complete by then."""


_CLASSES: dict[str, Any] = {}


def _replay_classes() -> tuple[Any, Any]:
    """The Scheduler subclass and PrefillAdder subclass used by the replay (built once)."""
    if _CLASSES:
        return _CLASSES["scheduler"], _CLASSES["adder"]
    m = _sgl()
    if m.scheduler is None:
        raise _sglang_unavailable(f"sglang.srt.managers.scheduler does not import on this machine: {m.scheduler_error}")
    PrefillAdder = m.schedule_policy.PrefillAdder

    class RecordingPrefillAdder(PrefillAdder):  # type: ignore[misc, valid-type]
        """SGLang's PrefillAdder, recording each ``add_one_req`` verdict (behaviour unchanged)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.results: list[Any] = []
            _CLASSES["last_adder"] = self

        def add_one_req(self, req: Any, has_chunked_req: bool, truncation_align_size: Any) -> Any:
            res = super().add_one_req(req, has_chunked_req, truncation_align_size)
            self.results.append((req.rid, res))
            return res

    class ReplayScheduler(m.scheduler.Scheduler):  # type: ignore[misc, name-defined]
        """A Scheduler built with ``__new__`` (no model, no processes): the attributes the
        prefill pass reads are set by :func:`_build_scheduler`. Reading ``model_config`` (to
        build the ScheduleBatch after admission) stops the pass."""

        @property
        def model_config(self) -> Any:
            raise _StopAfterAdmission()

        def get_prefill_adder_class(self) -> Any:
            return RecordingPrefillAdder

    _CLASSES.update(scheduler=ReplayScheduler, adder=RecordingPrefillAdder)
    return ReplayScheduler, RecordingPrefillAdder


def _sglang_unavailable(msg: str) -> Exception:
    from prefixsched.integration.sglang_env import SGLangUnavailable

    return SGLangUnavailable(msg)


class _RowPool:
    """Request-row pool of the scheduler (``ReqToTokenPool``'s ``available_size`` only; rows are
    never written because the pass stops before the batch is built)."""

    mamba_allocator = None

    def __init__(self, free_rows: int) -> None:
        self.free_rows = free_rows

    def available_size(self) -> int:
        return self.free_rows


def _make_req(m: Any, rid: str, prompt: Sequence[int], output: Sequence[int], max_new_tokens: int, seq: int) -> Any:
    sb = m.schedule_batch
    req = sb.Req(rid, "", array("q", prompt), m.sampling_params.SamplingParams(max_new_tokens=max_new_tokens))
    if output:
        req.output_ids = array("q", output)
        req.is_retracted = True
        req.retracted_stain = True
    req.time_stats.set_wait_queue_entry_time(float(seq + 1))
    return req


def _build_tree(m: Any, s: dict[str, Any]) -> tuple[Any, Any]:
    """Real allocator + RadixCache holding ``tree`` (with real KV indices), ``locks`` and
    ``private_tokens``; checks ``available == capacity - tree - private``."""
    import torch

    ps, cap = s["page_size"], s["kv_capacity_tokens"]
    if ps == 1:
        alloc = m.allocator_token.TokenToKVPoolAllocator(cap, torch.float16, "cpu", None, False)
    else:
        alloc = m.allocator_paged.PagedTokenToKVPoolAllocator(cap, ps, torch.float16, "cpu", None, False)
    rc, bp = m.radix_cache, m.base_prefix_cache
    params = rc.CacheInitParams(disable=False, req_to_token_pool=None, token_to_kv_pool_allocator=alloc, page_size=ps)
    tree = rc.RadixCache(params)
    for i, seq in enumerate(s["tree"]):
        key = rc.RadixKey(array("q", seq))
        res = tree.match_prefix(bp.MatchPrefixParams(key=key))
        aligned = len(seq) // ps * ps
        new = aligned - res.device_prefix_len
        if new > alloc.available_size():
            raise InputError(f"state.tree[{i}]", f"needs {new} more KV tokens; {alloc.available_size()} free of kv_capacity_tokens {cap}")
        if new == 0:
            continue
        idx = alloc.alloc(new)
        value = torch.cat([tree.path_device_indices(res.last_device_node), idx])
        ins = tree.insert(bp.InsertParams(key=key, value=value))
        assert ins.prefix_len == res.device_prefix_len
    for i, seq in enumerate(s["locks"]):
        res = tree.match_prefix(bp.MatchPrefixParams(key=rc.RadixKey(array("q", seq))))
        if res.device_prefix_len == 0:
            raise InputError(f"state.locks[{i}]", "matches nothing in the tree (lock a sequence that is in state.tree)")
        tree.inc_lock_ref(res.last_device_node)
    if s["private_tokens"]:
        if s["private_tokens"] > alloc.available_size():
            raise InputError("state.private_tokens", f"{s['private_tokens']} > {alloc.available_size()} KV tokens left after the tree")
        alloc.alloc(s["private_tokens"])
    in_tree = tree.evictable_size() + tree.protected_size()
    assert alloc.available_size() == cap - in_tree - s["private_tokens"], (alloc.available_size(), cap, in_tree)
    return alloc, tree


def _build_scheduler(m: Any, s: dict[str, Any], policy: str) -> tuple[Any, dict[str, Any]]:
    """A ``Scheduler.__new__`` object carrying exactly what ``_get_new_batch_prefill_raw``
    reads in a plain single-GPU configuration (no LoRA, no HiCache, no grammar, no priority,
    no mixed chunk, no dLLM, no PP; values as ``Scheduler.__init__`` sets them there)."""
    from types import SimpleNamespace

    ReplayScheduler, _ = _replay_classes()
    sb, sp = m.schedule_batch, m.schedule_policy
    alloc, tree = _build_tree(m, s)
    seq = 0
    running = []
    for x in s["running"]:
        r = _make_req(m, x["id"], [0] * x["input_len"], [0] * x["output_len"], x["max_new_tokens"], seq)
        r.is_retracted = r.retracted_stain = False
        running.append(r)
        seq += 1
    chunked = None
    if s["chunked"] is not None:
        x = s["chunked"]
        chunked = _make_req(m, x["id"], x["fill"], [], x["max_new_tokens"], seq)
        chunked.prefix_len = x["prefix_len"]
        chunked.kv.req_pool_idx = 1  # it keeps its req_to_token row across chunks
        chunked.kv.kv_allocated_len = chunked.kv.kv_committed_len = x["prefix_len"]
        seq += 1
    queue = []
    for x in s["queue"]:
        n_out = x["output_len"]
        fill = x["fill"]
        queue.append(_make_req(m, x["id"], fill[: len(fill) - n_out], fill[len(fill) - n_out :], x["max_new_tokens"], seq))
        seq += 1
    rows_used = len(running) + (chunked is not None)
    pol = sp.SchedulePolicy(policy, tree, False, False, False)
    rec: dict[str, Any] = {"calc_priority": None, "deprioritized": None}
    orig_calc, orig_cpm = pol.calc_priority, pol._compute_prefix_matches

    def calc_priority(waiting_queue: list, running_batch: Any = None, processed_tokens: int = 0) -> None:
        active = pol._determine_active_policy(waiting_queue)
        orig_calc(waiting_queue, running_batch, processed_tokens)
        matched = isinstance(active, sp.CacheAwarePolicy) or tree.supports_fast_match_prefix()
        rec["calc_priority"] = {
            "order": [r.rid for r in waiting_queue],
            "keys": {r.rid: int(r.num_matched_prefix_tokens) for r in waiting_queue} if matched else {},
            "active_policy": active.value,
        }

    def compute_prefix_matches(waiting_queue: list, policy_enum: Any) -> set:
        out = orig_cpm(waiting_queue, policy_enum)
        rec["deprioritized"] = set(out)
        return out

    pol.calc_priority = calc_priority
    pol._compute_prefix_matches = compute_prefix_matches
    tracker_cls = m.new_token_ratio.NewTokenRatioTracker
    sch = ReplayScheduler.__new__(ReplayScheduler)
    attrs = dict(
        grammar_manager=SimpleNamespace(has_waiting_grammars=lambda: False),
        enable_priority_preemption=False,
        is_hybrid_swa=False,
        waiting_queue=queue,
        chunked_req=chunked,
        min_free_slots_delayer=None,
        req_to_token_pool=_RowPool(s["max_running_requests"] - rows_used),
        beam_coordinator=SimpleNamespace(pending_member_rows=lambda batch: 0),
        policy=pol,
        processed_tokens_counter=0,
        chunked_prefill_size=s["chunked_prefill_size"],
        dynamic_chunk_sizer=None,
        tp_worker=SimpleNamespace(model_runner=SimpleNamespace(attn_backend=SimpleNamespace(), prefill_aware_swa=False)),
        page_size=s["page_size"],
        tree_cache=tree,
        token_to_kv_pool_allocator=alloc,
        new_token_ratio_tracker=tracker_cls(init=s["new_token_ratio"], min=0.0, decay=0.0, current=s["new_token_ratio"]),
        max_prefill_tokens=s["max_prefill_tokens"],
        is_mixed_chunk=False,
        priority_scheduling_preemption_threshold=0,
        max_prefill_bs=0,
        max_running_requests=s["max_running_requests"],
        dllm_config=None,
        enable_lora=False,
        enable_hicache_storage=False,
        enable_lmcache=False,
        truncation_align_size=None,
        enable_priority_scheduling=False,
    )
    for k, v in attrs.items():
        setattr(sch, k, v)
    batch = sb.ScheduleBatch(reqs=running, batch_is_full=s["batch_is_full"])
    return sch, {"running_batch": batch, "record": rec, "tree": tree, "allocator": alloc}


def replay_prefill_pass(state: Mapping[str, Any], policy: str) -> dict[str, Any]:
    """One prefill scheduling pass of SGLang on an AdmissionState, by SGLang's own code.

    The state is built into real objects (allocator with real KV indices, ``RadixCache``,
    locks, ``Req`` + ``SamplingParams``, ``ScheduleBatch`` of the running requests, the chunked
    request holding its row), then ``Scheduler._get_new_batch_prefill_raw`` itself runs on a
    ``Scheduler.__new__`` object: its early returns, ``SchedulePolicy.calc_priority`` (with the
    in-batch de-prioritisation of ``_compute_prefix_matches`` and the >128 FCFS fallback),
    ``PrefillAdder`` construction with ``new_token_ratio`` offsets of the running batch,
    ``add_chunked_req`` for the continuing chunked request, ``get_num_allocatable_reqs``,
    ``Req.init_next_round_input`` (re-match with the ``len - 1`` cap) and ``add_one_req`` for
    each queued request in sorted order, the waiting-queue update and ``chunked_req``
    update. The pass stops where the method reads ``self.model_config`` to build the
    ``ScheduleBatch`` (``ScheduleBatch.init_new`` + ``prepare_for_extend``, i.e. KV allocation
    and LRU eviction for the admitted requests): every decision is taken by then. No line of the
    loop is re-created here.

    Configuration (SGLang's defaults for a single GPU without optional features): priority
    scheduling, LoRA, HiCache, grammars, mixed chunk, dLLM, prefill delayer and pipeline
    parallelism off; ``pp_max_micro_batch_size = max_running_requests`` (published, as
    ``Scheduler.__init__`` overrides it); request rows: ``max_running_requests`` minus one per
    running request and one for the chunked request.

    Parameters
    ----------
    state:
        An AdmissionState (module docstring; :func:`validate_admission_state`).
    policy:
        SGLang ``--schedule-policy``: ``"fcfs"``, ``"lpm"`` or ``"dfs-weight"``.

    Returns
    -------
    dict
        ``{"policy", "active_policy" (after the >128 fallback; None if calc_priority did not
        run), "ran": bool (False on an early return), "order": ids after calc_priority (the
        queue order if it did not run), "prefix_match": {id: num_matched_prefix_tokens as
        calc_priority left it (LPM key, min(page-aligned hit, len-1)); empty when the active
        policy does not match (FCFS over RadixCache)}, "deprioritized": sorted ids of
        ``temporary_deprioritized`` (computed for every cache-aware policy; LPM sorts by it,
        dfs-weight does not), "admitted": can_run_list ids in order (a resumed chunked request first),
        "extend": {id: extend tokens this pass}, "prefix": {id: prefix tokens reused},
        "chunked": None | {"id", "extend_len"} (the request left chunked after the pass),
        "stop": "CONTINUE" | "NO_TOKEN" | "OTHER" | "BATCH_FULL" | None, "stop_where":
        "add_one_req" | "budget_state" | "batch_full" | "queue_end" | "early_return",
        "batch_is_full": bool after the pass, "queue_after": ids left waiting, in order}``.

    Raises
    ------
    InputError
        Malformed state (:func:`validate_admission_state`), a tree over capacity, an unknown
        policy.
    prefixsched.integration.sglang_env.SGLangUnavailable
        SGLang missing or unsupported, or its scheduler module fails to import.
    """
    if policy not in SGLANG_POLICIES:
        raise InputError("policy", f"must be one of {', '.join(SGLANG_POLICIES)}, got {policy!r}")
    s = validate_admission_state(state)
    from prefixsched.integration import sglang_env

    m = _sgl()
    sglang_env.publish_config(pp_max_micro_batch_size=s["max_running_requests"], schedule_policy=policy)
    with _deterministic_clock():
        sch, ctx = _build_scheduler(m, s, policy)
        _CLASSES["last_adder"] = None
        queue_before = [r.rid for r in sch.waiting_queue]
        stopped = False
        try:
            ret = sch._get_new_batch_prefill_raw(prefill_delayer_single_pass=None, running_batch=ctx["running_batch"])
        except _StopAfterAdmission:
            stopped = True
        else:
            assert ret[0] is None, "the pass built a batch without reading model_config"
        adder = _CLASSES["last_adder"]
        rec = ctx["record"]
        batch = ctx["running_batch"]
        AddReqResult = m.schedule_policy.AddReqResult
        cp = rec["calc_priority"]
        out: dict[str, Any] = {
            "policy": policy,
            "active_policy": cp["active_policy"] if cp else None,
            "ran": cp is not None,
            "order": cp["order"] if cp else queue_before,
            "prefix_match": cp["keys"] if cp else {},
            "deprioritized": sorted(rec["deprioritized"] or ()),
        }
        can_run = list(adder.can_run_list) if adder is not None else []
        out["admitted"] = [r.rid for r in can_run]
        out["extend"] = {r.rid: int(r.extend_len) for r in can_run}
        out["prefix"] = {r.rid: int(r.prefix_len) for r in can_run}
        ch = sch.chunked_req
        out["chunked"] = None if ch is None else {"id": ch.rid, "extend_len": int(ch.extend_len) if ch in can_run else 0}
        if adder is None:
            out["stop"], out["stop_where"] = None, "early_return"
        else:
            results = adder.results
            last = results[-1][1] if results else None
            if last is not None and last != AddReqResult.CONTINUE:
                out["stop"], out["stop_where"] = last.name, "add_one_req"
            elif len(results) == len(queue_before):
                out["stop"], out["stop_where"] = "CONTINUE", "queue_end"
            elif adder.budget_state() == AddReqResult.OTHER:
                out["stop"], out["stop_where"] = "OTHER", "budget_state"
            else:
                out["stop"], out["stop_where"] = "BATCH_FULL", "batch_full"
        out["batch_is_full"] = bool(batch.batch_is_full)
        out["queue_after"] = [r.rid for r in sch.waiting_queue]
        assert stopped or not can_run, "requests were admitted but the pass did not reach the batch build"
    return out


# ----------------------------------------------------------------------------------------------
# c. retraction


def _decode_batch_list(batch: Any, *, with_kv: bool = False) -> list[dict[str, Any]]:
    _list("batch", batch)
    fields = {"id": "", "input_len": "", "output_len": ""}
    out, ids = [], set()
    for i, x in enumerate(batch):
        name = f"batch[{i}]"
        if not isinstance(x, Mapping):
            raise InputError(name, f"must be an object, got {type(x).__name__}")
        opt = {"max_new_tokens", "priority"} | ({"kv_len"} if with_kv else set())
        extra = set(x) - set(fields) - opt
        if extra:
            raise InputError(f"{name}.{sorted(extra)[0]}", "unknown field")
        y = _record(name, {k: v for k, v in x.items() if k in fields}, fields)
        _positive_int(f"{name}.input_len", y["input_len"])
        _nonneg_int(f"{name}.output_len", y["output_len"])
        y["max_new_tokens"] = _positive_int(f"{name}.max_new_tokens", x.get("max_new_tokens", max(1, y["output_len"])))
        if y["output_len"] > y["max_new_tokens"]:
            raise InputError(f"{name}.output_len", f"{y['output_len']} > max_new_tokens {y['max_new_tokens']}")
        pr = x.get("priority")
        if pr is not None and not _is_int(pr):
            raise InputError(f"{name}.priority", f"must be an integer or null, got {pr!r}")
        y["priority"] = pr
        if with_kv:
            default = y["input_len"] + max(y["output_len"] - 1, 0)
            y["kv_len"] = _positive_int(f"{name}.kv_len", x.get("kv_len", default))
        if y["id"] in ids:
            raise InputError(f"{name}.id", f"duplicate request id {y['id']!r}")
        ids.add(y["id"])
        out.append(y)
    return out


def _running_req(m: Any, x: Mapping[str, Any]) -> Any:
    req = m.schedule_batch.Req(
        x["id"], "", array("q", [0]) * x["input_len"],
        m.sampling_params.SamplingParams(max_new_tokens=x["max_new_tokens"]), priority=x["priority"],
    )  # fmt: skip
    req.output_ids = array("q", [0]) * x["output_len"]
    return req


def replay_retraction_order(batch: Sequence[Mapping[str, Any]], retraction_policy: str = "length") -> list[str]:
    """The order in which SGLang's decode-OOM retraction takes requests out of ``batch``.

    ``ScheduleBatch._get_decode_retraction_order`` (``srt/managers/schedule_batch.py``) on real
    ``Req`` objects returns indices from most- to least-preferred to keep, and
    ``retract_decode`` pops from the end; this returns the ids in *pop order* (first retracted
    first; the last id is the one SGLang keeps even when memory never suffices). With
    ``retraction_policy="length"`` (SGLang's default) the key is ``(len(output_ids),
    -len(origin_input_ids))`` descending: fewest output tokens, then longest prompt, go first;
    ties keep batch order reversed (Python's stable sort with ``reverse=True`` keeps equal keys
    in order, the pop takes the last). ``"priority"`` puts the priority first
    (``schedule_low_priority_values_first`` off: larger = more important).

    Parameters
    ----------
    batch:
        ``[{"id": str, "input_len": int >= 1, "output_len": int >= 0, "max_new_tokens"?: int,
        "priority"?: int | None}, ...]`` in running-batch order.
    retraction_policy:
        ``"length"`` or ``"priority"`` (``--retraction-policy``).

    Raises
    ------
    InputError
        Malformed batch or an unknown policy.
    """
    if retraction_policy not in ("length", "priority"):
        raise InputError("retraction_policy", f"must be 'length' or 'priority', got {retraction_policy!r}")
    xs = _decode_batch_list(batch)
    from prefixsched.integration import sglang_env

    m = _sgl()
    sglang_env.publish_config(retraction_policy=retraction_policy)
    reqs = [_running_req(m, x) for x in xs]
    order = m.schedule_batch.ScheduleBatch._get_decode_retraction_order(reqs)
    return [reqs[i].rid for i in reversed(order)]


def replay_retract_decode(
    batch: Sequence[Mapping[str, Any]],
    available_tokens: int,
    *,
    page_size: int = 1,
    evictable_tokens: int = 0,
    retraction_policy: str = "length",
) -> dict[str, Any]:
    """SGLang's whole ``ScheduleBatch.retract_decode`` on CPU: which requests a decode step that
    does not fit retracts, and the ``new_token_ratio`` it re-estimates.

    Built from real objects: a ``ReqToTokenPool`` (CPU) holding one row per request, a token
    allocator (paged when ``page_size > 1``) with the batch's KV allocated plus
    ``available_tokens`` free, a ``RadixCache`` holding ``evictable_tokens`` of unlocked,
    unrelated cache (evicted first by ``check_decode_mem``), and a ``ScheduleBatch`` with the
    decode tensors (``seq_lens`` = ``kv_len``). ``retract_decode`` then runs unchanged:
    ``check_decode_mem`` (allocator ``check_decode_capacity``, which evicts the tree),
    ``release_req`` (frees the row and KV, evicts ``remaining * SGLANG_RETRACT_DECODE_STEPS``
    more), ``filter_batch`` and ``NewTokenRatioTracker.estimate_new_token_ratio_after_retract``.
    Stand-ins: ``model_config`` (not an encoder-decoder) and ``sampling_info`` (its
    ``filter_batch`` is a no-op: sampling tensors play no part in the decision).

    Parameters
    ----------
    batch:
        As :func:`replay_retraction_order`, plus ``"kv_len"`` (KV tokens committed; default
        ``input_len + output_len - 1``, SGLang's state between decode steps: the last sampled
        token has no KV yet) and ``"max_new_tokens"`` (default ``max(1, output_len)``).
    available_tokens:
        Free KV tokens beside the batch's own (whole pages).
    page_size:
        Tokens per page.
    evictable_tokens:
        Unlocked tree tokens that eviction may reclaim (whole pages).
    retraction_policy:
        ``"length"`` or ``"priority"``.

    Returns
    -------
    dict
        ``{"needs_retraction": bool (check_decode_mem failed before), "retracted": ids in
        retraction order, "aborted": ids aborted (the last request when even it does not fit),
        "kept": ids left in the batch, "new_token_ratio": float (the re-estimate over kept
        requests), "available_tokens_after": int, "evicted_tokens": int}``.

    Raises
    ------
    InputError
        Malformed input or a value not in whole pages.
    """
    from types import SimpleNamespace

    from prefixsched.integration import sglang_env

    if retraction_policy not in ("length", "priority"):
        raise InputError("retraction_policy", f"must be 'length' or 'priority', got {retraction_policy!r}")
    _positive_int("page_size", page_size)
    _nonneg_int("available_tokens", available_tokens)
    _nonneg_int("evictable_tokens", evictable_tokens)
    for name, v in (("available_tokens", available_tokens), ("evictable_tokens", evictable_tokens)):
        if v % page_size:
            raise InputError(name, f"must be a multiple of page_size {page_size}, got {v}")
    xs = _decode_batch_list(batch, with_kv=True)
    if not xs:
        raise InputError("batch", "must not be empty")
    m = _sgl()
    import torch

    sglang_env.publish_config(retraction_policy=retraction_policy)
    ps = page_size
    pages = [-(-x["kv_len"] // ps) * ps for x in xs]
    cap = sum(pages) + available_tokens + evictable_tokens
    with _deterministic_clock():
        if ps == 1:
            alloc = m.allocator_token.TokenToKVPoolAllocator(cap, torch.float16, "cpu", None, False)
        else:
            alloc = m.allocator_paged.PagedTokenToKVPoolAllocator(cap, ps, torch.float16, "cpu", None, False)
        pool = m.memory_pool.ReqToTokenPool(len(xs), max(pages) + ps, "cpu", False)
        rc = m.radix_cache
        tree = rc.RadixCache(rc.CacheInitParams(disable=False, req_to_token_pool=pool, token_to_kv_pool_allocator=alloc, page_size=ps))
        if evictable_tokens:
            filler = array("q", range(1 << 40, (1 << 40) + evictable_tokens))
            tree.insert(m.base_prefix_cache.InsertParams(key=rc.RadixKey(filler), value=alloc.alloc(evictable_tokens)))
        reqs = []
        for x, n in zip(xs, pages):
            req = _running_req(m, x)
            req.kv.req_pool_idx = pool.alloc_rows(1)[0]
            idx = alloc.alloc(n)
            pool.req_to_token[req.kv.req_pool_idx, :n] = idx.to(torch.int32)
            req.kv.kv_allocated_len = req.kv.kv_committed_len = x["kv_len"]
            req.refresh_fill_ids()
            reqs.append(req)
        seq = torch.tensor([x["kv_len"] for x in xs], dtype=torch.int64)
        spec = importlib.import_module("sglang.srt.speculative.spec_info").SpeculativeAlgorithm
        b = m.schedule_batch.ScheduleBatch(
            reqs=reqs, req_to_token_pool=pool, token_to_kv_pool_allocator=alloc, tree_cache=tree,
            model_config=SimpleNamespace(is_encoder_decoder=False), device="cpu",
            spec_algorithm=spec.NONE,
        )  # fmt: skip
        b.req_pool_indices = torch.tensor([r.kv.req_pool_idx for r in reqs], dtype=torch.int64)
        b.req_pool_indices_cpu = b.req_pool_indices.clone()
        b.seq_lens, b.seq_lens_cpu, b.orig_seq_lens = seq.clone(), seq.clone(), seq.to(torch.int32)
        b.sampling_info = SimpleNamespace(filter_batch=lambda keep, keep_device: None)
        before_avail = alloc.available_size()
        before_tree = tree.evictable_size()
        needs = not b.check_decode_mem()
        if needs:
            retracted, ratio, aborted = b.retract_decode()
        else:
            retracted, ratio, aborted = [], None, []
        return {
            "needs_retraction": needs,
            "retracted": [r.rid for r in retracted],
            "aborted": [r.rid for r in aborted],
            "kept": [r.rid for r in b.reqs],
            "new_token_ratio": ratio,
            "available_tokens_after": int(alloc.available_size()),
            "available_tokens_before": int(before_avail),
            "evicted_tokens": int(before_tree - tree.evictable_size()),
        }


# ----------------------------------------------------------------------------------------------
# d. new_token_ratio


def replay_new_token_ratio(events: Iterable[Any], schedule_conservativeness: float = 1.0) -> dict[str, Any]:
    """SGLang's ``NewTokenRatioTracker`` driven by a sequence of scheduler events.

    ``NewTokenRatioTracker.from_config()`` under the published ``schedule_conservativeness``
    (init ``min(0.7 * c, 1)``, min ``init * 0.14``, decay ``(init - min) / 600`` per decode step;
    env ``SGLANG_INIT_NEW_TOKEN_RATIO``, ``SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR``,
    ``SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS``), then per event, as ``Scheduler`` calls it:

    - ``"decay"``: a decode step without retraction (``update_running_batch`` ->
      ``decay_step()``);
    - ``"reset"``: the scheduler went idle (``self_check_during_idle`` -> ``reset()``);
    - ``{"retract": [{"output_len": int, "max_new_tokens": int}, ...]}``: a retraction; the
      list is the batch *kept* after it, and ``current`` becomes
      ``estimate_new_token_ratio_after_retract(kept)`` = ``min(1, (sum output + 20 * n) /
      (sum max_new + 1))`` (``SGLANG_RETRACT_DECODE_STEPS`` = 20).

    Returns
    -------
    dict
        ``{"init", "min", "decay", "values": [current after each event]}`` (floats).

    Raises
    ------
    InputError
        A conservativeness that is not a positive finite number, or a malformed event.
    """
    c = schedule_conservativeness
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
        raise InputError("schedule_conservativeness", f"must be a positive number, got {c!r}")
    evs: list[Any] = []
    for i, ev in enumerate(events):
        if ev in ("decay", "reset"):
            evs.append(ev)
        elif isinstance(ev, Mapping) and set(ev) == {"retract"}:
            kept = _list(f"events[{i}].retract", ev["retract"])
            for j, x in enumerate(kept):
                name = f"events[{i}].retract[{j}]"
                if not isinstance(x, Mapping) or set(x) != {"output_len", "max_new_tokens"}:
                    raise InputError(name, "must be {\"output_len\": int, \"max_new_tokens\": int}")
                _nonneg_int(f"{name}.output_len", x["output_len"])
                _positive_int(f"{name}.max_new_tokens", x["max_new_tokens"])
            evs.append([dict(x) for x in kept])
        else:
            raise InputError(f"events[{i}]", f"must be 'decay', 'reset' or {{'retract': [...]}}, got {ev!r}")
    from prefixsched.integration import sglang_env

    m = _sgl()
    sglang_env.publish_config(schedule_conservativeness=float(c))
    cls = m.new_token_ratio.NewTokenRatioTracker
    if hasattr(cls, "from_config"):  # 0.5.23 reads the published config
        tracker = cls.from_config()
    else:  # 0.5.17: NewTokenRatioTracker.from_server_args(server_args)
        tracker = cls.from_server_args(sglang_env.published_server_args())
    values = []
    for ev in evs:
        if ev == "decay":
            tracker.decay_step()
        elif ev == "reset":
            tracker.reset()
        else:
            reqs = [
                _running_req(m, {"id": f"r{j}", "input_len": 1, "output_len": x["output_len"], "max_new_tokens": x["max_new_tokens"], "priority": None})
                for j, x in enumerate(ev)
            ]
            tracker.current = tracker.estimate_new_token_ratio_after_retract(reqs)
        values.append(float(tracker.current))
    return {"init": float(tracker.init), "min": float(tracker.min), "decay": float(tracker.decay), "values": values}


# ----------------------------------------------------------------------------------------------
# e. UnifiedRadixCache


def unified_radix_cache_report() -> dict[str, Any]:
    """Whether SGLang's production tree, ``srt/mem_cache/unified_radix_cache.py::
    UnifiedRadixCache``, can be built and driven on this (CPU) machine.

    Built as ``srt/mem_cache/registry.py::create_unified_radix_cache`` builds it for a plain
    model (``tree_components=(FULL,)``, no HiCache), over an allocator that counts tokens; then
    a smoke run: insert 3 tokens, match 4 (expect 3), lock/unlock, evict 3. On SGLang 0.5.23 /
    CPU it works, with the Rust tree core (``RustUnifiedTreeCore``, the default
    ``SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND``); its agreement with ``RadixCache`` on a trace
    is :func:`compare_radix_trees` with ``"sglang_unified"`` among the trees. API differences
    from ``RadixCache`` met on the way: node handles are integer ids; ``dec_lock_ref`` needs
    the receipt of ``inc_lock_ref`` (so the replay uses ``lock``/``unlock``); insert values
    must be int64 tensors; ``insert`` frees the duplicate part of the value from
    ``prev_prefix_len`` on (``RadixCache`` leaves that to ``_insert_cache``).

    Returns
    -------
    dict
        ``{"constructible": bool, "tree_core": class name or None, "tree_core_backend": env
        value or "rust (default)", "smoke": {"matched", "evicted"} or None, "reason": None or
        "ExceptionType: message (at file:line)"}``. Never raises for a failure of SGLang's
        code (that *is* the report); raises SGLangUnavailable when SGLang is missing.
    """
    import os
    import traceback

    _sgl()
    out: dict[str, Any] = {
        "constructible": False,
        "tree_core": None,
        "tree_core_backend": os.environ.get("SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND") or "rust (default)",
        "smoke": None,
        "reason": None,
    }
    try:
        with _deterministic_clock():
            t = _SGLangTree("sglang_unified", 16, 1)
            out["tree_core"] = type(t.tree.tree_core).__name__
            out["constructible"] = True
            t.admit((1, 2, 3), array("q", [1, 2, 3]))
            matched = t.admit((1, 2, 3, 4), array("q", [1, 2, 3, 4]))
            evicted = t.tree.evict(t.bp.EvictParams(num_tokens=4)).num_tokens_evicted
            out["smoke"] = {"matched": int(matched), "evicted": int(evicted)}
    except Exception as e:  # the reason is the result
        tb = traceback.extract_tb(e.__traceback__)
        where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
        out["reason"] = f"{type(e).__name__}: {e}{where}"
    return out


# ----------------------------------------------------------------------------------------------
# 4. engine pass records against SGLang

#: Fields :func:`compare_passes` compares, per pass kind.
PASS_FIELDS = {
    "prefill": ("admitted", "chunked", "deprioritized", "queue_after"),
    "decode": ("retracted",),
}


def _get(rec: Any, name: str, default: Any = None) -> Any:
    if isinstance(rec, Mapping):
        return rec.get(name, default)
    return getattr(rec, name, default)


def compare_passes(records: Iterable[Any], policy: str, *, keep: int = 5) -> dict[str, Any]:
    """Replay engine scheduling-pass records in SGLang and count agreements field by field.

    A record (an object or a dict) has ``step, now, kind ("prefill" | "decode" | "idle"),
    queue_before, queue_after, deprioritized, admitted, chunked ((id, tokens) or None),
    retracted, state`` (an AdmissionState taken before the pass), as the ``sglang`` engine's
    ``simulate(..., on_pass=callback)`` emits them.

    - ``"prefill"`` records: :func:`replay_prefill_pass` on ``state`` with ``policy``; compared:
      ``admitted`` (list, in SGLang's ``can_run_list`` order: a resumed chunked request first),
      ``chunked`` (id and this pass's chunk tokens), ``deprioritized`` (as sets),
      ``queue_after`` (list: the waiting queue after the pass, i.e. the sorted order of the pass
      minus the admitted requests; a request left chunked is not in it. This is how consecutive
      passes see SGLang's persistent, stably sorted queue).
    - ``"decode"`` records with a non-empty ``retracted``: :func:`replay_retraction_order` on
      ``state["running"]`` (with ``input_len``); compared: ``retracted`` against the first
      ``len(retracted)`` ids of SGLang's retraction order (how many are retracted depends on
      memory, which the AdmissionState does not pin down for a decode step).
    - ``"idle"`` records and records without ``state`` are counted, not compared.

    Parameters
    ----------
    records:
        The pass records.
    policy:
        SGLang ``--schedule-policy`` for the prefill replays (:data:`SGLANG_POLICIES`).
    keep:
        How many disagreements to keep (the first ones).

    Returns
    -------
    dict
        ``{"policy", "passes": {"prefill", "decode", "idle", "other"}, "replayed",
        "fields": {field: {"compared", "agree"}}, "passes_agree": prefill/decode passes whose
        compared fields all agree, "first_disagreements": [{"step", "field", "engine",
        "sglang"}]}``.

    Raises
    ------
    InputError
        An unknown policy, a record without ``kind``, or a malformed ``state``.
    """
    if policy not in SGLANG_POLICIES:
        raise InputError("policy", f"must be one of {', '.join(SGLANG_POLICIES)}, got {policy!r}")
    fields = {f: {"compared": 0, "agree": 0} for fs in PASS_FIELDS.values() for f in fs}
    out: dict[str, Any] = {
        "policy": policy,
        "passes": {"prefill": 0, "decode": 0, "idle": 0, "other": 0},
        "replayed": 0,
        "fields": fields,
        "passes_agree": 0,
        "first_disagreements": [],
    }

    def count(step: Any, field: str, engine: Any, sglang: Any) -> bool:
        fields[field]["compared"] += 1
        ok = engine == sglang
        if ok:
            fields[field]["agree"] += 1
        elif len(out["first_disagreements"]) < keep:
            out["first_disagreements"].append({"step": step, "field": field, "engine": engine, "sglang": sglang})
        return ok

    for i, rec in enumerate(records):
        kind = _get(rec, "kind")
        if kind is None:
            raise InputError(f"records[{i}].kind", "missing")
        out["passes"][kind if kind in ("prefill", "decode", "idle") else "other"] += 1
        state = _get(rec, "state")
        step = _get(rec, "step", i)
        if state is None or kind not in PASS_FIELDS:
            continue
        if kind == "prefill":
            r = replay_prefill_pass(state, policy)
            out["replayed"] += 1
            ch = _get(rec, "chunked")
            ok = count(step, "admitted", list(_get(rec, "admitted") or []), r["admitted"])
            engine_chunk = None if ch is None else [ch[0], int(ch[1])]
            sgl_chunk = None if r["chunked"] is None else [r["chunked"]["id"], r["chunked"]["extend_len"]]
            ok &= count(step, "chunked", engine_chunk, sgl_chunk)
            ok &= count(step, "deprioritized", sorted(_get(rec, "deprioritized") or []), r["deprioritized"])
            ok &= count(step, "queue_after", list(_get(rec, "queue_after") or []), r["queue_after"])
            out["passes_agree"] += ok
        else:
            retracted = list(_get(rec, "retracted") or [])
            if not retracted:
                continue
            s = validate_admission_state(state)
            batch = [{"id": x["id"], "input_len": x["input_len"], "output_len": x["output_len"], "max_new_tokens": x["max_new_tokens"]} for x in s["running"]]
            order = replay_retraction_order(batch)
            out["replayed"] += 1
            out["passes_agree"] += count(step, "retracted", retracted, order[: len(retracted)])
    return out



#: prefixsched policy -> the SGLang-native ``--schedule-policy`` it corresponds to.
NATIVE_POLICY = {"fcfs": "fcfs", "lpm": "lpm"}


def engine_comparison_available() -> tuple[bool, str | None]:
    """Whether this build's simulator offers ``simulate(instance, policy, engine="sglang",
    on_pass=callback)`` (feature detection on ``simulator.ENGINES``); ``(False, reason)`` if not."""
    from prefixsched.reference import simulator

    if "sglang" in getattr(simulator, "ENGINES", {}):  # on_pass is an option of the sglang engine
        return True, None
    return False, "engine comparison not available in this build (simulate() has no engine='sglang')"


def run_engine_comparison(
    instance: Any,
    policy: str = "lpm",
    *,
    window: int = 10,
    every: int = 200,
    max_windows: int = 20,
    keep: int = 5,
) -> dict[str, Any]:
    """Run prefixsched's ``sglang`` engine on ``instance`` with ``policy`` and replay sampled
    scheduling passes in SGLang (:func:`compare_passes`).

    Sampling: windows of ``window`` *consecutive* passes (the queue order carries over between
    them), one window starting every ``every`` passes, at most ``max_windows`` windows; every
    decode pass that retracted requests is kept too (at most ``window * max_windows``).

    Returns
    -------
    dict
        ``{"available": False, "reason"}`` when the simulator has no ``engine``/``on_pass``;
        else ``{"available": True, "policy", "passes_seen", **compare_passes(...)}``.

    Raises
    ------
    InputError
        A policy without an SGLang-native equivalent (:data:`NATIVE_POLICY`), or bad sampling
        parameters.
    """
    if policy not in NATIVE_POLICY:
        raise InputError("policy", f"must be one of {', '.join(NATIVE_POLICY)} (SGLang-native), got {policy!r}")
    for name, v in (("window", window), ("every", every), ("max_windows", max_windows)):
        _positive_int(name, v)
    if every < window:
        raise InputError("every", f"must be >= window ({window}), got {every}")
    ok, reason = engine_comparison_available()
    if not ok:
        return {"available": False, "reason": reason}
    from prefixsched.reference.policies import create
    from prefixsched.reference.simulator import simulate

    kept: list[Any] = []
    seen = {"n": 0, "decode": 0}

    def on_pass(rec: Any) -> None:
        i = seen["n"]
        seen["n"] += 1
        kind = _get(rec, "kind")
        if kind == "decode" and _get(rec, "retracted") and seen["decode"] < window * max_windows:
            seen["decode"] += 1
            kept.append(rec)
        elif kind == "prefill" and i // every < max_windows and i % every < window:
            kept.append(rec)

    simulate(instance, create(policy), engine="sglang", on_pass=on_pass)
    res = compare_passes(kept, NATIVE_POLICY[policy], keep=keep)
    return {"available": True, "passes_seen": seen["n"], **res}
