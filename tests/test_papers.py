"""Smoke tests of the paper reproductions (papers/*/reproduce.py) in their --quick form.

Each script is run in-process through ``main(["--quick", "--out", tmp])``. The tests check that
the outputs exist, that the JSON holds the measured numbers and the ``claim_holds`` booleans
*computed from them* (re-derived here from the numbers, so a hard-coded True would fail), that
every trace passed the checker, and only those facts our model guarantees (work conservation,
checker-proved bounds), never that a paper's empirical claim holds.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(paper: str):
    path = ROOT / "papers" / paper / "reproduce.py"
    spec = importlib.util.spec_from_file_location(f"_repro_{paper}", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def _run(paper: str, out: Path, *extra: str) -> None:
    cache = [] if "--cache" in extra else ["--no-cache"]  # never the user's sweep cache
    assert _load(paper).main(["--quick", "--out", str(out), *cache, *extra]) == 0


def test_dlpm_quick(tmp_path: Path) -> None:
    _run("dlpm", tmp_path, "--trace", str(tmp_path / "absent.jsonl"), "--only", "fig1")
    res = json.loads((tmp_path / "fig1_fig11.json").read_text())
    assert (tmp_path / "fig1_fig11.png").stat().st_size > 1000
    assert "mooncake_skipped" in res["fig1"]  # absent trace: skipped cleanly
    f1 = res["fig1"]["default_a10"]
    rows = f1["rows"]
    assert all(r["checker_ok"] for r in rows)
    assert {r["policy"] for r in rows} >= {"lpm", "vtc", "dlpm"}
    by = {r["label"]: r for r in rows}
    dl = [r for r in rows if r["policy"] == "dlpm"]
    between = all(r["jain"] > by["lpm"]["jain"] and r["service_rate"] > by["vtc"]["service_rate"] for r in dl)
    assert f1["claims"]["dlpm_between_vtc_and_lpm_all_Qu"] == between
    for r in rows:
        assert 0 < r["jain"] <= 1 + 1e-12 and r["service_rate"] > 0
    # DLPM Thm 4.1 is a theorem of the model: the checker must find it holding
    assert all(r["thm_4_1"]["holds"] and r["thm_4_1"]["worst"] <= r["thm_4_1"]["bound"] for r in dl)
    f11 = res["fig11"]
    assert all(r["checker_ok"] for r in f11["rows"])
    sr = {(r["clients"], r["policy"]): r["service_rate"] for r in f11["rows"]}
    ns = sorted({r["clients"] for r in f11["rows"]})
    assert f11["claims"]["claim_holds"] == all(sr[(n, "lpm")] >= sr[(n, "dlpm")] > sr[(n, "vtc")] for n in ns)
    assert isinstance(res["claims"]["fig1_frontier"], bool)


def test_dlpm_quick_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _run("dlpm", a, "--trace", str(tmp_path / "absent.jsonl"), "--only", "fig1")
    _run("dlpm", b, "--trace", str(tmp_path / "absent.jsonl"), "--only", "fig1")
    assert (a / "fig1_fig11.json").read_bytes() == (b / "fig1_fig11.json").read_bytes()


def test_klpm_quick(tmp_path: Path) -> None:
    _run("klpm", tmp_path)
    res = json.loads((tmp_path / "klpm.json").read_text())
    assert (tmp_path / "klpm.png").stat().st_size > 1000
    for key in ("replica4", "shared_prefix"):
        sw = res[key]
        assert all(r["checker_ok"] for r in sw["rows"])
        ks = {r["k"] for r in sw["rows"]}
        assert {"1", "2", "inf"} <= ks
        rates = sorted({r["rate"] for r in sw["rows"]})
        p99 = {(r["rate"], r["k"]): r["ttft_p99"] for r in sw["rows"]}
        strict = sum(p99[(x, "2")] < min(p99[(x, k)] for k in ks if k != "2") * (1 - 1e-3) for x in rates)
        assert sw["claims"]["rates_where_k2_strictly_lowest"] == strict
        assert sw["claims"]["claim_holds"] == (strict > len(rates) / 2)
        for r in sw["rows"]:
            assert 0 <= r["ttft_p50"] <= r["ttft_p99"] <= r["ttft_max"] + 1e-9
    # the replica-4 instance really has replica count 4
    mod = _load("klpm")
    inst = mod.replica_instance(10.0, 7, 0)
    groups = {}
    for r in inst.requests:
        groups[r.id.split(".")[0]] = groups.get(r.id.split(".")[0], 0) + 1
    assert sorted(set(groups.values())) == [4] and len(groups) == 7
    gap = res["gap"]
    assert gap["proven_instances"] >= 1
    for p, rs in gap["ratios"].items():
        assert all(x >= 1 - 1e-9 for x in rs), p  # a policy can never beat the proven optimum


def test_vtc_quick(tmp_path: Path) -> None:
    _run("vtc", tmp_path)
    res = json.loads((tmp_path / "overload.json").read_text())
    assert (tmp_path / "overload.png").stat().st_size > 1000
    by = {r["label"]: r for r in res["rows"]}
    fc, vt = by["FCFS"], by["VTC"]
    assert all(r["checker_ok"] for r in res["rows"])
    # VTC's 2U bound is a theorem of our model (full output reserved, no preemption): must hold
    assert vt["vtc_2U"]["holds"] and vt["vtc_2U"]["pairs"] >= 1
    assert vt["vtc_2U"]["worst"] == pytest.approx(vt["max_backlogged_gap"])
    # both policies are work-conserving on the same requests: equal totals
    assert math.isclose(sum(fc["service_client"].values()), sum(vt["service_client"].values()))
    c = res["claims"]
    assert c["vtc_gap_below_fcfs_gap"] == (vt["max_backlogged_gap"] < fc["max_backlogged_gap"])
    assert c["claim_holds"] == (
        vt["vtc_2U"]["holds"] and vt["max_backlogged_gap"] < fc["max_backlogged_gap"]
        and vt["tokens_per_s"] >= 0.95 * fc["tokens_per_s"]
    )
    assert c["rpm_rejected_requests"] == fc["served_requests"] - by[next(k for k in by if k.startswith("RPM"))]["served_requests"]


def test_dlpm_fig12_sweep_quick_claims_follow_from_rows(tmp_path: Path) -> None:
    """Fig. 12 (mixed applications) through the sweep path: three cells, ratios re-derived."""
    _run("dlpm", tmp_path, "--only", "fig12", "--cache", str(tmp_path / "cache"), "--jobs", "1")
    res = json.loads((tmp_path / "fig12.json").read_text())
    by = {r["system"]: r for r in res["rows"]}
    assert set(by) == {"LPM", "DLPM", "VTC"} and all(r["status"] == "ok" for r in by.values())
    c = res["claims"]
    assert c["lpm_over_dlpm_completion"] == by["LPM"]["completion_s"] / by["DLPM"]["completion_s"]
    assert c["dlpm_fastest"] == (by["DLPM"]["completion_s"] <= min(by["LPM"]["completion_s"], by["VTC"]["completion_s"]))
    # the same requests under every policy (work conservation: equal client-view totals)
    assert len({r["n_requests"] for r in by.values()}) == 1


@pytest.mark.slow
def test_dlpm_fig7_fig10_quick(tmp_path: Path) -> None:
    """The whole --quick form of Fig. 7 and Fig. 10 (about a minute on 2 cores)."""
    _run("dlpm", tmp_path, "--only", "fig7", "fig10", "--cache", str(tmp_path / "cache"))
    f7 = json.loads((tmp_path / "fig7.json").read_text())
    assert f7["failures"] == 0 and not any(r["system"] == "Preble" and r["workers"] == 1 for r in f7["rows"])
    by = {(r["workload"], r["workers"], r["system"]): r["service_rate"] for r in f7["rows"]}
    best = max(by[k] / by[(k[0], k[1], "VTC")] for k in by if k[2] == "D2LPM")
    assert f7["claims"]["max_throughput_d2lpm_over_vtc"]["ratio"] == best
    assert (tmp_path / "fig7.png").stat().st_size > 1000 and (tmp_path / "fig10.png").stat().st_size > 1000
