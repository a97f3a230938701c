"""The independent checker: replay a :class:`~prefixsched.theory.trace.Trace` against its instance.

Solver-free and policy-free (DESIGN.md, "The data flow"): it reads only the instance (requests,
cost model, limits) and the trace's raw facts, and re-derives everything it checks. It imports
nothing from :mod:`prefixsched.reference`; a bug in the simulator or its radix cache cannot hide
behind the same bug here.

What :func:`check_trace` checks (each violation is one message naming the request id or step):

``records``
    Every instance request has exactly one record with the same id, and the record's ``client``,
    ``arrival``, ``prompt_len`` and ``output_len`` equal the request's; no extra or duplicate records.
``steps``
    ``step_start[s] <= step_end[s] <= step_start[s+1]`` and no recorded step is empty (the trace
    contract: steps in which nothing runs are not recorded). *Decision:* a step may have zero
    duration exactly when the cost model gives it zero time (``CostModel.token_units()`` makes a
    decode-only step free); otherwise the duration check below forces ``step_start < step_end``.
``causality``
    ``arrival <= admit``, ``admit == step_start[admit_step]``, ``first_token == step_end[admit_step]``,
    ``finish == step_end[finish_step]``, ``finish_step == admit_step + output_len - 1``, step
    indices inside ``0 .. n_steps-1``.
``tokens``
    ``cached_tokens + extend_tokens == prompt_len``, ``extend_tokens >= 1``, ``cached_tokens >= 0``.
``duration``
    ``step_end[s] - step_start[s] == cost_model.step_time(E_s, n_s, C_s)`` where ``E_s`` is the sum
    of ``weighted_extend`` over the requests admitted in step s, ``n_s`` the requests running before
    it (``admit_step < s <= finish_step``) and ``C_s`` their context tokens: request r holds
    ``prompt_len + (s - admit_step)`` tokens before step s (its prompt and the output tokens of steps
    ``admit_step .. s-1``; the token of step s is written during s). ``C_s`` only matters when
    ``decode_per_context_token_s > 0``.
``limits``
    Requests in flight in step s (admitted in s or decoding, ``admit_step <= s <= finish_step``)
    ``<= max_running_requests``; the extend tokens admitted in a step ``<= max_prefill_tokens``
    unless the step admits exactly one request (chunked prefill is off: a lone request may exceed
    the cap, as in SGLang).
``kv``
    A *necessary* condition on KV memory, computed independently of any cache implementation: the
    requests in flight in step s hold at least ``|union of their prompt pages| * page_size`` (a
    prefix shared by several in-flight requests counted once, pages identified by their whole
    prefix path, i.e. a radix-tree node) plus, for each, its private remainder (the partial last
    prompt page plus its full reserved ``output_len``). This must be ``<= kv_capacity_tokens``.
    *Decision:* the full output is counted as reserved at admission (conservative admission, as the
    simulator's ``BatchBuilder`` does); unlocked cached pages are not counted (they are evictable).
``cache``
    A request's ``cached_tokens`` is at most ``min(P * page_size, prompt_len - 1)`` where ``P`` is
    the longest common prefix, in whole pages, between its prompt and the prompt of some request
    prefilled in a strictly earlier step (its prefill ended at or before this step started).
    Outputs are unique to their request (``("O", id, page)`` keys, :mod:`prefixsched.theory.model`),
    so a finished request's output pages never extend a match and are not considered. Requests
    admitted in the same step do not share with each other (SGLang prefills a batch from the cache
    state before it). This is necessary, not sufficient: eviction is not replayed.

``finite``
    Every quantity replayed is finite: the cost-model parameters, every step time, every record
    time (arrival, admit, first token, finish) and every step duration the cost model gives. A
    ``nan`` or ``inf`` compares false with everything, so without this check a trace full of
    ``nan`` would pass every other check (:func:`_check_finite`).
``switch`` (traces with preemption, :mod:`prefixsched.reference.engine.preemption`)
    Runs may end ``"preempt"`` (drop mode) or ``"swap"`` (swap mode) before their last run; a run
    that resumes by swap-in follows a ``"swap"`` run (never a dropped one: its KV is gone), has no
    chunk, starts in a decode-capable step and holds ``cached + swapped_in == fill - 1`` tokens.
    Every ``"swap"`` run has one swap-out copy, issued after its last token, with the run's KV
    (``fill + produced - 1`` tokens); every swap-in run has one swap-in copy of its
    ``swapped_in`` tokens that starts after that swap-out ends and ends before the run's first
    step starts (a request never runs while swapped out or being swapped in). Each copy's bytes,
    copies and duration match :class:`~prefixsched.theory.switch_cost.SwitchCostModel` from
    ``meta["preemption"]``; copies never overlap on the link (one stream when synchronous, one per
    direction when not); synchronous copies lie in the GPU stall before the step of their pass;
    without reuse a swap-out sends the whole KV. Host capacity is replayed from the events
    (sends add at their start, evictions free, a swap-in frees at its end what the pool releases):
    a lower bound of what the pool holds, so exceeding ``host_capacity_tokens`` proves the engine
    overfilled it. Tokens are produced exactly once by the ``runs`` check (runs do not overlap
    and add up to ``output_len``).

Work conservation is *not* checked (a policy may legitimately idle); :func:`idle_with_waiting`
reports the gaps for the invariant tests that want it.

Tolerances. Times are compared with ``_time_tol(t) = 8 * eps * max(1, |t|)`` (a few ulps of the
clock: the simulator copies step times into records, so they agree bit for bit; JSON round trips
preserve floats). Step durations are compared with ``1e-9`` relative to the model's duration plus
that clock resolution of both endpoints (``step_end - step_start`` loses ``eps * |t|`` when the clock
is large).

Scale. Prompts are walked as *units* (full pages of token-list prompts, or the blocks of block
prompts) through one prefix trie (:func:`prefix_paths`); pages are mapped onto trie nodes
arithmetically, so the real Mooncake trace (12,031 requests, 288,500 blocks of 512 tokens) checks in
about a second at any page size, never touching tokens one by one. Only an instance mixing several
block sizes falls back to token-level page keys.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prefixsched.errors import CheckerError
from prefixsched.theory.metrics import TraceArrays, trace_arrays
from prefixsched.theory.model import BlockPrompt, Instance, Request, page_keys
from prefixsched.theory.trace import Trace

__all__ = ["CheckReport", "IdleGap", "check_trace", "idle_with_waiting", "prefix_paths"]

_EPS = float(np.finfo(np.float64).eps)
_REL_DURATION = 1e-9


def _t(x: Any) -> str:
    """A time for a message: the exact float repr (no numpy scalar repr)."""
    return repr(float(x))


def _time_tol(t: Any) -> Any:
    """A few ulps of the clock at time ``t`` (scalar or array)."""
    return 8.0 * _EPS * np.maximum(1.0, np.abs(t))


@dataclass
class CheckReport:
    """Outcome of :func:`check_trace`.

    Attributes
    ----------
    ok:
        True iff no violation was found.
    violations:
        One message per violation (at most ``max_per_kind`` per kind, then one ``"... and N more"``
        line), each starting with its kind in brackets: ``"[causality] request 'r3': ..."``.
    stats:
        Deterministic facts about the trace: ``n_requests``, ``n_steps``, ``peak_running``,
        ``peak_kv_tokens`` (the necessary-condition lower bound, tokens) and its step,
        ``max_step_extend``, ``cached_tokens`` (claimed), ``cached_tokens_bound`` (sum of the per-request
        caps), ``violation_counts`` (per kind, uncapped).
    """

    ok: bool
    violations: list[str]
    stats: dict[str, Any] = field(default_factory=dict)

    def raise_if_failed(self, first: int = 10) -> None:
        """Raise :class:`CheckerError` listing the first ``first`` violations if not ``ok``."""
        if self.ok:
            return
        total = sum(self.stats.get("violation_counts", {}).values()) or len(self.violations)
        shown = "\n  ".join(self.violations[:first])
        raise CheckerError(f"trace violates the model ({total} violations); first ones:\n  {shown}")


class _Collector:
    def __init__(self, max_per_kind: int) -> None:
        self.max_per_kind = max_per_kind
        self.messages: list[str] = []
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, kind: str, msg: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= self.max_per_kind:
            self.messages.append(f"[{kind}] {msg}")

    def finish(self) -> list[str]:
        out = list(self.messages)
        for kind, n in self.counts.items():
            if n > self.max_per_kind:
                out.append(f"[{kind}] ... and {n - self.max_per_kind} more")
        return out


# ---------------------------------------------------------------------------------------------
# prefix paths


def _units(requests: Sequence[Request], page_size: int) -> tuple[list[Sequence[Hashable]], int]:
    """Split every prompt into trie units; returns (units per request, tokens per full unit).

    - token-list prompts: one unit per full page (its :func:`page_keys` key), ``page_size`` tokens;
    - block prompts of one ``block_size``: one unit per block id, ``block_size`` tokens (the last
      unit may be partial). Equal block ids at equal depth hold equal token ids, so the shared
      prefix of two prompts through the same node is ``min(depth * block_size, their lengths)``
      tokens, whatever the page size;
    - block prompts of several block sizes: one unit per page as a tuple of token ids (slow but
      exact: block keys are only comparable at one block size).
    """
    prompts = [r.prompt for r in requests]
    if not prompts or not isinstance(prompts[0], BlockPrompt):
        return [page_keys(p, page_size) for p in prompts], page_size
    sizes = {p.block_size for p in prompts}  # type: ignore[union-attr]
    if len(sizes) == 1:
        return [p.blocks for p in prompts], sizes.pop()  # type: ignore[union-attr]
    units = []
    for p in prompts:
        toks = tuple(p)
        n = len(toks) // page_size
        units.append(tuple(toks[k * page_size : (k + 1) * page_size] for k in range(n)))
    return units, page_size


def prefix_paths(requests: Sequence[Request], page_size: int) -> tuple[list[list[int]], int, int]:
    """Map every prompt to its path of prefix-trie node ids (an uncompressed radix tree).

    Two prompts share node ``d`` (depth ``d``, 1-based) of their paths iff their first ``d`` units
    are equal, so a node identifies a span of tokens *with its whole prefix*, which is what a radix
    cache stores once. Pages are mapped to nodes by the node holding their last token.

    Returns
    -------
    paths:
        ``paths[i]`` = node ids of request ``i``'s units, root first.
    unit_tokens:
        Tokens of one full unit (``page_size`` for token-list prompts, ``block_size`` for block
        prompts).
    n_nodes:
        Number of distinct nodes.
    """
    units, unit_tokens = _units(requests, page_size)
    children: dict[tuple[int, Hashable], int] = {}
    paths: list[list[int]] = []
    for seq in units:
        node = -1
        path = []
        for u in seq:
            key = (node, u)
            nxt = children.get(key)
            if nxt is None:
                nxt = len(children)
                children[key] = nxt
            path.append(nxt)
            node = nxt
        paths.append(path)
    return paths, unit_tokens, len(children)


# ---------------------------------------------------------------------------------------------
# the checker


def _check_finite(
    col: _Collector,
    instance: Instance,
    arr: TraceArrays,
    step_start: np.ndarray,
    step_end: np.ndarray,
    *,
    durations: np.ndarray | None = None,
) -> None:
    """Kind ``finite``: every replayed quantity is a finite number (module docstring).

    Without ``durations``: the cost-model parameters, the step clock and the record times. With
    it: the cost model's step durations (called once more after they are computed).
    """
    if durations is not None:
        for s in np.flatnonzero(~np.isfinite(durations)):
            col.add("finite", f"step {s}: the cost model gives a non-finite duration {_t(durations[s])} s")
        return
    cm = instance.cost_model
    for name, v in sorted(vars(cm).items()):
        if isinstance(v, float) and not np.isfinite(v):  # ints are finite; non-numbers are not replayed
            col.add("finite", f"cost_model.{name} = {v!r} is not finite")
    for name, clock in (("step_start", step_start), ("step_end", step_end)):
        for s in np.flatnonzero(~np.isfinite(clock)):
            col.add("finite", f"step {s}: {name} = {_t(clock[s])} is not finite")
    for name in ("arrival", "admit", "first_token", "finish"):
        x = getattr(arr, name)
        for k in np.flatnonzero(~np.isfinite(x)):
            col.add("finite", f"request {arr.ids[k]!r}: {name} = {_t(x[k])} is not finite")


def check_trace(
    instance: Instance, trace: Trace, *, strict: bool = True, max_per_kind: int = 20
) -> CheckReport:
    """Replay ``trace`` against ``instance`` and report every violation of the model.

    Parameters
    ----------
    instance:
        The instance the trace claims to schedule.
    trace:
        A simulator (or solver) trace.
    strict:
        If True (default), raise on the first failing report instead of returning it.
    max_per_kind:
        Messages kept per kind of violation (counts are always complete in ``stats``).

    Returns
    -------
    CheckReport
        ``ok``, the violation messages and the stats (see :class:`CheckReport`).

    Raises
    ------
    CheckerError
        If ``strict`` and any check fails; the message lists the first violations.

    The checks and the tolerances are listed in the module docstring. Cost: O(requests + steps +
    prompt units) with numpy for the step-level checks.
    """
    col = _Collector(max_per_kind)
    reqs = instance.requests
    n_req_inst = len(reqs)
    S = trace.n_steps
    step_start = np.asarray(trace.step_start, dtype=np.float64)
    step_end = np.asarray(trace.step_end, dtype=np.float64)

    # ---- records --------------------------------------------------------------------------
    if len(step_end) != S:
        col.add("steps", f"step_start has {S} entries but step_end has {len(step_end)}")
        S = min(S, len(step_end))
        step_start, step_end = step_start[:S], step_end[:S]
    index_of = {r.id: i for i, r in enumerate(reqs)}
    rec_for: list[int] = [-1] * n_req_inst  # record position for each instance request
    for pos, rec in enumerate(trace.requests):
        i = index_of.get(rec.id)
        if i is None:
            col.add("records", f"record #{pos} has id {rec.id!r}, which is not in the instance")
            continue
        if rec_for[i] >= 0:
            col.add("records", f"request {rec.id!r} has more than one record (#{rec_for[i]} and #{pos})")
            continue
        rec_for[i] = pos
        r = reqs[i]
        for name, want in (
            ("client", r.client),
            ("arrival", r.arrival),
            ("prompt_len", r.prompt_len),
            ("output_len", r.output_len),
        ):
            got = getattr(rec, name)
            if got != want:
                col.add(
                    "records", f"request {rec.id!r}: record {name} = {got!r}, instance says {want!r}"
                )
    for i, pos in enumerate(rec_for):
        if pos < 0:
            col.add("records", f"request {reqs[i].id!r} has no record")

    # arrays over the trace's records (all of them; record-level checks do not need the instance)
    arr = trace_arrays(trace)
    n = len(arr.ids)
    _check_finite(col, instance, arr, step_start, step_end)

    # ---- steps ----------------------------------------------------------------------------
    if S:
        for s in np.flatnonzero(step_end < step_start - _time_tol(step_start)):
            col.add("steps", f"step {s}: step_end {_t(step_end[s])} < step_start {_t(step_start[s])}")
        if S > 1:
            bad = np.flatnonzero(step_start[1:] < step_end[:-1] - _time_tol(step_end[:-1]))
            for s in bad:
                col.add(
                    "steps",
                    f"step {s + 1}: starts at {_t(step_start[s + 1])} before step {s} ends at "
                    f"{_t(step_end[s])}",
                )

    # ---- step kinds -----------------------------------------------------------------------
    kinds = trace.step_kinds
    if kinds is not None and (len(kinds) != S or set(kinds) - {"M", "P", "D"}):
        col.add("steps", f"step_kinds has {len(kinds)} entries (of M/P/D), the trace has {S} steps")
        kinds = None
    kind_arr = (np.frombuffer(kinds.encode("ascii"), dtype=np.uint8)[:S] if kinds is not None
                else np.full(S, ord("M"), dtype=np.uint8))
    is_p = kind_arr == ord("P")
    is_d = kind_arr == ord("D")
    is_m = kind_arr == ord("M")
    dcap = ~is_p  # decode-capable: M or D
    Dc = np.cumsum(dcap.astype(np.int64))  # decode-capable steps in 0..s

    # ---- runs: structure, tokens, causality -------------------------------------------------
    arr = trace_arrays(trace)
    n = len(arr.ids)
    runs_flat = _flatten_runs(trace, instance, rec_for, S, dcap, Dc, col)
    ok_rec = runs_flat.ok_rec
    a_step, f_step = arr.admit_step, arr.finish_step
    for k in np.flatnonzero(arr.arrival > arr.admit + _time_tol(arr.admit)):
        col.add(
            "causality",
            f"request {arr.ids[k]!r}: admitted at {_t(arr.admit[k])} before its arrival at "
            f"{_t(arr.arrival[k])}",
        )
    idx_ok = (a_step >= 0) & (f_step >= a_step) & (f_step < S) & ok_rec
    for k in np.flatnonzero(~((a_step >= 0) & (f_step >= a_step) & (f_step < S))):
        col.add(
            "causality",
            f"request {arr.ids[k]!r}: step indices admit_step={a_step[k]}, finish_step={f_step[k]} "
            f"not within 0 <= admit_step <= finish_step < n_steps = {S}",
        )
    ok_idx = np.flatnonzero(idx_ok)
    first_step = runs_flat.first_token_step
    for field_name, times, clock, steps, clock_name in (
        ("admit", arr.admit, step_start, a_step, "step_start"),
        ("first_token", arr.first_token, step_end, first_step, "step_end"),
        ("finish", arr.finish, step_end, f_step, "step_end"),
    ):
        x, y = times[ok_idx], clock[np.clip(steps[ok_idx], 0, max(S - 1, 0))]
        for j in np.flatnonzero(np.abs(x - y) > _time_tol(np.maximum(np.abs(x), np.abs(y)))):
            k = ok_idx[j]
            col.add(
                "causality",
                f"request {arr.ids[k]!r}: {field_name} {_t(times[k])} != {clock_name}[{steps[k]}] = "
                f"{_t(clock[steps[k]])}",
            )
    simple = runs_flat.simple
    for k in np.flatnonzero(simple & is_m[np.clip(a_step, 0, max(S - 1, 0))] & (arr.finish_step != arr.admit_step + arr.output_len - 1) & idx_ok):
        col.add(
            "causality",
            f"request {arr.ids[k]!r}: finish_step {f_step[k]} != admit_step {a_step[k]} + "
            f"output_len {arr.output_len[k]} - 1",
        )
    for k in np.flatnonzero(simple & (arr.cached + arr.extend != arr.prompt_len)):
        col.add(
            "tokens",
            f"request {arr.ids[k]!r}: cached_tokens {arr.cached[k]} + extend_tokens {arr.extend[k]} "
            f"!= prompt_len {arr.prompt_len[k]}",
        )
    for k in np.flatnonzero(arr.extend < 1):
        col.add("tokens", f"request {arr.ids[k]!r}: extend_tokens {arr.extend[k]} < 1")
    for k in np.flatnonzero(arr.cached < 0):
        col.add("tokens", f"request {arr.ids[k]!r}: cached_tokens {arr.cached[k]} < 0")

    # ---- step aggregates (runs of records with valid step indices) --------------------------
    stats: dict[str, Any] = {"n_requests": n, "n_steps": S}
    R = runs_flat.select(idx_ok)
    if S:
        cm = instance.cost_model
        lim = instance.limits
        ps = lim.page_size
        # prefill pieces
        w_ext = (1.0 + cm.c_attn * R.piece_fill.astype(np.float64)) * R.piece_tokens.astype(np.float64)
        E = np.bincount(R.piece_step, weights=w_ext, minlength=S)[:S]
        ext_sum = np.bincount(R.piece_step, weights=R.piece_tokens.astype(np.float64), minlength=S)[:S]
        paged = -(-R.piece_tokens // ps) * ps
        paged_sum = np.bincount(R.piece_step, weights=paged.astype(np.float64), minlength=S)[:S]
        paged_max = np.zeros(S)
        np.maximum.at(paged_max, R.piece_step, paged.astype(np.float64))
        n_adm = np.bincount(R.piece_step, minlength=S)[:S]
        for st in np.flatnonzero(is_d & (n_adm > 0)):
            col.add("steps", f"step {st}: a decode step (kind D) holds {n_adm[st]} prefill chunk(s)")
        # decoding runs: decode-capable steps in (first, end]
        dec = np.zeros(S + 1, dtype=np.int64)
        d_from = R.span_first + 1 - R.run_swap  # a swap-in run decodes from its first step on
        np.add.at(dec, d_from, 1)
        np.add.at(dec, R.span_end + 1, -1)
        members = np.cumsum(dec)[:S]
        n_dec = np.where(dcap, members, 0)
        if cm.decode_per_context_token_s > 0:
            # context after step s of a member = fill + (Dc[s] - Dc[first])
            base = np.zeros(S + 1, dtype=np.float64)
            v = R.span_fill.astype(np.float64) - Dc[R.span_first]
            np.add.at(base, d_from, v)
            np.add.at(base, R.span_end + 1, -v)
            C = np.where(dcap, np.cumsum(base)[:S] + members * Dc, 0.0)
        else:
            C = np.zeros(S)
        # requests in flight: runs with first chunk <= s <= end
        fl = np.zeros(S + 1, dtype=np.int64)
        np.add.at(fl, R.run_start, 1)
        np.add.at(fl, R.span_end + 1, -1)
        in_flight = np.cumsum(fl)[:S]
        prefill = np.where(E > 0, cm.prefill_base_s + cm.prefill_per_token_s * E, 0.0)
        decode = np.where(
            n_dec > 0,
            cm.decode_base_s + cm.decode_per_request_s * n_dec + cm.decode_per_context_token_s * C,
            0.0,
        )
        expect = prefill + decode
        _check_finite(col, instance, arr, step_start, step_end, durations=expect)
        got = step_end - step_start
        tol = _REL_DURATION * np.abs(expect) + _time_tol(step_start) + _time_tol(step_end)
        for st in np.flatnonzero(np.abs(got - expect) > tol):
            col.add(
                "duration",
                f"step {st}: duration {_t(got[st])} s but the cost model gives {_t(expect[st])} s "
                f"(weighted extend {E[st]:g}, decode batch {n_dec[st]}, context {C[st]:g})",
            )
        busy = np.where(is_p, n_adm, np.where(is_d, n_dec, in_flight))
        for st in np.flatnonzero(busy == 0):
            col.add(
                "steps", f"step {st}: no request is admitted or running in it (empty steps are not recorded)"
            )
        for st in np.flatnonzero(in_flight > lim.max_running_requests):
            col.add(
                "limits",
                f"step {st}: {in_flight[st]} requests in flight ({n_adm[st]} admitted + {in_flight[st] - n_adm[st]} "
                f"decoding) > max_running_requests {lim.max_running_requests}",
            )
        for st in np.flatnonzero(is_m & (ext_sum > lim.max_prefill_tokens) & (n_adm > 1)):
            col.add(
                "limits",
                f"step {st}: {n_adm[st]} requests admitted with {int(ext_sum[st])} extend tokens "
                f"> max_prefill_tokens {lim.max_prefill_tokens}",
            )
        # SGLang's PrefillAdder: every request but the last one added leaves budget
        # (rem_input_tokens > 0), and the chunk budget holds the page-rounded extends
        for st in np.flatnonzero(is_p & (n_adm > 1) & (paged_sum - paged_max >= lim.max_prefill_tokens)):
            col.add(
                "limits",
                f"step {st}: {n_adm[st]} chunks of {int(paged_sum[st])} page-rounded tokens: all but the largest "
                f"already reach max_prefill_tokens {lim.max_prefill_tokens}",
            )
        chunk = lim.chunked_prefill_size
        if chunk is not None:
            for st in np.flatnonzero(is_p & (paged_sum > chunk + ps - 1)):
                col.add(
                    "chunks",
                    f"step {st}: {int(paged_sum[st])} page-rounded extend tokens > chunked_prefill_size {chunk}",
                )
        runs_flat.check_chunks(col, is_p, S, chunk)
        stats["peak_running"] = int(in_flight.max())
        stats["max_step_extend"] = int(ext_sum.max())
        if is_p.any() or is_d.any():
            _check_reservations(instance, trace, R, is_p, Dc, col, stats)

    # ---- preemption: swap events, the link, the host pool ---------------------------------
    if trace.switches is not None or R.run_swap.any() or runs_flat.interrupted:
        _check_switches(instance, trace, col, stats, S, step_start, step_end, Dc)

    # ---- prompt-based checks: cache-hit claims and KV capacity ----------------------------
    if S and len(R.run_rec):
        _check_prompts(instance, R, runs_flat.reqs, col, stats, reserve_output=not (is_p.any() or is_d.any()))

    stats["violation_counts"] = dict(col.counts)
    report = CheckReport(ok=not col.counts, violations=col.finish(), stats=stats)
    if strict:
        report.raise_if_failed()
    return report


@dataclass
class _Runs:
    """Every run of every record, flattened (record order, then run order).

    Per run: ``run_rec`` (record position), ``run_req`` (instance index), ``run_start`` (step of
    the first chunk), ``span_first`` (step of the last chunk: it produces a token), ``span_end``,
    ``span_fill`` (the run's fill in tokens), ``run_cached``, ``run_produced`` (tokens produced by
    earlier runs), ``run_chunked`` (several chunks); per chunk: ``piece_run``, ``piece_step``,
    ``piece_tokens``, ``piece_fill``.
    """

    reqs: list[Request]
    ok_rec: np.ndarray
    simple: np.ndarray
    first_token_step: np.ndarray
    run_rec: np.ndarray
    run_req: np.ndarray
    run_start: np.ndarray
    span_first: np.ndarray
    span_end: np.ndarray
    span_fill: np.ndarray
    run_cached: np.ndarray
    run_produced: np.ndarray
    run_n_chunks: np.ndarray
    piece_run: np.ndarray
    piece_step: np.ndarray
    piece_tokens: np.ndarray
    piece_fill: np.ndarray
    piece_index: np.ndarray  # position of the chunk in its run
    run_swap: np.ndarray  # 1 for a run that resumes by swap-in (decodes from its first step on)
    interrupted: bool = False  # some run ended by a policy's preemption ("preempt" / "swap")

    def select(self, rec_mask: np.ndarray) -> "_Runs":
        keep_run = rec_mask[self.run_rec]
        new_id = np.cumsum(keep_run) - 1
        keep_piece = keep_run[self.piece_run]
        return _Runs(
            reqs=[r for r, k in zip(self.reqs, keep_run) if k],
            ok_rec=self.ok_rec, simple=self.simple, first_token_step=self.first_token_step,
            run_rec=self.run_rec[keep_run], run_req=self.run_req[keep_run], run_start=self.run_start[keep_run],
            span_first=self.span_first[keep_run], span_end=self.span_end[keep_run],
            span_fill=self.span_fill[keep_run], run_cached=self.run_cached[keep_run],
            run_produced=self.run_produced[keep_run], run_n_chunks=self.run_n_chunks[keep_run],
            piece_run=new_id[self.piece_run[keep_piece]], piece_step=self.piece_step[keep_piece],
            piece_tokens=self.piece_tokens[keep_piece], piece_fill=self.piece_fill[keep_piece],
            piece_index=self.piece_index[keep_piece], run_swap=self.run_swap[keep_run],
            interrupted=self.interrupted,
        )

    def check_chunks(self, col: "_Collector", is_p: np.ndarray, S: int, chunk: int | None) -> None:
        """A chunked run's chunks lie in consecutive prefill steps (SGLang resumes the chunked
        request first in the very next pass, which is always a prefill), chunking exists only
        with ``chunked_prefill_size`` set, and at most one request per step is left mid-prefill."""
        multi = np.flatnonzero(self.run_n_chunks > 1)
        if not len(multi):
            return
        if chunk is None:
            k = int(multi[0])
            col.add("chunks", f"request {self.reqs[k].id!r}: prefilled in {self.run_n_chunks[k]} chunks but "
                    "chunked_prefill_size is off")
        order = np.lexsort((self.piece_index, self.piece_run))
        pr, pst = self.piece_run[order], self.piece_step[order]
        same = pr[1:] == pr[:-1]
        bad = np.flatnonzero(same & (pst[1:] != pst[:-1] + 1))
        for j in bad[:20]:
            col.add("chunks", f"request {self.reqs[pr[j]].id!r}: chunk in step {pst[j]} is not followed by the "
                    f"next one in step {pst[j] + 1} (got {pst[j + 1]})")
        mid = pst[:-1][same]  # steps that leave a run mid-prefill
        cnt = np.bincount(mid, minlength=S)
        for st in np.flatnonzero(cnt > 1):
            col.add("chunks", f"step {st}: {cnt[st]} requests left mid-prefill (SGLang chunks one at a time)")
        for st in np.flatnonzero((cnt > 0) & ~is_p[:S] & (np.arange(S) < len(cnt))):
            col.add("chunks", f"step {st}: a chunked prefill in a step of kind other than P")


def _flatten_runs(
    trace: Trace, instance: Instance, rec_for: list[int], S: int, dcap: np.ndarray, Dc: np.ndarray,
    col: "_Collector",
) -> _Runs:
    """Flatten every record's runs and check their structure (kind ``runs``): the runs of a request
    are in step order and do not overlap; every run but the last ends with a retraction, the last
    with ``finish``; each run's chunks add up to its fill (``prompt + tokens produced before``)
    minus its page-aligned cached prefix (``< fill``); each run produces at least one token (one at
    its last chunk, one per decode-capable step after it up to its end) and all of them add up to
    ``output_len``; ``cached_tokens`` is the first run's, ``extend_tokens`` the sum of all chunks."""
    recs = trace.requests
    inst_reqs = instance.requests
    index_of = {r.id: i for i, r in enumerate(inst_reqs)}
    ps = instance.limits.page_size
    nrec = len(recs)
    ok = np.ones(nrec, dtype=bool)
    simple = np.zeros(nrec, dtype=bool)
    fts = np.zeros(nrec, dtype=np.int64)
    R: dict[str, list[int]] = {k: [] for k in ("rec", "req", "start", "first", "end", "fill", "cached", "produced", "nch", "swap")}
    P: dict[str, list[int]] = {k: [] for k in ("run", "step", "tok", "fill", "idx")}
    reqs_list: list[Request] = []
    for pos, rec in enumerate(recs):
        i = index_of.get(rec.id)
        req = inst_reqs[i] if i is not None else None
        if rec.runs is None:
            simple[pos] = True
            fts[pos] = rec.admit_step
            runs = rec.all_runs()
        else:
            runs = rec.runs
            if not runs:
                col.add("runs", f"request {rec.id!r}: empty runs")
                ok[pos] = False
                continue
        where = f"request {rec.id!r}"
        quiet = rec.runs is None  # the implied run: its facts are checked on the record itself
        produced = 0
        prev_end = -1
        total_ext = 0
        bad = False
        for k, run in enumerate(runs):
            a, c, chunks, e, end = run[:5]
            sw = run.swapped_in
            if sw is not None:  # resumes by swap-in: no chunk, first token in its first (decode) step
                fill = rec.prompt_len + produced
                if not _swap_in_run_ok(col, where, k, runs, a, c, chunks, e, sw, fill, ps, S, dcap):
                    bad = True
                    break
                made = 1 + int(Dc[e] - Dc[a])
                produced += made
                R["rec"].append(pos)
                R["req"].append(-1 if i is None else i)
                R["start"].append(a)
                R["first"].append(a)
                R["end"].append(e)
                R["fill"].append(fill)
                R["cached"].append(c)
                R["produced"].append(produced - made)
                R["nch"].append(0)
                R["swap"].append(1)
                reqs_list.append(req if req is not None else _placeholder(rec))
                prev_end = e
                continue
            if not chunks:
                col.add("runs", f"{where}: run {k} has no prefill chunk")
                bad = True
                break
            steps = [st for st, _ in chunks]
            if steps[0] != a or any(y <= x for x, y in zip(steps, steps[1:])) or not (0 <= a and steps[-1] <= e < S):
                if not quiet:
                    col.add("runs", f"{where}: run {k} steps (admit {a}, chunks {steps}, end {e}) are not ordered "
                            f"inside 0..{S - 1}")
                bad = True
                break
            if a <= prev_end:
                col.add("runs", f"{where}: run {k} starts in step {a}, before run {k - 1} ended (step {prev_end})")
                bad = True
                break
            want_end = "finish" if k == len(runs) - 1 else "retract"
            if end != want_end and not (k < len(runs) - 1 and end in _INTERRUPTS):
                col.add("runs", f"{where}: run {k} ends with {end!r}, expected {want_end!r}")
            fill = rec.prompt_len + produced
            tok = sum(t for _, t in chunks)
            if not quiet and any(t < 1 for _, t in chunks):
                col.add("runs", f"{where}: run {k} has a chunk of fewer than 1 token")
            if not quiet and (c < 0 or c % ps or (c >= fill and fill > 0) or c + tok != fill):
                col.add("tokens", f"{where}: run {k}: cached {c} (page-aligned, < fill) + chunks {tok} != fill {fill} "
                        f"(prompt {rec.prompt_len} + {produced} produced before)")
            made = 1 + int(Dc[e] - Dc[steps[-1]])
            produced += made
            total_ext += tok
            if k == 0:
                fts[pos] = steps[-1]
            for j, (st, t) in enumerate(chunks):
                P["run"].append(len(R["rec"]))
                P["step"].append(st)
                P["tok"].append(t)
                P["fill"].append(fill)
                P["idx"].append(j)
            R["rec"].append(pos)
            R["req"].append(-1 if i is None else i)
            R["start"].append(a)
            R["first"].append(steps[-1])
            R["end"].append(e)
            R["fill"].append(fill)
            R["cached"].append(c)
            R["produced"].append(produced - made)
            R["nch"].append(len(chunks))
            R["swap"].append(0)
            reqs_list.append(req if req is not None else _placeholder(rec))
            prev_end = e
        if bad:
            ok[pos] = False
            # drop this record's runs
            while R["rec"] and R["rec"][-1] == pos:
                r_id = len(R["rec"]) - 1
                for key in R:
                    R[key].pop()
                reqs_list.pop()
                while P["run"] and P["run"][-1] == r_id:
                    for key in P:
                        P[key].pop()
            continue
        if produced != rec.output_len and not (quiet and not trace.step_kinds):
            col.add("runs", f"{where}: its runs produce {produced} tokens, output_len is {rec.output_len}")
        if rec.runs is not None:
            if rec.cached_tokens != runs[0].cached_tokens or rec.extend_tokens != total_ext:
                col.add("tokens", f"{where}: cached_tokens {rec.cached_tokens} / extend_tokens {rec.extend_tokens} "
                        f"disagree with its runs ({runs[0].cached_tokens} / {total_ext})")
            if rec.admit_step != runs[0].admit_step or rec.finish_step != runs[-1].end_step:
                col.add("causality", f"{where}: admit_step/finish_step {rec.admit_step}/{rec.finish_step} disagree with "
                        f"its runs ({runs[0].admit_step}/{runs[-1].end_step})")
    interrupted = any(r.runs is not None and any(x.end in ("preempt", "swap") for x in r.runs) for r in recs)
    kinds_P = ~dcap
    arrs = {k: np.asarray(v, dtype=np.int64) for k, v in R.items()}
    parr = {k: np.asarray(v, dtype=np.int64) for k, v in P.items()}
    if len(parr["step"]):
        inb = (parr["step"] >= 0) & (parr["step"] < S)
        if inb.all():
            bad_kind = np.flatnonzero(~kinds_P[parr["step"]] & ~_m_steps(trace, S)[parr["step"]])
            for j in bad_kind[:20]:
                col.add("steps", f"request {reqs_list[parr['run'][j]].id!r}: prefill chunk in step {parr['step'][j]}, "
                        "which is a decode step (kind D)")
    return _Runs(
        reqs=reqs_list, ok_rec=ok, simple=simple, first_token_step=fts,
        run_rec=arrs["rec"], run_req=arrs["req"], run_start=arrs["start"], span_first=arrs["first"],
        span_end=arrs["end"], span_fill=arrs["fill"], run_cached=arrs["cached"], run_produced=arrs["produced"],
        run_n_chunks=arrs["nch"], piece_run=parr["run"], piece_step=parr["step"], piece_tokens=parr["tok"],
        piece_fill=parr["fill"], piece_index=parr["idx"], run_swap=arrs["swap"],
        interrupted=interrupted,
    )


_INTERRUPTS = ("retract", "preempt", "swap")


def _swap_in_run_ok(
    col: "_Collector", where: str, k: int, runs: Sequence[Any], a: int, c: int, chunks: Any, e: int, sw: int,
    fill: int, ps: int, S: int, dcap: np.ndarray,
) -> bool:
    """Structure of a run that resumes by swap-in (kinds ``runs``, ``tokens``, ``switch``): it
    follows a ``"swap"`` run (never a drop-mode ``"preempt"``: that KV is gone), has no chunk, starts
    in a decode-capable step, and brings back ``fill - 1`` KV tokens (``cached + swapped_in``)."""
    if k == 0 or runs[k - 1].end != "swap":
        prev = "no earlier run" if k == 0 else f"run {k - 1} ended with {runs[k - 1].end!r}"
        col.add("switch", f"{where}: run {k} resumes by swap-in but {prev}: only a swapped-out request's KV is in "
                "host memory (a dropped request must recompute)")
        return False
    if chunks:
        col.add("runs", f"{where}: run {k} resumes by swap-in but also has prefill chunks")
        return False
    if not (0 <= a <= e < S):
        col.add("runs", f"{where}: run {k} steps (admit {a}, end {e}) are not ordered inside 0..{S - 1}")
        return False
    if a <= runs[k - 1].end_step:
        col.add("runs", f"{where}: run {k} starts in step {a}, before run {k - 1} ended (step {runs[k - 1].end_step})")
        return False
    if not dcap[a]:
        col.add("switch", f"{where}: run {k} resumes by swap-in in step {a}, which does not decode (kind P)")
        return False
    if sw < 0 or c < 0 or c % ps or c + sw != fill - 1:
        col.add("tokens", f"{where}: run {k}: cached {c} (page-aligned) + swapped in {sw} != fill {fill} - 1 "
                "(the KV of every token but the last one produced)")
    return True


def _check_switches(
    instance: Instance, trace: Trace, col: "_Collector", stats: dict[str, Any], S: int, step_start: np.ndarray,
    step_end: np.ndarray, Dc: np.ndarray,
) -> None:
    """Replay the preemption's copies (kind ``switch``; module docstring, ``switch``)."""
    from prefixsched.errors import InputError
    from prefixsched.theory.switch_cost import SwitchCostModel

    cfg = trace.meta.get("preemption")
    if not isinstance(cfg, dict) or cfg.get("mode") not in ("drop", "swap"):
        col.add("switch", "the trace preempts but trace.meta.preemption does not give the mode (drop/swap)")
        return
    swap = cfg["mode"] == "swap"
    events = trace.switches or []
    runs_of = {r.id: r.all_runs() for r in trace.requests}
    plen = {r.id: r.prompt_len for r in trace.requests}
    for rid, runs in runs_of.items():
        for x in runs:
            if x.end == ("preempt" if swap else "swap"):
                col.add("switch", f"request {rid!r}: a run ends with {x.end!r} in a {cfg['mode']}-mode trace")
    if not swap:
        if events:
            col.add("switch", f"a drop-mode trace has {len(events)} copy events")
        return
    try:
        model = SwitchCostModel.from_dict(cfg["switch"], "trace.meta.preemption.switch")
        sync = bool(cfg["sync"])
        reuse = bool(cfg["reuse"])
        cap = int(cfg["host_capacity_tokens"])
    except (KeyError, TypeError, ValueError, InputError) as e:
        col.add("switch", f"trace.meta.preemption lacks the copy model / host pool configuration ({e})")
        return
    ps = instance.limits.page_size
    bpt = model.model.bytes_per_token
    outs: dict[str, list[Any]] = defaultdict(list)
    ins: dict[str, list[Any]] = defaultdict(list)
    for ev in events:
        if ev.kind == "out":
            outs[ev.request].append(ev)
        elif ev.kind == "in":
            ins[ev.request].append(ev)
        elif ev.kind == "abort":  # cancels the request's latest swap-in: no run follows it
            if not ins.get(ev.request):
                col.add("switch", f"request {ev.request!r}: a swap-in abort in step {ev.step} without a swap-in")
            else:
                ins[ev.request].pop()
            continue
        if ev.kind == "evict":
            if ev.tokens < 0:
                col.add("switch", f"step {ev.step}: a host eviction of {ev.tokens} tokens")
            continue
        where = f"request {ev.request!r} ({ev.kind} in step {ev.step})"
        if not 0 <= ev.tokens <= ev.kv_tokens:
            col.add("switch", f"{where}: moves {ev.tokens} tokens of a KV of {ev.kv_tokens}")
        if ev.bytes != ev.tokens * bpt:
            col.add("switch", f"{where}: {ev.bytes} bytes for {ev.tokens} tokens of {bpt} bytes")
        lo, hi = model.copy_bounds(ev.tokens)
        if not lo <= ev.copies <= hi:
            col.add("switch", f"{where}: {ev.copies} copies, the {model.granularity} granularity gives {lo}..{hi}")
        want = model.seconds(ev.bytes, ev.copies)
        got = ev.t_end - ev.t_start
        if abs(got - want) > 1e-9 * max(want, 1e-12) + _time_tol(ev.t_end) + _time_tol(ev.t_start):
            col.add("switch", f"{where}: the copy takes {_t(got)} s, the copy model gives {_t(want)} s")
        if not 0 <= ev.step <= S:
            col.add("switch", f"{where}: issue step outside 0..{S}")
            continue
        if ev.step > 0 and ev.t_start < step_end[ev.step - 1] - _time_tol(step_end[ev.step - 1]):
            col.add("switch", f"{where}: starts at {_t(ev.t_start)}, before the pass that issued it (step "
                    f"{ev.step - 1} ended at {_t(step_end[ev.step - 1])})")
        if sync and ev.step < S and ev.t_end > step_start[ev.step] + _time_tol(step_start[ev.step]):
            col.add("switch", f"{where}: a synchronous copy ends at {_t(ev.t_end)}, after step {ev.step} started "
                    f"({_t(step_start[ev.step])}): the GPU must stall for it")
        if not reuse and ev.kind == "out" and ev.tokens != ev.kv_tokens:
            col.add("switch", f"{where}: without reuse a swap-out sends the whole KV ({ev.kv_tokens}), not {ev.tokens}")
    # the link: one stream (sync) or one per direction (async); copies do not overlap
    lanes = [[e for e in events if e.kind in ("out", "in")]] if sync else [
        [e for e in events if e.kind == "out"], [e for e in events if e.kind == "in"]]
    for lane in lanes:
        lane = sorted(lane, key=lambda e: (e.t_start, e.t_end))
        for x, y in zip(lane, lane[1:]):
            if y.t_start < x.t_end - _time_tol(x.t_end):
                col.add("switch", f"copies of {x.request!r} and {y.request!r} overlap on the link "
                        f"([{_t(x.t_start)}, {_t(x.t_end)}) and [{_t(y.t_start)}, ...))")
    # every swap ends with a swap-out; every swap-in run has its copy, after that swap-out
    for rid, runs in runs_of.items():
        o, n = outs.get(rid, []), ins.get(rid, [])
        swaps = [k for k, x in enumerate(runs) if x.end == "swap"]
        backs = [k for k, x in enumerate(runs) if x.swapped_in is not None]
        if len(o) != len(swaps) or len(n) != len(backs):
            col.add("switch", f"request {rid!r}: {len(swaps)} swapped runs / {len(backs)} swap-in runs but "
                    f"{len(o)} swap-out / {len(n)} swap-in copies")
            continue
        produced = 0
        out_at: dict[int, Any] = {}
        j = 0
        for k, x in enumerate(runs):
            if not (o or n):
                break
            fill = plen[rid] + produced
            first = x.admit_step if x.swapped_in is not None else x.chunks[-1][0] if x.chunks else x.admit_step
            if not (0 <= first <= x.end_step < S):
                break  # reported by the runs check
            made = 1 + int(Dc[x.end_step] - Dc[first])
            if x.end == "swap":
                ev = o[j]
                j += 1
                out_at[k] = ev
                if ev.kv_tokens != fill + made - 1:
                    col.add("switch", f"request {rid!r}: run {k} holds {fill + made - 1} KV tokens at its swap-out, "
                            f"the copy says {ev.kv_tokens}")
                if ev.step <= x.end_step:
                    col.add("switch", f"request {rid!r}: swap-out issued in step {ev.step}, not after its run's last "
                            f"token (step {x.end_step})")
            if x.swapped_in is not None:
                ev = n[backs.index(k)]
                prev = out_at.get(k - 1)
                if ev.tokens != x.swapped_in or ev.kv_tokens != fill - 1:
                    col.add("switch", f"request {rid!r}: run {k} swaps in {x.swapped_in} of {fill - 1} tokens, the copy "
                            f"moves {ev.tokens} of {ev.kv_tokens}")
                if prev is not None and ev.t_start < prev.t_end - _time_tol(prev.t_end):
                    col.add("switch", f"request {rid!r}: swap-in starts at {_t(ev.t_start)} before its swap-out ends "
                            f"at {_t(prev.t_end)}")
                st = x.admit_step
                if 0 <= st < S and (ev.t_end > step_start[st] + _time_tol(step_start[st]) or ev.step > st):
                    col.add("switch", f"request {rid!r}: runs in step {st} (from {_t(step_start[st])}) while still being "
                            f"swapped in (copy issued in step {ev.step}, ends {_t(ev.t_end)})")
            produced += made
    # host capacity: sends add, evictions and completed swap-ins free (a lower bound on use)
    ledger: list[tuple[float, int, int]] = []
    for idx, ev in enumerate(events):
        if ev.kind == "out":
            ledger.append((ev.t_start, idx, ev.tokens))
        elif ev.kind == "evict":
            ledger.append((ev.t_start, idx, -ev.tokens))
        elif ev.kind == "in" and ev.tokens >= 0:
            ledger.append((ev.t_end, idx, -(ev.kv_tokens if not reuse else ev.kv_tokens % ps)))
    ledger.sort()
    used, peak = 0, 0
    for t, idx, d in ledger:
        used += d
        peak = max(peak, used)
        if used > cap:
            col.add("switch", f"host pool holds at least {used} tokens at t={_t(t)} > host_capacity_tokens {cap}")
            break
    stats["peak_host_tokens"] = int(peak)
    stats["switch_events"] = len(events)


def _m_steps(trace: Trace, S: int) -> np.ndarray:
    k = trace.step_kinds
    if k is None or len(k) != S:
        return np.ones(S, dtype=bool)
    return np.frombuffer(k.encode("ascii"), dtype=np.uint8) == ord("M")


def _placeholder(rec: Any) -> Request:
    """A stand-in request for a record the instance does not have (already reported)."""
    return Request(id=rec.id, client=rec.client, arrival=0.0, prompt=(0,) * max(1, rec.prompt_len), output_len=max(1, rec.output_len))


def _check_reservations(
    instance: Instance, trace: Trace, R: _Runs, is_p: np.ndarray, Dc: np.ndarray, col: "_Collector",
    stats: dict[str, Any],
) -> None:
    """SGLang's admission budget, as a necessary condition (kind ``reserve``).

    A request SGLang admits in a prefill step passed ``extend + min(max_new - generated, clip) +
    page < free + evictable - total_offset``, where ``total_offset`` already holds, per request of
    the decode batch, ``min(max_new - generated, clip) * ratio`` and, per request admitted before it
    in the step, its page-rounded extend + a page + ``min(max_new, clip)`` (0 while chunked). The
    checker cannot know the tree's exact free + evictable tokens, so it uses the capacity minus the
    prompt pages and private KV that the decode batch provably holds (a lower bound of what is not
    free), and the smallest ``new_token_ratio`` the engine's configuration allows
    (``trace.meta["sglang"]``; ratio 1 for ``ignore_eos``); decode-batch requests with
    ``max_new > clip`` are left out (a lower bound again). So a violation proves the engine
    over-admitted. Skipped when the trace has no sglang configuration.
    """
    cfg = trace.meta.get("sglang")
    if not isinstance(cfg, dict):
        return
    try:
        clip = int(cfg["clip_max_new_tokens"])
        ratio_min = 1.0 if cfg.get("ignore_eos") else min(
            float(cfg["init_new_token_ratio"]) * float(cfg["schedule_conservativeness"]), 1.0
        ) * float(cfg["min_new_token_ratio_factor"])
        ratio_min = min(ratio_min, 1.0)
        mnt = cfg.get("max_new_tokens")
    except (KeyError, TypeError, ValueError):
        col.add("reserve", "trace.meta.sglang lacks the engine's admission configuration")
        return
    S = len(is_p)
    lim = instance.limits
    ps = lim.page_size
    cap = lim.kv_capacity_tokens
    out_len = np.array([r.output_len for r in R.reqs], dtype=np.int64)
    prompt_len = np.array([r.prompt_len for r in R.reqs], dtype=np.int64)
    max_new = out_len if mnt is None else np.maximum(out_len, int(mnt))
    # decode-batch offsets at step s: members m (first < s <= end, with s a prefill step) contribute
    # (max_new - produced_before_run - (1 + Dc[s-1] - Dc[first])) * ratio for max_new <= clip
    lin = max_new <= clip
    base = (max_new - R.run_produced - 1 + Dc[R.span_first]).astype(np.float64) * lin
    diff_b = np.zeros(S + 1)
    diff_n = np.zeros(S + 1)
    np.add.at(diff_b, R.span_first + 1, base)
    np.add.at(diff_b, R.span_end + 1, -base)
    np.add.at(diff_n, R.span_first + 1, lin.astype(np.float64))
    np.add.at(diff_n, R.span_end + 1, -lin.astype(np.float64))
    Dprev = np.concatenate([[0], Dc[:-1]])
    offset = ratio_min * (np.cumsum(diff_b)[:S] - np.cumsum(diff_n)[:S] * Dprev)
    # what the decode batch provably holds: its prompt's full pages (counted once per request: a
    # lower bound would need the shared-prefix union; the union is at most this, so use the union
    # lower bound of 0 for shared prefixes: only private remainders and produced outputs count)
    held_priv = ((R.span_fill - (prompt_len // ps) * ps) + R.run_produced * 0).astype(np.float64)
    diff_h = np.zeros(S + 1)
    np.add.at(diff_h, R.span_first + 1, held_priv)
    np.add.at(diff_h, R.span_end + 1, -held_priv)
    held = np.cumsum(diff_h)[:S]
    # the prefill batch of step s: each piece is charged c = page-rounded tokens + a page + the
    # clipped max_new if it completes the run's prefill (0 while chunked); a new admission L
    # (a run's first piece) was checked with t = its whole extend + min(max_new - produced, clip)
    # + a page against the pool left after the pieces added before it. Whatever L was last:
    # sum(c) - max over new admissions of (c_L - t_L) < the pool left before the step.
    last_piece = R.piece_index == R.run_n_chunks[R.piece_run] - 1
    pr_all = R.piece_run
    paged_p = -(-R.piece_tokens // ps) * ps
    c_all = (paged_p + ps + np.where(last_piece, np.minimum(max_new[pr_all], clip), 0)).astype(np.float64)
    C = np.bincount(R.piece_step, weights=c_all, minlength=S)[:S]
    first_piece = R.piece_index == 0
    pr = pr_all[first_piece]
    pst = R.piece_step[first_piece]
    whole = (R.span_fill - R.run_cached)[pr]
    left = np.minimum(np.maximum(max_new[pr] - R.run_produced[pr], 0), clip)
    t = (whole + left + ps).astype(np.float64)
    slack = np.full(S, -np.inf)
    np.maximum.at(slack, pst, c_all[first_piece] - t)
    add = np.where(np.isfinite(slack), C - slack, 0.0)
    bad = np.flatnonzero(is_p & np.isfinite(slack) & (add + offset >= cap - held))
    for st in bad:
        col.add(
            "reserve",
            f"step {st}: the prefill batch reserves at least {add[st]:.0f} tokens and the decode batch at least "
            f"{offset[st]:.0f}, not below the {cap - held[st]:.0f} tokens the pool can have had free or evictable",
        )
    stats["reservation_checked_steps"] = int((is_p & np.isfinite(slack)).sum())


def _check_prompts(
    instance: Instance,
    R: _Runs,
    reqs: list[Request],
    col: _Collector,
    stats: dict[str, Any],
    *,
    reserve_output: bool,
) -> None:
    ps = instance.limits.page_size
    m = len(R.run_rec)
    paths, U, n_nodes = prefix_paths(reqs, ps)
    a_step = R.run_start
    cached = R.run_cached
    fill = R.span_fill
    plen = [r.prompt_len for r in reqs]

    # -- cache-hit claims: process run admissions in step order; query, then insert the step's
    # prompts. A prompt q through node d shares min(d*U, len_q, len_r) tokens with r; whole pages
    # of that. Outputs are unique to their request: no other request shares them, but a re-prefill
    # after a retraction may find its own earlier fill (prompt + outputs) in the tree.
    maxlen = [0] * n_nodes  # longest already-prefilled prompt through the node (tokens)
    order = np.argsort(a_step, kind="stable").tolist()
    a_list = a_step.tolist()
    cached_list = cached.tolist()
    fill_list = fill.tolist()
    rec_list = R.run_rec.tolist()
    own_fill: dict[int, int] = {}  # record -> longest fill of its runs so far (outputs included)
    bound_total = 0
    j = 0
    while j < m:
        s = a_list[order[j]]
        k = j
        while k < m and a_list[order[k]] == s:
            k += 1
        group = order[j:k]
        for q in group:
            ln = plen[q]
            shared = 0
            reach = 0
            for node in paths[q]:
                ml = maxlen[node]
                if ml == 0:
                    break
                reach += U
                shared = min(reach, ml, ln)
                if shared < reach:
                    break
            bound = min(shared // ps * ps, fill_list[q] - 1)
            own = own_fill.get(rec_list[q], 0)  # a re-prefill may reuse its own earlier fill
            if own:
                bound = max(bound, min(own // ps * ps, fill_list[q] - 1))
            bound_total += bound
            if cached_list[q] > bound:
                col.add(
                    "cache",
                    f"request {reqs[q].id!r} (step {s}): claims {cached_list[q]} cached tokens but the "
                    f"longest page-aligned prefix shared with a prompt prefilled before step {s} allows "
                    f"at most {bound}",
                )
        for q in group:
            ln = plen[q]
            for node in paths[q]:
                if maxlen[node] < ln:
                    maxlen[node] = ln
            rq = rec_list[q]
            if fill_list[q] > own_fill.get(rq, 0):
                own_fill[rq] = fill_list[q]
        j = k
    first_run = np.ones(m, dtype=bool)
    first_run[1:] = R.run_rec[1:] != R.run_rec[:-1]
    stats["cached_tokens"] = int(cached[first_run].sum())
    stats["cached_tokens_bound"] = int(bound_total)

    # -- KV capacity: union of in-flight prompt pages + private remainders.
    # Page p (0-based) of a prompt lies in the node at the depth of its last token; node d holds
    # pages floor((d-1)U/ps) .. floor(dU/ps)-1 ("full" of them), of which request r has those below
    # its n_pages. The union holds, per node, the most any in-flight request has there: ``full``
    # while some in-flight request covers the node entirely, else the largest partial count.
    # Ideal engine: a run holds its prompt from its admission to its finish, with its full output
    # reserved. SGLang engine: a run provably holds its whole fill from the end of its prefill (its
    # last chunk) to its end (chunked and decoded KV before or beyond that is not counted: a lower
    # bound); the fill's output tokens are private.
    cap = instance.limits.kv_capacity_tokens
    n_pages = [ln // ps for ln in plen]
    out = [r.output_len for r in reqs]
    fl = fill.tolist()
    private = [
        (plen[q] - n_pages[q] * ps + out[q]) if reserve_output else (fl[q] - n_pages[q] * ps)
        for q in range(m)
    ]
    enter_step = (a_step if reserve_output else R.span_first).tolist()
    f_step = R.span_end
    fulls: list[list[tuple[int, int]]] = []  # (node, full) where the request covers the node
    partials: list[list[tuple[int, int]]] = []  # (node, count) where it covers 0 < count < full
    for q in range(m):
        npg = n_pages[q]
        fq: list[tuple[int, int]] = []
        pq: list[tuple[int, int]] = []
        for d, node in enumerate(paths[q], start=1):
            lo = (d - 1) * U // ps
            if lo >= npg:
                break
            hi = d * U // ps
            if npg >= hi:
                if hi > lo:
                    fq.append((node, hi - lo))
            else:
                pq.append((node, npg - lo))
        fulls.append(fq)
        partials.append(pq)
    full_ref = [0] * n_nodes
    held = [0] * n_nodes
    partial: dict[int, dict[int, int]] = {}
    total_pages = 0
    total_private = 0
    enter: dict[int, list[int]] = defaultdict(list)
    leave: dict[int, list[int]] = defaultdict(list)
    for q in range(m):
        enter[enter_step[q]].append(q)
        leave[int(f_step[q]) + 1].append(q)
    peak, peak_step = -1, -1
    for s in sorted(set(enter) | set(leave)):
        for q in leave.get(s, ()):
            total_private -= private[q]
            for node, full in fulls[q]:
                r = full_ref[node] - 1
                full_ref[node] = r
                if r == 0:
                    dd = partial.get(node)
                    new = max(dd) if dd else 0
                    total_pages += new - held[node]
                    held[node] = new
            for node, c in partials[q]:
                dd = partial[node]
                k = dd[c] - 1
                if k:
                    dd[c] = k
                else:
                    del dd[c]
                if full_ref[node] == 0 and held[node] == c:
                    new = max(dd) if dd else 0
                    total_pages += new - c
                    held[node] = new
        entering = enter.get(s)
        if not entering:
            continue  # only admissions raise the held total
        for q in entering:
            total_private += private[q]
            for node, full in fulls[q]:
                r = full_ref[node]
                full_ref[node] = r + 1
                if r == 0:
                    total_pages += full - held[node]
                    held[node] = full
            for node, c in partials[q]:
                dd = partial.setdefault(node, {})
                dd[c] = dd.get(c, 0) + 1
                if full_ref[node] == 0 and c > held[node]:
                    total_pages += c - held[node]
                    held[node] = c
        tokens = total_pages * ps + total_private
        if tokens > peak:
            peak, peak_step = tokens, s
        if tokens > cap:
            col.add(
                "kv",
                f"step {s}: requests in flight hold at least {tokens} KV tokens ({total_pages} shared "
                f"prompt pages of {ps} + {total_private} private) > kv_capacity_tokens {cap}",
            )
    stats["peak_kv_tokens"] = int(peak)
    stats["peak_kv_step"] = int(peak_step)


# ---------------------------------------------------------------------------------------------
# idle gaps


@dataclass(frozen=True)
class IdleGap:
    """An interval in which no step ran although a request was waiting.

    ``t_start`` is the later of the previous step's end and the earliest arrival among the requests
    still waiting; ``t_end`` the start of step ``next_step``; ``first_waiting`` the id of the
    earliest-arrived waiting request.
    """

    t_start: float
    t_end: float
    next_step: int
    first_waiting: str


def idle_with_waiting(instance: Instance, trace: Trace) -> list[IdleGap]:
    """Gaps where the server ran no step while some request had arrived and was not yet admitted.

    A request is waiting on ``[arrival, admit)``. The server is idle before step 0 and between
    ``step_end[s]`` and ``step_start[s+1]``. A gap is reported when a request with
    ``admit_step > s`` arrived before the gap ends (strictly: a request arriving exactly at
    ``step_start[s+1]`` and admitted there is not waiting). Work conservation (VTC/DLPM property P3)
    holds iff the list is empty. ``instance`` is accepted for symmetry with :func:`check_trace`
    (only the trace's records are read).

    Returns
    -------
    list[IdleGap]
        In time order. Runs in O(requests + steps) with numpy.
    """
    del instance
    arr = trace_arrays(trace)
    S = trace.n_steps
    if S == 0 or len(arr.ids) == 0:
        return []
    st = np.asarray(trace.step_start, dtype=np.float64)
    en = np.asarray(trace.step_end, dtype=np.float64)
    a_step = np.clip(arr.admit_step, 0, S - 1)
    # min arrival (and its record) among requests admitted in step s, then suffix-min over s' > s
    key = np.lexsort((np.arange(len(a_step)), arr.arrival, a_step))
    first_in_step = np.full(S, -1, dtype=np.int64)
    # first occurrence per step in key order = min arrival (ties by record order)
    steps_sorted = a_step[key]
    uniq, first_pos = np.unique(steps_sorted, return_index=True)
    first_in_step[uniq] = key[first_pos]
    arr_in_step = np.where(first_in_step >= 0, arr.arrival[np.maximum(first_in_step, 0)], np.inf)
    # suffix min over steps >= s, and the earliest step >= s attaining it
    best_rec = np.full(S + 1, -1, dtype=np.int64)
    best_arr = np.full(S + 1, np.inf)
    run_min = np.minimum.accumulate(arr_in_step[::-1])[::-1]
    hit = np.where(arr_in_step == run_min, np.arange(S), S)
    arg = np.minimum.accumulate(hit[::-1])[::-1]
    best_arr[:S] = run_min
    best_rec[:S] = np.where(arg < S, first_in_step[np.minimum(arg, S - 1)], -1)
    gaps: list[IdleGap] = []
    # before step 0: any request with admit_step >= 0 arrived before step_start[0]
    if best_arr[0] < st[0]:
        gaps.append(IdleGap(float(best_arr[0]), float(st[0]), 0, arr.ids[int(best_rec[0])]))
    if S > 1:
        gap_start = np.maximum(en[:-1], best_arr[1:S])
        gap_end = st[1:]
        for s in np.flatnonzero(gap_start < gap_end):
            first = arr.ids[int(best_rec[s + 1])]
            gaps.append(IdleGap(float(gap_start[s]), float(gap_end[s]), int(s) + 1, first))
    return gaps
