"""The live run end to end: start or attach to a server, drive a workload, fit, compare, write.

:func:`run_live` returns (and :func:`write_outputs` writes atomically) one JSON object::

    {"config": {...}, "run": LiveRun.to_dict(), "profile": cost profile | None,
     "service": {"view", "curve": per-client cumulative service over time (cost units, at most
                 ~2000 points), "measured_gap", "bound", "within_bound"},
     "simulation": {"policy", "engine", "comparison": latency_comparison} | None,
     "partial": bool}

A run that did not complete is still written, with ``partial: true`` and the errors, and then
reported as :class:`~.client.LiveRunError` (the CLI prints one ``prefixsched: error:`` line and
exits with status 1).
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from prefixsched.errors import InputError
from prefixsched.integration.live import compare
from prefixsched.integration.live.client import LiveRunError, run_requests
from prefixsched.integration.live.fit import FitResult, cost_profile, fit_cost_model
from prefixsched.integration.live.launch import LaunchedServer, launch_command, simulator_spec, write_dummy_model
from prefixsched.integration.live.records import LiveRun
from prefixsched.theory.model import Instance, Limits

__all__ = ["LiveConfig", "run_live", "write_outputs", "limits_from_server", "plot_live"]


@dataclass
class LiveConfig:
    """What to run. ``url`` attaches to a running server; without it a server is launched
    (``model``: a path, or ``"dummy-8b"``; ``server_args``: extra ``launch_server`` flags).
    ``policy``: a prefixsched spec, or ``sglang:lpm`` / ``sglang:fcfs`` for SGLang's own policy
    (with ``url``: the policy the server runs, used for the bound and the simulation).
    ``policy_file``: the server's ``PREFIXSCHED_POLICY_FILE``; the run writes ``policy`` into it
    first (``off`` for ``sglang:*``), so one server runs several policies in turn; ``flush_cache``
    empties its prefix cache before the run (so the policies start equal)."""

    policy: str | None = None
    url: str | None = None
    model: str = "dummy-8b"
    port: int = 0
    server_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    time_scale: float = 1.0
    vocab_size: int | None = None
    launch_timeout_s: float = 900.0
    read_timeout_s: float = 300.0
    out_dir: str = "."
    name: str = "live"
    fit_attention: bool = False
    limits: Limits | None = None
    policy_file: str | None = None
    flush_cache: bool = False

    def validate(self) -> None:
        if not (self.time_scale > 0) or math.isinf(self.time_scale):
            raise InputError("--time-scale", f"must be a finite number > 0, got {self.time_scale!r}")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise InputError("--url", f"must start with http:// or https://, got {self.url!r}")
        if self.policy is not None and not self.policy.startswith("sglang:"):
            from prefixsched.reference.policies import create

            create(self.policy)  # unknown policy: InputError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def limits_from_server(info: dict[str, Any], default: Limits) -> Limits:
    """The server's limits from its ``/get_server_info`` (SGLang's server args), falling back
    to ``default`` per field."""

    def pick(*names: str) -> Any:
        for n in names:
            v = info.get(n)
            if v is None and isinstance(info.get("internal_states"), list) and info["internal_states"]:
                v = info["internal_states"][0].get(n)
            if v is not None:
                return v
        return None

    kv = pick("max_total_num_tokens")
    mr = pick("max_running_requests")
    mp = pick("max_prefill_tokens")
    ps = pick("page_size")
    cps = pick("chunked_prefill_size")
    return Limits(
        kv_capacity_tokens=int(kv) if isinstance(kv, int) and kv > 0 else default.kv_capacity_tokens,
        max_prefill_tokens=int(mp) if isinstance(mp, int) and mp > 0 else default.max_prefill_tokens,
        max_running_requests=int(mr) if isinstance(mr, int) and mr > 0 else default.max_running_requests,
        page_size=int(ps) if isinstance(ps, int) and ps > 0 else default.page_size,
        chunked_prefill_size=(int(cps) if isinstance(cps, int) and cps > 0 else None)
        if cps is not None
        else default.chunked_prefill_size,
    )


def _analyse(instance: Instance, run: LiveRun, cfg: LiveConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"profile": None, "service": None, "simulation": None}
    if not any(r.chunk_times for r in run.results):
        return out
    try:
        fit: FitResult | None = fit_cost_model(run, fit_attention=cfg.fit_attention)
    except InputError:
        fit = None
    limits = limits_from_server(run.server_info, cfg.limits or instance.limits)
    if fit is not None:
        out["profile"] = cost_profile(
            f"{cfg.name}-fitted", fit, limits, source=f"live run against {run.url} (policy {cfg.policy or '?'})"
        )
        view_bound = compare.bound_for(simulator_spec(cfg.policy), replace(instance, limits=limits))
        view = view_bound["view"] if view_bound else "actual"
        times, clients, cum = compare.measured_service(run, fit.passes, instance.weights, view)
        gap = compare.max_service_gap_live(times, clients, cum, compare.backlog_intervals_live(run, fit.passes))
        step = max(1, len(times) // 2000)  # at most ~2000 points in the JSON; the plot uses all
        keep = list(range(0, len(times), step)) + ([len(times) - 1] if len(times) and (len(times) - 1) % step else [])
        out["service"] = {
            "view": view,
            "curve": {
                "clients": list(clients),
                "times_s": [float(times[i]) for i in keep],
                "cumulative": [[float(x) for x in cum[i]] for i in keep],
            },
            "measured_gap": gap,
            "bound": view_bound,
            "within_bound": None if view_bound is None else bool(gap["value"] <= view_bound["value"]),
            "_curves": (times, clients, cum),
        }
        spec = simulator_spec(cfg.policy)
        if spec is not None:
            sent = {r.id for r in run.results if r.sent is not None}
            reqs = tuple(r for r in instance.requests if r.id in sent)
            if reqs:
                need = max(r.prompt_len + r.output_len for r in reqs)
                lim = limits if limits.kv_capacity_tokens >= need else replace(limits, kv_capacity_tokens=need)
                sub = Instance(reqs, cost_model=fit.cost_model, limits=lim, weights=instance.weights)
                trace, engine = compare.simulate_like(sub, spec, fit.cost_model, time_scale=cfg.time_scale, limits=lim)
                out["simulation"] = {
                    "policy": spec,
                    "engine": engine,
                    "comparison": compare.latency_comparison(run, trace),
                    "_trace": trace,
                }
    return out


def run_live(
    instance: Instance, cfg: LiveConfig, *, progress: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Run ``instance`` live (module docstring). Returns the result object (with private
    ``_curves``/``_trace`` entries for the plots; :func:`write_outputs` drops them).

    Raises
    ------
    InputError
        For a bad configuration (before anything runs).
    LiveRunError
        If the server cannot be started or reached; ``e.run`` / ``e.result`` hold what was
        gathered (the caller writes it). A run that completed partially is returned with
        ``partial: true`` (no exception: the caller decides).
    """
    cfg.validate()
    launched: LaunchedServer | None = None
    url = cfg.url
    vocab = cfg.vocab_size
    out_dir = Path(cfg.out_dir)
    try:
        if url is None:
            port = cfg.port or _free_port()
            model = cfg.model
            if model == "dummy-8b":
                model = str(write_dummy_model(out_dir / "dummy-llama-8b"))
                dummy = True
                vocab = vocab or 128256
            else:  # a user path: random weights only if it holds none
                p = Path(model)
                has_weights = p.is_dir() and (any(p.glob("*.safetensors")) or any(p.glob("*.bin")))
                dummy = not has_weights and "--load-format" not in cfg.server_args
                if vocab is None and (p / "config.json").is_file():
                    import json

                    v = json.loads((p / "config.json").read_text(encoding="utf-8")).get("vocab_size")
                    vocab = int(v) if isinstance(v, int) else None
            env = dict(os.environ, **cfg.env)
            env.pop("PREFIXSCHED_POLICY", None)
            if cfg.policy is not None and not cfg.policy.startswith("sglang:"):
                env["PREFIXSCHED_POLICY"] = cfg.policy
                env["PREFIXSCHED_STATE_LOG"] = str((out_dir / f"{cfg.name}.state.jsonl").resolve())
            cmd = launch_command(model, port=port, policy=cfg.policy, dummy=dummy, extra_args=cfg.server_args)
            launched = LaunchedServer(cmd, env=env, log_path=out_dir / f"{cfg.name}.server.log", port=port)
            launched.__enter__()
            url = launched.wait_ready(cfg.launch_timeout_s)
        if cfg.policy_file is not None:
            _set_policy_file(cfg.policy_file, cfg.policy)
        try:
            run = run_requests(
                url,
                instance.requests,
                time_scale=cfg.time_scale,
                vocab_size=vocab,
                read_timeout_s=cfg.read_timeout_s,
                progress=progress,
                policy=cfg.policy,
                flush_cache=cfg.flush_cache,
            )
        except LiveRunError as e:
            e.result = _result(instance, cfg, e.run, {"profile": None, "service": None, "simulation": None})  # type: ignore[attr-defined]
            raise
    finally:
        if launched is not None:
            launched.stop()
    return _result(instance, cfg, run, _analyse(instance, run, cfg))


def _set_policy_file(path: str, policy: str | None) -> None:
    """Write the policy the server's plugin should switch to (``off`` for SGLang's own), then
    give the scheduler a moment (it re-reads the file on its next arrival or pass)."""
    import time

    from prefixsched._io import atomic_write

    text = "off" if policy is None or policy.startswith("sglang:") else policy
    with atomic_write(path) as fh:
        fh.write(text + "\n")
    time.sleep(0.2)


def _result(instance: Instance, cfg: LiveConfig, run: LiveRun | None, analysis: dict[str, Any]) -> dict[str, Any]:
    conf = {k: v for k, v in asdict(cfg).items() if k not in ("env", "limits")}
    conf["limits"] = None if cfg.limits is None else asdict(cfg.limits)
    conf["requests"] = len(instance.requests)
    conf["clients"] = list(instance.clients)
    return {
        "config": conf,
        "run": None if run is None else run.to_dict(),
        "partial": True if run is None else run.partial,
        **analysis,
    }


def _public(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _public(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_public(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_outputs(result: dict[str, Any], *, json_path: str | None, plot_path: str | None, profile_path: str | None) -> None:
    """Write the JSON, the cost profile and the plot (each atomically; None: skip)."""
    from prefixsched._io import atomic_write, write_json

    if json_path is not None:
        write_json(json_path, _public(result))
    if profile_path is not None and result.get("profile") is not None:
        write_json(profile_path, _public(result["profile"]))
    if plot_path is not None and (result.get("service") or result.get("run")):
        fig = plot_live(result)
        with atomic_write(plot_path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=110)


def plot_live(result: dict[str, Any]) -> Any:
    """Per-client cumulative service (measured, solid; simulated, dashed) and the TTFT CDF
    (measured vs simulated). Returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    svc = result.get("service") or {}
    sim = result.get("simulation") or {}
    ax = axes[0]
    cmap = plt.get_cmap("tab10")
    curves = svc.get("_curves")
    policy = (result.get("config") or {}).get("policy")
    if curves is not None:
        times, clients, cum = curves
        for j, c in enumerate(clients):
            ax.plot(times, cum[:, j], color=cmap(j % 10), lw=1.3, label=f"{c} measured")
        trace = sim.get("_trace")
        if trace is not None:
            from prefixsched.theory.metrics import service_timeline

            t2, cl2, cum2 = service_timeline(trace, None, view=svc.get("view", "actual"))
            for j, c in enumerate(cl2):
                k = list(clients).index(c) if c in clients else j
                ax.plot(t2, cum2[:, j], color=cmap(k % 10), lw=1.0, ls="--", label=f"{c} simulated")
    ax.set_title(f"{policy}: cumulative service per client ({svc.get('view', 'actual')} view)")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("W = w_e*n_e + w_q*output (cost units)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    reqs = ((result.get("run") or {}).get("requests")) or []
    m = np.sort([r["ttft"] for r in reqs if r.get("ttft") is not None])
    if m.size:
        ax.step(np.maximum(m, 1e-4), np.arange(1, m.size + 1) / m.size, where="post", label="measured", lw=1.4)
    trace = sim.get("_trace")
    if trace is not None:
        s = np.sort([r.first_token - r.arrival for r in trace.requests])
        ax.step(np.maximum(s, 1e-4), np.arange(1, s.size + 1) / s.size, where="post", ls="--", label=f"simulated ({sim.get('engine')})")
    ax.set_xscale("log")
    ax.set_title("TTFT CDF")
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
