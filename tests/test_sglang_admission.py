"""One prefill pass of SGLang, replayed on an AdmissionState by SGLang's own
Scheduler._get_new_batch_prefill_raw (prefixsched.integration.conformance.replay_prefill_pass).

Hand-made states whose answers come from reading SGLang 0.5.23's source (each test says where),
hypothesis-generated states checked against invariants of that source, and the validation of
the state (no SGLang needed). Tests marked ``sglang`` skip without SGLang (fail instead under
PREFIXSCHED_REQUIRE_SGLANG=1).
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, strategies as st

from prefixsched.errors import InputError
from prefixsched.integration.conformance import SGLANG_POLICIES, replay_prefill_pass, validate_admission_state

HOT = list(range(100))
WARM = list(range(1000, 1050))
COLD = list(range(2000, 2040))


def state(**kw):
    s = {
        "page_size": 1, "kv_capacity_tokens": 4096, "max_prefill_tokens": 16384, "chunked_prefill_size": None,
        "max_running_requests": 64, "new_token_ratio": 0.7, "batch_is_full": False, "tree": [], "locks": [],
        "private_tokens": 0, "running": [], "chunked": None, "queue": [],
    }  # fmt: skip
    s.update(kw)
    return s


def q(rid, fill, max_new=16, out=0):
    return {"id": rid, "fill": list(fill), "max_new_tokens": max_new, "output_len": out}


# ---------------------------------------------------------------------------------------------
# validation (pure Python)


BAD = [
    ("state", 3),
    ("state.nope", {**state(), "nope": 1}),
    ("state.queue", {k: v for k, v in state().items() if k != "queue"}),
    ("state.page_size", state(page_size=0)),
    ("state.page_size", state(page_size=True)),
    ("state.kv_capacity_tokens", state(page_size=16, kv_capacity_tokens=100)),
    ("state.private_tokens", state(page_size=4, private_tokens=6)),
    ("state.private_tokens", state(private_tokens=-1)),
    ("state.chunked_prefill_size", state(chunked_prefill_size=0)),
    ("state.new_token_ratio", state(new_token_ratio=1.5)),
    ("state.new_token_ratio", state(new_token_ratio=float("nan"))),
    ("state.batch_is_full", state(batch_is_full=1)),
    ("state.tree[0][1]", state(tree=[[1, -2]])),
    ("state.tree[0]", state(tree=[[]])),
    ("state.locks", state(locks="x")),
    ("state.queue[0].fill", state(queue=[q("a", [])])),
    ("state.queue[0].output_len", state(queue=[q("a", [1, 2], out=2)])),
    ("state.queue[0].max_new_tokens", state(queue=[q("a", [1], max_new=0)])),
    ("state.queue[0].id", state(queue=[q("", [1])])),
    ("state.queue[1].id", state(queue=[q("a", [1]), q("a", [2])])),
    ("state.queue[0].id", state(running=[{"id": "a", "max_new_tokens": 4, "output_len": 1}], queue=[q("a", [2])])),
    ("state.queue[0].extra", state(queue=[{**q("a", [1]), "extra": 1}])),
    ("state.running[0].input_len", state(running=[{"id": "r", "max_new_tokens": 4, "output_len": 1, "input_len": 0}])),
    ("state.chunked.prefix_len", state(chunked={"id": "c", "fill": [1, 2], "prefix_len": 2, "max_new_tokens": 4})),
    ("state.chunked.fill", state(chunked={"id": "c", "prefix_len": 0, "max_new_tokens": 4})),
]


@pytest.mark.parametrize("field,bad", BAD, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD)])
def test_validation_names_the_field(field, bad):
    with pytest.raises(InputError) as ei:
        validate_admission_state(bad)
    assert ei.value.field == field


def test_validation_normalizes_a_good_state():
    s = validate_admission_state(state(queue=[q("a", (1, 2))], running=[{"id": "r", "max_new_tokens": 4, "output_len": 1}]))
    assert s["queue"][0]["fill"] == [1, 2] and s["running"][0]["input_len"] == 1


def test_unknown_policy_is_an_input_error():
    with pytest.raises(InputError, match="policy"):
        replay_prefill_pass(state(), "lof")


# ---------------------------------------------------------------------------------------------
# hand-made states (SGLang's answer from reading the source)


@pytest.mark.sglang
@pytest.mark.parametrize("policy", ["fcfs", "lpm"])
def test_spec_example_chunk_budget_64(policy):
    # sglang.md section 1.5, verified on CPU: chunk budget 64, requests of 40 and 50 tokens ->
    # the first CONTINUE, the second chunked to 24 tokens, OTHER (rem_chunk_tokens spent)
    r = replay_prefill_pass(state(chunked_prefill_size=64, kv_capacity_tokens=1024, queue=[q("a", range(40)), q("b", range(1000, 1050))]), policy)
    assert r["admitted"] == ["a", "b"] and r["extend"] == {"a": 40, "b": 24}
    assert r["chunked"] == {"id": "b", "extend_len": 24}
    assert (r["stop"], r["stop_where"]) == ("OTHER", "add_one_req")
    assert r["queue_after"] == [] and r["batch_is_full"] is False


def _lpm_state():
    return state(
        max_prefill_tokens=50,
        tree=[HOT + [5000], WARM + [6000]],
        queue=[q("cold", COLD + [1, 2, 3]), q("warm", WARM + [7, 8]), q("hot", HOT + [9, 9]), q("cold-dup", COLD + [4, 5, 6])],
    )


@pytest.mark.sglang
def test_lpm_order_and_in_batch_deprioritisation():
    # schedule_policy.py::_compute_prefix_matches: cold (hit 0 <= 32) goes into the simulated
    # waiting tree; cold-dup then matches 40 >= 32 tokens of it -> temporary_deprioritized;
    # _sort_by_longest_prefix: key -num_matched_prefix_tokens, deprioritized last
    r = replay_prefill_pass(_lpm_state(), "lpm")
    assert r["active_policy"] == "lpm"
    assert r["order"] == ["hot", "warm", "cold", "cold-dup"]
    assert r["deprioritized"] == ["cold-dup"]
    assert r["prefix_match"] == {"hot": 100, "warm": 50, "cold": 0, "cold-dup": 0}
    # admission without chunking: extends 2 + 2 + 43 = 47 of 50; cold-dup's 43 >= 3 left -> OTHER
    assert r["admitted"] == ["hot", "warm", "cold"]
    assert r["prefix"] == {"hot": 100, "warm": 50, "cold": 0} and r["extend"] == {"hot": 2, "warm": 2, "cold": 43}
    assert (r["stop"], r["stop_where"], r["queue_after"]) == ("OTHER", "add_one_req", ["cold-dup"])


@pytest.mark.sglang
def test_fcfs_keeps_queue_order_and_does_not_match():
    r = replay_prefill_pass(_lpm_state(), "fcfs")
    assert r["order"] == ["cold", "warm", "hot", "cold-dup"]
    assert r["deprioritized"] == [] and r["prefix_match"] == {}
    assert r["admitted"] == ["cold", "warm", "hot"] and r["prefix"]["hot"] == 100  # init_next_round_input matches


@pytest.mark.sglang
def test_dfs_weight_orders_heavier_subtrees_first():
    # base_prefix_cache.py::_dfs_weight_order: children by descending subtree weight (ties in
    # insertion order); a node's requests come after its children's
    A, A1, A2, B = list(range(10, 60)), list(range(60, 70)), list(range(70, 80)), list(range(200, 240))
    s = state(
        tree=[B + [1], A + A1 + [1], A + A2 + [1]],
        queue=[q("b", B + [5, 5]), q("a2", A + A2 + [5]), q("a1", A + A1 + [5]), q("a", A + [9, 9]), q("a1'", A + A1 + [6])],
    )
    r = replay_prefill_pass(s, "dfs-weight")
    assert r["active_policy"] == "dfs-weight"
    assert r["order"] == ["a1", "a1'", "a2", "a", "b"]


@pytest.mark.sglang
def test_lpm_falls_back_to_fcfs_above_128_waiting():
    # schedule_policy.py::_determine_active_policy: LPM degrades to FCFS when len(queue) > 128
    # (WAITING_QUEUE_PREFIX_MATCH_MAX); the queue keeps its order, nothing is de-prioritised
    many = [q(f"r{i:03d}", [3000 + i, 1]) for i in range(128)]
    r = replay_prefill_pass(state(tree=[HOT], queue=many + [q("hot", HOT + [1])]), "lpm")
    assert r["active_policy"] == "fcfs" and r["order"][-1] == "hot" and r["order"][0] == "r000"
    assert r["deprioritized"] == [] and r["prefix_match"] == {}
    assert len(r["admitted"]) == 64 and r["stop"] == "BATCH_FULL"  # max_running_requests
    r = replay_prefill_pass(state(tree=[HOT], queue=many[1:] + [q("hot", HOT + [1])]), "lpm")
    assert r["active_policy"] == "lpm" and r["order"][0] == "hot"


@pytest.mark.sglang
def test_page16_key_is_not_page_aligned_after_the_len_minus_one_cap():
    # common.py::match_kv_cache: num_matched = min(page-aligned hit, len - 1) = min(64, 63) = 63;
    # admission re-matches with the key capped at len - 1 = 63 -> page-aligned 48, extend 16
    T = list(range(64))
    r = replay_prefill_pass(state(page_size=16, tree=[T], queue=[q("x", T), q("y", T + [1])]), "lpm")
    assert r["prefix_match"] == {"x": 63, "y": 64} and r["order"] == ["y", "x"]
    assert r["prefix"] == {"x": 48, "y": 64} and r["extend"] == {"x": 16, "y": 1}


@pytest.mark.sglang
def test_page16_chunks_end_on_page_boundaries():
    # _select_prefill_admission: a chunk is rem_chunk // page * page, end page-aligned
    r = replay_prefill_pass(state(page_size=16, chunked_prefill_size=40, queue=[q("a", range(100))]), "fcfs")
    assert r["chunked"] == {"id": "a", "extend_len": 32}


@pytest.mark.sglang
def test_no_token_under_a_tight_pool():
    # prefill_budget.py::check_prefill: total_tokens = extend + min(max_new, 4096) + page must be
    # < free + evictable - offsets; a: 100 + 100 + 1 = 201 < 256; then the offset is 201, b fails
    r = replay_prefill_pass(state(kv_capacity_tokens=256, queue=[q("a", range(100), 100), q("b", range(500, 600), 100)]), "fcfs")
    assert r["admitted"] == ["a"] and (r["stop"], r["stop_where"]) == ("NO_TOKEN", "add_one_req")
    assert r["batch_is_full"] is True and r["queue_after"] == ["b"]


@pytest.mark.sglang
def test_running_requests_reserve_new_token_ratio_of_their_remaining_output():
    # PrefillAdder.__init__: offset += min(max_new - len(output_ids), 4096) * new_token_ratio
    # pool 400: a needs 100 + 100 + 1 = 201; running r reserves (300 - 100) * ratio
    run = [{"id": "r", "max_new_tokens": 300, "output_len": 100}]
    ok = replay_prefill_pass(state(kv_capacity_tokens=400, running=run, new_token_ratio=0.5, queue=[q("a", range(100), 100)]), "fcfs")
    assert ok["admitted"] == ["a"]  # 201 < 400 - 100
    no = replay_prefill_pass(state(kv_capacity_tokens=400, running=run, new_token_ratio=1.0, queue=[q("a", range(100), 100)]), "fcfs")
    assert no["admitted"] == [] and no["stop"] == "NO_TOKEN" and no["batch_is_full"] is True  # 201 >= 400 - 200


@pytest.mark.sglang
def test_private_tokens_and_locks_shrink_the_budget():
    # free + evictable: private tokens are neither; a locked tree path is not evictable
    s = state(kv_capacity_tokens=300, tree=[list(range(5000, 5100))], queue=[q("a", range(100), 90)])
    assert replay_prefill_pass(s, "fcfs")["admitted"] == ["a"]  # 200 + 100 evictable; 191 < 300
    s2 = {**s, "private_tokens": 100}
    assert replay_prefill_pass(s2, "fcfs")["admitted"] == ["a"]  # 191 < 200
    s3 = {**s2, "locks": [list(range(5000, 5100))]}
    assert replay_prefill_pass(s3, "fcfs")["stop"] == "NO_TOKEN"  # 191 >= 100


@pytest.mark.sglang
def test_continuing_chunked_request_is_resumed_first():
    # _get_new_batch_prefill_raw: adder.add_chunked_req(self.chunked_req) before the queue;
    # c has 36 tokens left of its 100 (fits the chunk of 64); a then gets the 28 left, chunked
    C = list(range(3000, 3100))
    s = state(
        chunked_prefill_size=64, tree=[C[:64]], locks=[C[:64]],
        chunked={"id": "c", "fill": C, "prefix_len": 64, "max_new_tokens": 16}, queue=[q("a", range(40))],
    )  # fmt: skip
    r = replay_prefill_pass(s, "fcfs")
    assert r["admitted"] == ["c", "a"] and r["extend"] == {"c": 36, "a": 28} and r["prefix"]["c"] == 64
    assert r["chunked"] == {"id": "a", "extend_len": 28} and r["stop"] == "OTHER"


@pytest.mark.sglang
def test_chunked_request_still_too_long_stays_chunked():
    C = list(range(3000, 3200))
    s = state(chunked_prefill_size=64, chunked={"id": "c", "fill": C, "prefix_len": 64, "max_new_tokens": 16}, queue=[q("a", range(40))])
    r = replay_prefill_pass(s, "lpm")
    assert r["admitted"] == ["c"] and r["chunked"] == {"id": "c", "extend_len": 64}
    assert (r["stop"], r["stop_where"]) == ("OTHER", "budget_state") and r["queue_after"] == ["a"]


@pytest.mark.sglang
def test_max_running_requests_fills_the_batch():
    # get_num_allocatable_reqs: min(pp_max_micro_batch_size - running, free rows) = 1
    s = state(max_running_requests=2, running=[{"id": "run", "max_new_tokens": 10, "output_len": 3}], queue=[q("a", [1, 2]), q("b", [3, 4])])
    r = replay_prefill_pass(s, "fcfs")
    assert r["admitted"] == ["a"] and (r["stop"], r["stop_where"]) == ("BATCH_FULL", "batch_full") and r["batch_is_full"]


@pytest.mark.sglang
def test_without_chunking_the_first_request_may_exceed_the_input_cap():
    # _select_prefill_admission: "Without chunking, allow the first request even above the input cap"
    r = replay_prefill_pass(state(max_prefill_tokens=50, queue=[q("a", range(100)), q("b", range(200, 210))]), "fcfs")
    assert r["admitted"] == ["a"] and r["extend"] == {"a": 100} and r["stop"] == "OTHER"


@pytest.mark.sglang
def test_full_batch_returns_early():
    s = state(batch_is_full=True, running=[{"id": "run", "max_new_tokens": 10, "output_len": 3}], queue=[q("a", [1, 2])])
    r = replay_prefill_pass(s, "lpm")
    assert r["ran"] is False and r["stop_where"] == "early_return" and r["admitted"] == [] and r["queue_after"] == ["a"]
    # an empty running batch clears batch_is_full first
    r = replay_prefill_pass({**s, "running": []}, "lpm")
    assert r["ran"] and r["admitted"] == ["a"]


@pytest.mark.sglang
def test_retracted_request_reprefills_prompt_and_output():
    # a retracted request keeps output_ids; fill = prompt + output, max_new counts what is left
    s = state(kv_capacity_tokens=300, queue=[q("a", list(range(100)) + [7] * 20, max_new=120, out=20)])
    r = replay_prefill_pass(s, "fcfs")
    assert r["extend"] == {"a": 120}  # 120 + min(120 - 20, 4096) + 1 = 221 < 300


@pytest.mark.sglang
def test_replay_is_deterministic_and_leaves_the_state_untouched():
    s = _lpm_state()
    before = copy.deepcopy(s)
    assert replay_prefill_pass(s, "lpm") == replay_prefill_pass(s, "lpm")
    assert s == before


# ---------------------------------------------------------------------------------------------
# hypothesis: small random states run and satisfy SGLang-derived invariants


@st.composite
def admission_states(draw):
    ps = draw(st.sampled_from([1, 1, 2, 4, 16]))
    bases = [list(range(1000 * (b + 1), 1000 * (b + 1) + draw(st.integers(1, 48)))) for b in range(3)]

    def seq(min_len=1):
        base = draw(st.sampled_from(bases))
        cut = draw(st.integers(0, len(base)))
        tail = draw(st.lists(st.integers(0, 999), max_size=12))
        s = base[:cut] + tail
        return s if len(s) >= min_len else s + list(range(900, 900 + min_len - len(s)))

    tree = draw(st.lists(st.builds(seq), max_size=4))
    tree_tokens = sum(len(s) // ps * ps for s in tree)
    cap = (tree_tokens + draw(st.integers(0, 400))) // ps * ps + ps
    private = draw(st.integers(0, cap - tree_tokens)) // ps * ps
    locks = [s for s in tree if len(s) >= ps and draw(st.booleans())]
    chunk = draw(st.one_of(st.none(), st.integers(1, 160)))
    running = [
        {"id": f"run{i}", "max_new_tokens": m, "output_len": draw(st.integers(0, m)), "input_len": draw(st.integers(1, 50))}
        for i, m in enumerate(draw(st.lists(st.integers(1, 300), max_size=3)))
    ]
    chunked = None
    if chunk is not None and draw(st.booleans()):
        fill = seq(min_len=2)
        chunked = {"id": "chunk", "fill": fill, "prefix_len": draw(st.integers(0, len(fill) - 1)), "max_new_tokens": draw(st.integers(1, 300))}
    queue = []
    for i in range(draw(st.integers(0, 8))):
        fill = seq()
        queue.append({"id": f"q{i}", "fill": fill, "max_new_tokens": draw(st.integers(1, 300)), "output_len": draw(st.integers(0, min(5, len(fill) - 1)))})
    return {
        "page_size": ps, "kv_capacity_tokens": cap, "max_prefill_tokens": draw(st.integers(1, 300)),
        "chunked_prefill_size": chunk, "max_running_requests": draw(st.integers(1, 8)),
        "new_token_ratio": draw(st.floats(0, 1)), "batch_is_full": draw(st.booleans()), "tree": tree,
        "locks": locks, "private_tokens": private, "running": running, "chunked": chunked, "queue": queue,
    }  # fmt: skip


def _ceil(n, ps):
    return -(-n // ps) * ps


@pytest.mark.sglang
@given(s=admission_states(), policy=st.sampled_from(SGLANG_POLICIES))
def test_random_states_satisfy_sglang_invariants(s, policy):
    r = replay_prefill_pass(s, policy)
    fills = {x["id"]: x["fill"] for x in s["queue"]}
    if s["chunked"]:
        fills[s["chunked"]["id"]] = s["chunked"]["fill"]
    qids = [x["id"] for x in s["queue"]]
    adm = r["admitted"]
    assert len(set(adm)) == len(adm) and set(adm) <= set(fills)
    assert sorted(r["order"]) == sorted(qids) and set(r["deprioritized"]) <= set(qids)
    if s["chunked"]:  # resumed first, every time (add_chunked_req always appends)
        assert r["ran"] and adm[0] == s["chunked"]["id"]
    from_queue = [i for i in adm if s["chunked"] is None or i != s["chunked"]["id"]]
    assert from_queue == r["order"][: len(from_queue)]  # the loop stops at the first misfit
    assert r["queue_after"] == [i for i in r["order"] if i not in adm]
    for i in adm:  # prefix reused + extend this pass never passes the fill
        assert r["extend"][i] > 0 and r["prefix"][i] + r["extend"][i] <= len(fills[i])
        if r["chunked"] is None or r["chunked"]["id"] != i:
            assert r["prefix"][i] + r["extend"][i] == len(fills[i])
    ch = r["chunked"]
    if ch is not None:  # at most one chunked request; a new one is the last admitted
        assert ch["id"] in fills and r["prefix"].get(ch["id"], 0) + ch["extend_len"] < len(fills[ch["id"]])
        if s["chunked"] is None or ch["id"] != s["chunked"]["id"]:
            assert adm[-1] == ch["id"]
    ext = sum(r["extend"].values())
    if s["chunked_prefill_size"] is not None:
        assert ext <= s["chunked_prefill_size"]  # every admission charges at least its extend
    elif len(adm) >= 2:
        assert sum(_ceil(r["extend"][i], s["page_size"]) for i in adm) < s["max_prefill_tokens"]
    slots = s["max_running_requests"] - len(s["running"])
    assert len(adm) <= max(slots, 1 if s["chunked"] else 0)
    if r["stop"] == "NO_TOKEN":
        assert r["batch_is_full"] == (bool(adm) or bool(s["running"]))
    if r["active_policy"] == "fcfs":
        assert r["deprioritized"] == [] and r["order"] == qids
    if r["active_policy"] == "lpm":
        keys = [float("inf") if i in r["deprioritized"] else -r["prefix_match"][i] for i in r["order"]]
        assert keys == sorted(keys)
        for i in r["order"]:
            assert r["prefix_match"][i] <= len(fills[i]) - 1
