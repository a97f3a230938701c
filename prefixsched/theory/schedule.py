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

    # ---- causality & tokens (per record, vectorised) ---------------------------------------
    a_step, f_step = arr.admit_step, arr.finish_step
    for k in np.flatnonzero(arr.arrival > arr.admit + _time_tol(arr.admit)):
        col.add(
            "causality",
            f"request {arr.ids[k]!r}: admitted at {_t(arr.admit[k])} before its arrival at "
            f"{_t(arr.arrival[k])}",
        )
    idx_ok = (a_step >= 0) & (f_step >= a_step) & (f_step < S)
    for k in np.flatnonzero(~idx_ok):
        col.add(
            "causality",
            f"request {arr.ids[k]!r}: step indices admit_step={a_step[k]}, finish_step={f_step[k]} "
            f"not within 0 <= admit_step <= finish_step < n_steps = {S}",
        )
    ok_idx = np.flatnonzero(idx_ok)
    a_ok, f_ok = a_step[ok_idx], f_step[ok_idx]
    for field_name, times, clock, steps, clock_name in (
        ("admit", arr.admit, step_start, a_step, "step_start"),
        ("first_token", arr.first_token, step_end, a_step, "step_end"),
        ("finish", arr.finish, step_end, f_step, "step_end"),
    ):
        x, y = times[ok_idx], clock[steps[ok_idx]]
        for j in np.flatnonzero(np.abs(x - y) > _time_tol(np.maximum(np.abs(x), np.abs(y)))):
            k = ok_idx[j]
            col.add(
                "causality",
                f"request {arr.ids[k]!r}: {field_name} {_t(times[k])} != {clock_name}[{steps[k]}] = "
                f"{_t(clock[steps[k]])}",
            )
    for k in np.flatnonzero(arr.finish_step != arr.admit_step + arr.output_len - 1):
        col.add(
            "causality",
            f"request {arr.ids[k]!r}: finish_step {f_step[k]} != admit_step {a_step[k]} + "
            f"output_len {arr.output_len[k]} - 1",
        )
    for k in np.flatnonzero(arr.cached + arr.extend != arr.prompt_len):
        col.add(
            "tokens",
            f"request {arr.ids[k]!r}: cached_tokens {arr.cached[k]} + extend_tokens {arr.extend[k]} "
            f"!= prompt_len {arr.prompt_len[k]}",
        )
    for k in np.flatnonzero(arr.extend < 1):
        col.add("tokens", f"request {arr.ids[k]!r}: extend_tokens {arr.extend[k]} < 1")
    for k in np.flatnonzero(arr.cached < 0):
        col.add("tokens", f"request {arr.ids[k]!r}: cached_tokens {arr.cached[k]} < 0")

    # ---- step aggregates (only records with valid step indices) ----------------------------
    stats: dict[str, Any] = {"n_requests": n, "n_steps": S}
    if S:
        cm = instance.cost_model
        lim = instance.limits
        pl = arr.prompt_len[ok_idx].astype(np.float64)
        ext = arr.extend[ok_idx]
        w_ext = (1.0 + cm.c_attn * pl) * ext.astype(np.float64)
        E = np.bincount(a_ok, weights=w_ext, minlength=S)[:S]
        ext_sum = np.bincount(a_ok, weights=ext.astype(np.float64), minlength=S)[:S]
        n_adm = np.bincount(a_ok, minlength=S)[:S]
        # decoding before step s: admit_step < s <= finish_step
        dec = np.zeros(S + 1, dtype=np.int64)
        np.add.at(dec, a_ok + 1, 1)
        np.add.at(dec, f_ok + 1, -1)
        n_dec = np.cumsum(dec)[:S]
        in_flight = n_adm + n_dec
        if cm.decode_per_context_token_s > 0:
            # context of r before step s = prompt_len + s - admit_step, summed over decoding r
            base = np.zeros(S + 1, dtype=np.float64)
            v = pl - a_ok
            np.add.at(base, a_ok + 1, v)
            np.add.at(base, f_ok + 1, -v)
            C = np.cumsum(base)[:S] + np.arange(S) * n_dec
        else:
            C = np.zeros(S)
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
        for s in np.flatnonzero(np.abs(got - expect) > tol):
            col.add(
                "duration",
                f"step {s}: duration {_t(got[s])} s but the cost model gives {_t(expect[s])} s "
                f"(weighted extend {E[s]:g}, decode batch {n_dec[s]}, context {C[s]:g})",
            )
        for s in np.flatnonzero(in_flight == 0):
            col.add(
                "steps", f"step {s}: no request is admitted or running in it (empty steps are not recorded)"
            )
        for s in np.flatnonzero(in_flight > lim.max_running_requests):
            col.add(
                "limits",
                f"step {s}: {in_flight[s]} requests in flight ({n_adm[s]} admitted + {n_dec[s]} "
                f"decoding) > max_running_requests {lim.max_running_requests}",
            )
        for s in np.flatnonzero((ext_sum > lim.max_prefill_tokens) & (n_adm > 1)):
            col.add(
                "limits",
                f"step {s}: {n_adm[s]} requests admitted with {int(ext_sum[s])} extend tokens "
                f"> max_prefill_tokens {lim.max_prefill_tokens}",
            )
        stats["peak_running"] = int(in_flight.max())
        stats["max_step_extend"] = int(ext_sum.max())

    # ---- prompt-based checks: cache-hit claims and KV capacity ----------------------------
    # pair every valid record with its instance request
    matched = [(i, pos) for i, pos in enumerate(rec_for) if pos >= 0 and idx_ok[pos]]
    if matched and S:
        _check_prompts(instance, arr, matched, col, stats)

    stats["violation_counts"] = dict(col.counts)
    report = CheckReport(ok=not col.counts, violations=col.finish(), stats=stats)
    if strict:
        report.raise_if_failed()
    return report


def _check_prompts(
    instance: Instance,
    arr: TraceArrays,
    matched: list[tuple[int, int]],
    col: _Collector,
    stats: dict[str, Any],
) -> None:
    ps = instance.limits.page_size
    reqs = [instance.requests[i] for i, _ in matched]
    pos = np.array([p for _, p in matched], dtype=np.int64)
    paths, U, n_nodes = prefix_paths(reqs, ps)
    a_step = arr.admit_step[pos]
    f_step = arr.finish_step[pos]
    cached = arr.cached[pos]
    plen = [r.prompt_len for r in reqs]
    m = len(reqs)

    # -- cache-hit claims: process admit steps in order; query, then insert the step's prompts.
    # A prompt q through node d shares min(d*U, len_q, len_r) tokens with r; whole pages of that.
    maxlen = [0] * n_nodes  # longest already-prefilled prompt through the node (tokens)
    order = np.argsort(a_step, kind="stable").tolist()
    a_list = a_step.tolist()
    cached_list = cached.tolist()
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
            bound = min(shared // ps * ps, ln - 1)
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
        j = k
    stats["cached_tokens"] = int(sum(cached_list))
    stats["cached_tokens_bound"] = int(bound_total)

    # -- KV capacity: union of in-flight prompt pages + private remainders.
    # Page p (0-based) of a prompt lies in the node at the depth of its last token; node d holds
    # pages floor((d-1)U/ps) .. floor(dU/ps)-1 ("full" of them), of which request r has those below
    # its n_pages. The union holds, per node, the most any in-flight request has there: ``full``
    # while some in-flight request covers the node entirely, else the largest partial count.
    cap = instance.limits.kv_capacity_tokens
    n_pages = [ln // ps for ln in plen]
    private = [plen[q] - n_pages[q] * ps + r.output_len for q, r in enumerate(reqs)]
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
        enter[a_list[q]].append(q)
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
