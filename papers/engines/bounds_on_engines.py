"""The fairness bounds of prefixsched.theory.bounds checked on traces of both engines.

The theorems are stated for the papers' model (the ``ideal`` engine). This script measures how
they fare when the same policies run on the ``sglang`` engine, whose admission breaks some of
their premises (stop at the first misfit, chunked prefill charged at admission but served chunk
by chunk, decode retraction and re-prefill). Deterministic: hypothesis instances drawn with a
fixed seed (generate phase only), plus two workloads.

Usage::

    python papers/engines/bounds_on_engines.py [--n 300] [--out papers/engines/results/bounds.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from prefixsched._io import write_json
from prefixsched.reference.policies import create
from prefixsched.reference.simulator import simulate
from prefixsched.reference.workloads import make_workload
from prefixsched.testing.strategies import backlogged_instances
from prefixsched.theory import bounds

ENGINES = ("ideal", "sglang")
FACTORS = (0.5, 1.0, 2.0)


def _row(agg, key, rep):
    a = agg[key]
    a["checked"] += rep.checked
    if rep.checked:
        a["instances"] += 1
    if not rep.holds:
        a["violations"] += 1
    if rep.bound and rep.bound > 0 and rep.checked:
        a["worst_ratio"] = max(a["worst_ratio"], rep.worst / rep.bound)


def measure(n: int) -> dict:
    agg: dict = defaultdict(lambda: {"instances": 0, "checked": 0, "violations": 0, "worst_ratio": 0.0})
    stats: dict = defaultdict(int)
    drawn = []

    @seed(20261201)
    @settings(max_examples=n, phases=[Phase.generate], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def draw(data):
        inst = data.draw(backlogged_instances(max_requests_per_client=10, engine="sglang", max_output=12))
        f = data.draw(st.sampled_from(FACTORS))
        drawn.append((inst, f))

    draw()
    for inst, f in drawn:
        L, m = bounds._params(inst, None)
        w = inst.weights
        U = bounds.dlpm_U(L, m, w.w_e, w.w_q)
        q = max(1.0, f * U)
        for eng in ENGINES:
            tr = simulate(inst, create("dlpm", quantum=q), engine=eng, record_states=True)
            for rep in bounds.check_all(inst, tr, Q_u=q):
                _row(agg, (eng, "dlpm", rep.name), rep)
            _row(agg, (eng, "dlpm", "DLPM Thm A.1 (sound Q_u+U)"), bounds.check_dlpm_thm_a1(inst, tr, q, printed=False))
            if eng == "sglang":
                stats["sglang traces"] += 1
                stats["with chunked prefill"] += any(r.runs and any(len(x.chunks) > 1 for x in r.runs) for r in tr.requests)
                stats["with retraction"] += tr.meta["retractions"] > 0
            tv = simulate(inst, create("vtc"), engine=eng, record_states=True)
            _row(agg, (eng, "vtc", "VTC two-backlogged"), bounds.check_vtc_two_backlogged(inst, tv))
    for name in ("s1", "s2", "shared-prefix"):
        base = make_workload(name, clients=4, seed=0, n_requests=300)
        need = max(r.prompt_len + r.output_len for r in base.requests)
        inst = dataclasses.replace(base, limits=dataclasses.replace(
            base.limits, max_running_requests=16, kv_capacity_tokens=3 * need, chunked_prefill_size=2048))
        for q in (2000.0, 8000.0):
            for eng in ENGINES:
                tr = simulate(inst, create("dlpm", quantum=q), engine=eng, record_states=True)
                key = f"{name} Q_u={q:g}"
                for rep in bounds.check_all(inst, tr, Q_u=q):
                    _row(agg, (eng, "dlpm", f"{rep.name} [{key}]"), rep)
                _row(agg, (eng, "dlpm", f"DLPM Thm A.1 (sound Q_u+U) [{key}]"), bounds.check_dlpm_thm_a1(inst, tr, q, printed=False))
                if eng == "sglang":
                    stats[f"{key}: retractions"] = tr.meta["retractions"]
                    stats[f"{key}: chunks"] = tr.meta["chunks"]
    return {"n_instances": len(drawn), "sglang_stats": dict(stats), "rows": [
        {"engine": e, "policy": p, "statement": s, **v} for (e, p, s), v in sorted(agg.items())
    ]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="generated instances (default: %(default)s)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bounds.json"))
    a = ap.parse_args(argv)
    res = measure(a.n)
    write_json(a.out, res)
    w = max(len(r["statement"]) for r in res["rows"])
    print(res["sglang_stats"])
    for r in res["rows"]:
        print(f"{r['engine']:7s} {r['policy']:5s} {r['statement']:{w}s} instances {r['instances']:4d} "
              f"violations {r['violations']:3d} worst ratio {r['worst_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
