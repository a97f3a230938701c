"""Sweeps (issue #12 §1): grid expansion, the cache and resume, per-cell failures, identical
tables from the serial, process-pool and Ray backends, the CLI, the streaming trace writer and
the reproduction registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from prefixsched.errors import InputError
from prefixsched.sweep import expand, load_grid, run
from prefixsched.sweep.runner import cell_key, code_version

ROOT = Path(__file__).resolve().parents[1]

GRID = {
    "name": "t",
    "base": {"workload": "default", "n_requests": 150, "clients": 4},
    "grid": {
        "policy": ["lpm", "dlpm"],
        "system": [{"label": "one", "workers": 1}, {"label": "D2", "workers": 2, "dispatch": "d2lpm"}],
    },
    "cells": [{"policy": "vtc", "probes": ["well_behaved", "latency_max"]}],
}


def _tables(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# grid


def test_expand_product_tags_excludes_dotted_and_dedupe() -> None:
    g = {
        "kind": "simulate",
        "base": {"workload": "s1", "workload_params.program_rate": 0.1},
        "grid": {"workers": [1, 2], "sys": [{"label": "A", "policy": "lpm"}, {"policy": "vtc"}],
                 "workload_params.cv": [0.5, 1.0]},
        "exclude": [{"sys": "A", "workers": 1}],
        "cells": [{"workers": 2, "workload_params": {"cv": 1.0}, "policy": "vtc", "tags": {"sys": 1}}],
    }
    cells = expand(g)
    # 2 x 2 x 2 = 8, minus the 2 excluded (A on one worker); the explicit cell duplicates one
    assert len(cells) == 6
    assert cells[0] == {"kind": "simulate", "workload": "s1", "workload_params": {"program_rate": 0.1, "cv": 0.5},
                        "workers": 1, "policy": "vtc", "tags": {"sys": 1}}
    assert [c["workers"] for c in cells] == [1, 1, 2, 2, 2, 2]  # first axis slowest
    assert all(not (c["tags"]["sys"] == "A" and c["workers"] == 1) for c in cells)
    with pytest.raises(InputError, match="bogus"):
        expand({"bogus": 1})
    with pytest.raises(InputError, match="grid.policy"):
        expand({"grid": {"policy": []}})
    with pytest.raises(InputError, match="no cells"):
        expand({"grid": {"workers": [1]}, "exclude": [{"workers": 1}]})


def test_load_grid_toml(tmp_path: Path) -> None:
    p = tmp_path / "g.toml"
    p.write_text(textwrap.dedent("""
        name = "x"
        [base]
        workload = "default"
        [grid]
        "policy_params.quantum" = [1000, inf]
    """))
    cells = expand(load_grid(p))
    assert [c["policy_params"]["quantum"] for c in cells] == [1000, float("inf")]
    (tmp_path / "bad.toml").write_text("[base\n")
    with pytest.raises(InputError, match="bad.toml"):
        load_grid(tmp_path / "bad.toml")


def test_bad_cells_fail_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"cells\[0\]\.polcy"):
        run([{"workload": "default", "polcy": "lpm"}], out=tmp_path)
    with pytest.raises(InputError, match="exactly one"):
        run([{"policy": "lpm"}], out=tmp_path)
    with pytest.raises(InputError, match="unknown probe"):
        run([{"workload": "default", "probes": ["nope"]}], out=tmp_path)
    assert not (tmp_path / "results.csv").exists()


# ---------------------------------------------------------------------------------------------
# results, cache, failures


def test_sweep_table_has_every_summary_metric_and_rerun_computes_nothing(tmp_path: Path) -> None:
    from prefixsched.reference.policies import create
    from prefixsched.reference.simulator import simulate
    from prefixsched.reference.workloads import make_workload
    from prefixsched.theory.metrics import summarize

    res = run(GRID, out=tmp_path, jobs=1)
    assert res.computed == 5 and res.cached == 0 and not res.failures
    rows = res.rows()
    assert [r["policy"] for r in rows] == ["lpm", "lpm", "dlpm", "dlpm", "vtc"]
    assert [r["system"] for r in rows[:4]] == ["one", "D2", "one", "D2"]
    # the single-worker lpm row is exactly summarize() of the same simulation
    inst = make_workload("default", n_requests=150, clients=4)
    s = summarize(simulate(inst, create("lpm", seed=0)), inst.weights)
    for k in ("tokens_per_s", "hit_rate", "ttft_p99", "jain", "jain_actual", "e2e_p50", "n_steps"):
        assert rows[0][k] == s[k], k
    assert rows[0]["max_service_gap.value"] == s["max_service_gap"]["value"]
    assert json.loads(rows[0]["per_client"]) == s["per_client"]
    tot = sum(v["service_client"] for v in s["per_client"].values())
    assert rows[0]["service_rate_client"] == tot / s["span_s"]
    assert json.loads(rows[1]["requests_per_worker"]) and sum(json.loads(rows[1]["requests_per_worker"])) == 150
    assert rows[4]["well_behaved.requests"] + rows[4]["well_behaved.bad_requests"] == 150
    assert rows[4]["latency_max.ttft_max"] >= rows[4]["ttft_p99"]
    first = _tables(tmp_path)
    assert {"results.csv", "results.parquet", "per_client.csv", "per_client.parquet", "sweep.json"} <= set(first)
    again = run(GRID, out=tmp_path, jobs=1)
    assert again.computed == 0 and again.cached == 5
    assert _tables(tmp_path) == first


def test_failures_are_per_cell_cached_and_retried(tmp_path: Path) -> None:
    cells = [{"workload": "default", "n_requests": 60, "clients": 3, "policy": p} for p in ("lpm", "no-such-policy", "fcfs")]
    res = run(cells, out=tmp_path, jobs=1)
    assert [r["status"] for r in res.records] == ["ok", "error", "ok"]
    assert "no-such-policy" in res.records[1]["error"]
    rows = res.rows()
    assert rows[1]["status"] == "error" and rows[1].get("tokens_per_s") is None and rows[0]["tokens_per_s"] > 0
    meta = json.loads((tmp_path / "sweep.json").read_text())
    assert meta["ok"] == 2 and meta["failures"][0]["cell"] == 1
    again = run(cells, out=tmp_path, jobs=1)
    assert again.computed == 0 and again.records[1]["status"] == "error"
    retried = run(cells, out=tmp_path, jobs=1, retry_failed=True)
    assert retried.computed == 1 and retried.records[1]["status"] == "error"


def test_cache_key_covers_configuration_code_and_trace_bytes(tmp_path: Path) -> None:
    c = {"workload": "default", "policy": "lpm"}
    assert cell_key(c) == cell_key(dict(reversed(list(c.items()))))
    assert cell_key(c) != cell_key({**c, "policy": "vtc"})
    assert cell_key(c) != cell_key(c, code="0.0.0+other")
    assert code_version().startswith("0.")
    from prefixsched.reference.workloads import make_workload
    from prefixsched.instance_io import save_instance

    p = tmp_path / "inst.json"
    save_instance(p, make_workload("default", n_requests=40, clients=3))
    r1 = run([{"trace": str(p), "policy": "lpm"}], cache_dir=tmp_path / "c", jobs=1)
    save_instance(p, make_workload("default", n_requests=41, clients=3))
    r2 = run([{"trace": str(p), "policy": "lpm"}], cache_dir=tmp_path / "c", jobs=1)
    assert r2.computed == 1 and r1.records[0]["key"] != r2.records[0]["key"]
    assert r2.rows()[0]["metric.n_requests"] == 41


def test_resume_after_a_killed_run_recomputes_only_the_missing_cells(tmp_path: Path) -> None:
    """The first run is killed (os._exit, as SIGKILL would) while computing its third cell; the
    second run computes exactly the cells the first did not finish, and its tables are those of a
    run that was never interrupted."""
    out = tmp_path / "resumed"
    script = textwrap.dedent(f"""
        import os, json
        from prefixsched.sweep import run
        from prefixsched.sweep.cells import execute
        grid = json.loads({json.dumps(json.dumps(GRID))})
        done = []
        def killer(cell):
            if len(done) == 2:
                os._exit(137)
            done.append(1)
            return execute(cell)
        run(grid, out={str(out)!r}, jobs=1, cell_fn=killer)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert p.returncode == 137, p.stderr
    assert not (out / "results.csv").exists()  # the kill came before the tables
    cached = list((out / "cache").rglob("*.json"))
    assert len(cached) == 2
    res = run(GRID, out=out, jobs=1)
    assert res.cached == 2 and res.computed == 3
    fresh = tmp_path / "fresh"
    run(GRID, out=fresh, jobs=1)
    a, b = _tables(out), _tables(fresh)
    assert a == b


# ---------------------------------------------------------------------------------------------
# backends


def test_process_pool_and_ray_give_the_serial_tables(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="ray is in the test extra; install '.[test]'")
    pytest.importorskip("pyarrow")
    serial = run(GRID, out=tmp_path / "serial", jobs=1, use_cache=False)
    pool = run(GRID, out=tmp_path / "pool", jobs=2, use_cache=False)
    assert pool.computed == 5
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run(GRID, out=tmp_path / "ray", backend="ray", jobs=2, use_cache=False)
    finally:
        ray.shutdown()
    assert on_ray.computed == 5 and not on_ray.failures
    s = _tables(tmp_path / "serial")
    assert _tables(tmp_path / "pool") == s
    assert _tables(tmp_path / "ray") == s
    assert serial.rows() == on_ray.rows()


# ---------------------------------------------------------------------------------------------
# CLI, plots, stream, registry


def test_cli_sweep_writes_tables_and_plot(tmp_path: Path) -> None:
    from prefixsched.cli import main

    g = tmp_path / "g.toml"
    g.write_text(textwrap.dedent("""
        name = "cli"
        [base]
        workload = "default"
        n_requests = 80
        clients = 3
        [grid]
        policy = ["lpm", "vtc"]
        workers = [2]
        dispatch = ["round-robin", "d2lpm"]
    """))
    out = tmp_path / "o"
    assert main(["sweep", str(g), "--out", str(out), "--jobs", "1", "--no-progress", "--plot", "worker-load"]) == 0
    assert (out / "results.parquet").stat().st_size > 0 and (out / "worker-load.png").stat().st_size > 1000
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("cell,key,status,error,")
    assert main(["sweep", str(tmp_path / "missing.toml"), "--out", str(out)]) == 2


def test_plot_helpers_and_pareto_front() -> None:
    from prefixsched.sweep.plots import pareto_front, plot_metric, plot_pareto

    rows = [{"x": 1, "y": 3, "p": "a"}, {"x": 2, "y": 2, "p": "a"}, {"x": 1.5, "y": 1, "p": "b"}, {"x": 3, "y": 1, "p": "b"}]
    assert [(r["x"], r["y"]) for r in pareto_front(rows, "x", "y")] == [(1, 3), (2, 2), (3, 1)]
    assert plot_pareto(rows, "x", "y", by="p") is not None
    assert plot_metric(rows, "x", "y", by="p") is not None


def test_stream_writer_round_trips_a_cluster_trace(tmp_path: Path) -> None:
    from prefixsched.reference.cluster import simulate_cluster
    from prefixsched.reference.workloads import make_workload
    from prefixsched.sweep.stream import read_trace_stream, write_trace_stream

    inst = make_workload("default", n_requests=120, clients=3)
    ct = simulate_cluster(inst, "dlpm", "d2lpm", workers=3)
    p = tmp_path / "t.jsonl.gz"
    assert write_trace_stream(p, ct) == 120
    back = read_trace_stream(p)
    assert [t.to_dict() for t in back["traces"]] == json.loads(json.dumps([t.to_dict() for t in ct.traces]))
    assert back["dispatch"] == ct.dispatch
    write_trace_stream(tmp_path / "u.jsonl.gz", ct)
    assert (tmp_path / "u.jsonl.gz").read_bytes() == p.read_bytes()  # gzip without a timestamp


def test_reproduce_registry() -> None:
    from prefixsched import reproduce

    names = reproduce.available()
    assert {"dlpm", "klpm", "vtc"} <= set(names)
    with pytest.raises(InputError, match="unknown reproduction"):
        reproduce.get("no-such-paper")

    def a(argv: list[str]) -> int:
        return 0

    def b(argv: list[str]) -> int:
        return 1

    reproduce.register("zz-test", a, description="t")
    assert reproduce.get("zz-test").main is a
    with pytest.raises(ValueError, match="duplicate"):
        reproduce.register("zz-test", b)
    del reproduce._REGISTRY["zz-test"]


def test_example_grid_file_expands_and_validates() -> None:
    from prefixsched.sweep.cells import validate

    cells = expand(load_grid(ROOT / "papers" / "dlpm" / "sweeps" / "qw.toml"))
    assert len(cells) == 14 and {c["tags"]["system"] for c in cells} >= {"D2LPM Q_w=inf", "VTC"}
    for i, c in enumerate(cells):
        validate(c, f"cells[{i}]")
    assert [c for c in cells if c["tags"]["system"] == "D2LPM Q_w=inf"][0]["dispatch_params"]["q_w"] == float("inf")


def test_solve_cells_match_a_direct_exact_solve(tmp_path: Path) -> None:
    import numpy as np

    from prefixsched.gap import random_instance
    from prefixsched.reductions.families import FAMILIES
    from prefixsched.theory.exact import solve

    cells = [{"kind": "solve", "family": "lpm-starvation", "n": 5, "solver": "dp"},
             {"kind": "solve", "random": True, "n": 6, "seed": 3, "solver": "brute", "objective": "mean-ttft"}]
    res = run(cells, out=tmp_path, jobs=1)
    assert not res.failures
    rows = res.rows()
    direct = [solve(FAMILIES["lpm-starvation"][0](5), solver="dp"),
              solve(random_instance(6, np.random.default_rng(3)), solver="brute", objective="mean-ttft")]
    for row, d in zip(rows, direct):
        assert row["status"] == "ok" and row["metric.status"] == d.status.value
        assert row["metric.objective"] == d.objective and json.loads(row["order"]) == list(d.order)
    with pytest.raises(InputError, match="exactly one"):
        run([{"kind": "solve", "n": 4}], out=tmp_path)
