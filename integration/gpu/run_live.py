"""The GPU comparison: one SGLang 0.5.17 server (8B-shaped Llama, random weights), the plugin's
policy switched through ``PREFIXSCHED_POLICY_FILE`` between phases, LPM vs DLPM vs VTC vs k-LPM on
a multi-client shared-prefix workload and on a time-scaled slice of the real trace.

Run by ``integration/gpu/run_live.sh run`` (which sets ``PYTHONPATH``); every phase writes
``RESULTS/<workload>-<policy>.{json,png,profile.json}`` as soon as it ends, then
``RESULTS/summary.md`` and ``RESULTS/summary.json`` sum them up. A deadline (``--deadline-s``,
default 540 s from the start) skips the phases that would not finish in time; skipped phases
are listed in the summary. Environment variables override the workload knobs (see ``--help``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

T_START = time.monotonic()


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def workloads(trace_path: str | None):
    from prefixsched.reference.traces import load_mooncake
    from prefixsched.reference.workloads import make_workload
    from prefixsched.theory.model import Instance

    out = []
    sp = make_workload(
        "shared-prefix",
        clients=int(_env("LIVE_SP_CLIENTS", 4)),
        seed=0,
        block_size=1,
        duration_s=_env("LIVE_SP_DURATION_S", 15),
        groups=int(_env("LIVE_SP_GROUPS", 32)),
        prefix_len=int(_env("LIVE_SP_PREFIX", 2048)),
        question_len=int(_env("LIVE_SP_QUESTION", 384)),
        output_len=int(_env("LIVE_SP_OUTPUT", 96)),
        rate=_env("LIVE_SP_RATE", 64),
    )
    out.append(("shared-prefix", sp, 1.0))
    if trace_path and Path(trace_path).exists():
        tr = load_mooncake(trace_path, clients=int(_env("LIVE_TR_CLIENTS", 4)), max_requests=int(_env("LIVE_TR_REQUESTS", 400)))
        cap = int(_env("LIVE_TR_MAX_OUTPUT", 128))
        reqs = tuple(replace(r, output_len=min(r.output_len, cap)) for r in tr.requests)
        out.append(("trace", Instance(reqs, cost_model=tr.cost_model, limits=tr.limits, weights=tr.weights), _env("LIVE_TR_TIME_SCALE", 0.1)))
    else:
        print(f"[run_live] no trace slice at {trace_path}: the trace phases are skipped", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="integration/results", help="results directory (default: %(default)s)")
    p.add_argument("--trace", default=".whl/trace/trace_slice.jsonl", help="trace slice (default: %(default)s)")
    p.add_argument("--policies", nargs="+", default=["sglang:lpm", "dlpm:8000", "vtc", "k-lpm:2"], help="(default: %(default)s)")
    p.add_argument("--only", choices=["shared-prefix", "trace"], default=None, help="one workload only (default: both)")
    p.add_argument("--deadline-s", type=float, default=540.0, help="stop starting phases after this many seconds (default: %(default)s)")
    p.add_argument("--phase-budget-s", type=float, default=75.0, help="a phase is started only if this much time is left (default: %(default)s)")
    p.add_argument("--port", type=int, default=30000, help="server port (default: %(default)s)")
    p.add_argument(
        "--server-args",
        default="--attention-backend triton --sampling-backend pytorch --disable-cuda-graph --mem-fraction-static 0.85 "
        "--context-length 65536 --max-running-requests 256 --skip-server-warmup",
        help="extra launch_server flags (default: %(default)s)",
    )
    p.add_argument(
        "--standin", action="store_true",
        help="dry run on CPU: the harness's stand-in server instead of SGLang (checks this script, not SGLang)",
    )
    a = p.parse_args()

    from prefixsched.integration.live.client import run_requests
    from prefixsched.integration.live.harness import LiveConfig, run_live, write_outputs
    from prefixsched.integration.live.launch import LaunchedServer, launch_command, write_dummy_model
    from prefixsched.theory.model import Request

    res = Path(a.results)
    res.mkdir(parents=True, exist_ok=True)
    policy_file = (res / "policy.txt").resolve()
    policy_file.write_text("off\n")
    model = write_dummy_model(res / "dummy-llama-8b")
    env = dict(os.environ, PREFIXSCHED_POLICY_FILE=str(policy_file), PREFIXSCHED_STATE_LOG=str((res / "state.jsonl").resolve()))
    env.pop("PREFIXSCHED_POLICY", None)
    cmd = launch_command(str(model), port=a.port, policy=None, extra_args=a.server_args.split())
    if a.standin:
        cmd = [sys.executable, "-m", "prefixsched.integration.live.server", "--port", str(a.port), "--max-running-requests", "64"]
    (res / "commands.txt").write_text(" ".join(cmd) + "\n")
    phases = [(w, inst, scale, pol) for (w, inst, scale) in workloads(a.trace) for pol in a.policies if a.only in (None, w)]
    done, skipped = [], []
    with LaunchedServer(cmd, env=env, log_path=res / "server.log", port=a.port) as srv:
        url = srv.wait_ready(300)
        print(f"[run_live] server ready after {time.monotonic() - T_START:.0f} s", flush=True)
        warm = [Request(f"warm{i}", "warm", 0.05 * i, tuple(range(1, 200 + 300 * i)), 8) for i in range(6)]
        run_requests(url, warm, vocab_size=128256)  # JIT-compiles the Triton kernels before any measurement
        print(f"[run_live] warm-up done at {time.monotonic() - T_START:.0f} s", flush=True)
        for w, inst, scale, pol in phases:
            left = a.deadline_s - (time.monotonic() - T_START)
            name = f"{w}-{pol.replace(':', '_')}"
            if left < a.phase_budget_s:
                skipped.append(name)
                continue
            cfg = LiveConfig(
                policy=pol, url=url, policy_file=str(policy_file), flush_cache=True,
                time_scale=scale, vocab_size=128256, name=name, out_dir=str(res),
            )
            t0 = time.monotonic()
            try:
                result = run_live(inst, cfg)
            except Exception as e:  # noqa: BLE001 - keep going: the other phases still count
                print(f"[run_live] {name}: {type(e).__name__}: {e}", flush=True)
                r = getattr(e, "result", None)
                if r is not None:
                    write_outputs(r, json_path=str(res / f"{name}.json"), plot_path=None, profile_path=None)
                skipped.append(f"{name} (failed: {e})")
                continue
            write_outputs(result, json_path=str(res / f"{name}.json"), plot_path=str(res / f"{name}.png"), profile_path=str(res / f"{name}.profile.json"))
            done.append(name)
            s = result["run"]["summary"]
            print(f"[run_live] {name}: {s['requests']} in {time.monotonic() - t0:.0f} s, TTFT p50 {s['ttft_s']['p50']}", flush=True)
    summarize(res, done, skipped)
    out = os.environ.get("OUT")
    if out:
        dest = Path(out) / "results"
        dest.mkdir(parents=True, exist_ok=True)
        for f in res.iterdir():
            if f.is_file() and f.suffix in (".json", ".png", ".md", ".txt", ".jsonl", ".log"):
                shutil.copy2(f, dest / f.name)
    return 0 if done else 1


def summarize(res: Path, done: list[str], skipped: list[str]) -> None:
    rows = []
    for name in done:
        d = json.loads((res / f"{name}.json").read_text())
        s = d["run"]["summary"]
        svc = d.get("service") or {}
        sim = (d.get("simulation") or {}).get("comparison") or {}
        cm = (d.get("profile") or {}).get("cost_model") or {}
        b = svc.get("bound")
        rows.append({
            "phase": name,
            "ok": f"{s['requests']['ok']}/{sum(s['requests'].values())}",
            "ttft_p50_s": s["ttft_s"]["p50"],
            "ttft_p99_s": s["ttft_s"]["p99"],
            "tpot_p50_s": s["tpot_s"]["p50"],
            "out_tok_s": s["output_throughput_tok_s"],
            "hit_rate": s["hit_rate"],
            "gap": (svc.get("measured_gap") or {}).get("value"),
            "bound": None if not b else b["value"],
            "sim_ttft_p50_err": (sim.get("ttft_p50_s") or {}).get("error"),
            "sim_ttft_p99_err": (sim.get("ttft_p99_s") or {}).get("error"),
            "fit_prefill_s_per_tok": cm.get("prefill_per_token_s"),
            "fit_decode_base_s": cm.get("decode_base_s"),
        })
    (res / "summary.json").write_text(json.dumps({"phases": rows, "skipped": skipped}, indent=1) + "\n")

    def f(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    cols = list(rows[0]) if rows else ["phase"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f(r[c]) for c in cols) + " |" for r in rows]
    if skipped:
        lines += ["", "Skipped: " + ", ".join(skipped)]
    (res / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
