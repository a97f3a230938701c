"""papers/fastswitch/reproduce.py in its --quick form: outputs exist, every trace passed the
checker, the claims are the ones computed from the rows (re-derived here), and the result is
deterministic. Only facts the model guarantees are asserted, never that the paper's claim holds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("_repro_fastswitch", ROOT / "papers" / "fastswitch" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_fastswitch_quick(tmp_path: Path) -> None:
    mod = _load()
    assert mod.main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "fastswitch.json").read_text())
    assert (tmp_path / "fastswitch.png").stat().st_size > 1000
    rows = res["rows"]
    assert all(r["checker_ok"] for r in rows)
    sweep = [r for r in rows if r["kind"] == "sweep"]
    assert {(r["granularity"], r["sync"], r["reuse"]) for r in sweep} >= {("block", True, False), ("group", False, True)}
    # the claims are the rows' numbers
    cl = res["claims"]
    b = next(r for r in sweep if (r["granularity"], r["sync"], r["reuse"]) == ("block", True, False))
    f = next(r for r in sweep if (r["granularity"], r["sync"], r["reuse"]) == ("group", False, True))
    ratios = [b[m] / f[m] for m in ("ttft_p95", "ttft_p99", "ttft_p99_9", "tbt_p99_9")]
    assert cl["headline_min"] == min(ratios) and cl["headline_max"] == max(ratios)
    assert cl["headline_direction_holds"] == (min(ratios) > 1.0)
    # model facts: reuse never sends more than the KV; without reuse nothing is saved; copies of a
    # group are never slower per byte than per-block copies; drop mode moves no bytes
    for r in sweep:
        if not r["reuse"]:
            assert r["reuse_saved_bytes"] == 0
        assert r["swap_ins"] <= r["swap_outs"]
    for sync in (True, False):
        for reuse in (True, False):
            bl = next(r for r in sweep if (r["granularity"], r["sync"], r["reuse"]) == ("block", sync, reuse))
            gr = next(r for r in sweep if (r["granularity"], r["sync"], r["reuse"]) == ("group", sync, reuse))
            if bl["swap_out_s_per_gb"] and gr["swap_out_s_per_gb"]:
                assert gr["swap_out_s_per_gb"] <= bl["swap_out_s_per_gb"]
    drop = [r for r in rows if r["mode"] == "drop"]
    assert drop and all(r["bytes_out"] == 0 for r in drop)
    none = [r for r in rows if r["mode"] == "none"]
    assert {r["policy"] for r in none} == {"vtc", "dlpm"} and all(r["preemptions"] == 0 for r in none)
    bound = cl["vtc_preempt_bound"]
    assert bound["worst"] <= bound["bound"] or not bound["holds"]
    # deterministic: the same run gives the same numbers
    again = mod.run(quick=True, progress=False)
    assert json.loads(json.dumps(again)) == res
