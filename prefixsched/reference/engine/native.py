"""SGLang 0.5.23's own scheduling rules, as small functions over prefixsched's data.

Each function names the SGLang source it follows (paths under ``python/sglang/srt/``); the
conformance tests (:mod:`prefixsched.integration.conformance`) run the SGLang originals on the
same inputs. The wording and the code are ours.

- :class:`NewTokenRatio`: ``managers/scheduler_components/new_token_ratio_tracker.py``
  (``NewTokenRatioTracker``): the fraction of a running request's remaining ``max_new_tokens``
  the admission budget reserves.
- :func:`decode_retraction_order`: ``managers/schedule_batch.py::ScheduleBatch.
  _get_decode_retraction_order`` (``--retraction-policy length``, the default).
- :func:`in_batch_deprioritized` and :func:`lpm_sort`: ``managers/schedule_policy.py::
  SchedulePolicy._compute_prefix_matches`` and ``_sort_by_longest_prefix``.
- :func:`active_policy`: ``SchedulePolicy._determine_active_policy`` (LPM falls back to FCFS above
  ``WAITING_QUEUE_PREFIX_MATCH_MAX`` waiting requests).
- :func:`refresh_due`: ``SchedulePolicy._touch_waiting_prefixes`` (every 32nd pass of a
  cache-agnostic active policy refreshes the LRU stamps of the first 128 waiting prefixes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from prefixsched.errors import InputError

__all__ = [
    "CLIP_MAX_NEW_TOKENS",
    "WAITING_QUEUE_PREFIX_MATCH_MAX",
    "WAITING_PREFIX_REFRESH_INTERVAL",
    "IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD",
    "IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD",
    "RETRACT_DECODE_STEPS",
    "NewTokenRatio",
    "decode_retraction_order",
    "in_batch_deprioritized",
    "lpm_sort_key",
    "lpm_sort",
    "active_policy",
    "refresh_due",
]

T = TypeVar("T")

#: ``managers/schedule_policy.py``: the reservation clips max_new_tokens at this (env
#: ``SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION``).
CLIP_MAX_NEW_TOKENS = 4096
#: ``schedule_policy.py``: LPM/HRRN become FCFS above this many waiting requests.
WAITING_QUEUE_PREFIX_MATCH_MAX = 128
#: ``schedule_policy.py``: passes between LRU refreshes of waiting prefixes.
WAITING_PREFIX_REFRESH_INTERVAL = 32
#: ``schedule_policy.py`` (env ``IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD``).
IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD = 32
#: ``schedule_policy.py`` (env ``IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD``).
IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD = 32
#: ``srt/environ.py`` ``SGLANG_RETRACT_DECODE_STEPS``.
RETRACT_DECODE_STEPS = 20


@dataclass
class NewTokenRatio:
    """SGLang's ``NewTokenRatioTracker`` (``from_config``, ``decay_step``, ``reset``,
    ``estimate_new_token_ratio_after_retract``).

    ``init = min(init_ratio * schedule_conservativeness, 1)``, ``min = min(init * min_factor,
    1)``, ``decay = (init - min) / decay_steps``; every decode step without a retraction lowers
    ``current`` by ``decay`` down to ``min``; a retraction sets it to :meth:`after_retract`; a fully
    idle server resets it to ``init``. SGLang's defaults (env ``SGLANG_INIT_NEW_TOKEN_RATIO``,
    ``SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR``, ``SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS``): 0.7, 0.14, 600.
    """

    init: float
    min: float
    decay: float
    current: float

    @classmethod
    def from_config(
        cls,
        schedule_conservativeness: float = 1.0,
        init_ratio: float = 0.7,
        min_factor: float = 0.14,
        decay_steps: int = 600,
    ) -> "NewTokenRatio":
        init = min(init_ratio * schedule_conservativeness, 1.0)
        lo = min(init * min_factor, 1.0)
        return cls(init=init, min=lo, decay=(init - lo) / decay_steps, current=init)

    def decay_step(self) -> None:
        self.current = max(self.current - self.decay, self.min)

    def reset(self) -> None:
        self.current = self.init

    @staticmethod
    def after_retract(decoded: Sequence[int], max_new_tokens: Sequence[int], retract_decode_steps: int = RETRACT_DECODE_STEPS) -> float:
        """``min(1, (sum decoded + retract_decode_steps * n) / (sum max_new_tokens + 1))`` over the
        requests that stay in the decode batch."""
        return min(1.0, (sum(decoded) + retract_decode_steps * len(decoded)) / (sum(max_new_tokens) + 1))


def decode_retraction_order(items: Sequence[T], output_len: Callable[[T], int], prompt_len: Callable[[T], int]) -> list[T]:
    """SGLang's decode retraction order (``--retraction-policy length``): ``items`` (the running
    batch, in batch order) sorted from most to least preferred to keep, by ``(output tokens so
    far, -prompt length)`` descending, ties in batch order (Python's stable sort with
    ``reverse=True``). ``retract_decode`` pops from the *end*: the request with the fewest output
    tokens (and, among those, the longest prompt; among equals the last in batch order) goes
    first."""
    idx = list(range(len(items)))
    idx.sort(key=lambda i: (output_len(items[i]), -prompt_len(items[i])), reverse=True)
    return [items[i] for i in idx]


def lpm_sort_key(matched_tokens: int, fill_len: int) -> int:
    """``Req.num_matched_prefix_tokens`` as ``_compute_prefix_matches`` leaves it:
    ``min(matched, fill_len - 1)`` where ``matched`` is the page-aligned match of the *whole*
    fill (no ``len - 1`` limit on the match itself). So a fully cached, page-aligned prompt of
    ``L`` tokens sorts with key ``L - 1``, not with its page-aligned admission prefix."""
    return matched_tokens if matched_tokens < fill_len else fill_len - 1


def in_batch_deprioritized(
    queue: Sequence[T],
    prefix_len: Callable[[T], int],
    lead: Callable[[T], Hashable | None],
    *,
    check_threshold: int = IN_BATCH_PREFIX_CACHING_CHECK_THRESHOLD,
    deprioritize_threshold: int = IN_BATCH_PREFIX_CACHING_DEPRIORITIZE_THRESHOLD,
) -> set[int]:
    """Positions (into ``queue``) of the requests SGLang de-prioritises for in-batch prefix caching.

    ``_compute_prefix_matches`` walks the queue in order; a request whose cache hit
    ``prefix_len`` is ``<= check_threshold`` is matched against a simulated radix tree (page size
    1) of the earlier such requests' fills: a match of ``>= deprioritize_threshold`` tokens puts it
    in ``temporary_deprioritized``, otherwise its fill is inserted. A token-level match of at least
    ``D`` tokens exists iff some inserted fill has the same first ``D`` tokens, so the tree is a set
    of those leads: ``lead(x)`` must return a hashable standing for the first ``D =
    deprioritize_threshold`` tokens of ``x``'s fill, or None if the fill is shorter than ``D`` (it
    can then never match ``D`` tokens, nor make another match them).
    """
    out: set[int] = set()
    seen: set[Hashable] = set()
    for k, x in enumerate(queue):
        if prefix_len(x) > check_threshold:
            continue
        if deprioritize_threshold <= 0:  # every match (even 0 tokens) reaches the threshold
            out.add(k)
            continue
        key = lead(x)
        if key is None:
            continue  # shorter than the threshold: inserted, but can never match it
        if key in seen:
            out.add(k)
        else:
            seen.add(key)
    return out


def lpm_sort(queue: Sequence[T], key: Callable[[T], int], deprioritized: set[int]) -> list[T]:
    """``_sort_by_longest_prefix``: a stable sort of ``queue`` by ``-key`` with the
    de-prioritised positions last (key ``+inf``): ties keep the queue's current order."""
    idx = list(range(len(queue)))
    idx.sort(key=lambda i: math.inf if i in deprioritized else -key(queue[i]))
    return [queue[i] for i in idx]


def active_policy(policy: str, queue_len: int, match_max: int = WAITING_QUEUE_PREFIX_MATCH_MAX) -> str:
    """``_determine_active_policy``: ``"lpm"`` (and HRRN) act as ``"fcfs"`` when more than
    ``match_max`` requests wait; every other policy is itself."""
    if policy == "lpm" and queue_len > match_max:
        return "fcfs"
    return policy


def refresh_due(calls: int, interval: int = WAITING_PREFIX_REFRESH_INTERVAL) -> bool:
    """``_touch_waiting_prefixes``: the refresh runs on the pass whose counter (incremented after
    the test, on every pass that gets that far) is a multiple of ``interval``."""
    return calls % interval == 0


def check_config_int(name: str, v: Any, lo: int) -> int:
    """An integer option ``>= lo`` or InputError naming it."""
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise InputError(name, f"must be an integer >= {lo}, got {v!r}")
    return v
