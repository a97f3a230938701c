"""A naive oracle of SGLang's admission rule, run against the ``sglang`` engine without SGLang.

The oracle is written from SGLang 0.5.23's ``PrefillAdder`` and ``_get_new_batch_prefill_raw``
(shared/specs/sglang.md §1.5-1.6), as plainly as possible: it reads only the AdmissionState the
engine dumps before each pass (``PassRecord.state``: the tree as token sequences, the locks, the
private tokens, the decode batch, the chunked request and the queue), rebuilds every quantity from
token lists (prefix sets, no radix tree), and walks the queue in the order the engine's
``calc_priority`` left it. It shares no code with prefixsched/reference/engine/.

For the native policies (FCFS, LPM) SGLang's loop visits the queue in order until the first
result other than CONTINUE, so the admitted requests, the chunked request and its length must be
exactly the engine's. The same check validates the dumped states the SGLang conformance replay
rebuilds.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from prefixsched.reference.policies import create
from prefixsched.reference.simulator import simulate
from prefixsched.testing.strategies import instances

CLIP = 4096


def _pages(seq, ps):
    """The set of page-aligned prefixes of ``seq`` (one tuple per full page boundary)."""
    return {tuple(seq[: k * ps]) for k in range(1, len(seq) // ps + 1)}


def _lcp(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def oracle(state: dict, order: list[str]) -> dict:
    """What SGLang's adder admits from ``state`` walking ``order`` (queue ids)."""
    ps = state["page_size"]
    cap = state["kv_capacity_tokens"]
    ratio = state["new_token_ratio"]
    tree_pages: set = set()
    for seq in state["tree"]:
        tree_pages |= _pages(seq, ps)
    locked: set = set()
    for seq in state["locks"]:
        locked |= _pages(seq, ps)
    tree_tokens = len(tree_pages) * ps
    avail = cap - tree_tokens - state["private_tokens"]
    evictable = (len(tree_pages) - len(locked & tree_pages)) * ps

    def match(fill):
        # the longest page-aligned prefix of fill in the tree, limited to len - 1 tokens
        best = 0
        for seq in state["tree"]:
            best = max(best, _lcp(fill, seq))
        best = best // ps * ps
        return min(best, (len(fill) - 1) // ps * ps)

    total_offset = sum(min(r["max_new_tokens"] - r["output_len"], CLIP) * ratio for r in state["running"])
    current_offset = 0.0
    rem_input = state["max_prefill_tokens"]
    rem_chunk = state["chunked_prefill_size"]
    held = set(locked)  # pages pinned (the batch's prefixes join as they are admitted)

    def remaining_total():
        return avail + evictable - (len(held) - len(locked)) * ps - total_offset

    def remaining_current():
        return avail + evictable - (len(held) - len(locked)) * ps - current_offset

    def charge(ext, max_new):
        nonlocal total_offset, current_offset, rem_input, rem_chunk
        paged = math.ceil(ext / ps) * ps
        total_offset += paged + ps + max_new
        current_offset += paged + ps
        rem_input -= paged
        if rem_chunk is not None:
            rem_chunk -= paged

    def state_now():
        if not (remaining_total() > 0 and remaining_current() > 0):
            return "NO_TOKEN"
        if rem_input <= 0 or (rem_chunk is not None and rem_chunk <= 0):
            return "OTHER"
        return "CONTINUE"

    admitted, extend, chunked = [], {}, None
    c = state["chunked"]
    if c is not None:  # add_chunked_req: resumed first, with the chunk budget (or the pool) left
        rem = min(rem_chunk, int(remaining_total()))
        if rem <= 0:
            rem = rem_chunk
        cand = len(c["fill"]) - c["prefix_len"]
        n = min(cand, rem)
        admitted.append(c["id"])
        extend[c["id"]] = n
        charge(n, 0 if cand > rem else min(c["max_new_tokens"], CLIP))
        if cand > rem:
            chunked = (c["id"], n)
    slots = state["max_running_requests"] - len(state["running"])
    queue = {q["id"]: q for q in state["queue"]}
    stop = None
    for rid in order:
        if state_now() == "OTHER":
            stop = "OTHER"
            break
        if len(admitted) >= slots:
            stop = "SLOTS"
            break
        q = queue[rid]
        fill = q["fill"]
        prefix = match(fill)
        max_new = min(max(q["max_new_tokens"] - q["output_len"], 0), CLIP)
        cand = len(fill) - prefix
        total = cand + max_new + ps
        mine = _pages(fill[:prefix], ps)
        extra = len(mine - held) * ps  # the temporary lock of the candidate's prefix
        if not total < remaining_total() - extra:
            stop = "NO_TOKEN"
            break
        paged = math.ceil(cand / ps) * ps
        if rem_chunk is None and admitted and paged >= rem_input:
            stop = "OTHER"
            break
        ext, max_res, is_chunk = cand, min(q["max_new_tokens"], CLIP), False
        if rem_chunk is not None and paged > rem_chunk:
            ext = rem_chunk // ps * ps
            ext = (prefix + ext) // ps * ps - prefix
            if ext <= 0:
                stop = "OTHER"
                break
            is_chunk, max_res = True, 0
        held |= mine
        admitted.append(rid)
        extend[rid] = ext
        charge(ext, max_res)
        if is_chunk:
            chunked = (rid, ext)
        s = state_now()
        if s != "CONTINUE":
            stop = s
            break
    return {"admitted": tuple(admitted), "extend": extend, "chunked": chunked, "stop": stop}


def _compare(inst, policy: str) -> int:
    recs = []
    simulate(inst, create(policy), engine="sglang", on_pass=recs.append)
    n = 0
    for p in recs:
        if p.kind != "prefill":
            continue
        want = oracle(p.state, list(p.walk_order))
        got = {"admitted": p.admitted, "extend": p.extend, "chunked": p.chunked}
        assert {k: want[k] for k in got} == got, (p.step, p.walk_order, want, got)
        n += 1
    return n


@settings(deadline=None)
@given(inst=instances(max_clients=3, max_requests_per_client=6, engine="sglang"),
       policy=st.sampled_from(["fcfs", "lpm"]))
def test_property_engine_admits_what_the_naive_oracle_admits(inst, policy):
    _compare(inst, policy)


def test_oracle_agrees_on_a_busy_shared_prefix_workload():
    from prefixsched.reference.workloads import make_workload
    import dataclasses

    inst = make_workload("shared-prefix", clients=3, seed=1)
    inst = dataclasses.replace(inst, requests=inst.requests[:60])
    tight = dataclasses.replace(inst, limits=dataclasses.replace(
        inst.limits, kv_capacity_tokens=12_000, chunked_prefill_size=1024, max_prefill_tokens=2048, max_running_requests=16))
    assert _compare(tight, "lpm") > 10
    assert _compare(tight, "fcfs") > 10
