"""Every bad input of issue #7 gives exit 2 and one message naming the field and the value; bad
output paths are refused before any work and nothing is clobbered or left behind; options that
do not apply warn instead of being silently ignored; CLI consistency (--version, help defaults,
one --json convention)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from prefixsched.cli import build_parser, main
from prefixsched.instance_io import save_instance
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request

LINE = '{"timestamp": %s, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}\n'


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def run_any(argv, capsys):
    """main() or argparse's SystemExit, as (code, out, err)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def small_instance_dict() -> dict:
    reqs = tuple(
        Request(id=f"q{i}", client=f"c{i % 2}", arrival=float(i), prompt=(1, 2, 3 + i), output_len=2) for i in range(4)
    )
    inst = Instance(requests=reqs, cost_model=CostModel.token_units(), limits=Limits(kv_capacity_tokens=1000))
    return inst.to_dict()


def _write(tmp_path: Path, name: str, data: bytes | str) -> str:
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(p)


def _instance_with(tmp_path: Path, mutate) -> str:
    d = small_instance_dict()
    mutate(d)
    text = json.dumps(d)
    return _write(tmp_path, "i.json", text)


def _raw_instance(tmp_path: Path, old: str, new: str) -> str:
    """The instance JSON with one literal replaced (for literals json.dumps cannot write)."""
    text = json.dumps(small_instance_dict())
    assert old in text
    return _write(tmp_path, "i.json", text.replace(old, new, 1))


# (id, argv builder(tmp_path) -> argv, regex the one error line must match: field and value)
BAD = [
    ("non-utf8-byte", lambda t: ["simulate", "--trace", _write(t, "t.jsonl", (LINE % 0).encode() + b'{"timestamp": 1\xff}\n')],
     r"t\.jsonl:2: line: not UTF-8 text: byte 0xff"),
    ("binary-garbage", lambda t: ["simulate", "--trace", _write(t, "t.jsonl", bytes(range(256)) * 4)],
     r"t\.jsonl:\d+: line: (not UTF-8 text: byte 0x|not valid JSON)"),
    ("timestamp-10**400", lambda t: ["simulate", "--trace", _write(t, "t.jsonl", LINE % ("1" + "0" * 400))],
     r"t\.jsonl:1: timestamp: must be in \[0, 1e\+13\] \(ms\), got <integer of about 401 digits>"),
    ("5000-digit-int", lambda t: ["simulate", "--trace", _write(t, "t.jsonl", LINE % ("7" * 5000))],
     r"t\.jsonl:1: timestamp: .*\(5000 digits\)"),
    ("5000-digit-length", lambda t: ["simulate", "--trace", _write(t, "t.jsonl", (LINE % 0).replace("600", "9" * 5000))],
     r"t\.jsonl:1: input_length: must be an integer .*\(5000 digits\)"),
    ("nested-100k", lambda t: ["simulate", "--trace", _write(t, "t.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")],
     r"t\.jsonl:1: line: JSON nested deeper than 64 levels"),
    ("nested-in-field", lambda t: ["simulate", "--trace", _write(t, "t.jsonl", (LINE % 0).replace("[0, 1]", "[" * 50 + "]" * 50))],
     r"t\.jsonl:1: hash_ids: .*got \[\[\["),
    ("timestamp-NaN", lambda t: ["simulate", "--trace", _write(t, "t.jsonl", LINE % "NaN")],
     r"t\.jsonl:1: timestamp: must be a finite number .*got NaN"),
    ("timestamp-1e400", lambda t: ["simulate", "--trace", _write(t, "t.jsonl", LINE % "1e400")],
     r"t\.jsonl:1: timestamp: must be a finite number .*got 1e400"),
    ("timestamp-negative", lambda t: ["simulate", "--trace", _write(t, "t.jsonl", LINE % "-5")],
     r"t\.jsonl:1: timestamp: must be in \[0, 1e\+13\] \(ms\), got -5"),
    ("c_attn-1e308", lambda t: ["simulate", "--trace", _instance_with(t, lambda d: d["cost_model"].update(c_attn=1e308))],
     r"i\.json: cost_model\.c_attn: must be in \[0, 1000\], got 1e\+308"),
    ("prefill-1e308", lambda t: ["solve", _instance_with(t, lambda d: d["cost_model"].update(prefill_per_token_s=1e308)),
                                 "--solver", "dp"],
     r"i\.json: cost_model\.prefill_per_token_s: must be in \[0, 1000\], got 1e\+308"),
    ("cost-NaN", lambda t: ["solve", _raw_instance(t, '"c_attn": 0.0', '"c_attn": NaN'), "--solver", "dp"],
     r"i\.json: cost_model\.c_attn: must be a finite number, got NaN"),
    ("arrival-1e308", lambda t: ["solve", _instance_with(t, lambda d: d["requests"][2].update(arrival=1e308))],
     r"i\.json: requests\[2\]\.arrival: must be in \[0, 1e\+12\], got 1e\+308"),
    ("arrival-Infinity", lambda t: ["solve", _raw_instance(t, '"arrival": 1.0', '"arrival": Infinity')],
     r"i\.json: requests\[1\]\.arrival: must be a finite number .*got Infinity"),
    ("output-len-huge", lambda t: ["solve", _instance_with(t, lambda d: d["requests"][0].update(output_len=10**30))],
     r"requests\[0\]\.output_len: must be in \[1, 10\*\*6\], got 10{30}$"),
    ("token-id-huge", lambda t: ["solve", _instance_with(t, lambda d: d["requests"][0].update(prompt=[1, 10**40]))],
     r"requests\[0\]\.prompt\[1\]: must be in \[0, 2\*\*63 - 1\], got <integer of about 41 digits>"),
    ("weights-10**400", lambda t: ["solve", _instance_with(t, lambda d: d.update(weights={"w_e": 10**400}))],
     r"i\.json: weights\.w_e: must be a finite number \(a float64\), got <integer of about 401 digits>"),
    ("cost-10**400", lambda t: ["solve", _instance_with(t, lambda d: d["cost_model"].update(decode_base_s=-10**400))],
     r"i\.json: cost_model\.decode_base_s: must be a finite number \(a float64\), got <integer of about 401 digits>"),
    ("limits-huge", lambda t: ["solve", _instance_with(t, lambda d: d["limits"].update(kv_capacity_tokens=10**20))],
     r"limits\.kv_capacity_tokens: must be in \[1, 10\*\*15\], got 10+"),
    ("instance-not-utf8", lambda t: ["solve", _write(t, "i.json", b'{"requests": "\xc3\x28"}')],
     r"i\.json: encoding: not UTF-8 text: byte 0xc3"),
    ("reduce-huge-bound", lambda t: ["reduce", "3partition", "--values", "333333333", "333333333", "333333334",
                                     "--bound", "1000000000"],
     r"bound: the reduction is pseudo-polynomial in B .*B = 1000000000 gives 3,000,000,012 tokens"),
    ("reduce-too-many-values", lambda t: ["reduce", "3partition", "--values", *(["5"] * 303), "--bound", "15"],
     r"--values: at most 300 values \(100 triples\), got 303"),
    ("family-n-huge", lambda t: ["family", "lpm-starvation", "--n", "10000000"],
     r"--n: lpm-starvation with n=10000000 has 720,000,032 prompt tokens"),
    ("family-vtc-quadratic", lambda t: ["family", "vtc-locality", "--n", "1000"],
     r"--n: vtc-locality with n=1000 has 8,008,000 prompt tokens"),
    ("clients-huge", lambda t: ["simulate", "--clients", "10000000"],
     r"argument --clients: must be in \[1, 10,000\], got 10000000"),
    ("workers-huge", lambda t: ["simulate", "--workers", "100000"],
     r"argument --workers: must be in \[1, 1,024\], got 100000"),
    ("requests-huge", lambda t: ["simulate", "--requests", str(10**30)],
     r"argument --requests: must be an integer in \[1, 200,000\], got one of 31 digits"),
    ("seed-huge", lambda t: ["simulate", "--seed", str(2**64)],
     r"argument --seed: must be in \[0, 9,223,372,036,854,775,807\], got 18446744073709551616"),
    ("quantum-inf", lambda t: ["simulate", "--quantum", "inf"], r"argument --quantum: must be a finite number .*'inf'"),
    ("time-limit-nan", lambda t: ["solve", "x.json", "--time-limit", "nan"],
     r"argument --time-limit: must be a finite number .*'nan'"),
    ("gap-n-over-backend", lambda t: ["gap", "--n", "10000000"],
     r"--n: the dp backend solves at most 56 queries in the prev model, got 10000000"),
    ("gap-instances-huge", lambda t: ["gap", "--instances", "10000000"],
     r"argument --instances: must be in \[1, 100,000\], got 10000000"),
    ("dispatch-bogus-one-worker", lambda t: ["simulate", "--dispatch", "bogus", "--max-requests", "5"],
     r"dispatch: unknown dispatcher 'bogus'"),
    ("gap-trace-with-random", lambda t: ["gap", "--trace", "x.jsonl", "--source", "random"],
     r"--trace: is only read with --source trace \(source is 'random'\)"),
    ("requests-on-trace", lambda t: ["simulate", "--trace", _write(t, "t.jsonl", LINE % 0), "--requests", "5"],
     r"--requests: generates a synthetic workload"),
]


@pytest.mark.parametrize("case, make, pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exit_2_names_field_and_value(tmp_path, capsys, case, make, pattern):
    argv = make(tmp_path) + (["--no-progress"] if make(tmp_path)[0] in ("simulate", "gap") else [])
    code, out, err = run_any(argv, capsys)
    assert code == 2, (case, out, err)
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if re.match(r"prefixsched( \w+)?: error: ", ln)]
    assert len(errors) == 1, err
    assert re.search(pattern, errors[0]), errors[0]
    assert len(errors[0]) < 400, "messages stay readable: huge values are abbreviated"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_cpsat_names_the_request_whose_arrival_overflows(tmp_path, capsys):
    """A late arrival that only cpsat's integer scaling overflows: the message names the request."""
    d = small_instance_dict()
    d["cost_model"]["c_attn"] = 1e-6  # scale 10**6 makes the arrivals integral
    d["requests"][3]["arrival"] = 9e11
    path = _write(tmp_path, "i.json", json.dumps(d))
    code, _, err = run(["solve", path, "--solver", "cpsat"], capsys)
    assert code == 2
    assert "queries[3].arrival: request 'q3' arrives at 9e+11" in err


def test_max_requests_on_a_workload_is_the_first_m_of_the_default_workload(capsys):
    code, out, err = run(["simulate", "--max-requests", str(10**30), "--policy", "fcfs", "--no-progress"], capsys)
    assert code == 0, err
    assert out.startswith("2222 requests, 8 clients, workload=default")
    code, out, _ = run(["simulate", "--requests", "40", "--max-requests", "25", "--policy", "fcfs", "--no-progress"],
                       capsys)
    assert code == 0 and out.startswith("25 requests")


# ---------------------------------------------------------------------------------------------
# output paths


def _outputs(t: Path) -> dict[str, str]:
    (t / "d").mkdir()
    (t / "f").write_text("a regular file")
    (t / "dang").symlink_to(t / "nowhere")
    return {
        "directory": str(t / "d"),
        "empty": "",
        "under-a-file": str(t / "f" / "x.json"),
        "device": "/dev/full",
        "dev-null": "/dev/null",
        "dangling-symlink": str(t / "dang"),
        "unwritable-directory": "/sys/prefixsched-test.json" if os.geteuid() == 0 else str(t / "ro" / "x.json"),
    }


COMMANDS = {
    "simulate --json": lambda o, t: ["simulate", "--max-requests", "20", "--policy", "fcfs", "--no-progress", "--json", o],
    "simulate --plot": lambda o, t: ["simulate", "--max-requests", "20", "--policy", "fcfs", "--no-progress", "--plot", o],
    "solve --json": lambda o, t: ["solve", _instance_with(t, lambda d: None), "--solver", "dp", "--json", o],
    "solve --gantt": lambda o, t: ["solve", _instance_with(t, lambda d: None), "--solver", "dp", "--gantt", o],
    "gap --json": lambda o, t: ["gap", "--n", "4", "--instances", "1", "--policies", "fcfs", "--no-progress", "--json", o],
    "gap --plot": lambda o, t: ["gap", "--n", "4", "--instances", "1", "--policies", "fcfs", "--no-progress", "--plot", o],
    "reduce --json": lambda o, t: ["reduce", "3partition", "--values", "5", "5", "6", "--bound", "16", "--json", o],
    "family --out": lambda o, t: ["family", "lpm-starvation", "--n", "3", "--out", o],
}


@pytest.mark.parametrize("kind", ["directory", "empty", "under-a-file", "device", "dev-null", "dangling-symlink",
                                  "unwritable-directory"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_output_path_refused_before_work(tmp_path, capsys, monkeypatch, kind, command):
    work = tmp_path / "w"
    work.mkdir()
    outs = _outputs(work)
    if kind == "unwritable-directory":
        if os.geteuid() == 0:
            if os.access("/sys", os.W_OK) and not _sys_refuses():
                pytest.skip("no unwritable directory available to root here")
        else:
            (work / "ro").mkdir(mode=0o555)
    before = {p: (p.lstat().st_mode, p.read_bytes() if p.is_file() else None) for p in work.iterdir()}
    st_dev = os.stat("/dev/full")
    # nothing may run before the check: the simulator, solvers and reductions are poisoned
    import prefixsched.gap
    import prefixsched.reference.simulator
    import prefixsched.reductions.three_partition
    import prefixsched.theory.exact

    def boom(*a, **k):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr(prefixsched.reference.simulator, "simulate", boom)
    monkeypatch.setattr(prefixsched.theory.exact, "solve", boom)
    monkeypatch.setattr(prefixsched.gap, "run_gap", boom)
    monkeypatch.setattr(prefixsched.reductions.three_partition, "reduce_to_ttft_feasibility", boom)
    code, out, err = run(COMMANDS[command](outs[kind], tmp_path), capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prefixsched: error: --"), err
    assert "Traceback" not in err
    after = {p: (p.lstat().st_mode, p.read_bytes() if p.is_file() else None) for p in work.iterdir()}
    assert after == before  # nothing clobbered, nothing left behind
    assert os.stat("/dev/full").st_ino == st_dev.st_ino and not Path("/dev/full").is_file()


def _sys_refuses() -> bool:
    from prefixsched._io import check_output_path
    from prefixsched.errors import InputError

    try:
        check_output_path("/sys/prefixsched-test.json")
    except InputError:
        return True
    return False


def test_symlink_to_a_regular_file_is_followed_and_kept(tmp_path, capsys):
    real = tmp_path / "runs" / "today.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "results.json"
    link.symlink_to(real)
    code, _, err = run(["family", "lpm-starvation", "--n", "3", "--json", str(link)], capsys)
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads(real.read_text())["requests"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["results.json", "runs", "today.json"]


def test_two_outputs_to_one_file_refused(tmp_path, capsys):
    o = str(tmp_path / "x")
    code, _, err = run(["simulate", "--json", o, "--plot", o, "--no-progress"], capsys)
    assert code == 2 and "give each output its own file" in err


def test_plot_to_stdout_refused(capsys):
    code, _, err = run(["simulate", "--plot", "-", "--no-progress"], capsys)
    assert code == 2 and "--plot: '-' (stdout) is only for JSON outputs" in err


def test_read_only_file_not_replaced(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root may replace a read-only file")
    f = tmp_path / "r.json"
    f.write_text("keep")
    f.chmod(0o444)
    code, _, err = run(["family", "lpm-starvation", "--n", "3", "--out", str(f)], capsys)
    assert code == 2 and "read-only" in err and f.read_text() == "keep"


# ---------------------------------------------------------------------------------------------
# options that do not apply: warnings, never silence


def test_json_instance_options_warn_and_max_requests_applies(tmp_path, capsys):
    path = _instance_with(tmp_path, lambda d: None)
    code, out, err = run(["simulate", "--trace", path, "--clients", "3", "--client-strategy", "round-robin",
                          "--max-requests", "2", "--policy", "fcfs", "--no-progress"], capsys)
    assert code == 0, err
    assert "--clients does not apply to a .json instance" in err
    assert "--client-strategy does not apply to a .json instance" in err
    header = out.splitlines()[0]
    assert header.startswith("2 requests") and "client_strategy" not in header


def test_one_worker_dispatch_and_unused_policy_options_warn(capsys):
    code, _, err = run(["simulate", "--dispatch", "least-load", "--q-w", "5", "--quantum", "5", "--k", "3",
                        "--policy", "fcfs", "--max-requests", "10", "--no-progress"], capsys)
    assert code == 0
    for needle in ("--dispatch has no effect with one worker", "--q-w has no effect with one worker",
                   "--quantum: no selected policy takes", "--k: no selected policy takes"):
        assert needle in err, err


def test_dispatch_header_shows_the_parameter(capsys):
    code, out, _ = run(["simulate", "--workers", "2", "--dispatch", "d2lpm:inf", "--max-requests", "20",
                        "--policy", "fcfs", "--no-progress"], capsys)
    assert code == 0 and "dispatch=d2lpm(q_w=inf)" in out.splitlines()[0]


def test_gap_trace_alone_implies_source_trace(tmp_path, capsys):
    lines = "".join(LINE.replace("[0, 1]", f"[0, {i + 1}]") % (i * 100) for i in range(6))
    path = _write(tmp_path, "t.jsonl", lines)
    code, out, err = run(["gap", "--trace", path, "--n", "3", "--instances", "2", "--policies", "fcfs",
                          "--no-progress"], capsys)
    assert code == 0, err
    assert "2 instances proven optimal" in out


def test_gantt_without_a_schedule_warns(tmp_path, capsys):
    path = _instance_with(tmp_path, lambda d: None)
    png = tmp_path / "g.png"
    code, _, err = run(["solve", path, "--objective", "ttft-feasible", "--bound", "0", "--solver", "dp",
                        "--gantt", str(png)], capsys)
    assert code == 0 and "--gantt: no schedule to draw (status INFEASIBLE)" in err and not png.exists()


# ---------------------------------------------------------------------------------------------
# CLI consistency


def test_version(capsys):
    from prefixsched import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"prefixsched {__version__}"


def _subparsers():
    p = build_parser()
    sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    return p, sub.choices


def test_every_option_has_help_showing_its_default():
    p, subs = _subparsers()
    for name, sp in [("prefixsched", p), *subs.items()]:
        fmt = sp._get_formatter()
        for a in sp._actions:
            if not a.option_strings or a.dest in ("help", "version"):
                continue
            text = fmt._get_help_string(a)
            assert a.help, f"{name} {a.option_strings[0]} has no help"
            if not a.required:
                assert "default" in text, f"{name} {a.option_strings[0]}: help does not show its default: {text!r}"


@pytest.mark.parametrize("argv", [["policies"], ["workloads"], ["family", "lpm-starvation", "--n", "2"],
                                  ["gap", "--n", "4", "--instances", "1", "--policies", "fcfs", "--no-progress"],
                                  ["reduce", "3partition", "--values", "5", "5", "6", "--bound", "16"]])
def test_json_dash_is_json_alone_on_stdout_and_file_is_the_same(tmp_path, capsys, argv):
    code, out, err = run(argv + ["--json", "-"], capsys)
    assert code == 0, err
    parsed = json.loads(out)
    f = tmp_path / "o.json"
    code, _, err = run(argv + ["--json", str(f)], capsys)
    assert code == 0, err
    assert json.loads(f.read_text()) == parsed


def test_bare_json_is_a_deprecated_alias_of_stdout(tmp_path, capsys):
    code, out, err = run(["policies", "--json"], capsys)
    assert code == 0 and "deprecated" in err
    data = json.loads(out)
    dlpm = next(d for d in data if d["name"] == "dlpm")
    assert dlpm["defaults"]["quantum"] == 8000.0  # policies shows default parameters
    path = _instance_with(tmp_path, lambda d: None)
    code, out, err = run(["solve", path, "--solver", "dp", "--json"], capsys)
    assert code == 0 and "deprecated" in err and json.loads(out)["status"] == "OPTIMAL"
    f = tmp_path / "r.json"
    code, out, err = run(["solve", path, "--solver", "dp", "--json", str(f)], capsys)
    assert code == 0 and "status     OPTIMAL" in out and json.loads(f.read_text())["interrupted"] is False


def test_policies_table_shows_default_parameters(capsys):
    code, out, _ = run(["policies"], capsys)
    assert code == 0 and "default parameters" in out and "quantum=8,000" in out and "k=2" in out


def test_workloads_json_lists_parameters(capsys):
    code, out, _ = run(["workloads", "--json", "-"], capsys)
    d = {w["name"]: w for w in json.loads(out)}
    assert d["default"]["parameters"]["duration_s"] == 90.0 and {"default", "shared-prefix", "s1", "s2", "dlpm-chat", "klpm-replica", "vtc-overload"} <= set(d)
    assert all(w["description"] for w in d.values())


def test_simulate_preemption_option(capsys, tmp_path):
    """--preemption needs the sglang engine and one worker; a preemptive policy without it warns."""
    code, _, err = run(["simulate", "--engine", "ideal", "--preemption", "drop", "--requests", "5"], capsys)
    assert code == 2 and "--preemption" in err and "--engine sglang" in err
    code, _, err = run(["simulate", "--workers", "2", "--preemption", "swap", "--requests", "5"], capsys)
    assert code == 2 and "single-worker" in err
    code, _, err = run(["simulate", "--policy", "vtc-preempt", "--requests", "30", "--no-progress"], capsys)
    assert code == 0 and "cannot preempt without --preemption" in err
    f = tmp_path / "o.json"
    code, _, err = run(["simulate", "--policy", "vtc-preempt", "fcfs", "--requests", "30", "--no-progress",
                        "--preemption", "fastswitch", "--json", str(f)], capsys)
    assert code == 0 and "fcfs do not preempt" in err and "cannot preempt" not in err
    assert json.loads(f.read_text())["input"]["preemption"] == "fastswitch"
