"""Tests written for planted semantic mutants that the suite missed (issue #13;
``benchmarks/mutation.md``, "Semantic mutants"). Each names its mutant and the rule it pins.
"""

from __future__ import annotations

from prefixsched.theory.metrics import backlog_intervals, max_service_gap
from prefixsched.theory.model import ServiceWeights
from prefixsched.theory.trace import RequestRecord, Trace


def _rec(rid, client, arrival, admit, step, out=1, prompt=1):
    return RequestRecord(
        id=rid, client=client, arrival=arrival, admit=admit, first_token=admit + 1.0, finish=admit + out,
        admit_step=step, finish_step=step + out - 1, prompt_len=prompt, cached_tokens=0, extend_tokens=prompt,
        output_len=out,
    )


def test_service_gap_of_a_period_that_starts_at_a_step_end_excludes_that_step():
    # mutant service-gap-period-start-column. W_f(t1, t2) counts the steps ending in (t1, t2]
    # (theory.metrics): a backlog period that starts exactly when a step ends does not include
    # the service of that step. Step 0 on [0, 1] serves A (a0: 1 prompt + 1 output token); a1 of
    # A and b0 of B both arrive at t = 1 and wait until step 1 on [2, 3]: on their common backlog
    # [1, 2) nobody is served, so the largest service gap is 0 (the mutant reads W just before
    # t = 1 and reports w_e + w_q = 3).
    recs = [_rec("a0", "A", 0.0, 0.0, 0), _rec("a1", "A", 1.0, 2.0, 1), _rec("b0", "B", 1.0, 2.0, 1)]
    tr = Trace({"name": "hand"}, recs, [0.0, 2.0], [1.0, 3.0])
    assert backlog_intervals(tr) == {"A": [(1.0, 2.0)], "B": [(1.0, 2.0)]}
    g = max_service_gap(tr, ServiceWeights(), "actual")
    assert g["value"] == 0.0 and g["pair"] is None
    # the same period one step later, where step 1 serves B alone: the gap is B's service
    recs2 = recs[:2] + [_rec("b0", "B", 1.0, 1.0, 1), _rec("b1", "B", 1.0, 3.0, 2)]
    recs2[1] = _rec("a1", "A", 1.0, 3.0, 2)
    tr2 = Trace({"name": "hand"}, recs2, [0.0, 1.0, 3.0], [1.0, 3.0, 4.0])
    g2 = max_service_gap(tr2, ServiceWeights(), "actual")
    assert g2["value"] == 3.0 and g2["pair"] == ("B", "A") and g2["interval"] == (1.0, 3.0)
