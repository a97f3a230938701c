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


# ---------------------------------------------------------------------------------------------
# interrupts: an interrupted solve says so (status, exit code), outputs are never half-written


def _hard_z3_instance():
    from prefixsched.theory.sequential import SeqInstance

    rng = np.random.default_rng(3)
    prompts = [tuple(int(x) for x in rng.integers(0, 3, size=int(rng.integers(20, 60)))) for _ in range(8)]
    arrivals = sorted(float(x) for x in rng.uniform(0, 80, size=8))
    return SeqInstance.simple(prompts, arrivals, c_attn=0.37)  # z3 needs > 20 s on it (radix, mean-ttft)


def _def4(users: int):
    from prefixsched.reductions.families import klpm_definition4

    return klpm_definition4(u=100, d=20, s=20, k=4, users=users, seed=0)


def _interrupt_after(seconds: float):
    """Simulate Ctrl-C in the main thread after ``seconds`` (what the terminal does)."""
    import _thread
    import threading

    t = threading.Timer(seconds, _thread.interrupt_main)
    t.start()
    return t


@pytest.mark.parametrize(
    "solver, make, model, objective",
    [
        ("cpsat", lambda: _def4(10), "prev", "max-ttft"),
        ("z3", _hard_z3_instance, "radix", "mean-ttft"),
        ("dp", lambda: _def4(10), "prev", "max-ttft"),
    ],
)
def test_interrupted_solve_raises_with_the_partial_result(solver, make, model, objective):
    """CP-SAT and z3 used to swallow Ctrl-C and return FEASIBLE as after a timeout."""
    import time

    from prefixsched.errors import SolveInterrupted

    inst = make()
    timer = _interrupt_after(1.5)
    t0 = time.perf_counter()
    try:
        with pytest.raises(SolveInterrupted) as ei:
            solve(inst, model=model, objective=objective, solver=solver, time_limit=60)
    except KeyboardInterrupt:  # pragma: no cover - would abort the whole test session
        pytest.fail("a bare KeyboardInterrupt escaped instead of SolveInterrupted")
    finally:
        timer.cancel()
    assert time.perf_counter() - t0 < 20, "the search did not stop promptly"
    res = ei.value.result
    assert res is not None and res.interrupted and res.to_dict()["interrupted"] is True
    assert res.status.value in ("FEASIBLE", "UNKNOWN") and not res.optimal
    assert ei.value.signum == 2


def test_cli_solve_interrupted_says_so_and_writes_nothing(tmp_path, capsys):
    from prefixsched.instance_io import save_instance

    path = tmp_path / "i.json"
    save_instance(path, _def4(10))
    out = tmp_path / "r.json"
    out.write_text("previous")
    timer = _interrupt_after(2.0)
    try:
        code, text, err = run(["solve", str(path), "--solver", "cpsat", "--time-limit", "60", "--json", str(out)], capsys)
    except KeyboardInterrupt:  # pragma: no cover
        pytest.fail("KeyboardInterrupt escaped main()")
    finally:
        timer.cancel()
    assert code == 130
    assert "interrupted" in text and "FEASIBLE" in text
    assert "prefixsched: interrupted (SIGINT)" in err and "Traceback" not in err
    assert out.read_text() == "previous"  # no output file is written after an interrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.json", "r.json"]


def test_cli_gap_stops_on_interrupt(tmp_path, capsys):
    """A loop over many solves must stop on Ctrl-C, not count the instance as unproven."""
    timer = _interrupt_after(2.0)
    try:
        code, _, err = run(["gap", "--n", "14", "--instances", "1000", "--solver", "cpsat", "--time-limit", "60",
                            "--policies", "fcfs", "--no-progress", "--json", str(tmp_path / "g.json")], capsys)
    except KeyboardInterrupt:  # pragma: no cover
        pytest.fail("KeyboardInterrupt escaped main()")
    finally:
        timer.cancel()
    assert code == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_gap_stops_on_an_interrupt_python_swallowed(tmp_path, capsys, monkeypatch):
    """A Ctrl-C whose KeyboardInterrupt was raised inside a finaliser ("Exception ignored in")
    is lost to the code; the recorded signal still stops the loop before its next solve."""
    import signal as _signal

    import prefixsched.theory.exact as exact

    calls = []
    real = exact.solve

    def solve_then_lose_the_interrupt(*a, **k):
        calls.append(1)
        res = real(*a, **k)
        handler = _signal.getsignal(_signal.SIGINT)
        try:
            handler(_signal.SIGINT, None)  # what the CLI's SIGINT handler does ...
        except KeyboardInterrupt:
            pass  # ... and the exception swallowed, as in a __del__
        return res

    monkeypatch.setattr(exact, "solve", solve_then_lose_the_interrupt)  # run_gap imports it per call
    code, _, err = run(["gap", "--n", "4", "--instances", "50", "--solver", "dp", "--policies", "fcfs",
                        "--no-progress", "--json", str(tmp_path / "g.json")], capsys)
    assert code == 130 and "interrupted (SIGINT)" in err
    assert len(calls) == 1 and list(tmp_path.iterdir()) == []
    assert _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler  # restored after main()


def test_sigterm_during_png_write_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    """SIGTERM arriving while the PNG is written (here: raised from inside savefig, as the CLI's
    handler does) unwinds like Ctrl-C: the temporary file is removed, the old file kept, exit 143."""
    import matplotlib.figure

    from prefixsched.errors import Interrupted

    def savefig(self, fh, **kw):
        fh.write(b"\x89PNG partial")
        raise Interrupted(15)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    png = tmp_path / "o.png"
    png.write_bytes(b"old")
    code, _, err = run(["simulate", "--max-requests", "30", "--policy", "fcfs", "--no-progress", "--plot", str(png)],
                       capsys)
    assert code == 143 and "interrupted (SIGTERM)" in err
    assert png.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_real_sigterm_to_the_cli_process(tmp_path):
    """The handler is really installed: SIGTERM to a running `prefixsched solve` gives exit 143,
    the interrupted result on stdout, and no file."""
    import signal
    import subprocess
    import sys
    import time

    from prefixsched.instance_io import save_instance

    path = tmp_path / "i.json"
    save_instance(path, _def4(10))
    out = tmp_path / "r.json"
    p = subprocess.Popen([sys.executable, "-m", "prefixsched.cli", "solve", str(path), "--solver", "cpsat",
                          "--time-limit", "60", "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    time.sleep(4.0)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=30)
    assert p.returncode == 143, stderr
    assert "interrupted" in stdout and "Traceback" not in stderr
    assert not out.exists() and [q.name for q in tmp_path.iterdir()] == ["i.json"]


# ---------------------------------------------------------------------------------------------
# size estimates checked before the work


@pytest.mark.parametrize("name", ["lpm-starvation", "fcfs-no-reuse", "vtc-locality", "d2lpm-infinite-qw",
                                  "klpm-definition4"])
def test_family_tokens_is_the_size_of_the_built_member(name):
    from prefixsched.reductions.families import FAMILIES, family_tokens

    for n in (1, 2, 3, 7, 20):
        inst = FAMILIES[name][0](n)
        assert family_tokens(name, n) == sum(r.prompt_len for r in inst.requests)


def test_reduction_tokens_is_the_size_of_the_reduced_instance_and_refused_above_the_limit():
    from prefixsched.errors import InputError
    from prefixsched.reductions.three_partition import ThreePartition, reduce_to_ttft_feasibility, reduction_tokens

    for vals, b in (((5, 5, 6), 16), ((5, 5, 6, 5, 6, 5), 16), ((26, 33, 41, 27, 35, 38), 100)):
        tp = ThreePartition(vals, b)
        for rho in (None, 1, 4):
            red = reduce_to_ttft_feasibility(tp, rho=rho)
            assert reduction_tokens(tp, rho=rho) == sum(r.prompt_len for r in red.instance.requests)
    tp = ThreePartition((26, 33, 41), 100)
    with pytest.raises(InputError, match="pseudo-polynomial in B"):
        reduce_to_ttft_feasibility(tp, max_tokens=reduction_tokens(tp) - 1)


def test_solve_refuses_a_large_instance_before_building_the_lcp_table():
    """12,000 requests: refused by the size check at once (the n x n LCP table would take minutes)."""
    import time

    from prefixsched.errors import SolverLimitError
    from prefixsched.theory.model import Instance, Limits, Request

    inst = Instance(requests=tuple(Request(f"q{i}", "c", float(i), (i, i + 1), 1) for i in range(12_000)))
    t0 = time.perf_counter()
    for solver in ("cpsat", "dp", "z3", "brute"):
        with pytest.raises(SolverLimitError, match="limited to n <="):
            solve(inst, solver=solver, time_limit=5)
    assert time.perf_counter() - t0 < 2.0
    big = Instance(requests=tuple(Request(f"q{i}", "c", 0.0, tuple(range(300_000)), 1) for i in range(8)),
                   limits=Limits(kv_capacity_tokens=10**6))
    with pytest.raises(SolverLimitError, match="prompt tokens"):
        solve(big, solver="dp")


def test_workload_parameters_go_through_the_validation_layer():
    from prefixsched.errors import InputError
    from prefixsched.reference.workloads import make_workload

    for kw, field in (({"rate": 10**400}, "rate"), ({"rate": float("nan")}, "rate"), ({"cv": -1.0}, "cv")):
        with pytest.raises(InputError) as ei:
            make_workload("shared-prefix", **kw)
        assert ei.value.field == field
