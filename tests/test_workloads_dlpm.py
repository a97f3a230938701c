"""The DLPM paper's workload families (issue #12 §3; dlpm.md §5 Tables 2-3): registered, seeded,
and with the program structure the paper describes."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from prefixsched._io import dumps_json
from prefixsched.errors import InputError
from prefixsched.reference.workloads import WORKLOADS, make_workload, program_of, workload_params
from prefixsched.theory.model import lcp, page_keys

NAMES = ["dlpm-lcqa-s1", "dlpm-lcqa-s2", "dlpm-tot-s1", "dlpm-tot-s2", "dlpm-judge-s1", "dlpm-judge-s2", "dlpm-chat", "dlpm-mixed"]


def _programs(inst):
    progs = defaultdict(list)
    for r in inst.requests:
        progs[program_of(r.id)].append(r)
    return progs


@pytest.mark.parametrize("name", NAMES)
def test_registered_seeded_and_windowed(name: str) -> None:
    assert name in WORKLOADS and workload_params(name)
    a = make_workload(name, seed=3, n_requests=200)
    b = make_workload(name, seed=3, n_requests=200)
    assert dumps_json(a.to_dict()) == dumps_json(b.to_dict())
    assert len(a.requests) == 200
    c = make_workload(name, seed=4, n_requests=200)
    assert dumps_json(c.to_dict()) != dumps_json(a.to_dict())
    # the N-request instance is a prefix of the 2N one (same stream)
    big = make_workload(name, seed=3, n_requests=400)
    assert [r.id for r in big.requests[:200]] == [r.id for r in a.requests]


def test_tot_height_4_trees_have_b_plus_b2_plus_b3_plus_b4_requests() -> None:
    inst = make_workload("dlpm-tot-s1", duration_s=200.0, tot_rate=0.02)
    last = max(r.arrival for r in inst.requests)
    sizes = defaultdict(Counter)
    for prog, rs in _programs(inst).items():
        if max(r.arrival for r in rs) < last - 20:  # trees cut by the window's end excluded
            sizes[rs[0].client][len(rs)] += 1
    assert set(sizes["c0"]) == {4 + 16 + 64 + 256}  # S1: the misbehaving client uses 4 branches
    assert all(set(sizes[c]) == {2 + 4 + 8 + 16} for c in sizes if c != "c0")
    # a child's prompt extends its parent's prompt by the parent's thought (its output)
    rs = next(iter(_programs(inst).values()))
    root, child = rs[0], rs[len([r for r in rs if r.prompt_len == rs[0].prompt_len])]
    ps = inst.limits.page_size
    assert lcp(page_keys(root.prompt, ps), page_keys(child.prompt, ps)) >= root.prompt_len // ps - 1


def test_s2_variants_lengthen_the_misbehaving_clients_prefix() -> None:
    def mean_first(inst, c):
        firsts = [rs[0].prompt_len for rs in _programs(inst).values() if rs[0].client == c]
        return sum(firsts) / len(firsts)

    tot = make_workload("dlpm-tot-s2", n_requests=3000)
    # 10x longer questions: the level-1 prompt is template (384) + question (160 vs 1600)
    assert mean_first(tot, "c0") == 384 + 1600 and mean_first(tot, "c1") == 384 + 160
    lc = make_workload("dlpm-lcqa-s2", duration_s=400.0)
    assert mean_first(lc, "c0") > 1.6 * mean_first(lc, "c1")
    # S2 judge: the same draws as the all-well-behaved variant, plus 600 tokens (19 blocks = 608)
    # before each of c0's articles and nothing for anyone else
    j2, j0 = make_workload("dlpm-judge-s2", n_requests=2000), make_workload("dlpm-judge-s2", n_requests=2000, variant="none")
    d = {(a.client, b.prompt_len - a.prompt_len) for a, b in zip(j0.requests, j2.requests)}
    assert {c for c, x in d if x == 608} == {"c0"} and {x for c, x in d if c != "c0"} == {0}
    j1 = make_workload("dlpm-judge-s1", n_requests=2000)
    per = Counter(len(rs) for rs in _programs(j1).values() if rs[0].client == "c1")
    assert per.most_common(1)[0][0] == 3  # 2 dimensions + the merge
    assert max(len(rs) for rs in _programs(j1).values() if rs[0].client == "c0") == 17


def test_lcqa_questions_share_their_document_and_judge_merge_extends_the_article() -> None:
    inst = make_workload("dlpm-lcqa-s1", n_requests=300)
    ps = inst.limits.page_size
    for rs in list(_programs(inst).values())[:10]:
        if len(rs) > 1:
            shared = lcp(page_keys(rs[0].prompt, ps), page_keys(rs[1].prompt, ps)) * ps
            assert shared >= 0.95 * min(r.prompt_len for r in rs[:2]) - 64 and shared > 5000
        assert all(4 <= r.output_len <= 26 for r in rs)
    j = make_workload("dlpm-judge-s1", n_requests=200)
    rs = next(iter(_programs(j).values()))
    merge, branch = rs[-1], rs[0]
    assert merge.arrival > branch.arrival and merge.prompt_len > branch.prompt_len


def test_mixed_roles_cycle_judge_chat_chat_tot() -> None:
    inst = make_workload("dlpm-mixed", clients=4, n_requests=2000)
    progs = _programs(inst)
    shape = {c: Counter(len(rs) for rs in progs.values() if rs[0].client == c) for c in ("c0", "c1", "c2", "c3")}
    assert shape["c0"].most_common(1)[0][0] == 3  # judge: 2 dims + merge
    assert max(shape["c3"]) == 30  # ToT, 2 branches
    assert max(shape["c1"]) <= 8 and max(shape["c2"]) <= 8  # multi-turn conversations


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(InputError, match="variant"):
        make_workload("dlpm-tot-s1", variant="s3")
    with pytest.raises(InputError, match="tot_rate"):
        make_workload("dlpm-tot-s1", tot_rate=-1)
    with pytest.raises(InputError, match="nope"):
        make_workload("dlpm-judge-s1", nope=1)
