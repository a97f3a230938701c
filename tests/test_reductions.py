"""3-PARTITION -> prev-model TTFT feasibility (klpm.md §2.2): equivalence, certificates, control.

Each side is decided exactly and independently: 3-PARTITION by CP-SAT and by brute force, the
scheduling side by the klpm.md §2.2 feasibility DP (``solve(..., objective="ttft-feasible",
solver="dp")``). Witness schedules are replayed by ``theory.sequential.evaluate``.
"""

from __future__ import annotations

import json

import pytest

from prefixsched.errors import CheckerError, InputError
from prefixsched.reductions.three_partition import (
    LAMBDA,
    ThreePartition,
    brute_force,
    perturbed_instance,
    planted_instance,
    reduce_to_ttft_feasibility,
    solve_exact,
)
from prefixsched.theory.exact import Status, solve
from prefixsched.theory.model import Instance
from prefixsched.theory.sequential import SeqInstance, evaluate


# ---------------------------------------------------------------------------------------------
# helpers


def cases(m: int, bound: int, n_yes: int, n_no: int, start: int = 0) -> list[tuple[ThreePartition, bool]]:
    """First ``n_yes`` planted YES and ``n_no`` perturbed NO instances from seeds ``start, ...``.

    Each instance is decided by brute force and by CP-SAT, which must agree.
    """
    yes: list[tuple[ThreePartition, bool]] = []
    no: list[tuple[ThreePartition, bool]] = []
    seed = start
    while (len(yes) < n_yes or len(no) < n_no) and seed < start + 500:
        for tp in (planted_instance(m, bound, seed=seed), perturbed_instance(planted_instance(m, bound, seed=seed), seed=seed)):
            bf, cp = brute_force(tp), solve_exact(tp)
            assert (bf is None) == (cp is None), tp
            if bf is not None and len(yes) < n_yes and tp not in [t for t, _ in yes]:
                yes.append((tp, True))
            elif bf is None and len(no) < n_no and tp not in [t for t, _ in no]:
                no.append((tp, False))
        seed += 1
    assert len(yes) == n_yes and len(no) == n_no
    return yes + no


def schedulable(red) -> tuple[bool, tuple[str, ...]]:
    res = solve(red.instance, model="prev", objective="ttft-feasible", solver="dp", bound=red.T)
    assert res.status in (Status.FEASIBLE, Status.INFEASIBLE), res.status
    return res.status is Status.FEASIBLE, res.order


def check_equivalence(tp: ThreePartition, expect: bool) -> None:
    red = reduce_to_ttft_feasibility(tp)
    feasible, order = schedulable(red)
    assert feasible == expect, (tp, feasible)
    if expect:
        # the DP's witness encodes a 3-partition ...
        triples = red.partition_from_schedule(order)
        assert tp.check(triples) == triples
        # ... and the 3-partition's certificate schedule meets T
        cert = red.schedule_from_partition(solve_exact(tp))
        sched = evaluate(SeqInstance.from_instance(red.instance), cert, "prev")
        assert sched.max_ttft <= red.T
    else:
        assert order == ()


# ---------------------------------------------------------------------------------------------
# 3-PARTITION itself


def test_three_partition_validation_names_the_value() -> None:
    with pytest.raises(InputError) as e:
        ThreePartition((5, 7, 8, 6, 7, 7), 20)  # 5 is not > B/4 = 5
    assert e.value.field == "values[0]" and "5" in e.value.problem
    with pytest.raises(InputError) as e:
        ThreePartition((6, 7, 8, 6, 7, 10), 20)  # 10 is not < B/2
    assert e.value.field == "values[5]"
    with pytest.raises(InputError) as e:
        ThreePartition((6, 7, 8, 6, 7, 8), 20)  # sum 42 != 40
    assert e.value.field == "values" and "42" in e.value.problem
    with pytest.raises(InputError) as e:
        ThreePartition((6, 7, 7, 6), 20)
    assert e.value.field == "values"
    with pytest.raises(InputError) as e:
        ThreePartition((6, 7, 7), 0)
    assert e.value.field == "bound"
    with pytest.raises(InputError):
        ThreePartition((6, 7, True), 20)  # type: ignore[arg-type]


def test_solvers_agree_and_return_valid_triples() -> None:
    n_yes = n_no = 0
    for seed in range(30):
        tp = perturbed_instance(planted_instance(3, 24, seed=seed), seed=seed)
        bf, cp = brute_force(tp), solve_exact(tp)
        assert (bf is None) == (cp is None)
        if cp is None:
            n_no += 1
        else:
            n_yes += 1
            assert tp.check(cp) == cp and tp.check(bf) == bf
            assert all(sum(v) == tp.bound for v in tp.values_of(cp))
    assert n_yes > 0 and n_no > 0
    tp = ThreePartition((6, 7, 7, 6, 7, 7), 20)
    assert sorted(tuple(sorted(v)) for v in tp.values_of(solve_exact(tp))) == [(6, 7, 7), (6, 7, 7)]
    assert solve_exact(tp) == solve_exact(tp)  # deterministic (one worker, fixed seed)
    assert brute_force(ThreePartition((6, 6, 8, 7, 7, 6), 20)) is not None


def test_check_rejects_non_partitions() -> None:
    tp = ThreePartition((6, 7, 7, 6, 7, 7), 20)
    with pytest.raises(InputError):
        tp.check([(0, 1, 3), (2, 4, 5)])  # sums 19 and 21
    with pytest.raises(InputError):
        tp.check([(0, 1, 2), (0, 4, 5)])  # index 0 twice


# ---------------------------------------------------------------------------------------------
# the construction


@pytest.mark.parametrize("m,bound", [(1, 20), (2, 20), (3, 24), (4, 30)])
def test_constants_as_built(m: int, bound: int) -> None:
    tp = planted_instance(m, bound, seed=1)
    red = reduce_to_ttft_feasibility(tp)
    assert red.rho == m and red.sound
    assert red.T == m * (bound + m + 2)
    assert red.pins == tuple(j * (bound + 1) + (j - 1) * (m + 1) + m for j in range(1, m + 1))
    assert red.pins[-1] + 1 == red.T  # the last pin ends exactly at 2T
    inst = red.instance
    assert len(inst.requests) == 5 * m + 2
    by = inst.by_id()
    assert by["Ha"].arrival == 0 and len(by["Ha"].prompt) == red.T
    assert by["Hb"].arrival == 2 * red.T and len(by["Hb"].prompt) == red.T
    for i, a in enumerate(tp.values):
        r = by[f"item{i}"]
        assert r.arrival == red.T and len(r.prompt) == LAMBDA + a
    for j in range(1, m + 1):
        sa, sb = by[f"Sa{j}"], by[f"Sb{j}"]
        assert sa.arrival == red.pins[j - 1] and sb.arrival == red.T + red.pins[j - 1]
        assert sb.prompt[:m] == sa.prompt and len(sb.prompt) == m + 1
    assert all(r.output_len == 1 for r in inst.requests)
    assert inst.cost_model.c_attn == 0 and inst.cost_model.prefill_per_token_s == 1
    assert inst.limits.page_size == 1
    # JSON round trip (so `prefixsched solve` can read it)
    assert Instance.from_dict(json.loads(json.dumps(inst.to_dict()))) == inst


def test_certificate_pins_and_deadlines() -> None:
    tp = planted_instance(3, 24, seed=4)
    red = reduce_to_ttft_feasibility(tp)
    order = red.schedule_from_partition(solve_exact(tp))
    sched = evaluate(SeqInstance.from_instance(red.instance), order, "prev")
    assert sched.max_ttft == red.T
    for j in range(1, 4):
        assert sched.start[f"Sb{j}"] == red.T + red.pins[j - 1]  # pinned
        assert sched.ttft[f"Sa{j}"] == red.T  # tight
        assert sched.ttft[f"Sb{j}"] == 1
    assert sched.start["Hb"] == 2 * red.T and sched.start["Ha"] == 0
    assert red.partition_from_schedule(order) == tp.check(solve_exact(tp))


def test_certificate_maps_reject_bad_input() -> None:
    tp = ThreePartition((6, 7, 7, 6, 7, 7), 20)
    red = reduce_to_ttft_feasibility(tp)
    with pytest.raises(InputError):
        red.schedule_from_partition([(0, 1, 3), (2, 4, 5)])
    fcfs = tuple(r.id for r in red.instance.requests)  # arrival order misses T
    with pytest.raises(InputError):
        red.partition_from_schedule(fcfs)
    with pytest.raises(InputError):
        red.partition_from_schedule(fcfs[:-1])
    with pytest.raises(InputError):
        reduce_to_ttft_feasibility(tp, rho=0)


def test_equivalence_m2() -> None:
    for tp, expect in cases(2, 20, n_yes=5, n_no=5):
        check_equivalence(tp, expect)


def test_equivalence_m3_fast() -> None:
    for tp, expect in cases(3, 24, n_yes=3, n_no=3):
        check_equivalence(tp, expect)


@pytest.mark.slow
def test_equivalence_m3_many() -> None:
    for tp, expect in cases(3, 24, n_yes=10, n_no=10, start=100):
        check_equivalence(tp, expect)


@pytest.mark.slow
def test_equivalence_m4() -> None:
    """m = 4 has 22 queries, above the DP's default size limit of 20 (prev); the limit is lifted
    with ``max_n`` for this test (tens of seconds per instance)."""
    from prefixsched.theory.exact import dp

    for tp, expect in cases(4, 20, n_yes=1, n_no=1):
        red = reduce_to_ttft_feasibility(tp)
        res = dp.solve(SeqInstance.from_instance(red.instance), "prev", "ttft-feasible", bound=red.T, max_n=22)
        assert res.status is (Status.FEASIBLE if expect else Status.INFEASIBLE), (tp, res.status)
        if expect:
            assert tp.check(red.partition_from_schedule(res.order))


def test_negative_control_rho1_breaks_equivalence() -> None:
    """With rho = 1 < (m-1)*lambda + 1 = 3 at m = 3, some NO instance becomes schedulable, and the
    witness's gaps are no 3-partition."""
    disagreements = 0
    for tp, expect in cases(3, 24, n_yes=0, n_no=3, start=200):
        assert not expect
        red = reduce_to_ttft_feasibility(tp, rho=1)
        assert not red.sound
        feasible, order = schedulable(red)
        if feasible:
            disagreements += 1
            with pytest.raises(CheckerError):
                red.partition_from_schedule(order)
    assert disagreements >= 1
