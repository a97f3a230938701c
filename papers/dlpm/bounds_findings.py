"""Re-measure the tables of ``bounds_findings.md``: every fairness theorem of VTC, DLPM and D²LPM
checked by :mod:`prefixsched.theory.bounds` on hypothesis-generated instances and on the
``s1`` / ``s2`` / ``shared-prefix`` workloads.

Usage: ``python papers/dlpm/bounds_findings.py [--n 1500] [--clusters 300] [--json OUT]``
(about 3 minutes on one core at the defaults; ``--n 60 --clusters 20`` for a smoke run).

Counting (per statement): *premise* = sum of the checks' ``checked`` (pairs with a common backlog,
backlogged periods, rejoins, logged values); *violating instances* = generated instances (traces)
on which the check fails; *worst ratio* = the largest worst/bound over the instances, with the
``f`` of ``Q_u = f*U`` that attained it. Deterministic: hypothesis ``@seed(12345)``, generate
phase only, no database.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st

from prefixsched.reference.cluster import simulate_cluster
from prefixsched.reference.policies import create
from prefixsched.reference.simulator import simulate
from prefixsched.reference.workloads import make_workload
from prefixsched.testing.strategies import backlogged_instances, instances
from prefixsched.theory import bounds as B
from prefixsched.theory.cost import CostModel

FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


class Tally:
    """premise / violating instances / worst ratio per statement."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, name: str, rep: B.BoundReport, tag: Any = None) -> None:
        r = self.rows.setdefault(
            name, {"premise": 0, "violating": 0, "instances": 0, "worst_ratio": 0.0, "at": None, "ratio": rep.bound > 0}
        )
        r["instances"] += 1
        r["ratio"] = r["ratio"] or rep.bound > 0
        r["premise"] += rep.checked
        if not rep.holds:
            r["violating"] += 1
        if rep.checked and rep.bound > 0 and rep.worst / rep.bound > r["worst_ratio"]:
            r["worst_ratio"], r["at"] = rep.worst / rep.bound, tag

    def table(self) -> str:
        out = ["| statement | premise | violating instances | worst ratio |", "|---|---:|---:|---:|"]
        for name, r in self.rows.items():
            at = f" (f={r['at']})" if r["at"] is not None else ""
            ratio = f"{r['worst_ratio']:.3f}{at}" if r["ratio"] else "-"
            out.append(f"| {name} | {r['premise']:,} | {r['violating']:,} / {r['instances']:,} | {ratio} |")
        return "\n".join(out)


def generated(n: int, tally: Tally) -> None:
    strat = st.tuples(
        st.one_of(
            instances(max_clients=4, max_requests_per_client=8),
            backlogged_instances(max_requests_per_client=12),
            backlogged_instances(n_clients=3, max_requests_per_client=8),
        ),
        st.sampled_from(FACTORS),
    )

    @hyp_seed(12345)
    @settings(max_examples=n, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(strat)
    def run(args: Any) -> None:
        inst, f = args
        L, Mo, Mk = B.max_input_tokens(inst), B.batch_output_capacity(inst), B.kv_batch_tokens(inst)
        w = inst.weights
        U = B.dlpm_U(L, Mo, w.w_e, w.w_q)
        Q = f * U
        t = simulate(inst, create("dlpm", quantum=Q), record_states=True)
        tally.add("DLPM Thm 4.1, `2(U+Q_u)`", B.check_dlpm_thm_4_1(inst, t, Q), f)
        tally.add("DLPM Thm 4.2, `2U+2Q_u`", B.check_dlpm_thm_4_2(inst, t, Q), f)
        tally.add("DLPM Thm A.1 **printed** `max(Q_u,U)`, `M_out`", B.check_dlpm_thm_a1(inst, t, Q), f)
        tally.add("DLPM Thm A.1 printed, `M_kv`", B.check_dlpm_thm_a1(inst, t, Q, M=Mk), f)
        tally.add("DLPM Thm A.1 printed, from a join (`q(t1) = 0`)", B.check_dlpm_thm_a1_from_join(inst, t, Q), f)
        tally.add("DLPM Thm A.1 **sound** `Q_u+U`", B.check_dlpm_thm_a1(inst, t, Q, printed=False), f)
        tally.add("DLPM Thm A.2 latency, `a` measured", B.check_dlpm_thm_a2_latency(inst, t, Q), f)
        tally.add("DLPM deficits in `(-U, Q_u]`", B.check_dlpm_deficit_range(inst, t, Q), f)
        tally.add("DLPM counter accounting (`Δq = K Q_u − W`)", B.check_dlpm_accounting(inst, t, Q), f)
        v = simulate(inst, create("vtc"), record_states=True)
        tally.add("VTC two-backlogged, `M_kv` (batch token capacity, default)", B.check_vtc_two_backlogged(inst, v))
        tally.add("VTC two-backlogged, `M_out` (output-only reading)", B.check_vtc_two_backlogged(inst, v, M=Mo))
        tally.add("VTC counter spread ≤ `w_e L + w_q M_out`", B.check_vtc_counter_spread(inst, v))
        tally.add("VTC counter spread ≤ `max(w_e L, w_q M_out)`",
                  B.check_vtc_counter_spread(inst, v, bound=max(w.w_e * L, w.w_q * Mo)))
        for name in ("fcfs", "lpm"):
            tr = simulate(inst, create(name))
            tally.add(f"{name.upper()} against VTC's bound (`M_kv`)", B.check_vtc_two_backlogged(inst, tr))
            tally.add(f"{name.upper()} against DLPM 4.1 (`Q_u = U`)", B.check_dlpm_thm_4_1(inst, tr, U))

    run()


def clusters(n: int, tally: Tally) -> None:
    strat = st.tuples(
        st.one_of(instances(max_clients=3, max_requests_per_client=6), backlogged_instances(max_requests_per_client=8)),
        st.sampled_from((0.25, 0.5, 1.0, 2.0)), st.integers(2, 3), st.sampled_from((0.5, 2.0)),
    )

    @hyp_seed(12345)
    @settings(max_examples=n, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(strat)
    def run(args: Any) -> None:
        inst, f, D, qw = args
        U = B.dlpm_U(B.max_input_tokens(inst), B.batch_output_capacity(inst))
        Q = f * U
        ct = simulate_cluster(inst, lambda: create("dlpm", quantum=Q), f"d2lpm:{qw * U}", workers=D, record_states=True)
        for rep in B.check_d2lpm_all(inst, ct, Q):
            tally.add(rep.name.replace("D2LPM", "D²LPM"), rep, f)

    run()


def workloads() -> list[dict[str, Any]]:
    rows = []
    for name in ("s1", "s2", "shared-prefix"):
        inst = make_workload(name, clients=4, seed=0, n_requests=600, cost_model=CostModel())
        big = max(r.prompt_len + r.output_len for r in inst.requests)
        inst = dataclasses.replace(inst, limits=dataclasses.replace(inst.limits, max_running_requests=16, kv_capacity_tokens=4 * big))
        U = B.dlpm_U(B.max_input_tokens(inst), B.batch_output_capacity(inst))
        row: dict[str, Any] = {"workload": name, "U": U, "kv": 4 * big}
        for Q in (2000.0, 8000.0):
            t = simulate(inst, create("dlpm", quantum=Q), record_states=True)
            for key, rep in (("4.1", B.check_dlpm_thm_4_1(inst, t, Q)), ("A.1 printed", B.check_dlpm_thm_a1(inst, t, Q)),
                             ("A.1 from join", B.check_dlpm_thm_a1_from_join(inst, t, Q)),
                             ("A.1 sound", B.check_dlpm_thm_a1(inst, t, Q, printed=False)),
                             ("A.2", B.check_dlpm_thm_a2_latency(inst, t, Q))):
                row[f"{key} Q={Q:g}"] = {"worst": rep.worst, "bound": rep.bound, "holds": rep.holds}
        v = simulate(inst, create("vtc"))
        row["vtc"] = dataclasses.asdict(B.check_vtc_two_backlogged(inst, v))
        for p in ("fcfs", "lpm"):
            row[p] = B.check_vtc_two_backlogged(inst, simulate(inst, create(p))).worst
        rows.append(row)
    return rows


def _w(r: dict[str, Any]) -> str:
    s = f"{r['worst']:,.0f} / {r['bound']:,.0f}"
    return s + (f" ({r['worst'] / r['bound']:.2f})" if r["holds"] else " (**violated**)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1500, help="generated single-worker instances (default: %(default)s)")
    ap.add_argument("--clusters", type=int, default=300, help="generated D²LPM cluster instances (default: %(default)s)")
    ap.add_argument("--json", default=None, help="write all numbers as JSON")
    args = ap.parse_args(argv)
    single, multi = Tally(), Tally()
    generated(args.n, single)
    print(f"## Generated instances ({args.n})\n\n" + single.table())
    clusters(args.clusters, multi)
    print(f"\n## D²LPM on generated instances ({args.clusters}, 2-3 workers, Q_w = 0.5U or 2U)\n\n" + multi.table())
    wl = workloads()
    print("\n## Workloads (600 requests, 4 clients, linear cost model)\n")
    print("| workload | `U` | statement | Q_u=2000 | Q_u=8000 |\n|---|---:|---|---:|---:|")
    for r in wl:
        for i, key in enumerate(("4.1", "A.1 printed", "A.1 from join", "A.1 sound", "A.2")):
            head = (r["workload"], f"{r['U']:,.0f}") if i == 0 else ("", "")
            lo, hi = r[f"{key} Q=2000"], r[f"{key} Q=8000"]
            print(f"| {head[0]} | {head[1]} | Thm {key} | {_w(lo)} | {_w(hi)} |")
        print(f"|  |  | VTC / FCFS / LPM gap vs VTC bound {r['vtc']['bound']:,.0f} | "
              f"{r['vtc']['worst']:,.0f} / {r['fcfs']:,.0f} / {r['lpm']:,.0f} | |")
    if args.json:
        Path(args.json).write_text(json.dumps({"single": single.rows, "clusters": multi.rows, "workloads": wl}, indent=1,
                                              default=lambda o: None if isinstance(o, float) and math.isinf(o) else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
