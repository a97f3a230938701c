"""Engine pass records against SGLang (prefixsched.integration.conformance.compare_passes,
run_engine_comparison) and the ``prefixsched conformance sglang`` command. Tests marked
``sglang`` skip without SGLang (fail instead under PREFIXSCHED_REQUIRE_SGLANG=1).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from prefixsched.cli import main
from prefixsched.errors import InputError
from prefixsched.integration import conformance as C
from prefixsched.integration.sglang_env import available


def state(**kw):
    s = {
        "page_size": 1, "kv_capacity_tokens": 1024, "max_prefill_tokens": 16384, "chunked_prefill_size": 64,
        "max_running_requests": 8, "new_token_ratio": 0.7, "batch_is_full": False, "tree": [], "locks": [],
        "private_tokens": 0, "running": [], "chunked": None, "queue": [],
    }  # fmt: skip
    s.update(kw)
    return s


def q(rid, fill):
    return {"id": rid, "fill": list(fill), "max_new_tokens": 16, "output_len": 0}


HOT = list(range(100))
COLD = list(range(2000, 2040))
S1 = state(queue=[q("a", range(500, 540)), q("b", range(1000, 1050))])  # spec example: a, b chunked to 24
S2 = state(tree=[HOT + [7]], queue=[q("cold", COLD + [1]), q("hot", HOT + [2]), q("dup", COLD + [3])], chunked_prefill_size=None)
RUN = [{"id": f"r{i}", "max_new_tokens": 100, "output_len": o, "input_len": n} for i, (o, n) in enumerate([(5, 100), (5, 50), (50, 10), (1, 10)])]


def rec(step, kind, st=None, **kw):
    base = {"step": step, "now": float(step), "kind": kind, "queue_before": [], "queue_after": [], "deprioritized": [],
            "admitted": [], "chunked": None, "retracted": [], "state": st}  # fmt: skip
    base.update(kw)
    return base


def test_compare_passes_input_errors():
    with pytest.raises(InputError, match="policy"):
        C.compare_passes([], "hrrn")
    with pytest.raises(InputError, match=r"records\[0\].kind"):
        C.compare_passes([{"step": 0}], "lpm")


def test_idle_and_stateless_records_are_counted_not_replayed():
    r = C.compare_passes([rec(0, "idle"), rec(1, "prefill"), rec(2, "decode"), rec(3, "swap")], "lpm")
    assert r["passes"] == {"prefill": 1, "decode": 1, "idle": 1, "other": 1} and r["replayed"] == 0
    assert all(v["compared"] == 0 for v in r["fields"].values())


def test_feature_detection_follows_the_simulator_signature():
    from prefixsched.reference import simulator

    ok, reason = C.engine_comparison_available()
    assert ok == ("sglang" in getattr(simulator, "ENGINES", {}))
    assert (reason is None) == ok
    if not ok:
        assert "not available in this build" in reason
        assert C.run_engine_comparison(None, "lpm") == {"available": False, "reason": reason}


def test_run_engine_comparison_rejects_non_native_policies():
    with pytest.raises(InputError, match="SGLang-native"):
        C.run_engine_comparison(None, "dlpm")
    with pytest.raises(InputError, match="every"):
        C.run_engine_comparison(None, "lpm", window=10, every=5)


@pytest.mark.sglang
def test_compare_passes_counts_agreements_field_by_field():
    good1 = rec(0, "prefill", S1, admitted=["a", "b"], chunked=("b", 24), queue_after=[])
    # de-prioritisation moves dup last; with no budget binding it is still admitted
    good2 = rec(1, "prefill", S2, admitted=["hot", "cold", "dup"], deprioritized=["dup"], queue_after=[])
    bad = SimpleNamespace(**rec(2, "prefill", S2, admitted=["cold", "hot"], deprioritized=[], queue_after=["dup"]))  # objects too
    dec = rec(3, "decode", state(running=RUN), retracted=["r3", "r0"])
    dec_bad = rec(4, "decode", state(running=RUN), retracted=["r0"])
    r = C.compare_passes([good1, good2, bad, dec, dec_bad, rec(5, "idle")], "lpm", keep=10)
    assert r["passes"] == {"prefill": 3, "decode": 2, "idle": 1, "other": 0} and r["replayed"] == 5
    assert r["fields"]["admitted"] == {"compared": 3, "agree": 2}
    assert r["fields"]["deprioritized"] == {"compared": 3, "agree": 2}
    assert r["fields"]["chunked"] == {"compared": 3, "agree": 3}
    assert r["fields"]["queue_after"] == {"compared": 3, "agree": 2}
    assert r["fields"]["retracted"] == {"compared": 2, "agree": 1}
    assert r["passes_agree"] == 3
    got = {(d["step"], d["field"]) for d in r["first_disagreements"]}
    assert got == {(2, "admitted"), (2, "deprioritized"), (2, "queue_after"), (4, "retracted")}
    d = next(d for d in r["first_disagreements"] if d["field"] == "retracted")
    assert d["engine"] == ["r0"] and d["sglang"] == ["r3"]
    assert len(C.compare_passes([bad], "lpm", keep=1)["first_disagreements"]) == 1


@pytest.mark.sglang
def test_compare_passes_under_fcfs_replays_with_fcfs():
    r = C.compare_passes([rec(0, "prefill", S2, admitted=["cold", "hot", "dup"], queue_after=[])], "fcfs")
    assert r["fields"]["deprioritized"] == {"compared": 1, "agree": 1}  # FCFS de-prioritises nothing
    assert r["fields"]["admitted"] == {"compared": 1, "agree": 1} and r["passes_agree"] == 1


@pytest.mark.sglang
def test_run_engine_comparison_samples_windows_of_consecutive_passes(monkeypatch):
    from prefixsched.reference import simulator

    seen = {}

    def fake_simulate(instance, policy, *, engine="ideal", on_pass=None, **kw):
        seen["engine"] = engine
        for i in range(50):
            on_pass(SimpleNamespace(**rec(i, "prefill", S1, admitted=["a", "b"], chunked=("b", 24))))
        on_pass(SimpleNamespace(**rec(50, "decode", state(running=RUN), retracted=["r3"])))

    monkeypatch.setattr(simulator, "simulate", fake_simulate)
    r = C.run_engine_comparison(object(), "lpm", window=3, every=20, max_windows=2)
    assert seen["engine"] == "sglang" and r["available"] and r["passes_seen"] == 51
    assert r["passes"]["prefill"] == 6 and r["passes"]["decode"] == 1  # steps 0-2 and 20-22
    assert r["fields"]["admitted"] == {"compared": 6, "agree": 6} and r["fields"]["retracted"]["agree"] == 1


def test_cli_bad_option_exits_2(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["conformance", "sglang", "--pages", "0"])
    assert ei.value.code == 2 and "--pages" in capsys.readouterr().err


def test_cli_without_sglang_is_one_line_exit_1(capsys):
    if available()[0]:
        pytest.skip("SGLang is installed here")
    assert main(["conformance", "sglang", "--max-requests", "5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prefixsched: error: sglang is not installed")


@pytest.mark.sglang
def test_cli_prints_counts_and_writes_json(tmp_path, capsys):
    out = tmp_path / "c.json"
    rc = main(["conformance", "sglang", "--max-requests", "40", "--pages", "1", "32", "--capacities", "none", "2", "--json", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "all comparisons agree" in text and "prefixsched 40/40" in text and "sglang_unified 40/40" in text
    data = json.loads(out.read_text())
    assert data["all_agree"] is True and len(data["radix"]) == 4
    assert {(r["page_size"], r["capacity"]) for r in data["radix"]} == {(1, "none"), (1, "2"), (32, "none"), (32, "2")}
    assert data["unified_radix_cache"]["constructible"] is True
    assert data["engine"]["available"] == C.engine_comparison_available()[0]
    rc2 = main(["conformance", "sglang", "--max-requests", "40", "--pages", "32", "--capacities", "2", "--json", "-", "--no-engine", "--no-progress"])
    cap = capsys.readouterr()
    assert rc2 == 0 and json.loads(cap.out)["engine"]["reason"] == "skipped (--no-engine)" and "agree" in cap.err
