"""The ``prefixsched`` command.

Subcommands (``prefixsched SUBCOMMAND --help`` explains each):

- ``simulate``: replay a trace or a synthetic workload under several policies and compare them
  (the main job; without ``--trace`` it runs the built-in seeded ``default`` workload).
- ``policies``: list the policy registry. ``workloads``: list the synthetic workloads.
- ``solve``: optimal schedule of a small instance (CP-SAT, z3, DP, brute force).
- ``gap``: each policy's ratio to the proven optimum over many small instances.
- ``reduce``: build the 3-PARTITION -> TTFT-feasibility reduction with its certificate.
- ``family``: write a member of an adversarial instance family.
- ``sweep``: run a grid of simulations or exact solves (local processes or Ray) into one table.
- ``reproduce``: regenerate a paper's tables and figures (``papers/<paper>/reproduce.py``).

Errors in the input (a malformed trace line, an unknown policy, a bad value) print one line
``prefixsched: error: WHERE: FIELD: PROBLEM`` on stderr and exit with status 2, no traceback.
Every output file is written atomically. Progress bars go to stderr; stdout and JSON outputs are
deterministic: the same arguments and seed give the same bytes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from prefixsched.errors import InputError, PrefixschedError, SolverLimitError

DEFAULT_POLICIES = ("fcfs", "lpm", "k-lpm", "vtc", "dlpm")


# ---------------------------------------------------------------------------------------------
# helpers


def _int_at_least(name: str, minimum: int):
    """argparse type: an integer >= ``minimum``; the error names the option and the value."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: must be an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name}: must be >= {minimum}, got {v}")
        return v

    return parse


def _positive_int(name: str):
    return _int_at_least(name, 1)


def _nonneg_int(name: str):
    return _int_at_least(name, 0)


def _positive_float(name: str, allow_inf: bool = False):
    def parse(text: str) -> float:
        if allow_inf and text.strip().lower() in ("inf", "infinity"):
            return math.inf
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: must be a number, got {text!r}") from None
        if not (v > 0) or (math.isinf(v) and not allow_inf) or math.isnan(v):
            raise argparse.ArgumentTypeError(f"{name}: must be a positive number, got {text!r}")
        return v

    return parse


def _k_value(text: str) -> float:
    if text.strip().lower() in ("inf", "infinity"):
        return math.inf
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k: must be an integer >= 1 or 'inf', got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"--k: must be >= 1 or 'inf', got {v}")
    return v


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    # numbers right-aligned, text left-aligned
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(headers))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join((c.rjust(w) if numeric[i] else c.ljust(w)) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="req", file=sys.stderr, disable=not enabled, leave=False)
    state = {"done": 0}

    def update(done: int, _total: int) -> None:
        if done > state["done"]:
            bar.update(done - state["done"])
            state["done"] = done

    return bar, update


# ---------------------------------------------------------------------------------------------
# simulate


def _load_input(args: argparse.Namespace):
    from prefixsched.reference import workloads

    if args.trace is not None:
        from prefixsched.instance_io import load_any

        path = Path(args.trace)
        if not path.exists():
            raise InputError("--trace", f"no such file: {args.trace}")
        inst = load_any(path, clients=args.clients, strategy=args.client_strategy, max_requests=args.max_requests)
        source = {"trace": str(args.trace), "client_strategy": args.client_strategy}
    else:
        if args.workload not in workloads.WORKLOADS:
            raise InputError(
                "--workload", f"unknown workload {args.workload!r}; known: {', '.join(sorted(workloads.WORKLOADS))}"
            )
        inst = workloads.make_workload(
            args.workload, clients=args.clients, seed=args.seed, n_requests=args.max_requests
        )
        source = {"workload": args.workload}
    return inst, source


def cmd_simulate(args: argparse.Namespace) -> int:
    from prefixsched._io import atomic_write, write_json
    from prefixsched.reference.policies import create
    from prefixsched.reference.simulator import simulate
    from prefixsched.theory.metrics import summarize
    from prefixsched.theory.schedule import check_trace

    inst, source = _load_input(args)
    specs = args.policy or list(DEFAULT_POLICIES)
    policies = [create(s, quantum=args.quantum, k=args.k, seed=args.seed) for s in specs]
    show = not args.no_progress and sys.stderr.isatty()
    results = []
    traces = []
    D = args.workers
    if D > 1 and args.plot is not None:
        raise InputError("--plot", "per-policy plots are single-worker only; drop --plot or use --workers 1")
    dispatch_spec = args.dispatch or "d2lpm"
    for spec, pol in zip(specs, policies):
        bar, update = _progress(len(inst.requests), spec, show)
        if D > 1:
            from prefixsched.reference.cluster import create_dispatcher, simulate_cluster, summarize_cluster

            try:
                ct = simulate_cluster(
                    inst,
                    lambda spec=spec: create(spec, quantum=args.quantum, k=args.k, seed=args.seed),
                    create_dispatcher(dispatch_spec, q_w=args.q_w),
                    workers=D,
                    seed=args.seed,
                    progress=update,
                )
            finally:
                bar.close()
            for w in range(D):  # every worker's schedule is replayed by the independent checker
                sub = ct.sub_instance(w)
                if sub is not None:
                    check_trace(sub, ct.traces[w])
            summary = summarize_cluster(ct)
            results.append(
                {"policy": spec, "params": ct.traces[0].policy, "dispatcher": ct.dispatcher, "workers": D, "summary": summary}
            )
            continue
        try:
            trace = simulate(inst, pol, seed=args.seed, progress=update)
        finally:
            bar.close()
        check_trace(inst, trace)  # every schedule is replayed by the independent checker
        summary = summarize(trace, inst.weights)
        results.append({"policy": spec, "params": trace.policy, "summary": summary})
        traces.append(trace)

    headers = ["policy", "tok/s", "hit rate", "TTFT P50 s", "TTFT P99 s", "Jain", "max gap"]
    rows = []
    for r in results:
        s = r["summary"]
        rows.append(
            [
                r["policy"],
                s["tokens_per_s"],
                s["hit_rate"],
                s["ttft_p50"],
                s["ttft_p99"],
                s["jain"],
                s["max_service_gap"]["value"],
            ]
        )
    n_clients = len(inst.clients)
    # with --json - stdout carries the JSON alone (for scripts); the table goes to stderr
    report = sys.stderr if args.json == "-" else sys.stdout
    print(
        f"{len(inst.requests)} requests, {n_clients} clients, "
        + ", ".join(f"{k}={v}" for k, v in source.items())
        + f", seed={args.seed}"
        + (f", workers={D}, dispatch={results[0]['dispatcher']['name'] if results else dispatch_spec}" if D > 1 else ""),
        file=report,
    )
    print(_table(headers, rows), file=report)
    print(
        "tok/s: (prompt+output) tokens per second; hit rate: cached/prompt tokens; Jain: over the window "
        "where all clients are active (client-view service rate); max gap: largest service gap "
        "(w_e*extend + w_q*output) between two continuously backlogged clients.",
        file=report,
    )
    out = {
        "input": {**source, "requests": len(inst.requests), "clients": list(inst.clients), "seed": args.seed,
                  **({"workers": D, "dispatch": dispatch_spec} if D > 1 else {})},
        "results": results,
    }
    if args.json is not None:
        if args.json == "-":
            from prefixsched._io import dumps_json

            sys.stdout.write(dumps_json(out))
        else:
            write_json(args.json, out)
    if args.plot is not None:
        from prefixsched.plots import plot_simulation

        fig = plot_simulation(inst, specs, traces)
        with atomic_write(args.plot, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)
    return 0


# ---------------------------------------------------------------------------------------------
# registry listings


def cmd_policies(args: argparse.Namespace) -> int:
    from prefixsched.reference.policies import available, get

    rows = []
    for name, desc in available().items():
        cls = get(name)
        rows.append([name, cls.primary_param or "-", desc])
    if args.json:
        from prefixsched._io import dumps_json

        sys.stdout.write(dumps_json([{"name": r[0], "primary_param": r[1], "description": r[2]} for r in rows]))
    else:
        print(_table(["policy", "NAME:VALUE sets", "description"], rows))
    return 0


def cmd_workloads(args: argparse.Namespace) -> int:
    from prefixsched.reference.workloads import WORKLOADS

    print(_table(["workload", "description"], [[n, WORKLOADS[n][1]] for n in sorted(WORKLOADS)]))
    return 0


# ---------------------------------------------------------------------------------------------
# exact solvers


def cmd_solve(args: argparse.Namespace) -> int:
    from prefixsched._io import dumps_json
    from prefixsched.instance_io import load_instance
    from prefixsched.theory.exact import solve

    inst = load_instance(args.instance)
    if args.objective == "ttft-feasible" and args.bound is None:
        raise InputError("--bound", "the ttft-feasible objective needs a bound T (--bound)")
    res = solve(
        inst,
        model=args.model,
        objective=args.objective,
        solver=args.solver,
        bound=args.bound,
        delta=args.delta,
        time_limit=args.time_limit,
    )
    if args.json:
        sys.stdout.write(dumps_json(res.to_dict()))
    else:
        print(f"status     {res.status.value}" + (f" (proof: {res.proof})" if res.proof else ""))
        print(f"objective  {_fmt(res.objective)}   bound {_fmt(res.bound)}   gap {_fmt(res.gap)}")
        print(f"wall       {res.wall_s:.2f} s   solver {res.solver}   model {res.model}")
        if res.order:
            print("order      " + " ".join(res.order))
            print(_table(["request", "start", "TTFT"], [[i, res.start.get(i), res.ttft.get(i)] for i in res.order]))
    if args.gantt is not None and res.order:
        from prefixsched._io import atomic_write
        from prefixsched.plots import plot_gantt

        fig = plot_gantt(inst, res, model=args.model)
        with atomic_write(args.gantt, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)
    return 0


def cmd_gap(args: argparse.Namespace) -> int:
    from prefixsched.gap import run_gap

    report = run_gap(
        model=args.model,
        n=args.n,
        instances=args.instances,
        policies=args.policies,
        source=args.source,
        trace=args.trace,
        seed=args.seed,
        solver=args.solver,
        time_limit=args.time_limit,
        objective=args.objective,
        progress=not args.no_progress and sys.stderr.isatty(),
        delta=args.delta,
    )
    print(report.table())
    if args.json is not None:
        from prefixsched._io import write_json

        write_json(args.json, report.to_dict())
    if args.plot is not None:
        from prefixsched._io import atomic_write

        fig = report.plot()
        with atomic_write(args.plot, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)
    return 0


# ---------------------------------------------------------------------------------------------
# reductions and families


def cmd_reduce(args: argparse.Namespace) -> int:
    from prefixsched._io import dumps_json, write_json
    from prefixsched.reductions.three_partition import ThreePartition, reduce_to_ttft_feasibility, solve_exact

    tp = ThreePartition(tuple(args.values), args.bound)
    red = reduce_to_ttft_feasibility(tp)
    triples = solve_exact(tp)
    cert: dict[str, Any] = {"T": red.T, "queries": len(red.instance.requests), "three_partition": None}
    if triples is not None:
        order = red.schedule_from_partition(triples)
        cert["three_partition"] = [list(t) for t in tp.values_of(triples)]
        cert["three_partition_indices"] = [list(t) for t in triples]
        cert["schedule"] = list(order)
        # the certificate goes through the independent checker before it is reported
        if not red.meets_bound(order):
            raise AssertionError("certificate schedule misses T: reduction or checker bug")
    if args.json is not None:
        write_json(args.json, red.instance.to_dict())
    if args.certificate_json:
        sys.stdout.write(dumps_json(cert))
    else:
        print(f"reduced instance: {cert['queries']} queries (prev model, token units), TTFT bound T = {red.T}")
        if triples is None:
            print("3-PARTITION: no solution (proven), so no schedule meets T")
        else:
            print("3-PARTITION: " + " | ".join(" ".join(str(v) for v in t) for t in tp.values_of(triples)))
            print("certificate schedule meeting T: " + " ".join(cert["schedule"]))
        if args.json is not None:
            print(f"instance written to {args.json}")
    return 0


def cmd_family(args: argparse.Namespace) -> int:
    from prefixsched.instance_io import save_instance
    from prefixsched.reductions.families import FAMILIES

    if args.name not in FAMILIES:
        raise InputError("NAME", f"unknown family {args.name!r}; known: {', '.join(sorted(FAMILIES))}")
    builder = FAMILIES[args.name][0]
    inst = builder(args.n)
    if args.out is None:
        from prefixsched._io import dumps_json

        sys.stdout.write(dumps_json(inst.to_dict()))
    else:
        save_instance(args.out, inst)
        print(f"{args.name} n={args.n}: {len(inst.requests)} requests written to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prefixsched",
        description=(
            "Know, not guess, how an LLM-serving request scheduler behaves: replay traces under FCFS, LPM, "
            "k-LPM, VTC and DLPM over a radix prefix cache, find provably optimal schedules of small "
            "instances, and build NP-hardness reductions."
        ),
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser(
        "simulate",
        help="replay a trace or workload under several policies and compare them (the main job)",
        description=(
            "Run each policy in the deterministic continuous-batching simulator over a radix prefix cache, "
            "replay every resulting trace through the independent checker, and print one row per policy. "
            "Without --trace, the built-in seeded 'default' workload is used."
        ),
    )
    src = s.add_mutually_exclusive_group()
    src.add_argument("--trace", metavar="FILE", help="Mooncake-format JSONL trace, or an instance .json")
    src.add_argument("--workload", default="default", metavar="NAME", help="synthetic workload (see `prefixsched workloads`; default: %(default)s)")
    s.add_argument(
        "--policy", nargs="+", metavar="P",
        help=f"policy specs NAME or NAME:VALUE, e.g. k-lpm:4 dlpm:8000 (default: {' '.join(DEFAULT_POLICIES)})",
    )
    s.add_argument("--clients", type=_positive_int("--clients"), default=8, help="number of clients (default: %(default)s)")
    s.add_argument(
        "--client-strategy", default="family", choices=["family", "round-robin", "field"],
        help="how trace requests map to clients (default: %(default)s: one client per conversation family, folded onto --clients by a stable hash)",
    )
    s.add_argument("--seed", type=_nonneg_int("--seed"), default=0, help="seed of the workload and of randomised policies (default: %(default)s)")
    s.add_argument("--quantum", type=_positive_float("--quantum"), default=None, help="DLPM quantum Q_u in cost units (policy default if omitted)")
    s.add_argument("--k", type=_k_value, default=None, help="k of k-LPM (integer or 'inf'; policy default if omitted)")
    s.add_argument("--max-requests", type=_positive_int("--max-requests"), default=None, metavar="M", help="use only the first M requests")
    s.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT ('-': JSON alone on stdout, the table on stderr)")
    s.add_argument("--plot", metavar="OUT.png", help="per-client cumulative service curves and TTFT CDFs, one row per policy")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument(
        "--workers", type=_positive_int("--workers"), default=1, metavar="D",
        help="data-parallel workers (default: %(default)s); each has its own cache and the instance's limits, "
        "and every worker's trace is replayed by the checker; the row then holds cluster-wide metrics",
    )
    s.add_argument(
        "--dispatch", default=None, metavar="NAME",
        help="global dispatcher when D > 1: d2lpm (default), d2lpm:Q_W, round-robin, client-round-robin, "
        "least-load, preble (ignored with one worker)",
    )
    s.add_argument(
        "--q-w", type=_positive_float("--q-w", allow_inf=True), default=None,
        help="D2LPM worker quantum Q_w in cost units, or 'inf' (dispatcher default if omitted)",
    )
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("policies", help="list the policy registry", description="List every registered policy (built-in and entry-point plugins).")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_policies)

    s = sub.add_parser("workloads", help="list the synthetic workloads")
    s.set_defaults(func=cmd_workloads)

    s = sub.add_parser(
        "solve",
        help="optimal schedule of a small instance",
        description=(
            "Solve a JSON instance exactly in a sequential theory model. prev: reuse = LCP with the previous "
            "query (k-LPM paper); radix: reuse = longest prefix of any earlier query; fair: radix plus a bound "
            "--delta on the service gap of backlogged clients. Time unit: one uncached token (arrivals read in it)."
        ),
    )
    s.add_argument("instance", metavar="INSTANCE.json")
    s.add_argument("--model", choices=["prev", "radix", "fair"], default="prev")
    s.add_argument("--objective", choices=["max-ttft", "mean-ttft", "makespan", "ttft-feasible"], default="max-ttft")
    s.add_argument("--bound", type=float, default=None, metavar="T", help="TTFT bound for --objective ttft-feasible")
    s.add_argument("--delta", type=float, default=None, help="service-gap bound of the fair model (cost units)")
    s.add_argument("--solver", choices=["cpsat", "z3", "dp", "brute"], default="cpsat")
    s.add_argument("--time-limit", type=_positive_float("--time-limit"), default=60.0, metavar="S", help="seconds (default: %(default)s)")
    s.add_argument("--json", action="store_true", help="print one JSON object (status, objective, bound, gap, wall_s, order, ttft, ...)")
    s.add_argument("--gantt", metavar="OUT.png", help="draw the schedule")
    s.set_defaults(func=cmd_solve)

    s = sub.add_parser(
        "gap",
        help="each policy's ratio to the proven optimum",
        description="Solve many small instances exactly and report each policy's ratio to the optimum (mean, P90, max) and how often it is optimal.",
    )
    s.add_argument("--model", choices=["prev", "radix", "fair"], default="prev")
    s.add_argument("--objective", choices=["max-ttft", "mean-ttft", "makespan"], default="max-ttft")
    s.add_argument("--n", type=_positive_int("--n"), default=8, help="requests per instance (default: %(default)s)")
    s.add_argument("--instances", type=_positive_int("--instances"), default=20, help="number of instances (default: %(default)s)")
    s.add_argument("--policies", nargs="+", default=["fcfs", "lpm", "k-lpm:2", "k-lpm:4", "vtc", "dlpm"], metavar="P")
    s.add_argument("--source", choices=["random", "trace"], default="random")
    s.add_argument("--trace", metavar="FILE", help="trace for --source trace (windows of N consecutive requests)")
    s.add_argument("--solver", choices=["cpsat", "dp", "z3", "brute"], default="dp", help="exact backend (default: %(default)s)")
    s.add_argument("--delta", type=float, default=None, help="service-gap bound of the fair model (cost units)")
    s.add_argument("--time-limit", type=_positive_float("--time-limit"), default=30.0, metavar="S")
    s.add_argument("--seed", type=_nonneg_int("--seed"), default=0)
    s.add_argument("--json", metavar="OUT")
    s.add_argument("--plot", metavar="OUT.png")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_gap)

    s = sub.add_parser(
        "reduce",
        help="NP-hardness reduction: 3-PARTITION -> TTFT feasibility",
        description="Build the 3-PARTITION -> TTFT-feasibility reduction (prev model, 5m+2 queries), print the bound T and a certificate.",
    )
    s.add_argument("problem", choices=["3partition"])
    s.add_argument("--values", type=int, nargs="+", required=True, help="the 3m values a_i")
    s.add_argument("--bound", type=int, required=True, help="the bin size B (sum of values = m*B)")
    s.add_argument("--json", metavar="OUT", help="write the reduced instance (JSON instance format)")
    s.add_argument("--certificate-json", action="store_true", help="print T and the certificate as JSON")
    s.set_defaults(func=cmd_reduce)

    s = sub.add_parser(
        "family",
        help="write a member of an adversarial instance family",
        description="Write one member of an adversarial instance family (token units, JSON instance format). "
        "Families: lpm-starvation (a cold request's TTFT under LPM grows with n), fcfs-no-reuse (FCFS's ratio "
        "to the optimum grows with the shared-prefix length), vtc-locality (VTC's throughput falls against LPM), "
        "d2lpm-infinite-qw (D2LPM Thm A.5: infinite Q_w is unfair), klpm-definition4 (k-LPM paper Definition 4; "
        "--n users). Growth formulas are in prefixsched/reductions/families.py.",
    )
    s.add_argument("name", metavar="NAME", help="family name (see above)")
    s.add_argument("--n", type=_positive_int("--n"), default=8, help="size parameter of the family (default: %(default)s)")
    s.add_argument("--out", metavar="FILE", help="instance JSON (stdout if omitted)")
    s.set_defaults(func=cmd_family)

    from prefixsched.reproduce import add_parser as add_reproduce
    from prefixsched.sweep.cli import add_parser as add_sweep

    add_sweep(sub)
    add_reproduce(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (InputError, SolverLimitError) as e:
        print(f"prefixsched: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prefixsched: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except PrefixschedError as e:
        print(f"prefixsched: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
