"""``simulate``'s scenario options: cost profile, server limits, load, client assignment and
misbehaving clients (issue #9). Registered by :func:`prefixsched.cli.build_parser` with
:func:`add_simulate_options`; :func:`apply` turns the options into the instance that is simulated.

Order of application (each step sees the previous one's instance): client assignment, misbehaving
client, cost profile and limits, then arrival scaling (``--load`` / ``--rate`` / ``--time-scale``,
at most one), because the offered load depends on the profile, the limits and the requests.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Sequence

from prefixsched.errors import InputError

__all__ = ["add_simulate_options", "loader_strategy", "apply", "load_line", "legend", "per_client_report", "row_extras"]


def _number(name: str, *, integer: bool = False, allow_off: bool = False):
    """argparse type: a number > 0 (an integer >= 1 with ``integer``); ``-1`` / ``off`` -> None
    with ``allow_off``. Errors name the option and the value."""

    def parse(text: str) -> Any:
        t = text.strip().lower()
        if allow_off and t in ("-1", "off", "none"):
            return None
        try:
            v: float = int(t) if integer else float(t)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"{name}: must be {kind}{' or -1 (off)' if allow_off else ''}, got {text!r}") from None
        if not (v > 0) or (isinstance(v, float) and not math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"{name}: must be {'>= 1' if integer else '> 0'}, got {text!r}")
        return v

    return parse


def add_simulate_options(p: argparse.ArgumentParser) -> None:
    """Add the scenario options to the ``simulate`` parser (every one says its default)."""
    from prefixsched.theory.profiles import DEFAULT_PROFILE, PROFILE_ALIASES, PROFILES

    g = p.add_argument_group("cost profile and server limits (defaults: the profile's)")
    g.add_argument(
        "--cost-model", metavar="NAME|FILE.json", default=None,
        help=f"cost profile: {', '.join(PROFILES)} (aliases {', '.join(PROFILE_ALIASES)}), or a profile JSON file "
        f"(prefixsched.theory.profiles); default: {DEFAULT_PROFILE} for traces and workloads, an instance file's own",
    )
    g.add_argument("--kv-capacity", type=_number("--kv-capacity", integer=True), default=None, metavar="TOKENS",
                   help="KV-cache pool of one worker in tokens (default: the profile's)")
    g.add_argument("--max-running", type=_number("--max-running", integer=True), default=None, metavar="N",
                   help="max running requests per worker (default: the profile's)")
    g.add_argument("--max-prefill-tokens", type=_number("--max-prefill-tokens", integer=True), default=None, metavar="TOKENS",
                   help="extend tokens one step may prefill (default: the profile's)")
    g.add_argument("--chunked-prefill-size", type=_number("--chunked-prefill-size", integer=True, allow_off=True),
                   default=argparse.SUPPRESS, metavar="TOKENS|-1",
                   help="SGLang chunked-prefill budget, -1 = off; only the sglang engine chunks (default: the profile's)")
    g.add_argument("--page-size", type=_number("--page-size", integer=True), default=None, metavar="TOKENS",
                   help="cache page size (default: the input's own: 512 for Mooncake traces, 32 for workloads)")
    s = p.add_argument_group("load (at most one; default: the input's own arrival times)")
    x = s.add_mutually_exclusive_group()
    x.add_argument("--load", type=_number("--load"), default=None, metavar="RHO",
                   help="rescale arrivals so that the offered work (prefill without cache hits + decode, at "
                   "full-batch efficiency; prefixsched.reference.scenarios.offered_load) is RHO x the capacity of "
                   "the --workers workers (default: the input's own arrivals)")
    x.add_argument("--rate", type=_number("--rate"), default=None, metavar="R",
                   help="rescale arrivals to a mean of R requests/s (requests / arrival span) (default: the input's own)")
    x.add_argument("--time-scale", type=_number("--time-scale"), default=None, metavar="X",
                   help="multiply inter-arrival times by X (X > 1 slows the stream) (default: 1)")
    c = p.add_argument_group("clients and fairness")
    c.add_argument(
        "--misbehave", metavar="s1[:COPIES[:CLIENT]]|s2[:FACTOR[:CLIENT]]", default=None,
        help="DLPM's misbehaving client on any input: s1 sends each request of CLIENT (default c0) COPIES times "
        "(default 4); s2 makes its families' private prefixes FACTOR times longer (default 2)",
    )
    c.add_argument("--jain-window", type=_number("--jain-window"), default=60.0, metavar="S",
                   help="sliding-window length of the windowed Jain's index, seconds (default: %(default)s, as the VTC artifact)")
    c.add_argument("--per-client", action="store_true",
                   help="also print the per-client table (demand and service share, requests, TTFT P50/P99, longest "
                   "wait); the JSON always has it")


def loader_strategy(spec: str) -> str:
    """The trace loader's strategy for ``--client-strategy spec``: skewed ones load by family and
    are re-assigned afterwards. Validates ``spec`` (InputError naming ``--client-strategy``)."""
    from prefixsched.reference.scenarios import parse_client_strategy

    try:
        kind, _ = parse_client_strategy(spec)
    except InputError as e:
        raise InputError("--client-strategy", e.problem) from None
    return kind if kind in ("family", "round-robin", "field") else "family"


def apply(args: argparse.Namespace, inst: Any, source: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The instance to simulate and the ``source`` record (input description for the report)."""
    from prefixsched.reference import scenarios as sc
    from prefixsched.theory.profiles import DEFAULT_PROFILE, load_profile, with_profile

    from_trace = args.trace is not None
    strategy = args.client_strategy or ("family" if from_trace else "round-robin")
    instance_file = from_trace and Path(args.trace).suffix == ".json"
    kind = loader_strategy(strategy) and sc.parse_client_strategy(strategy)[0]
    if kind in ("zipf", "heavy") or (not from_trace and kind == "round-robin" and args.client_strategy):
        try:
            inst = sc.assign_clients(inst, strategy, 8 if args.clients is None else args.clients)
        except InputError as e:
            raise InputError("--client-strategy" if e.field == "client_strategy" else e.field, e.problem) from None
        source["client_strategy"] = strategy
    if args.misbehave is not None:
        pattern, num, client = sc.parse_misbehave(args.misbehave)
        inst = (sc.misbehave_s1(inst, client, int(num)) if pattern == "s1" else sc.misbehave_s2(inst, client, float(num)))
        source["misbehave"] = args.misbehave
    limits: dict[str, Any] = {}
    for opt, field in (("kv_capacity", "kv_capacity_tokens"), ("max_running", "max_running_requests"),
                       ("max_prefill_tokens", "max_prefill_tokens"), ("page_size", "page_size")):
        if getattr(args, opt) is not None:
            limits[field] = getattr(args, opt)
    if hasattr(args, "chunked_prefill_size"):
        limits["chunked_prefill_size"] = args.chunked_prefill_size
    spec = args.cost_model if args.cost_model is not None else (None if instance_file else DEFAULT_PROFILE)
    if spec is not None:
        prof = load_profile(spec)
        inst = with_profile(inst, prof, **limits)
        source["cost_profile"] = prof.name
    elif limits:
        from prefixsched.theory.profiles import CostProfile

        inst = with_profile(inst, CostProfile("instance", inst.cost_model, inst.limits), **limits)
    if args.load is not None:
        inst = sc.scale_to_load(inst, args.load, args.workers)
        source["load"] = args.load
    elif args.rate is not None:
        inst = sc.scale_to_rate(inst, args.rate)
        source["rate"] = args.rate
    elif args.time_scale is not None:
        inst = sc.rescale_arrivals(inst, args.time_scale)
        source["time_scale"] = args.time_scale
    return inst, source


def load_line(ol: dict[str, Any]) -> str:
    """One line: the offered load against the capacity (printed by every ``simulate`` run)."""
    w = ol["workers"]
    if ol["rho"] is None:
        return f"offered load: every request arrives at once ({ol['requests']} requests); no rate to compare"
    over = "  OVERLOADED: queues grow for the whole run, latencies measure the backlog drain" if ol["rho_unbounded_cache"] > 1 else (
        "  (over capacity without cache hits)" if ol["rho"] > 1 else "")
    return (
        f"offered load: {ol['rho']:.2f} x the capacity of {w} worker{'s' if w > 1 else ''} without cache hits "
        f"(prefill {ol['rho_prefill']:.2f} + decode {ol['rho_decode']:.2f}), {ol['rho_unbounded_cache']:.2f} with an "
        f"unbounded cache; {ol['prompt_tokens_per_s']:,.0f} prompt tok/s offered vs {ol['prefill_capacity_tokens_per_s']:,.0f} "
        f"prefill capacity, {ol['request_rate_per_s']:.3g} req/s{over}"
    )


def legend(window_s: float) -> str:
    """The legend of the issue-#9 columns."""
    return (
        f"Jain win mean/min: Jain's index of client-view service in sliding {window_s:g} s windows (clients with a "
        "request in the system), mean and minimum over the windows; gap/VTC bound: largest client-view service gap "
        "between two backlogged clients over VTC's 2*max(w_e*L_input, w_q*M), M = KV pool (batch token capacity); "
        "gap/DLPM bound: the actual-view gap over DLPM Thm 4.1's 2(U + Q_u) (DLPM rows)."
    )


def row_extras(summary: dict[str, Any]) -> list[Any]:
    """The issue-#9 columns of the results table: windowed Jain mean/min, gap / VTC bound, gap /
    DLPM bound (DLPM rows only)."""
    jw = summary.get("jain_windowed") or {}
    gb = summary.get("gap_bounds") or {}
    vtc = gb.get("vtc") or {}
    dlpm = gb.get("dlpm") or {}
    return [jw.get("mean"), jw.get("min"), vtc.get("ratio"), dlpm.get("ratio")]


def per_client_report(results: Sequence[dict[str, Any]], table) -> str:
    """The per-client tables (one per policy), formatted with the CLI's ``table``."""
    out = []
    for r in results:
        pc = r["summary"].get("per_client_table")
        if not pc:
            continue
        rows = [[c, v["demand_share"], v["service_share"], v["requests"], v["ttft_p50_s"], v["ttft_p99_s"], v["longest_wait_s"]]
                for c, v in sorted(pc.items(), key=lambda kv: _natural(kv[0]))]
        out.append(f"{r['policy']}:\n" + table(
            ["client", "demand share", "service share", "requests", "TTFT P50 s", "TTFT P99 s", "longest wait s"], rows))
    return "\n".join(out)


def _natural(name: str) -> tuple:
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))
