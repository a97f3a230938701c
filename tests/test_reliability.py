"""Reliability (issue #7): regressions of real bugs found by fuzzing, the checker's finiteness
checks, interrupts of exact solves, and size limits checked before work starts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prefixsched.cli import main
from prefixsched.gap import trace_windows
from prefixsched.theory.exact import solve

# a valid 3-line Mooncake trace whose timestamps are ~3-4e12 ms: its gap window in block units
# has arrivals ~3e10, so tolerance(inst) ~ 30 time units (issue #7, "a real solver bug")
BIG_TS_TRACE = (
    '{"timestamp": 3000000000000, "input_length": 1000, "output_length": 10, "hash_ids": [0, 1]}\n'
    '{"timestamp": 3500000000000, "input_length": 600, "output_length": 10, "hash_ids": [0, 2]}\n'
    '{"timestamp": 4000000000000, "input_length": 1500, "output_length": 10, "hash_ids": [0, 1, 3]}\n'
)


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dp_bisection_with_huge_arrivals_agrees_with_cpsat_and_brute(tmp_path):
    """Root cause: the decision DP accepted witnesses up to tolerance(inst) = 1e-9 * horizon above
    the asked T, and the integral bisection asked T = hi - 1: with arrivals ~3e10 the tolerance was
    ~30 units and the incumbent itself came back as a "witness" (AssertionError). Now exact
    (integral) data are decided with slack 0 and float data with U + slack < hi."""
    p = tmp_path / "t.jsonl"
    p.write_text(BIG_TS_TRACE)
    (inst,) = trace_windows(str(p), 3, 1, np.random.default_rng(0))
    assert max(r.arrival for r in inst.requests) > 1e10
    values = {}
    for solver in ("dp", "cpsat", "brute"):
        for objective in ("max-ttft", "mean-ttft", "makespan"):
            res = solve(inst, model="prev", objective=objective, solver=solver, time_limit=20)
            assert res.optimal, (solver, objective, res)
            values.setdefault(objective, set()).add(res.objective)
    assert all(len(v) == 1 for v in values.values()), values


def test_dp_bisection_with_float_arrivals_and_huge_horizon():
    """The non-integral path: arrivals ~1e10 + 0.5 (tolerance ~10 units) still converge to the
    optimum that brute force finds."""
    from prefixsched.theory.sequential import SeqInstance

    base = 1e10
    inst = SeqInstance.simple(
        [(1, 2, 3, 4, 5), (1, 2, 3, 9), (7, 7, 7, 7, 7, 7), (1, 2, 8)],
        [base + 0.5, base + 1.25, base + 2.5, base + 3.75],
    )
    a = solve(inst, model="prev", objective="max-ttft", solver="dp")
    b = solve(inst, model="prev", objective="max-ttft", solver="brute")
    assert a.optimal and b.optimal
    assert a.objective == pytest.approx(b.objective, abs=1e-6)


def test_gap_cli_on_the_big_timestamp_trace(tmp_path, capsys):
    p = tmp_path / "t.jsonl"
    p.write_text(BIG_TS_TRACE)
    out = tmp_path / "gap.json"
    code, _, err = run(["gap", "--source", "trace", "--trace", str(p), "--n", "3", "--instances", "1",
                        "--policies", "fcfs", "--no-progress", "--json", str(out)], capsys)
    assert code == 0, err
    d = json.loads(out.read_text())
    assert d["proven_instances"] == 1 and d["ratios"]["fcfs"][0] >= 1.0


# ---------------------------------------------------------------------------------------------
# the checker never accepts a non-finite quantity


def _bypass(obj, **fields):
    """A copy of a frozen dataclass with ``fields`` set without validation (what a buggy or
    hostile producer could hand the checker)."""
    import copy

    out = copy.copy(obj)
    for k, v in fields.items():
        object.__setattr__(out, k, v)
    return out


def _small_trace():
    from prefixsched.reference.policies import create
    from prefixsched.reference.simulator import simulate
    from prefixsched.reference.workloads import make_workload

    inst = make_workload("shared-prefix", clients=2, seed=0, n_requests=12)
    return inst, simulate(inst, create("fcfs"))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy: inf * 0 in the duration replay
@pytest.mark.parametrize("field", ["c_attn", "prefill_per_token_s", "decode_base_s"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_checker_rejects_a_non_finite_cost_model(field, value):
    from prefixsched.errors import CheckerError
    from prefixsched.theory.schedule import check_trace

    inst, trace = _small_trace()
    check_trace(inst, trace)  # the honest pair passes
    bad = _bypass(inst, cost_model=_bypass(inst.cost_model, **{field: value}))
    rep = check_trace(bad, trace, strict=False)
    assert not rep.ok
    assert any(v.startswith("[finite] cost_model." + field) for v in rep.violations), rep.violations
    with pytest.raises(CheckerError, match=r"\[finite\]"):
        check_trace(bad, trace)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_checker_rejects_an_overflowing_cost_model():
    """c_attn = 1e308 is finite but makes every step duration inf: the durations are caught."""
    from prefixsched.theory.schedule import check_trace

    inst, trace = _small_trace()
    bad = _bypass(inst, cost_model=_bypass(inst.cost_model, c_attn=1e308))
    rep = check_trace(bad, trace, strict=False)
    assert any("non-finite duration" in v for v in rep.violations), rep.violations


@pytest.mark.parametrize("where", ["step_end", "finish", "arrival"])
def test_checker_rejects_non_finite_trace_times(where):
    from prefixsched.theory.schedule import check_trace

    inst, trace = _small_trace()
    if where == "step_end":
        ends = list(trace.step_end)
        ends[-1] = float("nan")
        bad = _bypass(trace, step_end=type(trace.step_end)(ends))
    else:
        recs = list(trace.requests)
        recs[0] = _bypass(recs[0], **{where: float("inf")})
        bad = _bypass(trace, requests=type(trace.requests)(recs))
    rep = check_trace(inst, bad, strict=False)
    assert any(v.startswith("[finite]") and where in v for v in rep.violations), rep.violations
