"""The live harness against the stand-in server of prefixsched.integration.live.server: streaming
and recording, cost-model fitting (recovering the server's own model), the comparisons, and bad
input (unreachable server, a server dying mid-run, malformed SSE chunks). The real-server path is
marked ``gpu``."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp")

from prefixsched.cli import main as cli_main  # noqa: E402
from prefixsched.integration.live import compare  # noqa: E402
from prefixsched.integration.live.client import LiveRunError, prompt_token_ids, run_requests  # noqa: E402
from prefixsched.integration.live.fit import fit_cost_model, nnls, reconstruct_steps  # noqa: E402
from prefixsched.integration.live.records import LiveRun, RequestResult  # noqa: E402
from prefixsched.theory.cost import CostModel  # noqa: E402
from prefixsched.theory.model import BlockPrompt, Request, ServiceWeights  # noqa: E402

TRUE = CostModel(
    prefill_base_s=0.012, prefill_per_token_s=4e-5, decode_base_s=0.015, decode_per_request_s=1.5e-3
)


@contextmanager
def standin(cost: CostModel = TRUE, *extra: str):
    """The stand-in server as a subprocess on 127.0.0.1 (a free port); yields its URL."""
    cmd = [
        sys.executable, "-m", "prefixsched.integration.live.server",
        "--cost-model", json.dumps(cost.__dict__), "--max-running-requests", "16", *extra,
    ]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()  # "LISTENING <port>"
        assert line.startswith("LISTENING"), (line, p.stderr.read() if p.poll() is not None else "")
        yield f"http://127.0.0.1:{int(line.split()[1])}", p
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _requests(n: int = 50, seed: int = 0, rate: float = 20.0, shared: int = 400) -> list[Request]:
    """Three clients; prompts = one of 4 shared prefixes + a fresh question of varied length."""
    rng = random.Random(seed)
    prefixes = [[rng.randrange(32000) for _ in range(shared)] for _ in range(4)]
    out, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(rate)
        q = [rng.randrange(32000) for _ in range(rng.randint(20, 900))]
        out.append(Request(f"r{i}", f"c{i % 3}", round(t, 4), tuple(prefixes[i % 4] + q), rng.randint(3, 16)))
    return out


def test_streaming_and_recording():
    reqs = _requests(30)
    with standin() as (url, _):
        run = run_requests(url, reqs)
    assert not run.partial and run.counts() == {"ok": 30, "error": 0, "not_sent": 0}
    seen_prefix = set()
    for r, q in zip(run.results, reqs):
        assert r.status == "ok" and r.output_tokens == q.output_len == r.chunk_tokens[-1]
        assert r.chunk_tokens == list(range(1, q.output_len + 1))  # one chunk per token
        assert r.sent is not None and 0 < r.ttft <= r.e2e
        assert len(r.itl()) == q.output_len - 1 and all(x > 0 for x in r.itl())
        assert r.tpot == pytest.approx((r.e2e - r.ttft) / (q.output_len - 1))
        # cached tokens: the shared prefix once some earlier request of the same prefix was prefilled
        k = int(q.id[1:]) % 4
        assert r.cached_tokens in (0, 400) if k not in seen_prefix else r.cached_tokens >= 0
        seen_prefix.add(k)
    s = run.summary()
    assert s["hit_rate"] > 0.2 and s["ttft_s"]["p50"] > 0 and s["malformed_chunks"] == 0
    assert sum(1 for r in run.results if r.cached_tokens == 400) >= 20  # most requests hit their prefix


def test_fit_recovers_the_servers_cost_model():
    """The stand-in runs TRUE; the fit from the client's view must give it back. Tolerances are
    for timing noise on a shared machine (measured: prefill coefficients within ~7 %, a within
    ~20 %, decode within ~10 %)."""
    reqs = _requests(70, seed=3, rate=14.0)
    with standin() as (url, _):
        run = run_requests(url, reqs)
    fit = fit_cost_model(run, fit_context=False)
    got, rep = fit.cost_model, fit.report
    assert rep["prefill"]["points"] >= 15 and rep["decode"]["points"] >= 40
    for name, tol in (
        ("prefill_per_token_s", 0.10),
        ("prefill_base_s", 0.30),
        ("decode_base_s", 0.10),
        ("decode_per_request_s", 0.15),
    ):
        want = getattr(TRUE, name)
        assert abs(getattr(got, name) - want) <= tol * want, (name, getattr(got, name), want, rep)
    # with the context term free (the default), its predictions of every pass still agree
    full = fit_cost_model(run)
    dec = [p for p in full.passes if p.kind == "decode" and p.busy]
    pre = [p for p in full.passes if p.kind == "prefill"]
    rel_d = [abs(full.cost_model.decode_time(p.batch, p.context) / TRUE.decode_time(p.batch, p.context) - 1) for p in dec]
    rel_p = [abs(full.cost_model.prefill_time(p.extend) / TRUE.prefill_time(p.extend) - 1) for p in pre]
    assert float(np.median(rel_d)) < 0.05 and float(np.median(rel_p)) < 0.05
    assert full.cost_model.decode_per_context_token_s < 1e-6  # the server has no context term


def test_nnls_and_reconstruction_on_synthetic_streams():
    A = np.array([[1, 0.0], [1, 1], [1, 2], [1, 3]])
    assert np.allclose(nnls(A, A @ np.array([2.0, 0.5])), [2.0, 0.5])
    assert np.all(nnls(A, A @ np.array([2.0, -0.5])) >= 0)  # the constraint binds
    # two requests: a prefill pass at 0.1 (both first tokens), decode passes every 0.02 s
    rs = []
    for i in range(2):
        r = RequestResult(f"r{i}", f"c{i}", 0.0, 100, 4, sent=0.0, status="ok", cached_tokens=10 * i)
        r.chunk_times = [0.1 + 1e-5 * i, 0.12, 0.14, 0.16]
        r.chunk_tokens = [1, 2, 3, 4]
        rs.append(r)
    run = LiveRun("x", "fcfs", 1.0, rs)
    passes, eps = reconstruct_steps(run)
    assert [p.kind for p in passes] == ["prefill", "decode", "decode", "decode"]
    assert passes[0].extend == 100 + 90 and passes[0].busy is False and passes[0].start == 0.0
    assert [round(p.duration, 6) for p in passes[1:]] == [0.02, 0.02, 0.02]
    assert passes[1].batch == 2 and passes[1].context == 2 * 100 + 2  # prompt + 1 token each
    # measured service (actual view: extend 100 and 90, w_q = 2 per token)
    times, clients, cum = compare.measured_service(run, passes, ServiceWeights(1, 2))
    assert clients == ("c0", "c1") and cum[0].tolist() == [102.0, 92.0] and cum[-1].tolist() == [108.0, 98.0]
    # an idle server admits at once: nobody is backlogged
    assert compare.backlog_intervals_live(run, passes) == {"c0": [], "c1": []}


def test_service_gap_matches_a_hand_computation():
    times = np.array([1.0, 2.0, 3.0, 4.0])
    cum = np.array([[10.0, 0.0], [10.0, 5.0], [30.0, 5.0], [30.0, 40.0]])
    backlog = {"a": [(0.5, 3.5)], "b": [(0.0, 10.0)]}
    g = compare.max_service_gap_live(times, ("a", "b"), cum, backlog)
    # over [0.5, 3.5): D = W_a - W_b at 0.5, 1, 2, 3 = 0, 10, 5, 25 -> 25, a served more
    assert g["value"] == 25.0 and g["pair"] == ("a", "b") and g["interval"] == (0.5, 3.0)
    assert compare.max_service_gap_live(times, ("a", "b"), cum, {"a": [(5, 6)], "b": [(0, 1)]})["value"] == 0.0


def test_bounds_for_policies():
    from prefixsched.theory import bounds
    from prefixsched.theory.model import Instance, Limits

    inst = Instance(tuple(_requests(10)), limits=Limits(kv_capacity_tokens=50_000, max_running_requests=4))
    L = bounds.max_input_tokens(inst)
    v = compare.bound_for("vtc", inst)
    assert v["value"] == bounds.vtc_two_backlogged_bound(L, 50_000) and v["view"] == "client"
    d = compare.bound_for("dlpm:3000", inst)
    M = bounds.batch_output_capacity(inst)
    assert d["value"] == bounds.dlpm_thm_4_1(3000.0, bounds.dlpm_U(L, M)) and d["view"] == "actual"
    assert compare.bound_for("lpm", inst) is None and compare.bound_for("sglang:lpm", inst) is None


def test_token_ids_are_mapped_into_the_vocabulary_keeping_shared_prefixes():
    a = Request("a", "c", 0.0, BlockPrompt([7, 8, 9], 1300, 512), 4)
    b = Request("b", "c", 0.0, BlockPrompt([7, 8, 2], 1200, 512), 4)
    ia, ib = prompt_token_ids(a, 32000), prompt_token_ids(b, 32000)
    assert max(ia + ib) < 32000 and min(ia + ib) >= 1 and len(ia) == 1300
    assert ia[:1024] == ib[:1024] and ia[1024:1100] != ib[1024:1100]
    small = Request("s", "c", 0.0, (5, 6, 7), 1)
    assert prompt_token_ids(small, 32000) == [5, 6, 7]


def test_cli_attach_writes_json_plot_and_profile(tmp_path):
    out, plot, prof = tmp_path / "live.json", tmp_path / "live.png", tmp_path / "profile.json"
    with standin() as (url, _):
        rc = cli_main([
            "live", "--url", url, "--policy", "fcfs", "--workload", "shared-prefix", "--clients", "3",
            "--max-requests", "40", "--workload-param", "block_size=1", "--workload-param", "groups=6",
            "--workload-param", "prefix_len=300", "--workload-param", "question_len=80",
            "--workload-param", "output_len=8", "--workload-param", "rate=30",
            "--json", str(out), "--plot", str(plot), "--profile", str(prof), "--no-progress",
        ])
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["partial"] is False and d["run"]["summary"]["requests"]["ok"] == 40
    assert d["service"]["measured_gap"]["value"] > 0 and d["service"]["bound"] is None
    curve = d["service"]["curve"]
    assert curve["clients"] == ["c0", "c1", "c2"] or sorted(curve["clients"]) == ["c0", "c1", "c2"]
    last = curve["cumulative"][-1]
    assert len(curve["times_s"]) == len(curve["cumulative"]) and all(x > 0 for x in last)
    assert curve["times_s"] == sorted(curve["times_s"])
    want = {c: 0.0 for c in curve["clients"]}  # actual view: w_e * extend + w_q * output tokens
    for r in d["run"]["requests"]:
        want[r["client"]] += (r["prompt_len"] - r["cached_tokens"]) + 2 * r["output_tokens"]
    assert dict(zip(curve["clients"], last)) == pytest.approx(want)
    cmp = d["simulation"]["comparison"]
    assert cmp["requests"] == 40 and cmp["ttft_p50_s"]["measured"] > 0 and cmp["output_throughput_tok_s"]["simulated"] > 0
    p = json.loads(prof.read_text())
    assert set(p) == {"name", "cost_model", "limits", "source", "fitted"}
    assert CostModel.from_dict(p["cost_model"]).prefill_per_token_s > 0
    assert p["limits"]["max_running_requests"] == 16  # read from the server's /get_server_info
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unreachable_url_is_a_clear_error(tmp_path, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(LiveRunError, match="unreachable") as ei:
        run_requests(f"http://127.0.0.1:{port}", _requests(3), probe_timeout_s=3)
    assert ei.value.run is not None and ei.value.run.partial and ei.value.run.counts()["not_sent"] == 3
    out = tmp_path / "x.json"
    rc = cli_main(["live", "--url", f"http://127.0.0.1:{port}", "--max-requests", "3", "--json", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "prefixsched: error:" in err and "unreachable" in err and "Traceback" not in err
    assert json.loads(out.read_text())["partial"] is True


def test_server_dying_mid_run_keeps_the_results_and_marks_them_partial(tmp_path, capsys):
    out = tmp_path / "dead.json"
    with standin(TRUE, "--die-after-tokens", "60") as (url, proc):
        rc = cli_main([
            "live", "--url", url, "--policy", "fcfs", "--workload", "shared-prefix", "--clients", "2",
            "--max-requests", "30", "--workload-param", "block_size=1", "--workload-param", "prefix_len=200",
            "--workload-param", "question_len=50", "--workload-param", "output_len=8",
            "--workload-param", "rate=20", "--json", str(out), "--no-progress",
        ])
        assert proc.wait(timeout=10) == 3  # the stand-in exited on purpose
    err = capsys.readouterr().err
    assert rc == 1 and "prefixsched: error: the live run is partial" in err and "Traceback" not in err
    d = json.loads(out.read_text())
    counts = d["run"]["summary"]["requests"]
    assert d["partial"] is True and counts["ok"] >= 1 and counts["error"] >= 1 and counts["not_sent"] >= 1
    assert sum(counts.values()) == 30 and d["run"]["errors"]


def test_malformed_chunks_are_counted_not_fatal():
    reqs = _requests(12, rate=40.0)
    with standin(TRUE, "--malformed-every", "4") as (url, _):
        run = run_requests(url, reqs)
    chunks = sum(q.output_len for q in reqs)
    assert not run.partial and all(r.status == "ok" for r in run.results)
    assert run.malformed_chunks == chunks // 4  # one bad line before every 4th chunk, all skipped
    assert all(r.output_tokens == q.output_len for r, q in zip(run.results, reqs))


@pytest.mark.gpu
def test_real_sglang_server_smoke(tmp_path):
    """A real SGLang server on a GPU (integration/gpu/run_live.sh runs the full comparison)."""
    try:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
    except ImportError:
        pytest.skip("no torch")
    pytest.importorskip("sglang")
    out = tmp_path / "gpu.json"
    rc = cli_main([
        "live", "--policy", "dlpm:8000", "--workload", "shared-prefix", "--clients", "3", "--max-requests", "40",
        "--max-output-tokens", "16", "--out-dir", str(tmp_path), "--json", str(out), "--no-progress",
    ])
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["run"]["summary"]["requests"]["ok"] == 40 and d["profile"] is not None


def test_time_scale_compresses_the_send_schedule():
    reqs = _requests(10, rate=5.0)
    with standin() as (url, _):
        t = time.perf_counter()
        run = run_requests(url, reqs, time_scale=0.25)
        wall = time.perf_counter() - t
    assert not run.partial
    span = reqs[-1].arrival
    sent = [r.sent for r in run.results]
    assert max(sent) - min(sent) == pytest.approx(0.25 * (span - reqs[0].arrival), abs=0.05)
    assert wall < span  # the whole run took less than the unscaled arrival span


def test_launch_command_and_process_handling(tmp_path):
    from prefixsched.integration.live.launch import LLAMA_8B_CONFIG, LaunchedServer, launch_command, simulator_spec, write_dummy_model

    d = write_dummy_model(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg == LLAMA_8B_CONFIG and cfg["num_hidden_layers"] == 32 and cfg["num_key_value_heads"] == 8
    cmd = launch_command(str(d), port=31000, policy="dlpm:8000", python="PY", extra_args=["--mem-fraction-static", "0.8"])
    assert cmd[:3] == ["PY", "-m", "sglang.launch_server"] and "--skip-tokenizer-init" in cmd
    assert cmd[cmd.index("--schedule-policy") + 1] == "lpm" and cmd[cmd.index("--load-format") + 1] == "dummy"
    assert cmd[-2:] == ["--mem-fraction-static", "0.8"]
    assert launch_command(str(d), port=1, policy="sglang:fcfs")[launch_command(str(d), port=1, policy="sglang:fcfs").index("--schedule-policy") + 1] == "fcfs"
    assert simulator_spec("sglang:lpm") == "lpm:128" and simulator_spec("vtc") == "vtc"
    # a process that serves: ready, then stopped (its process group)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = [sys.executable, "-m", "prefixsched.integration.live.server", "--port", str(port)]
    with LaunchedServer(srv, env=dict(os.environ), log_path=tmp_path / "s.log", port=port) as ls:
        assert ls.wait_ready(30) == f"http://127.0.0.1:{port}"
        pid = ls.proc.pid
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    # a process that dies at start: a clear error with the log's tail
    bad = [sys.executable, "-c", "import sys; print('no GPU here'); sys.exit(7)"]
    with pytest.raises(LiveRunError, match=r"exited with status 7[\s\S]*no GPU here"):
        with LaunchedServer(bad, env=dict(os.environ), log_path=tmp_path / "b.log", port=port) as ls:
            ls.wait_ready(30)
