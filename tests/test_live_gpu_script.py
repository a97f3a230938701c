"""integration/gpu/run_live.py dry-run on CPU: the whole GPU script (one server, the policy
switched through its policy file, cache flushed between phases, per-phase JSON/plot/profile,
summary) against the harness's stand-in server instead of SGLang."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_dry_run_with_the_standin(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        LIVE_SP_DURATION_S="2", LIVE_SP_RATE="12", LIVE_SP_PREFIX="200", LIVE_SP_QUESTION="40", LIVE_SP_OUTPUT="6",
    )
    env.pop("OUT", None)
    out = subprocess.run(
        [sys.executable, str(ROOT / "integration/gpu/run_live.py"), "--standin", "--results", str(tmp_path),
         "--trace", str(tmp_path / "absent.jsonl"), "--port", str(port), "--policies", "sglang:lpm", "dlpm:8000"],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["phase"] for r in summary["phases"]] == ["shared-prefix-sglang_lpm", "shared-prefix-dlpm_8000"]
    for name in ("shared-prefix-sglang_lpm", "shared-prefix-dlpm_8000"):
        d = json.loads((tmp_path / f"{name}.json").read_text())
        assert d["partial"] is False and d["run"]["server_info"]["flush_cache"] == "ok"
        assert (tmp_path / f"{name}.png").exists() and (tmp_path / f"{name}.profile.json").exists()
    assert (tmp_path / "policy.txt").read_text().strip() == "dlpm:8000"  # the last phase's policy
    assert "| phase |" in (tmp_path / "summary.md").read_text()
