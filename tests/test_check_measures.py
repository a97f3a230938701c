"""check_policy's measured figures for every policy (backlogged gap against VTC's bound,
starvation of a fitting oldest request), the comparison, and ``prefixsched check``."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest

from prefixsched.cli import main
from prefixsched.reference.policies import create
from prefixsched.reference.policies.base import Decision, Policy, Snapshot
from prefixsched.reference.simulator import simulate
from prefixsched.testing import RecordingPolicy, check_policy
from prefixsched.testing.suite import MEASURES, measure_run, shrink_instance
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request


class LIFO(Policy):
    """Newest waiting request first (skipping those that do not fit): a user's policy to judge."""

    name: ClassVar[str] = "lifo"

    def decide(self, snap: Snapshot) -> Decision:
        b = snap.batch()
        for e in reversed(list(snap.fcfs())):
            b.try_add(e)
            if b.full:
                break
        return Decision(tuple(b.admitted))


def test_a_lifo_policy_comes_out_unfair_and_starving():
    rep = check_policy(LIFO, max_examples=30, seed=0)
    fcfs = check_policy("fcfs", max_examples=30, seed=0)
    assert rep.ok and fcfs.ok  # no bound given: measured, not judged
    m, f = rep.measures, fcfs.measures
    assert set(m) == set(MEASURES)
    # unfair: a backlogged gap beyond VTC's bound; starving: a fitting oldest request passed over
    assert m["gap_ratio"].worst > 1.0
    assert m["starvation_picks"].worst >= 5 and m["starvation_s"].worst > 0
    assert f["starvation_picks"].worst == 0 and f["starvation_s"].worst == 0  # FCFS never passes over it
    text = str(rep)
    assert "measured" in text and "starvation_picks" in text and "compared on the same 30" in text
    # the comparison: the checked policy first, then LPM, VTC, DLPM on the same instances
    assert [c.policy for c in rep.comparison] == ["lifo (checked)", "lpm", "vtc", "dlpm"]
    assert {c.instances for c in rep.comparison} == {30}
    assert next(c for c in rep.comparison if c.policy == "vtc").max_gap_ratio <= 1.0  # VTC's theorem
    # with bounds it fails, and the shrunk counterexample still attains the figure
    judged = check_policy(LIFO, max_examples=30, seed=0, max_gap_ratio=1.0, max_starvation_picks=0)
    assert not judged.ok
    assert judged.measures["gap_ratio"].holds is False and judged.measures["starvation_picks"].holds is False
    assert judged.measures["starvation_s"].holds is None
    for k in ("gap_ratio", "starvation_picks"):
        mf = judged.measures[k]
        inst = Instance.from_dict(mf.counterexample)
        rec = RecordingPolicy(LIFO())
        value = measure_run(inst, simulate(inst, rec), rec)[k][0]
        assert value > mf.bound and mf.shrunk
    assert check_policy("fcfs", max_examples=30, seed=0, max_starvation_picks=0, compare=None).ok


def test_measure_run_by_hand():
    # r0 (6 tokens) arrives first; r1, r2 (2 tokens) come later; one request runs at a time and
    # everything fits: LIFO serves r0 first (alone), then r2 before r1: one pick ahead of r1
    reqs = (Request("r0", "a", 0.0, (1, 2, 3, 4, 5, 6), 1), Request("r1", "b", 1.0, (7, 8), 1),
            Request("r2", "a", 2.0, (9, 10), 1))
    inst = Instance(reqs, cost_model=CostModel.token_units(), limits=Limits(kv_capacity_tokens=50, max_running_requests=1))
    rec = RecordingPolicy(LIFO())
    tr = simulate(inst, rec)
    assert [r.admit for r in tr.requests] == [0.0, 8.0, 6.0]
    m = measure_run(inst, tr, rec)
    assert m["starvation_picks"] == (1.0, "request 'r1'")
    assert m["starvation_s"] == (2.0, "request 'r1'")  # passed over at t = 6, admitted at 8
    rec = RecordingPolicy(create("fcfs"))
    assert measure_run(inst, simulate(inst, rec), rec)["starvation_picks"][0] == 0


def test_shrink_instance_is_greedy_and_deterministic():
    reqs = tuple(Request(f"r{i}", f"c{i % 3}", float(i), tuple(range(10 * i, 10 * i + 5)), 4) for i in range(9))
    inst = Instance(reqs)
    keep = lambda i: sum(r.client == "c2" for r in i.requests) >= 2  # noqa: E731
    small, changed = shrink_instance(inst, keep)
    assert changed and keep(small) and len(small.requests) == 2
    assert all(r.output_len == 1 and len(r.prompt) == 1 for r in small.requests)
    assert shrink_instance(inst, keep)[0] == small
    assert shrink_instance(inst, lambda i: False) == (inst, False)


def test_prefixsched_check_cli(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["check", "tests.test_check_measures:LIFO", "--examples", "15", "--json", str(out),
                 "--max-starvation-picks", "0", "--compare", "vtc", "--no-shrink"])
    text = capsys.readouterr().out
    assert code == 1 and "EXCEEDS bound 0" in text
    d = json.loads(out.read_text())
    assert d["ok"] is False and d["measures"]["starvation_picks"]["holds"] is False
    assert [c["policy"] for c in d["comparison"]] == ["lifo (checked)", "vtc"]
    code = main(["check", "fcfs", "--examples", "5", "--compare", "--json", "-"])
    cap = capsys.readouterr()
    assert code == 0 and json.loads(cap.out)["comparison"] == [] and "measured" in cap.err
    assert main(["check", "dlpm", "--examples", "3", "--params", '{"quantum": 50}', "--no-shrink", "--compare"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["check", "nosuchmodule:X"], "cannot import module"),
        (["check", "prefixsched.testing.broken:Nope"], "has no attribute"),
        (["check", "prefixsched.theory.model:Instance"], "not a Policy subclass"),
        (["check", "nosuchpolicy"], "nosuchpolicy"),
        (["check", "fcfs", "--params", "{"], "--params: not valid JSON"),
        (["check", "dlpm", "--params", '{"bogus": 1}'], "does not accept"),
    ],
)
def test_check_cli_bad_input_is_one_line_exit_2(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("prefixsched: error:") and msg in err and "Traceback" not in err
