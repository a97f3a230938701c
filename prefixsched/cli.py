"""The ``prefixsched`` command.

Subcommands (``prefixsched SUBCOMMAND --help`` explains each):

- ``simulate``: replay a trace or a synthetic workload under several policies and compare them
  (the main job; without ``--trace`` it runs the built-in seeded ``default`` workload).
- ``policies``: list the policy registry. ``workloads``: list the synthetic workloads.
- ``solve``: optimal schedule of a small instance (CP-SAT, z3, DP, brute force).
- ``gap``: each policy's ratio to the proven optimum over many small instances.
- ``reduce``: build the 3-PARTITION -> TTFT-feasibility reduction with its certificate.
- ``family``: write a member of an adversarial instance family.
- ``live``: drive a real SGLang server (the plugin's policies) and compare it with the bounds and
  the simulator (:mod:`prefixsched.integration.live`).
- ``check``: judge a policy of your own (``module:Class``) with the invariant suite.
- ``conformance sglang``: agreement counts against SGLang's own classes (needs SGLang installed).
- ``sweep``: run a grid of simulations or exact solves (local processes or Ray) into one table.
- ``reproduce``: regenerate a paper's tables and figures (``papers/<paper>/reproduce.py``).

Conventions (every subcommand)
------------------------------
Errors. Bad input (a malformed trace line, an unknown policy, a value out of range, an output
path that cannot be written) prints one line ``prefixsched: error: WHERE: FIELD: PROBLEM`` on
stderr and exits with status 2, no traceback; a usage error argparse finds prints its usage and
``prefixsched CMD: error: ...`` and exits 2 too. An environment error while writing (a full disk)
exits 1. Inputs are read through :mod:`prefixsched.validation` (bytes, JSON, documented ranges).

Options that do not apply are never silently ignored: they are an error, or a
``prefixsched: warning: ...`` line on stderr (e.g. ``--dispatch`` with one worker, ``--clients``
on a ``.json`` instance, ``--quantum`` when no selected policy takes a quantum).

Outputs. Every output option (``--json``, ``--plot``, ``--gantt``, ``--out``,
``--certificate-json``; a new one is declared with :func:`_output`) is checked when the
arguments are parsed, before any work
(:func:`prefixsched._io.check_output_path`: no directory, device, FIFO, path under a file,
read-only file or unwritable directory; a symlink to a regular file is followed), and every file
is written atomically. JSON: ``--json FILE`` writes JSON to FILE, ``--json -`` writes it alone on
stdout (the human-readable report then goes to stderr). The bare ``solve --json`` and
``policies --json`` of earlier versions still print to stdout, with a deprecation warning.

Interrupts. Ctrl-C (SIGINT) exits 130, SIGTERM 143 and SIGHUP 129 (the command turns them into
the same exception path): temporary files are removed, an output is either complete or absent,
and no output file is written after the interrupt. An interrupted ``solve`` still prints the best
result its search had, marked ``interrupted`` (never a claimed optimum it had not proven).

Size limits, checked before any work (each error names the option):

=========================  =====================================================================
option                     limit
=========================  =====================================================================
``--clients``              1 .. 10,000 (:data:`MAX_CLIENTS`; a workload builds one stream each)
``--workers``              1 .. 1,024 (:data:`MAX_WORKERS`; each worker is a full engine)
``--requests``             1 .. 200,000 generated requests (:data:`MAX_REQUESTS`, ~6 KB each)
``--max-requests``         >= 1 (keeps the first M of what exists, so any size is safe)
``gap --n``                the exact backend's size limit (:func:`prefixsched.theory.exact.size_limit`)
``gap --instances``        1 .. 100,000 (:data:`prefixsched.gap.MAX_INSTANCES`)
``family --n``             a member of at most 2 million prompt tokens
                           (:func:`prefixsched.reductions.families.family_tokens`)
``reduce``                 at most 100 triples (300 values) and a reduced instance of at most
                           2 million tokens: the reduction is pseudo-polynomial in ``--bound``
``--time-limit``           (0, 1e6] s
``--quantum``, ``--q-w``   (0, 1e15] cost units (``--q-w`` also ``inf``)
``--bound``, ``--delta``   [0, 1e15] time / cost units
``--seed``                 0 .. 2**63 - 1
``--k``                    1 .. 10**9, or ``inf``
``simulate`` input         at most 10 million cache pages (sum of (prompt + output tokens) /
                           ``limits.page_size``; :data:`MAX_SIM_PAGES`, a memory estimate)
=========================  =====================================================================

Progress bars go to stderr; stdout and JSON outputs are deterministic: the same arguments and
seed give the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from prefixsched import scenario_cli
from prefixsched._table import _fmt, _table
from prefixsched._argtypes import _int_in, _nonneg_int, _positive_int, _short
from prefixsched.errors import (
    Interrupted,
    InputError,
    PrefixschedError,
    SolveInterrupted,
    SolverLimitError,
    clear_signals,
    note_signal,
)

DEFAULT_POLICIES = ("fcfs", "lpm", "k-lpm", "vtc", "dlpm")
#: ``simulate --preemption``: mode -> (PreemptionConfig mode, sync, reuse, copy granularity).
PREEMPTION_MODES: dict[str, tuple[str, bool, bool, str] | None] = {
    "none": None,
    "drop": ("drop", True, False, "block"),
    "swap": ("swap", True, False, "block"),
    "fastswitch": ("swap", False, True, "group"),
}


def _preemption_config(mode: str) -> Any:
    """The engine's ``PreemptionConfig`` for ``simulate --preemption MODE`` (None for ``none``)."""
    spec = PREEMPTION_MODES[mode]
    if spec is None:
        return None
    from prefixsched.reference.engine.preemption import PreemptionConfig
    from prefixsched.theory.switch_cost import SwitchCostModel

    m, sync, reuse, gran = spec
    return PreemptionConfig(mode=m, sync=sync, reuse=reuse, switch=SwitchCostModel(granularity=gran))

MAX_CLIENTS = 10_000
MAX_WORKERS = 1024
MAX_REQUESTS = 200_000
MAX_TIME_LIMIT_S = 1e6
MAX_COST = 1e15
MAX_SEED = 2**63 - 1
MAX_K = 10**9
MAX_TRIPLES = 100
#: Most radix-cache pages one simulation may create (prompt + output tokens / page_size, summed
#: over the requests): ~100-200 bytes each, so 10 million is 1-2 GB. The Mooncake trace needs
#: ~0.3 million at its 512-token pages; a 10M-token prompt at page_size 1 alone needs 10 million.
MAX_SIM_PAGES = 10_000_000

#: const of a bare ``--json`` where that spelling is deprecated (``solve``, ``policies``)
_BARE = "\0bare"
_SIGNAMES = {int(signal.SIGINT): "SIGINT", int(signal.SIGTERM): "SIGTERM", 1: "SIGHUP"}


# ---------------------------------------------------------------------------------------------
# helpers


def _warn(message: str) -> None:
    print(f"prefixsched: warning: {message}", file=sys.stderr)


def _float_in(name: str, lo: float, hi: float, *, lo_open: bool = False, allow_inf: bool = False):
    """argparse type: a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), or ``inf``
    when ``allow_inf``."""

    def parse(text: str) -> float:
        if allow_inf and text.strip().lower() in ("inf", "infinity"):
            return math.inf
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {_short(text)}") from None
        rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]" + (" or 'inf'" if allow_inf else "")
        if not math.isfinite(v) or (v <= lo if lo_open else v < lo) or v > hi:
            raise argparse.ArgumentTypeError(f"must be a finite number {rng}, got {_short(text)}")
        return v

    return parse


def _positive_float(name: str, allow_inf: bool = False, hi: float = MAX_COST):
    return _float_in(name, 0.0, hi, lo_open=True, allow_inf=allow_inf)


def _k_value(text: str) -> float:
    if text.strip().lower() in ("inf", "infinity"):
        return math.inf
    return _int_in("--k", 1, MAX_K)(text)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="req", file=sys.stderr, disable=not enabled, leave=False)
    state = {"done": 0}

    def update(done: int, _total: int) -> None:
        if done > state["done"]:
            bar.update(done - state["done"])
            state["done"] = done

    return bar, update


def _emit_json(dest: str, obj: Any, field: str = "--json") -> None:
    """Write ``obj`` as canonical JSON to ``dest`` (a path, or ``-`` for stdout alone)."""
    from prefixsched._io import dumps_json, write_json

    if dest == "-":
        sys.stdout.write(dumps_json(obj))
    else:
        write_json(dest, obj, field=field)


def _save_png(fig: Any, dest: str, field: str) -> None:
    from prefixsched._io import atomic_write

    with atomic_write(dest, "wb", field=field) as fh:
        fig.savefig(fh, format="png", dpi=110)


# ---------------------------------------------------------------------------------------------
# output options: declared once, checked before any work


def _output(p: argparse.ArgumentParser, *flags: str, help: str, stdout: bool, bare: str | None = None,
            metavar: str = "FILE", dest: str | None = None) -> None:
    """Add an output option to ``p`` and register it for :func:`_check_outputs`.

    ``stdout``: ``-`` means stdout. ``bare``: ``"deprecated"`` (a bare flag prints to stdout with a
    deprecation warning) or ``"stdout"`` (a bare flag means ``-``).
    """
    kw: dict[str, Any] = {"metavar": metavar, "default": None, "help": help}
    if dest is not None:
        kw["dest"] = dest
    if bare is not None:
        kw.update(nargs="?", const=_BARE if bare == "deprecated" else "-")
    action = p.add_argument(*flags, **kw)
    outs = p.get_default("_outputs")
    if outs is None:
        outs = []
        p.set_defaults(_outputs=outs)
    outs.append((action.dest, flags[0], stdout))


def _check_outputs(args: argparse.Namespace) -> None:
    """Check every output option of the command (module docstring, "Outputs") before any work."""
    from prefixsched._io import check_output_path

    seen: dict[Any, str] = {}
    for dest, flag, stdout_ok in getattr(args, "_outputs", None) or ():
        value = getattr(args, dest)
        if value is None:
            continue
        if value == _BARE:
            _warn(f"a bare {flag} is deprecated; write '{flag} -' for stdout or '{flag} FILE'")
            value = "-"
            setattr(args, dest, value)
        if value == "-":
            if not stdout_ok:
                raise InputError(flag, "'-' (stdout) is only for JSON outputs; give a file path")
            key: Any = "-"
        else:
            key = check_output_path(value, flag).resolve()
        if key in seen:
            what = "stdout" if key == "-" else repr(value)
            raise InputError(flag, f"writes to {what} like {seen[key]}; give each output its own file")
        seen[key] = flag


# ---------------------------------------------------------------------------------------------
# simulate


def _load_input(args: argparse.Namespace):
    from prefixsched.reference import workloads

    clients = 8 if args.clients is None else args.clients
    if args.trace is not None:
        from prefixsched.instance_io import load_any

        path = Path(args.trace)
        if not path.exists():
            raise InputError("--trace", f"no such file: {args.trace}")
        if args.requests is not None:
            raise InputError("--requests", "generates a synthetic workload; for a trace use --max-requests M")
        if path.suffix.lower() == ".json":
            for opt, v in (("--clients", args.clients), ("--client-strategy", args.client_strategy)):
                if v is not None:
                    _warn(f"{opt} does not apply to a .json instance (it names its own clients); ignored")
            inst = load_any(path, max_requests=args.max_requests)
            source = {"trace": str(args.trace)}
        else:
            strategy = args.client_strategy or "family"
            inst = load_any(path, clients=clients, strategy=scenario_cli.loader_strategy(strategy),
                            max_requests=args.max_requests)
            source = {"trace": str(args.trace), "client_strategy": strategy}
    else:
        if args.workload not in workloads.WORKLOADS:
            raise InputError(
                "--workload", f"unknown workload {args.workload!r}; known: {', '.join(sorted(workloads.WORKLOADS))}"
            )
        if args.client_strategy is not None and scenario_cli.loader_strategy(args.client_strategy) == "field":
            _warn("--client-strategy field applies to traces only; ignored for a workload")
        elif args.client_strategy == "family":
            _warn("--client-strategy family applies to traces only (a workload names its clients); ignored")
        inst = workloads.make_workload(args.workload, clients=clients, seed=args.seed, n_requests=args.requests)
        if args.max_requests is not None and args.max_requests < len(inst.requests):
            # the first M requests of the workload (default size, or --requests): a prefix by arrival
            inst = dataclasses.replace(inst, requests=inst.requests[: args.max_requests])
        source = {"workload": args.workload}
    return scenario_cli.apply(args, inst, source)


def _accepts(spec: str, param: str) -> bool:
    """Whether the policy of ``spec`` takes keyword ``param`` (so ``--quantum``/``--k`` reach it)."""
    import inspect

    from prefixsched.reference.policies import get, parse_spec

    name, primary = parse_spec(spec)
    if param in primary:
        return False  # the spec's own :VALUE wins over the option
    cls = get(name)
    if cls.__init__ is object.__init__:
        return False
    sig = inspect.signature(cls.__init__)
    return param in sig.parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def _dispatcher_label(d: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in d.items() if k != "name")
    return f"{d.get('name')}({params})" if params else str(d.get("name"))


def cmd_simulate(args: argparse.Namespace) -> int:
    from prefixsched.reference.cluster import create_dispatcher
    from prefixsched.reference.policies import create
    from prefixsched.reference.simulator import simulate
    from prefixsched.theory.metrics import summarize
    from prefixsched.theory.schedule import check_trace

    specs = args.policy or list(DEFAULT_POLICIES)
    for spec in specs:
        create(spec)  # unknown names and bad :VALUEs before any loading
    for opt, param, value in (("--quantum", "quantum", args.quantum), ("--k", "k", args.k)):
        if value is not None and not any(_accepts(s, param) for s in specs):
            _warn(f"{opt}: no selected policy takes {param!r} (or each sets it in its spec); ignored")
    D = args.workers
    dispatch_spec = args.dispatch or "d2lpm"
    create_dispatcher(dispatch_spec, q_w=args.q_w)  # a bad spec is an error even with one worker
    if D == 1:
        for opt, value in (("--dispatch", args.dispatch), ("--q-w", args.q_w)):
            if value is not None:
                _warn(f"{opt} has no effect with one worker (--workers 1); ignored")
    elif args.plot is not None:
        raise InputError("--plot", "per-policy plots are single-worker only; drop --plot or use --workers 1")
    inst, source = _load_input(args)
    from prefixsched.reference.scenarios import offered_load

    offered = offered_load(inst, args.workers)
    ps = inst.limits.page_size
    pages = sum((r.prompt_len + r.output_len) // ps for r in inst.requests)
    if pages > MAX_SIM_PAGES:  # a memory estimate, checked before the first step
        raise InputError(
            "--trace", f"the simulation would hold up to {pages:,} cache pages ((prompt + output tokens) / page_size "
            f"{ps}), more than {MAX_SIM_PAGES:,} (~2 GB); use a larger limits.page_size or fewer requests",
        )
    policies = [create(s, quantum=args.quantum, k=args.k, seed=args.seed) for s in specs]
    preemption = _preemption_config(args.preemption)
    if preemption is not None:
        if args.engine != "sglang":
            raise InputError("--preemption", f"{args.preemption!r} needs --engine sglang (the ideal engine never preempts)")
        if D > 1:
            raise InputError("--preemption", f"{args.preemption!r} is single-worker only; use --workers 1")
    from prefixsched.reference.policies.preemptive import FastSwitchPriority, PreemptiveVTC, SGLangPriority

    preemptive = [sp for sp, pol in zip(specs, policies) if isinstance(pol, (PreemptiveVTC, FastSwitchPriority, SGLangPriority))]
    if preemption is None and preemptive:
        _warn(f"{', '.join(preemptive)} cannot preempt without --preemption drop|swap|fastswitch: "
              "they run as their non-preemptive admission rule")
    elif preemption is not None and len(preemptive) < len(specs):
        _warn(f"--preemption applies only to preemptive policies; {', '.join(sp for sp in specs if sp not in preemptive)} "
              "do not preempt")
    show = not args.no_progress and sys.stderr.isatty()
    results = []
    traces = []
    for spec, pol in zip(specs, policies):
        bar, update = _progress(len(inst.requests), spec, show)
        if D > 1:
            from prefixsched.reference.cluster import simulate_cluster, summarize_cluster

            try:
                ct = simulate_cluster(
                    inst,
                    lambda spec=spec: create(spec, quantum=args.quantum, k=args.k, seed=args.seed),
                    create_dispatcher(dispatch_spec, q_w=args.q_w),
                    workers=D,
                    seed=args.seed,
                    progress=update,
                    engine=args.engine,
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
            opts = {"preemption": preemption} if preemption is not None else {}
            trace = simulate(inst, pol, engine=args.engine, seed=args.seed, progress=update, **opts)
        finally:
            bar.close()
        check_trace(inst, trace)  # every schedule is replayed by the independent checker
        summary = summarize(trace, inst, window_s=args.jain_window)
        results.append({"policy": spec, "params": trace.policy, "summary": summary})
        traces.append(trace)

    headers = ["policy", "tok/s", "hit rate", "TTFT P50 s", "TTFT P99 s", "Jain whole", "max gap",
               "Jain win mean", "Jain win min", "gap/VTC bound", "gap/DLPM bound"]
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
                *scenario_cli.row_extras(s),
            ]
        )
    n_clients = len(inst.clients)
    # with --json - stdout carries the JSON alone (for scripts); the table goes to stderr
    report = sys.stderr if args.json == "-" else sys.stdout
    dispatcher = results[0]["dispatcher"] if results and D > 1 else {"name": dispatch_spec}
    print(
        f"{len(inst.requests)} requests, {n_clients} clients, "
        + ", ".join(f"{k}={v}" for k, v in source.items())
        + f", engine={args.engine}, seed={args.seed}"
        + (f", preemption={args.preemption}" if preemption is not None else "")
        + (f", workers={D}, dispatch={_dispatcher_label(dispatcher)}" if D > 1 else ""),
        file=report,
    )
    print(scenario_cli.load_line(offered), file=report)
    print(_table(headers, rows), file=report)
    print(
        "tok/s: (prompt+output) tokens per second; hit rate: cached/prompt tokens; Jain whole: one Jain's index "
        "over the whole window where all clients are active (client-view service rate); max gap: largest service gap "
        "(w_e*extend + w_q*output) between two continuously backlogged clients.",
        file=report,
    )
    print(scenario_cli.legend(args.jain_window), file=report)
    if args.per_client:
        print(scenario_cli.per_client_report(results, _table), file=report)
    out = {
        "input": {**source, "requests": len(inst.requests), "clients": list(inst.clients), "seed": args.seed,
                  "engine": args.engine, "preemption": args.preemption,
                  **({"workers": D, "dispatch": dispatch_spec} if D > 1 else {}),
                  "offered_load": offered, "cost_model": dataclasses.asdict(inst.cost_model),
                  "limits": dataclasses.asdict(inst.limits)},
        "results": results,
    }
    if args.json is not None:
        _emit_json(args.json, out)
    if args.plot is not None:
        from prefixsched.plots import plot_simulation

        _save_png(plot_simulation(inst, specs, traces), args.plot, "--plot")
    return 0


# ---------------------------------------------------------------------------------------------
# registry listings


def cmd_policies(args: argparse.Namespace) -> int:
    from prefixsched.reference.policies import available, get

    rows = []
    payload = []
    for name, desc in available().items():
        cls = get(name)
        try:
            defaults: dict[str, Any] | None = dict(cls().params())
        except Exception:  # a plugin that needs arguments: no defaults to show
            defaults = None
        shown = "-" if not defaults else " ".join(f"{k}={_fmt(v) if v is not None else 'none'}" for k, v in defaults.items())
        rows.append([name, cls.primary_param or "-", shown, desc])
        payload.append({"name": name, "primary_param": cls.primary_param or "-", "defaults": defaults, "description": desc})
    if args.json is not None:
        _emit_json(args.json, payload)
    if args.json != "-":
        print(_table(["policy", "NAME:VALUE sets", "default parameters", "description"], rows))
    return 0


def cmd_workloads(args: argparse.Namespace) -> int:
    from prefixsched.reference.workloads import WORKLOADS, workload_params

    if args.json is not None:
        _emit_json(args.json, [{"name": n, "description": WORKLOADS[n][1], "parameters": workload_params(n)}
                               for n in sorted(WORKLOADS)])
    if args.json != "-":
        print(_table(["workload", "description"], [[n, WORKLOADS[n][1]] for n in sorted(WORKLOADS)]))
    return 0


# ---------------------------------------------------------------------------------------------
# exact solvers


def _signame(signum: int) -> str:
    return _SIGNAMES.get(int(signum), f"signal {signum}")


def cmd_solve(args: argparse.Namespace) -> int:
    from prefixsched.instance_io import load_instance
    from prefixsched.theory.exact import solve

    inst = load_instance(args.instance)
    if args.objective == "ttft-feasible" and args.bound is None:
        raise InputError("--bound", "the ttft-feasible objective needs a bound T (--bound)")
    if args.solver == "brute" and args.time_limit is not None:
        _warn("--time-limit: the brute backend enumerates every order and takes no time limit; ignored")
    interrupt: KeyboardInterrupt | None = None
    try:
        res = solve(
            inst,
            model=args.model,
            objective=args.objective,
            solver=args.solver,
            bound=args.bound,
            delta=args.delta,
            time_limit=60.0 if args.time_limit is None else args.time_limit,
        )
    except SolveInterrupted as e:
        res, interrupt = e.result, e
    except KeyboardInterrupt as e:  # stopped before the backend had any result
        res, interrupt = None, e
    report = sys.stderr if args.json == "-" else sys.stdout
    if args.json == "-":
        _emit_json("-", res.to_dict() if res is not None else {"status": "UNKNOWN", "interrupted": True})
    if res is None:
        print("status     UNKNOWN (interrupted before any schedule was found)", file=report)
    else:
        note = ""
        if res.interrupted:
            note = " (interrupted: the best schedule found so far" + ("" if res.optimal else ", not proven optimal") + ")"
        elif res.proof:
            note = f" (proof: {res.proof})"
        print(f"status     {res.status.value}{note}", file=report)
        print(f"objective  {_fmt(res.objective)}   bound {_fmt(res.bound)}   gap {_fmt(res.gap)}", file=report)
        print(f"wall       {res.wall_s:.2f} s   solver {res.solver}   model {res.model}", file=report)
        if res.order:
            print("order      " + " ".join(res.order), file=report)
            print(_table(["request", "start", "TTFT"], [[i, res.start.get(i), res.ttft.get(i)] for i in res.order]),
                  file=report)
    if interrupt is not None:
        signum = getattr(interrupt, "signum", int(signal.SIGINT))
        print(f"prefixsched: interrupted ({_signame(signum)}); no output file written", file=sys.stderr)
        return 128 + signum
    assert res is not None
    if args.json not in (None, "-"):
        _emit_json(args.json, res.to_dict())
    if args.gantt is not None:
        if res.order:
            from prefixsched.plots import plot_gantt

            _save_png(plot_gantt(inst, res, model=args.model), args.gantt, "--gantt")
        else:
            _warn(f"--gantt: no schedule to draw (status {res.status.value}); {args.gantt} not written")
    return 0


def cmd_gap(args: argparse.Namespace) -> int:
    from prefixsched.gap import run_gap

    source = args.source or ("trace" if args.trace is not None else "random")
    report = run_gap(
        model=args.model,
        n=args.n,
        instances=args.instances,
        policies=args.policies,
        source=source,
        trace=args.trace,
        seed=args.seed,
        solver=args.solver,
        time_limit=args.time_limit,
        objective=args.objective,
        progress=not args.no_progress and sys.stderr.isatty(),
        delta=args.delta,
    )
    print(report.table(), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json is not None:
        _emit_json(args.json, report.to_dict())
    if args.plot is not None:
        _save_png(report.plot(), args.plot, "--plot")
    return 0


# ---------------------------------------------------------------------------------------------
# reductions and families


def cmd_reduce(args: argparse.Namespace) -> int:
    from prefixsched.reductions.three_partition import ThreePartition, reduce_to_ttft_feasibility, solve_exact

    if len(args.values) > 3 * MAX_TRIPLES:
        raise InputError("--values", f"at most {3 * MAX_TRIPLES} values ({MAX_TRIPLES} triples), got {len(args.values)}")
    tp = ThreePartition(tuple(args.values), args.bound)
    red = reduce_to_ttft_feasibility(tp)  # refuses a B too large for the pseudo-polynomial construction
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
        _emit_json(args.json, red.instance.to_dict())
    if args.certificate_json is not None:
        _emit_json(args.certificate_json, cert, "--certificate-json")
    if args.certificate_json == "-":
        return 0  # stdout holds the certificate alone (the historical bare --certificate-json)
    text = sys.stderr if args.json == "-" else sys.stdout
    print(f"reduced instance: {cert['queries']} queries (prev model, token units), TTFT bound T = {red.T}", file=text)
    if triples is None:
        print("3-PARTITION: no solution (proven), so no schedule meets T", file=text)
    else:
        print("3-PARTITION: " + " | ".join(" ".join(str(v) for v in t) for t in tp.values_of(triples)), file=text)
        print("certificate schedule meeting T: " + " ".join(cert["schedule"]), file=text)
    if args.json not in (None, "-"):
        print(f"instance written to {args.json}", file=text)
    return 0


def cmd_family(args: argparse.Namespace) -> int:
    from prefixsched.reductions.families import FAMILIES, MAX_FAMILY_TOKENS, family_tokens

    if args.name not in FAMILIES:
        raise InputError("NAME", f"unknown family {args.name!r}; known: {', '.join(sorted(FAMILIES))}")
    tokens = family_tokens(args.name, args.n)
    if tokens > MAX_FAMILY_TOKENS:
        raise InputError(
            "--n", f"{args.name} with n={args.n} has {tokens:,} prompt tokens, more than the limit {MAX_FAMILY_TOKENS:,}"
        )
    inst = FAMILIES[args.name][0](args.n)
    _emit_json(args.out or "-", inst.to_dict())
    if args.out not in (None, "-"):
        print(f"{args.name} n={args.n}: {len(inst.requests)} requests written to {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------
# parser


class _Formatter(argparse.HelpFormatter):
    """Every option's help ends with its default: appended as ``(default: X)`` unless the text
    already says it (flags: ``off``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        d = action.default
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            shown = "off" if d is False else "on"
        elif d is None:
            return text
        elif isinstance(d, (list, tuple)):
            shown = " ".join(str(x) for x in d)
        else:
            shown = str(d)
        return f"{text} (default: {shown.replace('%', '%%')})"


def build_parser() -> argparse.ArgumentParser:
    from prefixsched import __version__

    p = argparse.ArgumentParser(
        prog="prefixsched",
        formatter_class=_Formatter,
        description=(
            "Know, not guess, how an LLM-serving request scheduler behaves: replay traces under FCFS, LPM, "
            "k-LPM, VTC and DLPM over a radix prefix cache, find provably optimal schedules of small "
            "instances, and build NP-hardness reductions."
        ),
        epilog="Exit status: 0 success, 1 environment error (e.g. disk full), 2 bad input, 130/143 interrupted "
        "by SIGINT/SIGTERM. --json FILE writes JSON, --json - prints it alone on stdout.",
    )
    p.add_argument("--version", action="version", version=f"prefixsched {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=_Formatter, **kw)

    s = command(
        "simulate",
        help="replay a trace or workload under several policies and compare them (the main job)",
        description=(
            "Run each policy in the deterministic continuous-batching simulator over a radix prefix cache, "
            "replay every resulting trace through the independent checker, and print one row per policy. "
            "Without --trace, the built-in seeded 'default' workload is used."
        ),
    )
    src = s.add_mutually_exclusive_group()
    src.add_argument("--trace", metavar="FILE", help="Mooncake-format JSONL trace, or an instance .json (default: none, use --workload)")
    src.add_argument("--workload", default="default", metavar="NAME", help="synthetic workload (see `prefixsched workloads`)")
    s.add_argument(
        "--policy", nargs="+", metavar="P",
        help=f"policy specs NAME or NAME:VALUE, e.g. k-lpm:4 dlpm:8000 (default: {' '.join(DEFAULT_POLICIES)})",
    )
    s.add_argument("--clients", type=_positive_int("--clients", MAX_CLIENTS), default=None,
                   help=f"number of clients, 1..{MAX_CLIENTS:,}; not for a .json instance, which names its own (default: 8)")
    s.add_argument(
        "--client-strategy", default=None, metavar="family|round-robin|field|zipf:ALPHA|heavy:K:SHARE",
        help="how requests map to --clients clients (default: family on a trace, one client per conversation family, "
        "folded onto --clients by a stable hash; zipf:ALPHA and heavy:K:SHARE skew the demand over the families, see "
        "prefixsched.reference.scenarios; on a workload only zipf, heavy and round-robin re-assign its clients)",
    )
    s.add_argument("--seed", type=_nonneg_int("--seed", MAX_SEED), default=0, help="seed of the workload and of randomised policies")
    s.add_argument(
        "--engine", choices=["sglang", "ideal"], default="sglang",
        help="sglang: schedule as SGLang 0.5.23 does (prefill and decode steps, PrefillAdder with stop-at-first-misfit, "
        "chunked prefill, new_token_ratio reservation, retraction); ideal: the papers' model (mixed steps, whole-output "
        "reservation, skip-if-it-does-not-fit, no chunking, no retraction) (default: %(default)s)",
    )
    s.add_argument(
        "--preemption", choices=list(PREEMPTION_MODES), default="none",
        help="let preemptive policies (vtc-preempt, fastswitch, sglang-priority) preempt decoding requests on the "
        "sglang engine: drop (recompute later, SGLang's priority preemption), swap (KV to a host pool twice the GPU "
        "pool and back: vLLM's synchronous per-block copies), fastswitch (swap with block groups, asynchronous copies "
        "and KV reuse); copy costs: Llama-3-8B over PCIe 5.0 x16 (prefixsched.theory.switch_cost); none: those "
        "policies run as their non-preemptive admission rule (default: %(default)s)",
    )
    s.add_argument("--quantum", type=_positive_float("--quantum"), default=None,
                   help="DLPM quantum Q_u in cost units, (0, 1e15] (default: the policy's own)")
    s.add_argument("--k", type=_k_value, default=None, help=f"k of k-LPM: 1..{MAX_K:,} or 'inf' (default: the policy's own)")
    s.add_argument("--max-requests", type=_positive_int("--max-requests"), default=None, metavar="M",
                   help="use only the first M requests: of the trace or instance, or of the workload at its "
                   "default size (or at --requests) (default: all)")
    s.add_argument("--requests", type=_positive_int("--requests", MAX_REQUESTS), default=None, metavar="N",
                   help=f"generate the workload with N requests instead of its default window, 1..{MAX_REQUESTS:,} "
                   "(workloads only; default: the workload's own duration)")
    _output(s, "--json", stdout=True, metavar="OUT",
            help="write the results as JSON to OUT ('-': JSON alone on stdout, the table on stderr) (default: none)")
    _output(s, "--plot", stdout=False, metavar="OUT.png",
            help="per-client cumulative service curves and TTFT CDFs, one row per policy (default: none)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument(
        "--workers", type=_positive_int("--workers", MAX_WORKERS), default=1, metavar="D",
        help=f"data-parallel workers, 1..{MAX_WORKERS:,}; each has its own cache and the instance's limits, "
        "and every worker's trace is replayed by the checker; the row then holds cluster-wide metrics",
    )
    s.add_argument(
        "--dispatch", default=None, metavar="NAME",
        help="global dispatcher when D > 1: d2lpm, d2lpm:Q_W, round-robin, client-round-robin, "
        "least-load, preble (a warning with one worker) (default: d2lpm)",
    )
    s.add_argument(
        "--q-w", type=_positive_float("--q-w", allow_inf=True), default=None,
        help="D2LPM worker quantum Q_w in cost units, or 'inf' (default: the dispatcher's own)",
    )
    scenario_cli.add_simulate_options(s)
    s.set_defaults(func=cmd_simulate)

    s = command("policies", help="list the policy registry, with default parameters",
                description="List every registered policy (built-in and entry-point plugins) and its default parameters.")
    _output(s, "--json", stdout=True, bare="deprecated",
            help="write the listing as JSON to FILE ('-': stdout; a bare --json is a deprecated alias of '-') (default: none)")
    s.set_defaults(func=cmd_policies)

    s = command("workloads", help="list the synthetic workloads",
                description="List the built-in synthetic workloads (the JSON form includes every parameter's default).")
    _output(s, "--json", stdout=True, help="write the listing with each workload's parameters as JSON to FILE ('-': stdout) (default: none)")
    s.set_defaults(func=cmd_workloads)

    s = command(
        "solve",
        help="optimal schedule of a small instance",
        description=(
            "Solve a JSON instance exactly in a sequential theory model. prev: reuse = LCP with the previous "
            "query (k-LPM paper); radix: reuse = longest prefix of any earlier query; fair: radix plus a bound "
            "--delta on the service gap of backlogged clients. Time unit: one uncached token (arrivals read in it). "
            "Ctrl-C stops the search: the best result so far is printed, marked interrupted, exit 130."
        ),
    )
    s.add_argument("instance", metavar="INSTANCE.json", help="the instance (prefixsched JSON instance format)")
    s.add_argument("--model", choices=["prev", "radix", "fair"], default="prev", help="sequential model")
    s.add_argument("--objective", choices=["max-ttft", "mean-ttft", "makespan", "ttft-feasible"], default="max-ttft",
                   help="what to minimise, or the decision 'every TTFT <= --bound'")
    s.add_argument("--bound", type=_float_in("--bound", 0.0, MAX_COST), default=None, metavar="T",
                   help="TTFT bound of --objective ttft-feasible, time units (default: none; required there)")
    s.add_argument("--delta", type=_float_in("--delta", 0.0, MAX_COST), default=None,
                   help="service-gap bound of the fair model, cost units (default: none; required there)")
    s.add_argument("--solver", choices=["cpsat", "z3", "dp", "brute"], default="cpsat", help="exact backend")
    s.add_argument("--time-limit", type=_positive_float("--time-limit", hi=MAX_TIME_LIMIT_S), default=None, metavar="S",
                   help="seconds, (0, 1e6]; on expiry the best schedule with its proven bound (default: 60)")
    _output(s, "--json", stdout=True, bare="deprecated",
            help="write the result as JSON (status, objective, bound, gap, wall_s, order, ttft, interrupted, ...) to "
            "FILE ('-': stdout; a bare --json is a deprecated alias of '-') (default: none)")
    _output(s, "--gantt", stdout=False, metavar="OUT.png", help="draw the schedule (default: none)")
    s.set_defaults(func=cmd_solve)

    s = command(
        "gap",
        help="each policy's ratio to the proven optimum",
        description="Solve many small instances exactly and report each policy's ratio to the optimum (mean, P90, max) and how often it is optimal.",
    )
    s.add_argument("--model", choices=["prev", "radix", "fair"], default="prev", help="sequential model")
    s.add_argument("--objective", choices=["max-ttft", "mean-ttft", "makespan"], default="max-ttft", help="what to minimise")
    s.add_argument("--n", type=_positive_int("--n"), default=8,
                   help="requests per instance, at most the backend's size limit (dp: 56 prev / 20 radix / 14 fair)")
    s.add_argument("--instances", type=_positive_int("--instances", 100_000), default=20, help="number of instances, 1..100,000")
    s.add_argument("--policies", nargs="+", default=["fcfs", "lpm", "k-lpm:2", "k-lpm:4", "vtc", "dlpm"], metavar="P",
                   help="policy specs to compare")
    s.add_argument("--source", choices=["random", "trace"], default=None,
                   help="instance source (default: trace with --trace, else random)")
    s.add_argument("--trace", metavar="FILE", help="trace for --source trace: windows of N consecutive requests (default: none)")
    s.add_argument("--solver", choices=["cpsat", "dp", "z3", "brute"], default="dp", help="exact backend")
    s.add_argument("--delta", type=_float_in("--delta", 0.0, MAX_COST), default=None,
                   help="service-gap bound of the fair model, cost units (default: none; required there)")
    s.add_argument("--time-limit", type=_positive_float("--time-limit", hi=MAX_TIME_LIMIT_S), default=30.0, metavar="S",
                   help="seconds per instance, (0, 1e6]; an unproven instance is counted, not used")
    s.add_argument("--seed", type=_nonneg_int("--seed", MAX_SEED), default=0, help="seed of the instances and of randomised policies")
    _output(s, "--json", stdout=True, metavar="OUT",
            help="write the report as JSON to OUT ('-': JSON alone on stdout, the table on stderr) (default: none)")
    _output(s, "--plot", stdout=False, metavar="OUT.png", help="box plot of the ratios (default: none)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_gap)

    s = command(
        "reduce",
        help="NP-hardness reduction: 3-PARTITION -> TTFT feasibility",
        description="Build the 3-PARTITION -> TTFT-feasibility reduction (prev model, 5m+2 queries), print the bound T "
        "and a certificate. The reduced instance is pseudo-polynomial in --bound (about 3mB tokens): instances above "
        "2 million tokens are refused.",
    )
    s.add_argument("problem", choices=["3partition"], help="the source problem")
    s.add_argument("--values", type=_positive_int("--values"), nargs="+", required=True,
                   help=f"the 3m values a_i, B/4 < a_i < B/2, at most {3 * MAX_TRIPLES} (required)")
    s.add_argument("--bound", type=_positive_int("--bound"), required=True, help="the bin size B, sum of values = m*B (required)")
    _output(s, "--json", stdout=True, metavar="OUT",
            help="write the reduced instance (JSON instance format) to OUT ('-': stdout) (default: none)")
    _output(s, "--certificate-json", stdout=True, bare="stdout",
            help="write T and the certificate as JSON to FILE ('-' or bare: stdout alone) (default: none)")
    s.set_defaults(func=cmd_reduce)

    s = command(
        "family",
        help="write a member of an adversarial instance family",
        description="Write one member of an adversarial instance family (token units, JSON instance format). "
        "Families: lpm-starvation (a cold request's TTFT under LPM grows with n), fcfs-no-reuse (FCFS's ratio "
        "to the optimum grows with the shared-prefix length), vtc-locality (VTC's throughput falls against LPM), "
        "d2lpm-infinite-qw (D2LPM Thm A.5: infinite Q_w is unfair), klpm-definition4 (k-LPM paper Definition 4; "
        "--n users). Growth formulas are in prefixsched/reductions/families.py.",
    )
    s.add_argument("name", metavar="NAME", help="family name (see above)")
    s.add_argument("--n", type=_positive_int("--n"), default=8,
                   help="size parameter of the family; members above 2 million prompt tokens are refused")
    _output(s, "--json", "--out", dest="out", stdout=True,
            help="instance JSON to FILE ('-': stdout; --out is the same option) (default: stdout)")
    s.set_defaults(func=cmd_family)

    from prefixsched.integration.live.cli import add_parser as add_live_parser

    add_live_parser(sub)  # `prefixsched live` (issue #10): code in prefixsched/integration/live/
    from prefixsched import check_cli

    check_cli.add_parser(sub, _positive_int, _nonneg_int)
    from prefixsched.integration.cli import add_parser as add_conformance_parser  # conformance sglang

    add_conformance_parser(sub, lambda name, lo: _int_in(name, lo))
    from prefixsched.reproduce import add_parser as add_reproduce
    from prefixsched.sweep.cli import add_parser as add_sweep

    add_sweep(sub)
    add_reproduce(sub)
    return p


# ---------------------------------------------------------------------------------------------
# entry point


@contextlib.contextmanager
def _termination_as_interrupt() -> Iterator[None]:
    """While the command runs, SIGTERM and SIGHUP raise :class:`~prefixsched.errors.Interrupted`
    (a ``KeyboardInterrupt``), so they unwind like Ctrl-C: temporary files removed, exit 128+signum.
    Every signal is also recorded (:func:`~prefixsched.errors.note_signal`), so one whose
    exception Python swallowed (raised inside a finaliser) stops the next
    :func:`~prefixsched.errors.raise_if_interrupted` of a long loop. Only in the main thread (where
    Python runs signal handlers); the old handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        note_signal(signum)
        raise Interrupted(signum)

    def on_sigint(signum: int, frame: Any) -> None:
        note_signal(signum)  # sticky: a KeyboardInterrupt lost in a finaliser is raised again
        raise KeyboardInterrupt

    old: dict[int, Any] = {}
    wanted: list[tuple[Any, Any]] = [(signal.SIGTERM, handler), (getattr(signal, "SIGHUP", None), handler)]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # leave a caller's own handler
        wanted.append((signal.SIGINT, on_sigint))
    for sig, h in wanted:
        if sig is None:
            continue
        try:
            old[sig] = signal.signal(sig, h)
        except (OSError, ValueError):  # pragma: no cover - not settable here
            pass
    clear_signals()
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        clear_signals()


def main(argv: Sequence[str] | None = None) -> int:
    with _termination_as_interrupt():
        try:
            args = build_parser().parse_args(argv)
        except KeyboardInterrupt as e:
            return _interrupted(e)
        try:
            _check_outputs(args)
            return int(args.func(args) or 0)
        except (InputError, SolverLimitError) as e:
            print(f"prefixsched: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            return _interrupted(e)
        except BrokenPipeError:
            _quiet_stdout()
            return 0
        except PrefixschedError as e:
            print(f"prefixsched: error: {e}", file=sys.stderr)
            return 1
        except OSError as e:  # the environment, not the input: a full disk, a vanished directory
            print(f"prefixsched: error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
            return 1


def _interrupted(e: BaseException) -> int:
    signum = int(getattr(e, "signum", signal.SIGINT))
    print(f"prefixsched: interrupted ({_signame(signum)})", file=sys.stderr)
    return 128 + signum


def _quiet_stdout() -> None:
    """After a closed pipe (``prefixsched ... | head``): point stdout at /dev/null so the final
    flush at exit does not print another BrokenPipeError."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # pragma: no cover - stdout without a descriptor
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
