"""One sweep cell: its parameters, how it is validated, and how it runs.

A cell is a dict. ``kind = "simulate"`` (default) runs one simulation, on one worker or a cluster;
``kind = "solve"`` runs one exact solve. :func:`execute` returns a JSON-able result dict; it is
deterministic (same cell, same code, same bytes), reads no wall clock into the result and draws
no unseeded randomness, so a cell gives the same result in any process, on any machine.

Simulate cells
--------------
Input (exactly one of):

- ``workload`` (name in :data:`prefixsched.reference.workloads.WORKLOADS`) with ``clients``
  (default 8), ``seed`` (default 0), ``n_requests`` (default: the workload's window) and
  ``workload_params`` (a table of the workload's own parameters, including ``block_size``);
- ``trace`` (a Mooncake ``.jsonl`` or an instance ``.json`` path) with ``clients`` (default 8),
  ``client_strategy`` (default ``family``) and ``max_requests``. The file's SHA-256 is part of the
  cache key (the path alone is not).

Server and time: ``profile`` (a cost profile's name or JSON file,
:func:`~prefixsched.theory.profiles.load_profile`: its cost model, and its limits as the base of
``limits``; default: ``Limits()`` as the base and the loader's default cost model), ``limits``
and ``cost_model`` (tables of :class:`~prefixsched.theory.model.Limits` /
:class:`~prefixsched.theory.cost.CostModel` fields; a workload's ``page_size`` defaults to its
``block_size``), ``load`` (> 0, default 1: every
arrival time is divided by it, so ``load = 2`` offers the same requests twice as fast).

Scheduling: ``policy`` (spec, default ``dlpm``; ``policy_params`` table, or the shorthands
``quantum`` and ``k``), ``workers`` (default 1), ``dispatch`` (spec; ``dispatch_params`` table or
the shorthands ``q_w``, ``threshold``), ``engine`` (forwarded to the simulator only when set),
``seed`` (also passed to the policy and the simulator). With ``workers = 1`` and no ``dispatch``
the cell runs :func:`~prefixsched.reference.simulator.simulate` and
:func:`~prefixsched.theory.metrics.summarize`; otherwise
:func:`~prefixsched.reference.cluster.simulate_cluster` (dispatcher default ``d2lpm``) and
:func:`~prefixsched.theory.metrics.summarize_cluster`.

Checks and extras: ``check`` (default true: every worker's trace is replayed by
:func:`~prefixsched.theory.schedule.check_trace`, which raises on a violation, failing the
cell); ``probes`` (a list of :data:`PROBES` names) with ``probe_params`` (a table per probe).
``tags`` (a table) and ``label`` are free-form and only copied to the output.

Result: ``{"summary": <summary row>, "derived": {...}, "probes": {...}, "n_requests": N}`` with
``derived`` = ``service_rate_client`` and ``service_rate_actual`` (total client-view / actual
service, cost units, divided by ``span_s``: DLPM's "service rate").

Solve cells
-----------
Input: ``family`` (a name of :data:`prefixsched.reductions.families.FAMILIES`) with ``n``, or
``instance`` (an instance ``.json``), or ``random`` (``n`` requests from
:func:`prefixsched.gap.random_instance` with seed ``seed``). Parameters: ``model`` (default
``prev``), ``objective`` (``max-ttft``), ``solver`` (``dp``), ``bound``, ``delta``,
``time_limit``. Result: ``status``, ``objective``, ``bound``, ``gap``, ``proof``, ``order``
(never the wall time: a solver stopped by its time limit is not deterministic anyway, so use
exact backends or generous limits in sweeps).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from dataclasses import replace
from typing import Any, Callable

from prefixsched.errors import InputError

__all__ = ["execute", "validate", "PROBES", "SIMULATE_KEYS", "SOLVE_KEYS", "file_digest"]

SIMULATE_KEYS = {
    "kind", "label", "tags", "workload", "workload_params", "clients", "seed", "n_requests", "trace",
    "client_strategy", "max_requests", "trace_sha256", "profile", "limits", "cost_model", "load", "policy",
    "policy_params", "quantum", "k", "workers", "dispatch", "dispatch_params", "q_w", "threshold",
    "engine", "check", "probes", "probe_params",
}
SOLVE_KEYS = {
    "kind", "label", "tags", "family", "n", "instance", "random", "seed", "model", "objective",
    "solver", "bound", "delta", "time_limit", "instance_sha256",
}


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def validate(cell: dict[str, Any], where: str = "cell") -> None:
    """Check a cell's keys and the obvious types (the rest is checked when it runs).

    Raises
    ------
    InputError
        Naming ``where`` and the key: unknown kind or key, no input or two inputs, a probe that
        does not exist.
    """
    kind = cell.get("kind", "simulate")
    if kind not in ("simulate", "solve"):
        raise InputError(f"{where}.kind", f"must be 'simulate' or 'solve', got {kind!r}")
    known = SIMULATE_KEYS if kind == "simulate" else SOLVE_KEYS
    for k in cell:
        if k not in known:
            raise InputError(f"{where}.{k}", f"unknown key of a {kind} cell (known: {', '.join(sorted(known))})")
    if kind == "simulate":
        srcs = [k for k in ("workload", "trace") if cell.get(k) is not None]
        if len(srcs) != 1:
            raise InputError(where, f"needs exactly one of 'workload' or 'trace', got {srcs or 'none'}")
        for k in ("workload_params", "limits", "cost_model", "policy_params", "dispatch_params", "probe_params", "tags"):
            if k in cell and not isinstance(cell[k], dict):
                raise InputError(f"{where}.{k}", f"must be a table, got {cell[k]!r}")
        probes = cell.get("probes", [])
        if not isinstance(probes, list):
            raise InputError(f"{where}.probes", f"must be a list of names, got {probes!r}")
        for p in probes:
            if p not in PROBES:
                raise InputError(f"{where}.probes", f"unknown probe {p!r} (known: {', '.join(sorted(PROBES))})")
        w = cell.get("workers", 1)
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise InputError(f"{where}.workers", f"must be an integer >= 1, got {w!r}")
        load = cell.get("load", 1)
        if isinstance(load, bool) or not isinstance(load, (int, float)) or not (load > 0) or math.isinf(load):
            raise InputError(f"{where}.load", f"must be a finite number > 0, got {load!r}")
    else:
        srcs = [k for k in ("family", "instance", "random") if cell.get(k) not in (None, False)]
        if len(srcs) != 1:
            raise InputError(where, f"needs exactly one of 'family', 'instance' or 'random', got {srcs or 'none'}")


# ---------------------------------------------------------------------------------------------
# simulate


def _instance(cell: dict[str, Any]):
    from prefixsched.theory.cost import CostModel
    from prefixsched.theory.model import Instance, Limits

    limits_d = dict(cell.get("limits") or {})
    cost = CostModel.from_dict(cell["cost_model"]) if cell.get("cost_model") else None
    if cell.get("profile") is not None:
        from dataclasses import asdict

        from prefixsched.theory.profiles import load_profile

        prof = load_profile(str(cell["profile"]))
        limits_d = {**asdict(prof.limits), **limits_d}
        if "page_size" not in (cell.get("limits") or {}):
            del limits_d["page_size"]  # a workload's stays its block_size, a Mooncake trace's 512
        if cost is None:
            cost = prof.cost_model
    if cell.get("workload") is not None:
        from prefixsched.reference.workloads import DEFAULT_BLOCK_SIZE, make_workload

        wp = dict(cell.get("workload_params") or {})
        limits_d.setdefault("page_size", wp.get("block_size", DEFAULT_BLOCK_SIZE))
        inst = make_workload(
            cell["workload"], clients=cell.get("clients", 8), seed=cell.get("seed", 0),
            n_requests=cell.get("n_requests"), limits=Limits.from_dict(limits_d), cost_model=cost, **wp,
        )
    else:
        from prefixsched.instance_io import load_any

        path = cell["trace"]
        if not os.path.isfile(path):
            raise InputError("trace", f"no such file: {path}")
        kw: dict[str, Any] = {}
        if path.lower().endswith(".jsonl"):
            kw = {"clients": cell.get("clients", 8), "strategy": cell.get("client_strategy", "family"),
                  "max_requests": cell.get("max_requests")}
            limits_d.setdefault("page_size", 512)
        limits = Limits.from_dict(limits_d) if limits_d else None
        inst = load_any(path, limits=limits, cost_model=cost, **kw)
    load = cell.get("load", 1)
    if load != 1:
        reqs = tuple(replace(r, arrival=r.arrival / load) for r in inst.requests)
        inst = Instance(reqs, cost_model=inst.cost_model, limits=inst.limits, weights=inst.weights)
    return inst


def _engine_kw(fn: Callable[..., Any], cell: dict[str, Any]) -> dict[str, Any]:
    """``{"engine": ...}`` if the cell sets one (and the simulator accepts it), else ``{}``."""
    engine = cell.get("engine")
    if engine is None:
        return {}
    if "engine" not in inspect.signature(fn).parameters:
        raise InputError("engine", f"this prefixsched's {fn.__name__} has no engine parameter yet (got {engine!r})")
    return {"engine": engine}


def _policy_params(cell: dict[str, Any]) -> dict[str, Any]:
    p = dict(cell.get("policy_params") or {})
    for k in ("quantum", "k"):
        if cell.get(k) is not None:
            p.setdefault(k, cell[k])
    p.setdefault("seed", cell.get("seed", 0))
    return p


def _dispatch_params(cell: dict[str, Any]) -> dict[str, Any]:
    p = dict(cell.get("dispatch_params") or {})
    for k in ("q_w", "threshold"):
        if cell.get(k) is not None:
            p.setdefault(k, cell[k])
    return p


def _simulate(cell: dict[str, Any]) -> dict[str, Any]:
    from prefixsched.reference.policies import create
    from prefixsched.theory.schedule import check_trace

    inst = _instance(cell)
    spec = cell.get("policy", "dlpm")
    pp = _policy_params(cell)
    seed = cell.get("seed", 0)
    D = cell.get("workers", 1)
    check = cell.get("check", True)
    if D == 1 and cell.get("dispatch") is None:
        from prefixsched.reference.simulator import simulate
        from prefixsched.theory.metrics import summarize

        trace = simulate(inst, create(spec, **pp), seed=seed, **_engine_kw(simulate, cell))
        if check:
            check_trace(inst, trace)
        summary = summarize(trace, inst.weights)
        run: Any = trace
    else:
        from prefixsched.reference.cluster import create_dispatcher, simulate_cluster
        from prefixsched.theory.metrics import summarize_cluster

        disp = create_dispatcher(cell.get("dispatch") or "d2lpm", **_dispatch_params(cell))
        run = simulate_cluster(inst, lambda: create(spec, **pp), disp, workers=D, seed=seed,
                               **_engine_kw(simulate_cluster, cell))
        if check:
            for w in range(D):
                sub = run.sub_instance(w)
                if sub is not None:
                    check_trace(sub, run.traces[w])
        summary = summarize_cluster(run)
    span = summary["span_s"]
    pc = summary["per_client"]
    client_service = sum(v["service_client"] for v in pc.values())
    actual_service = sum(v["service_actual"] for v in pc.values())
    derived = {
        "service_rate_client": client_service / span if span else None,
        "service_rate_actual": actual_service / span if span else None,
    }
    probes: dict[str, Any] = {}
    params = cell.get("probe_params") or {}
    for name in cell.get("probes", []):
        probes[name] = PROBES[name](inst, run, summary, cell, dict(params.get(name) or {}))
    return {"summary": summary, "derived": derived, "probes": probes, "n_requests": len(inst.requests)}


# ---------------------------------------------------------------------------------------------
# probes: extra numbers computed from the run (all through theory.metrics / theory.bounds)


def _merged(run: Any):
    return run.merged_trace() if hasattr(run, "merged_trace") else run


def _single(run: Any, probe: str):
    if hasattr(run, "merged_trace"):
        raise InputError("probes", f"{probe!r} needs a single-worker cell (workers = 1, no dispatch)")
    return run


def _local_quantum(run: Any) -> float:
    pol = run.traces[0].policy if hasattr(run, "traces") else run.policy
    q = pol.get("quantum")
    if q is None:
        raise InputError("probes", f"the policy {pol.get('name')!r} has no quantum (Q_u); this probe needs DLPM")
    return float(q)


def _report(b: Any) -> dict[str, Any]:
    return {"worst": b.worst, "bound": b.bound, "holds": b.holds, "pairs": b.checked}


def _probe_latency_max(inst, run, summary, cell, params) -> dict[str, Any]:
    """Largest TTFT and end-to-end latency (seconds)."""
    from prefixsched.theory.metrics import request_latencies

    lat = request_latencies(_merged(run))
    return {"ttft_max": float(lat["ttft"].max()), "e2e_max": float(lat["e2e"].max())}


def _probe_dlpm_thm_4_1(inst, run, summary, cell, params) -> dict[str, Any]:
    """DLPM Thm 4.1 scan (single worker; Q_u from the policy)."""
    from prefixsched.theory.bounds import check_dlpm_thm_4_1

    return _report(check_dlpm_thm_4_1(inst, _single(run, "dlpm_thm_4_1"), _local_quantum(run)))


def _probe_vtc_2u(inst, run, summary, cell, params) -> dict[str, Any]:
    """VTC's two-backlogged bound scan (single worker; client view)."""
    from prefixsched.theory.bounds import check_vtc_two_backlogged

    return _report(check_vtc_two_backlogged(inst, _single(run, "vtc_2U")))


def _probe_d2lpm_thm_5_1(inst, run, summary, cell, params) -> dict[str, Any]:
    """D²LPM Thm 5.1 scan (cluster; Q_u from the local policy)."""
    from prefixsched.theory.bounds import check_d2lpm_thm_5_1

    if not hasattr(run, "merged_trace"):
        raise InputError("probes", "'d2lpm_thm_5_1' needs a cluster cell (set dispatch)")
    return _report(check_d2lpm_thm_5_1(inst, run, _local_quantum(run)))


def _probe_service_gap_client(inst, run, summary, cell, params) -> dict[str, Any]:
    """Largest client-view service gap between two backlogged clients (single worker)."""
    from prefixsched.theory.metrics import max_service_gap

    g = max_service_gap(_single(run, "service_gap_client"), inst, view="client")
    return {"value": g["value"], "interval": list(g["interval"]) if g["interval"] else None}


def _probe_backlog_s(inst, run, summary, cell, params) -> dict[str, float]:
    """Seconds each client was backlogged (sum of its waiting intervals' union)."""
    from prefixsched.theory.metrics import backlog_intervals

    return {c: float(sum(b - a for a, b in iv)) for c, iv in backlog_intervals(_merged(run)).items()}


def _probe_service_curve(inst, run, summary, cell, params) -> dict[str, Any]:
    """Cumulative service per client at ``n`` evenly spaced times in ``[t0, t1]`` (parameters
    ``t0`` default 0, ``t1`` default the span's end, ``n`` default 121, ``view`` default client)."""
    import numpy as np

    from prefixsched.theory.metrics import cluster_service_timeline, service_timeline

    view = params.get("view", "client")
    t0 = float(params.get("t0", 0.0))
    t1 = float(params.get("t1", summary["span_s"] + min(r.arrival for r in inst.requests)))
    n = int(params.get("n", 121))
    grid = np.linspace(t0, t1, n)
    if hasattr(run, "merged_trace"):
        times, clients, cum = cluster_service_timeline(run.traces, inst, view)
    else:
        times, clients, cum = service_timeline(run, inst, view=view)
    idx = np.searchsorted(times, grid, side="right")
    ext = np.vstack([np.zeros((1, len(clients))), cum])
    return {"t": grid.tolist(), "view": view, "service": {c: ext[idx, j].tolist() for j, c in enumerate(clients)}}


def _probe_well_behaved(inst, run, summary, cell, params) -> dict[str, Any]:
    """Latency of the well-behaved clients (every client not in ``misbehaving``, default
    ``["c0"]``, the workloads' misbehaving client): TTFT and end-to-end P50/P99 per request, and
    P50/P99 of per-program completion times (:func:`~prefixsched.theory.metrics.program_latencies`
    with :func:`~prefixsched.reference.workloads.program_of`), seconds. Also the same for the
    misbehaving clients (``bad_*``)."""
    from prefixsched.reference.workloads import program_of
    from prefixsched.theory.metrics import percentiles, program_latencies, request_latencies

    bad = set(params.get("misbehaving", ["c0"]))
    tr = _merged(run)
    good = [c for c in inst.clients if c not in bad]
    out: dict[str, Any] = {}
    for prefix, cl in (("", good), ("bad_", [c for c in inst.clients if c in bad])):
        lat = request_latencies(tr, cl)
        prog = program_latencies(tr, program_of, cl)
        t = percentiles(lat["ttft"], (50, 99))
        e = percentiles(lat["e2e"], (50, 99))
        p = percentiles(prog["e2e"], (50, 99))
        out.update({
            f"{prefix}requests": int(lat["ttft"].size), f"{prefix}programs": int(prog["e2e"].size),
            f"{prefix}ttft_p50": t[50], f"{prefix}ttft_p99": t[99],
            f"{prefix}e2e_p50": e[50], f"{prefix}e2e_p99": e[99],
            f"{prefix}program_p50": p[50], f"{prefix}program_p99": p[99],
        })
    return out


#: Probe registry: name -> ``fn(instance, run, summary, cell, params) -> JSON-able``.
PROBES: dict[str, Callable[..., Any]] = {
    "latency_max": _probe_latency_max,
    "dlpm_thm_4_1": _probe_dlpm_thm_4_1,
    "vtc_2U": _probe_vtc_2u,
    "d2lpm_thm_5_1": _probe_d2lpm_thm_5_1,
    "service_gap_client": _probe_service_gap_client,
    "backlog_s": _probe_backlog_s,
    "service_curve": _probe_service_curve,
    "well_behaved": _probe_well_behaved,
}


# ---------------------------------------------------------------------------------------------
# solve


def _solve(cell: dict[str, Any]) -> dict[str, Any]:
    from prefixsched.theory.exact import solve

    if cell.get("family") is not None:
        from prefixsched.reductions.families import FAMILIES

        name = cell["family"]
        if name not in FAMILIES:
            raise InputError("family", f"unknown family {name!r}; known: {', '.join(sorted(FAMILIES))}")
        inst = FAMILIES[name][0](cell.get("n", 8))
    elif cell.get("instance") is not None:
        from prefixsched.instance_io import load_instance

        inst = load_instance(cell["instance"])
    else:
        import numpy as np

        from prefixsched.gap import random_instance

        inst = random_instance(cell.get("n", 8), np.random.default_rng(cell.get("seed", 0)))
    res = solve(
        inst, model=cell.get("model", "prev"), objective=cell.get("objective", "max-ttft"),
        solver=cell.get("solver", "dp"), bound=cell.get("bound"), delta=cell.get("delta"),
        time_limit=cell.get("time_limit"), workers=1,
    )
    d = res.to_dict(include_wall=False)
    return {
        "summary": {k: d[k] for k in ("status", "objective", "bound", "gap", "proof", "model", "objective_name", "solver")},
        "derived": {"order": list(d["order"])},
        "probes": {},
        "n_requests": len(inst.requests),
    }


def execute(cell: dict[str, Any]) -> dict[str, Any]:
    """Run one cell (module docstring) and return its JSON-able result.

    Raises
    ------
    InputError, CheckerError, IllegalDecisionError, ...
        Whatever the run raises; :mod:`prefixsched.sweep.runner` records it as the cell's error.
    """
    validate(cell)
    if cell.get("kind", "simulate") == "solve":
        return _solve(cell)
    return _simulate(cell)
