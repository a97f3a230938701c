"""The ``prefixsched live`` subcommand (registered by :func:`add_parser` from ``prefixsched/cli.py``)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from prefixsched.errors import InputError

__all__ = ["add_parser", "cmd_live"]


def _positive(name: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: must be a number, got {text!r}") from None
        if not (v > 0) or math.isinf(v):
            raise argparse.ArgumentTypeError(f"{name}: must be a finite number > 0, got {text!r}")
        return v

    return parse


def _pos_int(name: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: must be an integer, got {text!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name}: must be >= 1, got {v}")
        return v

    return parse


def add_parser(sub: Any) -> None:
    s = sub.add_parser(
        "live",
        help="drive a real SGLang server with a workload and compare it with the bounds and the simulator",
        description=(
            "Launch `python -m sglang.launch_server` with the prefixsched plugin and a policy (an 8B-shaped Llama with "
            "random weights by default) or attach to a running server (--url); send a workload's or trace's requests "
            "at their arrival times to /generate (streamed, one routing key per client); record TTFT, TPOT/ITL, "
            "end-to-end latency and cached tokens per request; fit the cost model by least squares; compare the "
            "measured service gap with theory/bounds.py and the TTFT/throughput with a simulator run."
        ),
    )
    src = s.add_mutually_exclusive_group()
    src.add_argument("--trace", metavar="FILE", help="Mooncake-format JSONL trace, or an instance .json (default: the --workload)")
    src.add_argument("--workload", default="shared-prefix", metavar="NAME", help="synthetic workload (default: %(default)s)")
    s.add_argument(
        "--workload-param", action="append", default=[], metavar="K=V",
        help="a workload parameter (JSON value), repeatable, e.g. --workload-param rate=8 (default: none)",
    )
    s.add_argument("--clients", type=_pos_int("--clients"), default=4, help="number of clients (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="workload seed (default: %(default)s)")
    s.add_argument("--max-requests", type=_pos_int("--max-requests"), default=None, metavar="M", help="first M requests only (default: all)")
    s.add_argument("--max-output-tokens", type=_pos_int("--max-output-tokens"), default=None, metavar="N", help="cap every output length at N (default: no cap)")
    s.add_argument("--max-prompt-tokens", type=_pos_int("--max-prompt-tokens"), default=None, metavar="N", help="drop requests with longer prompts (default: keep all)")
    s.add_argument("--time-scale", type=_positive("--time-scale"), default=1.0, help="multiply arrival times by S (S < 1 compresses a trace; default: %(default)s)")
    s.add_argument(
        "--policy", default=None, metavar="SPEC",
        help="prefixsched policy for the plugin (dlpm:8000, vtc, k-lpm:2, lpm), or sglang:lpm / sglang:fcfs for "
        "SGLang's own; with --url: the policy the server runs (default: sglang:lpm when launching, none when attaching)",
    )
    s.add_argument("--url", default=None, help="attach to this server instead of launching one (default: launch)")
    s.add_argument(
        "--policy-file", default=None, metavar="FILE",
        help="the attached server's PREFIXSCHED_POLICY_FILE: --policy is written into it first, so one server runs "
        "several policies in turn (default: none)",
    )
    s.add_argument("--flush-cache", action="store_true", help="empty the server's prefix cache first (POST /flush_cache; default: off)")
    s.add_argument("--model", default="dummy-8b", help="model path, or dummy-8b: Llama-3.1-8B's shape with random weights (default: %(default)s)")
    s.add_argument("--port", type=int, default=0, help="port of the launched server (default: %(default)s = a free one)")
    s.add_argument("--server-arg", action="append", default=[], metavar="ARG", help="extra launch_server argument, repeatable (e.g. --server-arg=--mem-fraction-static=0.85) (default: none)")
    s.add_argument("--launch-timeout", type=_positive("--launch-timeout"), default=900.0, metavar="S", help="seconds to wait for the launched server (default: %(default)s)")
    s.add_argument("--vocab-size", type=_pos_int("--vocab-size"), default=None, help="map token ids into this vocabulary (default: the model's, 128256 for dummy-8b)")
    s.add_argument("--fit-attention", action="store_true", help="also fit the k-LPM attention term c_attn (default: off, c_attn = 0)")
    s.add_argument("--name", default="live", help="run name: prefix of the state log, server log and profile name (default: %(default)s)")
    s.add_argument("--out-dir", default=".", help="directory for the server log, state log and dummy model (default: %(default)s)")
    s.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT ('-': stdout) (default: none)")
    s.add_argument("--plot", metavar="OUT.png", help="per-client service curves and TTFT CDFs, measured vs simulated (default: none)")
    s.add_argument("--profile", metavar="OUT.json", help="write the fitted cost profile JSON (default: none)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (default: a bar on a terminal)")
    # output paths are checked before any work by the CLI's shared check (prefixsched.cli._check_outputs)
    s.set_defaults(_outputs=[("json", "--json", True), ("plot", "--plot", False), ("profile", "--profile", False)])
    s.set_defaults(func=cmd_live)


def _instance(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from prefixsched.reference import workloads
    from prefixsched.theory.model import Instance

    if args.trace is not None:
        from prefixsched.instance_io import load_any

        path = Path(args.trace)
        if not path.exists():
            raise InputError("--trace", f"no such file: {args.trace}")
        inst = load_any(path, clients=args.clients, strategy="family", max_requests=args.max_requests)
    else:
        params: dict[str, Any] = {}
        for kv in args.workload_param:
            k, sep, v = kv.partition("=")
            if not sep or not k:
                raise InputError("--workload-param", f"must be K=V, got {kv!r}")
            try:
                params[k] = json.loads(v)
            except json.JSONDecodeError:
                params[k] = v
        inst = workloads.make_workload(args.workload, clients=args.clients, seed=args.seed, n_requests=args.max_requests, **params)
    reqs = list(inst.requests)
    if args.max_prompt_tokens is not None:
        reqs = [r for r in reqs if r.prompt_len <= args.max_prompt_tokens]
    if args.max_output_tokens is not None:
        reqs = [replace(r, output_len=min(r.output_len, args.max_output_tokens)) for r in reqs]
    if not reqs:
        raise InputError("--max-prompt-tokens", "no request left")
    return Instance(tuple(reqs), cost_model=inst.cost_model, limits=inst.limits, weights=inst.weights)


def cmd_live(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from prefixsched.integration.live.client import LiveRunError
    from prefixsched.integration.live.harness import LiveConfig, run_live, write_outputs

    inst = _instance(args)
    policy = args.policy
    if policy is None and args.url is None:
        policy = "sglang:lpm"
    cfg = LiveConfig(
        policy=policy,
        url=args.url,
        model=args.model,
        port=args.port,
        server_args=list(args.server_arg),
        time_scale=args.time_scale,
        vocab_size=args.vocab_size,
        launch_timeout_s=args.launch_timeout,
        out_dir=args.out_dir,
        name=args.name,
        fit_attention=args.fit_attention,
        policy_file=args.policy_file,
        flush_cache=args.flush_cache,
    )
    bar = tqdm(total=len(inst.requests), desc=f"live {policy or ''}".strip(), unit="req", file=sys.stderr, disable=args.no_progress, leave=False)
    state = {"n": 0}

    def progress(done: int, total: int) -> None:
        if done > state["n"]:
            bar.update(done - state["n"])
            state["n"] = done

    try:
        result = run_live(inst, cfg, progress=progress)
    except LiveRunError as e:
        bar.close()
        partial = getattr(e, "result", None)
        if partial is not None:
            write_outputs(partial, json_path=args.json, plot_path=None, profile_path=None)
        raise
    finally:
        bar.close()
    write_outputs(result, json_path=args.json, plot_path=args.plot, profile_path=args.profile)
    run = result["run"]
    s = run["summary"]
    lines = [
        f"policy {policy}: {s['requests']['ok']}/{len(inst.requests)} finished, TTFT p50 {s['ttft_s']['p50']}, "
        f"p99 {s['ttft_s']['p99']} s, output {s['output_throughput_tok_s']} tok/s, hit rate {s['hit_rate']}, "
        f"malformed chunks {s['malformed_chunks']}",
    ]
    svc = result.get("service")
    if svc:
        b = svc.get("bound")
        lines.append(
            f"max service gap {svc['measured_gap']['value']:.0f} ({svc['view']} view)"
            + (f" vs bound {b['value']:.0f}" if b else " (no bound for this policy)")
        )
    sim = result.get("simulation")
    if sim and sim["comparison"].get("requests"):
        c = sim["comparison"]
        lines.append(
            f"simulated ({sim['engine']} engine, fitted cost model): TTFT p50 error {c['ttft_p50_s']['error']:+.1%}, "
            f"p99 {c['ttft_p99_s']['error']:+.1%}, throughput {c['output_throughput_tok_s']['error']:+.1%}"
        )
    print("\n".join(lines), file=sys.stderr)
    if result["partial"]:
        errs = run.get("errors") or ["incomplete"]
        raise LiveRunError(
            f"the live run is partial ({s['requests']['ok']} of {len(inst.requests)} finished; results kept"
            f"{' in ' + args.json if args.json else ''}): {errs[0]}"
        )
    return 0
