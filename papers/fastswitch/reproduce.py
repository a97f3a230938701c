"""Reproduce FastSwitch's comparison (Shen, Li, Gao, "FastSwitch: Optimizing Context Switching
Efficiency in Fairness-aware Large Language Model Serving", arXiv 2411.18424; spec
``shared/specs/vtc_fastswitch_preble.md`` §B) on prefixsched's ``sglang`` engine with preemption.

Usage (from the repository root)::

    python papers/fastswitch/reproduce.py            # full sweep (~2 minutes on one core)
    python papers/fastswitch/reproduce.py --quick    # reduced form (~15 s)

or, from Python, ``run(quick=True)`` (returns the result dict; ``main`` writes it).

Setup, after the paper's LLaMA-8B setting (§B.4, §B.6; [2nd] sources, so *inferred*):

- **Workload**: a ShareGPT-like multi-turn generator of ours (the paper samples multi-round
  ShareGPT; the trace is not available here). Conversations arrive as a Poisson process; each has
  ``1 + Geometric`` turns (mean 5.5, at most 12); a turn's user message is lognormal (median 80
  tokens, sigma 1.0, 4..1024) and its answer lognormal (median 220, sigma 0.8, 8..1024); turn ``k``'s
  prompt is the whole conversation so far (earlier messages and answers) plus the new message, so
  a conversation's turns share prefixes in the radix cache and in host memory; the next turn
  arrives ``0.04 s x answer length + Exp(5 s)`` after the previous one (open loop: arrivals are
  fixed in advance). Conversations are spread over 8 clients (for the VTC fairness source).
  Rate: 2.5 requests/s in the main sweep, the lowest rate of our load grid (2.0 .. 3.0) at which
  the 48k-token KV pool stays under pressure and preemption is sustained (at 2.0 nothing is ever
  preempted; the paper's 1 req/s loads its A10 more: its contexts are real ShareGPT ones); the
  load sweep runs the baseline and FastSwitch at every rate of the grid.
- **Server**: LLaMA-3-8B on one A10-class GPU (the cost model of ``papers/vtc``: prefill ~4.5k
  tokens/s, 25 ms decode steps), a 48,000-token KV pool (24 GB minus 16 GB of weights and
  activations, at 128 KiB per token), pages of 16 tokens (vLLM's block), no chunked prefill
  (vLLM 0.3.3), 60 GB of host swap space (480,000 tokens), PCIe 4.0 x16
  (:mod:`prefixsched.theory.switch_cost` profile ``pcie4-x16``).
- **Policy**: ``fastswitch`` with synthetic priorities (8 levels), re-drawn at update epochs of
  per-iteration probability ``p`` under the "Random" and "Markov" patterns
  (:class:`~prefixsched.reference.policies.preemptive.PrioritySource`); the paper uses p = 0.04 for
  LLaMA-8B; we sweep p.
- **Sweep**: ``p`` x granularity (``block``: vLLM's per-block copies; ``group``: FastSwitch's block
  groups; ``request``: one copy per layer) x synchronous/asynchronous copies x KV reuse on/off.
  *Baseline* = block, synchronous, no reuse (vLLM); *FastSwitch* = group, asynchronous, reuse.
- **Comparisons on the same workload**: the non-preemptive ``vtc`` and ``dlpm`` (no preemption),
  SGLang's own rule ``sglang-priority`` (drop mode, threshold 10 over 32 levels), ``fastswitch`` in
  drop mode (recompute instead of swap) and preemptive VTC (``vtc-preempt``, FastSwitch copies),
  whose traces are checked against :func:`prefixsched.theory.bounds.vtc_preemptive_bound`.

Every trace is replayed by :func:`prefixsched.theory.schedule.check_trace` (strict) before its
numbers are used; metrics come from :func:`~prefixsched.theory.metrics.latency_tails` and
:func:`~prefixsched.theory.metrics.switch_metrics` only.

Outputs (atomic, deterministic: same arguments, same bytes): ``<out>/fastswitch.json`` (every
row, the setup, and the ``claims`` computed from the rows) and ``<out>/fastswitch.png``.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np

from prefixsched._io import atomic_write, write_json
from prefixsched.reference.engine.preemption import PreemptionConfig
from prefixsched.reference.policies import create
from prefixsched.reference.simulator import simulate
from prefixsched.theory.bounds import check_vtc_preemptive_gap
from prefixsched.theory.cost import CostModel
from prefixsched.theory.metrics import latency_tails, switch_metrics, throughput
from prefixsched.theory.model import Instance, Limits, Request
from prefixsched.theory.schedule import check_trace
from prefixsched.theory.switch_cost import SwitchCostModel

REPO = Path(__file__).resolve().parents[2]
A10 = CostModel(prefill_base_s=0.01, prefill_per_token_s=2.2e-4, decode_base_s=0.025, decode_per_request_s=1e-4)
LIMITS = Limits(kv_capacity_tokens=48_000, max_prefill_tokens=8192, max_running_requests=256, page_size=16,
                chunked_prefill_size=None)
HOST_TOKENS = 480_000
LINK = SwitchCostModel.named("llama3-8b", "pcie4-x16", granularity="block")
CLIENTS = 8
BASELINE = ("block", True, False)  # granularity, sync, reuse: vLLM's swap
FASTSWITCH = ("group", False, True)


RATE = 2.5  # requests/s of the main sweep
LOAD_RATES = (2.0, 2.25, 2.5, 2.75, 3.0)


def multiturn_instance(n_conv: int, seed: int, rate: float = RATE) -> Instance:
    """The ShareGPT-like multi-turn workload (module docstring); ``rate`` is the request rate
    the conversation arrivals aim at (requests/s)."""
    rng = np.random.default_rng(seed)
    lam = rate / 5.5  # conversations per second
    t = 0.0
    nxt = 1
    raw = []
    for c in range(n_conv):
        t += float(rng.exponential(1.0 / lam))
        turns = min(12, int(rng.geometric(1.0 / 5.5)))
        ctx: list[int] = []
        ta = t
        for k in range(turns):
            u = int(np.clip(rng.lognormal(np.log(80), 1.0), 4, 1024))
            o = int(np.clip(rng.lognormal(np.log(220), 0.8), 8, 1024))
            ctx = ctx + list(range(nxt, nxt + u))
            nxt += u
            raw.append((round(ta, 6), f"v{c:04d}.t{k}", f"c{c % CLIENTS}", tuple(ctx), o))
            ctx = ctx + list(range(nxt, nxt + o))
            nxt += o
            ta += 0.04 * o + float(rng.exponential(5.0))
    raw.sort()
    reqs = tuple(Request(id=i, client=cl, arrival=a, prompt=p, output_len=o) for a, i, cl, p, o in raw)
    return Instance(reqs, A10, LIMITS)


def config(gran: str, sync: bool, reuse: bool, mode: str = "swap") -> PreemptionConfig:
    return PreemptionConfig(mode=mode, sync=sync, reuse=reuse, host_capacity_tokens=HOST_TOKENS,
                            switch=LINK.with_(granularity=gran))


def _row(inst: Instance, trace: Any, **labels: Any) -> dict[str, Any]:
    rep = check_trace(inst, trace)  # strict: raises if the trace breaks the model
    lt = latency_tails(trace)
    sm = switch_metrics(trace)
    outs = [e for e in (trace.switches or []) if e.kind == "out"]
    out_s = sum(e.t_end - e.t_start for e in outs)
    out_b = sum(e.bytes for e in outs)
    row: dict[str, Any] = {
        **labels,
        "checker_ok": rep.ok,
        "n_requests": len(trace.requests),
        "n_steps": trace.n_steps,
        "tokens_per_s": throughput(trace)["tokens_per_s"],
        **{k: lt[k] for k in ("ttft_p50", "ttft_p95", "ttft_p99", "ttft_p99_9", "tbt_p50", "tbt_p99", "tbt_p99_9")},
        **{k: sm[k] for k in ("preemptions", "swap_outs", "swap_ins", "recomputes_after_swap", "recomputed_tokens",
                              "gpu_stall_s", "gpu_stall_frac", "bytes_out", "bytes_in", "reuse_saved_bytes",
                              "swaps_avoided_by_reuse", "link_util_out", "link_util_in", "host_evicted_tokens")},
        "swap_out_s_per_gb": (out_s / (out_b / 1e9)) if out_b else None,
        "reuse_saved_frac": (sm["reuse_saved_bytes"] / (sm["bytes_out"] + sm["reuse_saved_bytes"]))
        if sm["bytes_out"] + sm["reuse_saved_bytes"] else None,
    }
    return row


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def run(quick: bool = False, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """The whole reproduction; returns the JSON-able result (rows, setup, claims)."""
    n_conv = 120 if quick else 200
    freqs = (0.04,) if quick else (0.02, 0.04, 0.08)
    patterns = ("random",) if quick else ("random", "markov")
    grans = ("block", "group") if quick else ("block", "group", "request")
    loads = (2.0, RATE) if quick else LOAD_RATES
    inst = multiturn_instance(n_conv, seed)
    rows: list[dict[str, Any]] = []
    total = len(patterns) * len(freqs) * len(grans) * 4 + 5 + 2 * len(loads)
    done = 0

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if progress:
            print(f"  [{done}/{total}] {label}", file=sys.stderr, flush=True)

    for pat in patterns:
        for p in freqs:
            for g in grans:
                for sync in (True, False):
                    for reuse in (False, True):
                        pol = create("fastswitch", source=pat, update_prob=p, seed=seed)
                        tr = simulate(inst, pol, engine="sglang", preemption=config(g, sync, reuse))
                        rows.append(_row(inst, tr, kind="sweep", policy="fastswitch", pattern=pat, update_prob=p,
                                         granularity=g, sync=sync, reuse=reuse, mode="swap"))
                        tick(f"fastswitch {pat} p={p} {g} {'sync' if sync else 'async'} reuse={reuse}")
    p0 = 0.04
    others = [
        ("vtc", create("vtc"), None, "none"),
        ("dlpm", create("dlpm"), None, "none"),
        ("sglang-priority", create("sglang-priority", source="random", update_prob=p0, seed=seed), config("block", True, False, "drop"), "drop"),
        ("fastswitch", create("fastswitch", source="random", update_prob=p0, seed=seed), config("block", True, False, "drop"), "drop"),
        ("vtc-preempt", create("vtc-preempt"), config(*FASTSWITCH), "swap"),
    ]
    bound = None
    for name, pol, cfg, mode in others:
        tr = simulate(inst, pol, engine="sglang", preemption=cfg)
        row = _row(inst, tr, kind="compare", policy=name, pattern="random" if "priority" in name or name == "fastswitch"
                   else None, update_prob=p0 if name in ("fastswitch", "sglang-priority") else None,
                   granularity=None if cfg is None else cfg.switch.granularity, sync=None if cfg is None else cfg.sync,
                   reuse=None if cfg is None else cfg.reuse, mode=mode)
        if name == "vtc-preempt":
            b = check_vtc_preemptive_gap(inst, tr)
            bound = {"worst": b.worst, "bound": b.bound, "holds": b.holds, "pairs": b.checked,
                     "params": {k: v for k, v in b.params.items()}}
            row["bound"] = bound
        rows.append(row)
        tick(f"{name} ({mode})")
    for rate in loads:
        li = multiturn_instance(n_conv, seed, rate)
        for name, (g, sync, reuse) in (("baseline", BASELINE), ("fastswitch", FASTSWITCH)):
            pol = create("fastswitch", source="random", update_prob=p0, seed=seed)
            tr = simulate(li, pol, engine="sglang", preemption=config(g, sync, reuse))
            rows.append(_row(li, tr, kind="load", policy="fastswitch", pattern="random", update_prob=p0,
                             granularity=g, sync=sync, reuse=reuse, mode="swap", rate=rate, system=name))
            tick(f"load {rate} req/s {name}")
    claims = _claims(rows, patterns, freqs, grans, bound)
    return {
        "paper": "Shen, Li, Gao, FastSwitch, arXiv 2411.18424 (ATC'25 submission)",
        "quick": quick,
        "seed": seed,
        "setup": {
            "conversations": n_conv, "requests": len(inst.requests), "clients": CLIENTS, "rate_req_s": RATE,
            "load_rates": list(loads),
            "last_arrival_s": inst.requests[-1].arrival,
            "mean_prompt_tokens": float(np.mean([r.prompt_len for r in inst.requests])),
            "mean_output_tokens": float(np.mean([r.output_len for r in inst.requests])),
            "limits": {k: getattr(LIMITS, k) for k in LIMITS.__dataclass_fields__},
            "cost_model": {k: getattr(A10, k) for k in A10.__dataclass_fields__},
            "host_capacity_tokens": HOST_TOKENS, "switch": LINK.to_dict(),
            "update_probs": list(freqs), "patterns": list(patterns), "granularities": list(grans),
            "baseline": dict(zip(("granularity", "sync", "reuse"), BASELINE)),
            "fastswitch": dict(zip(("granularity", "sync", "reuse"), FASTSWITCH)),
        },
        "rows": rows,
        "claims": claims,
    }


def _find(rows: list[dict[str, Any]], **kv: Any) -> dict[str, Any]:
    for r in rows:
        if r["kind"] == "sweep" and all(r.get(k) == v for k, v in kv.items()):
            return r
    raise KeyError(kv)


def _claims(rows: list[dict[str, Any]], patterns: Any, freqs: Any, grans: Any, bound: Any) -> dict[str, Any]:
    metrics = ("ttft_p95", "ttft_p99", "ttft_p99_9", "tbt_p99_9")
    head: list[float] = []
    per: dict[str, dict[str, float | None]] = {}
    for pat in patterns:
        for p in freqs:
            b = _find(rows, pattern=pat, update_prob=p, granularity=BASELINE[0], sync=BASELINE[1], reuse=BASELINE[2])
            f = _find(rows, pattern=pat, update_prob=p, granularity=FASTSWITCH[0], sync=FASTSWITCH[1], reuse=FASTSWITCH[2])
            rs = {m: _ratio(b[m], f[m]) for m in metrics}
            per[f"{pat}@{p}"] = rs
            head += [v for v in rs.values() if v is not None]
    # block groups vs blocks: copy time per GB swapped out, same run settings otherwise
    grp = []
    for pat in patterns:
        for p in freqs:
            for sync in (True, False):
                for reuse in (False, True):
                    b = _find(rows, pattern=pat, update_prob=p, granularity="block", sync=sync, reuse=reuse)
                    g = _find(rows, pattern=pat, update_prob=p, granularity="group", sync=sync, reuse=reuse)
                    r = _ratio(b["swap_out_s_per_gb"], g["swap_out_s_per_gb"])
                    if r is not None:
                        grp.append(r)
    saved = [r["reuse_saved_frac"] for r in rows if r["kind"] == "sweep" and r["reuse"] and r["reuse_saved_frac"] is not None]
    asy = []
    for pat in patterns:
        for p in freqs:
            s = _find(rows, pattern=pat, update_prob=p, granularity="group", sync=True, reuse=True)
            a = _find(rows, pattern=pat, update_prob=p, granularity="group", sync=False, reuse=True)
            r = _ratio(s["tbt_p99"], a["tbt_p99"])
            if r is not None:
                asy.append(r)
    load: dict[str, dict[str, float | None]] = {}
    for r in rows:
        if r["kind"] == "load" and r["system"] == "baseline":
            f = next(x for x in rows if x["kind"] == "load" and x["rate"] == r["rate"] and x["system"] == "fastswitch")
            load[str(r["rate"])] = {m: _ratio(r[m], f[m]) for m in metrics}
    return {
        "headline_ratios": per,
        "headline_ratios_by_load": load,
        "headline_min": min(head) if head else None,
        "headline_max": max(head) if head else None,
        "headline_direction_holds": bool(head) and min(head) > 1.0,
        "paper_headline_range": [1.4, 11.2],
        "group_vs_block_swap_time_ratio": [min(grp), max(grp)] if grp else None,
        "paper_group_gain_up_to": 3.11,
        "reuse_saved_fraction": [min(saved), max(saved)] if saved else None,
        "paper_reuse_saved_fraction": 0.53,
        "async_tbt_p99_ratio": [min(asy), max(asy)] if asy else None,
        "paper_async_tbt_p99_gain": 1.2,
        "vtc_preempt_bound": bound,
    }


def _plot(res: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["rows"] if r["kind"] == "sweep" and r["pattern"] == "random"]
    freqs = res["setup"]["update_probs"]
    lines = [("block", True, False, "block, sync (vLLM)"), ("block", True, True, "block, sync, reuse"),
             ("group", True, False, "group, sync"), ("group", False, False, "group, async"),
             ("group", False, True, "group, async, reuse (FastSwitch)"), ("request", False, True, "request, async, reuse")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for j, (g, sync, reuse, label) in enumerate(lines):
        pts = [next((r for r in rows if r["update_prob"] == p and r["granularity"] == g and r["sync"] == sync
                     and r["reuse"] == reuse), None) for p in freqs]
        if any(x is None for x in pts):
            continue
        for ax, key in zip(axes, ("ttft_p99", "tbt_p99_9")):
            ax.plot(freqs, [x[key] for x in pts], marker="o", color=f"C{j}", label=label)
    for ax, title in zip(axes, ("P99 TTFT (s), Random priorities", "P99.9 TBT (s), Random priorities")):
        ax.set_xlabel("priority update probability per iteration")
        ax.set_title(title, fontsize=9)
        ax.set_yscale("log")
    axes[0].legend(fontsize=6)
    load = [r for r in res["rows"] if r["kind"] == "load"]
    for j, name in enumerate(("baseline", "fastswitch")):
        pts = sorted((r["rate"], r["ttft_p99"], r["tbt_p99_9"]) for r in load if r["system"] == name)
        if pts:
            axes[2].plot([x[0] for x in pts], [x[1] for x in pts], marker="o", color=f"C{3 * j}", label=f"{name} P99 TTFT")
            axes[2].plot([x[0] for x in pts], [x[2] for x in pts], marker="s", ls="--", color=f"C{3 * j}",
                         label=f"{name} P99.9 TBT")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("request rate (req/s), p = 0.04")
    axes[2].set_title("load sweep: vLLM-style baseline vs FastSwitch (s)", fontsize=9)
    axes[2].legend(fontsize=6)
    gb = [(r["granularity"], r["sync"], r["reuse"], max((r["bytes_out"] or 0) / 1e9, 1e-3)) for r in rows
          if r["update_prob"] == 0.04]
    labels = [f"{g}{' sync' if s else ' async'}{' reuse' if u else ''}" for g, s, u, _ in gb]
    axes[3].bar(range(len(gb)), [x[3] for x in gb], color=["C3" if x[2] else "C0" for x in gb])
    axes[3].set_yscale("log")
    axes[3].set_xticks(range(len(gb)))
    axes[3].set_xticklabels(labels, fontsize=6, rotation=90)
    axes[3].set_title("GB swapped out at p = 0.04 (red: with reuse)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    with atomic_write(out / "fastswitch.png", "wb") as fh:
        fh.write(buf.getvalue())


def _print(res: dict[str, Any]) -> None:
    head = (f"{'policy / load':<16}{'pat':<7}{'p':>5} {'gran':<8}{'copy':<6}{'reuse':<6}{'P95 TTFT':>9}{'P99 TTFT':>9}"
            f"{'P99.9 TBT':>10}{'preempt':>8}{'stall %':>8}{'GB out':>8}{'saved':>6}")
    print(f"FastSwitch sweep: {res['setup']['requests']} requests ({res['setup']['conversations']} conversations)")
    print(head)
    print("-" * len(head))
    for r in res["rows"]:
        copy = "-" if r["sync"] is None else ("sync" if r["sync"] else "async")
        name = r["policy"] if r["kind"] != "load" else f"{r['system'][:5]}@{r['rate']}/s"
        print(f"{name:<16}{str(r['pattern'] or '-'):<7}{r['update_prob'] or 0:>5.2f} {str(r['granularity'] or '-'):<8}"
              f"{copy:<6}{str(r['reuse'] if r['reuse'] is not None else '-'):<6}{r['ttft_p95']:>9.2f}{r['ttft_p99']:>9.2f}"
              f"{r['tbt_p99_9']:>10.3f}{r['preemptions']:>8}{100 * (r['gpu_stall_frac'] or 0):>8.1f}"
              f"{(r['bytes_out'] or 0) / 1e9:>8.1f}{(r['reuse_saved_frac'] or 0):>6.2f}")
    print("claims:", res["claims"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced form (60 conversations, p=0.04, block/group; default: off)")
    ap.add_argument("--out", default=str(REPO / "papers" / "fastswitch" / "results"),
                    help="output directory (default: papers/fastswitch/results)")
    ap.add_argument("--seed", type=int, default=0, help="workload and priority seed (default: 0)")
    # `prefixsched reproduce` passes the sweep backend options to every reproduction. Decision:
    # this one runs its simulations in this process, uncached (its preemption configurations are
    # not sweep-cell parameters), so only --no-progress is honoured; the others are accepted.
    from prefixsched.sweep.cli import add_backend_arguments

    add_backend_arguments(ap, cache_default="unused: this reproduction runs in-process, uncached")
    args = ap.parse_args(argv)
    res = run(args.quick, args.seed, progress=not args.no_progress)
    _print(res)
    out = Path(args.out)
    write_json(out / "fastswitch.json", res)
    _plot(res, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
