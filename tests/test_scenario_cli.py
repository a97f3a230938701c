"""``simulate``'s scenario options: cost profile, limits, load, client strategies, misbehaving
clients, the offered-load line, the per-client table; bad values exit 2 with one line."""

from __future__ import annotations

import json

import pytest

from prefixsched.cli import main
from prefixsched.theory.profiles import CostProfile, get_profile

BASE = ["simulate", "--max-requests", "120", "--no-progress", "--policy", "fcfs", "vtc"]


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_load_profile_and_limits_reach_the_instance(tmp_path, capsys):
    out = tmp_path / "o.json"
    code, text, err = run(BASE + ["--load", "0.9", "--kv-capacity", "200000", "--max-running", "64",
                                  "--chunked-prefill-size", "-1", "--json", str(out)], capsys)
    assert code == 0, err
    assert "offered load: 0.90 x the capacity of 1 worker" in text
    d = json.loads(out.read_text())["input"]
    assert d["offered_load"]["rho"] == pytest.approx(0.9) and d["load"] == 0.9
    assert d["limits"]["kv_capacity_tokens"] == 200000 and d["limits"]["max_running_requests"] == 64
    assert d["limits"]["chunked_prefill_size"] is None and d["limits"]["page_size"] == 32
    assert d["cost_profile"] == "h100-llama3.1-8b" and d["cost_model"] == get_profile("h100").cost_model.__dict__
    # on two workers the same load means arrivals twice as fast
    code, text, _ = run(BASE + ["--load", "0.9", "--workers", "2", "--json", str(out)], capsys)
    assert code == 0 and "capacity of 2 workers" in text
    assert json.loads(out.read_text())["input"]["offered_load"]["rho"] == pytest.approx(0.9)


def test_cost_model_names_and_files(tmp_path, capsys):
    out = tmp_path / "o.json"
    code, _, err = run(BASE + ["--cost-model", "linear", "--json", str(out)], capsys)
    assert code == 0, err
    lin = json.loads(out.read_text())
    assert lin["input"]["cost_model"]["c_attn"] == 0.0 and lin["input"]["limits"]["kv_capacity_tokens"] == 480_000
    prof = CostProfile.from_dict({"name": "slow", "cost_model": {"prefill_per_token_s": 1e-3}, "limits": {"kv_capacity_tokens": 100_000}})
    pf = tmp_path / "slow.json"
    prof.save(pf)
    code, _, err = run(BASE + ["--cost-model", str(pf), "--json", str(out)], capsys)
    assert code == 0, err
    d = json.loads(out.read_text())
    assert d["input"]["cost_profile"] == "slow" and d["input"]["limits"]["kv_capacity_tokens"] == 100_000
    assert d["results"][0]["summary"]["span_s"] > lin["results"][0]["summary"]["span_s"]


def test_skewed_clients_misbehave_and_per_client_table(tmp_path, capsys):
    out = tmp_path / "o.json"
    code, text, err = run(BASE + ["--client-strategy", "heavy:1:0.6", "--misbehave", "s1:2:c3", "--per-client",
                                  "--json", str(out)], capsys)
    assert code == 0, err
    assert "demand share" in text and "longest wait s" in text and "Jain win mean" in text
    d = json.loads(out.read_text())
    assert d["input"]["client_strategy"] == "heavy:1:0.6" and d["input"]["misbehave"] == "s1:2:c3"
    table = d["results"][0]["summary"]["per_client_table"]
    assert max(table, key=lambda c: table[c]["demand_share"]) == "c0"
    assert d["results"][1]["summary"]["gap_bounds"]["vtc"]["ratio"] is not None


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--cost-model", "h200"], "unknown cost profile 'h200'"),
        (["--client-strategy", "heavy:8:0.5"], "K < clients"),
        (["--client-strategy", "lifo"], "--client-strategy: unknown client strategy"),
        (["--misbehave", "s3"], "misbehave"),
        (["--misbehave", "s1:2:c99"], "no client 'c99'"),
        (["--kv-capacity", "100"], "can never fit"),
    ],
)
def test_bad_scenario_values_exit_2_with_one_line(extra, msg, capsys):
    code, _, err = run(BASE + extra, capsys)
    assert code == 2
    assert err.startswith("prefixsched: error:") and msg in err and "Traceback" not in err
    assert err.strip().count("\n") == 0


@pytest.mark.parametrize(
    "extra, msg",
    [
        (["--load", "0"], "--load: must be > 0"),
        (["--load", "x"], "--load: must be a number"),
        (["--rate", "-1"], "--rate: must be > 0"),
        (["--time-scale", "inf"], "--time-scale: must be > 0"),
        (["--kv-capacity", "0"], "--kv-capacity: must be >= 1"),
        (["--max-running", "1.5"], "--max-running: must be an integer"),
        (["--chunked-prefill-size", "-2"], "--chunked-prefill-size: must be >= 1"),
        (["--load", "0.9", "--rate", "2"], "not allowed with argument"),
    ],
)
def test_bad_option_values_are_argparse_errors(extra, msg, capsys):
    with pytest.raises(SystemExit) as e:
        main(BASE + extra)
    err = capsys.readouterr().err
    assert e.value.code == 2 and msg in err and "Traceback" not in err
