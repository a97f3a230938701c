"""Optimality gaps: how far each policy is from the proven optimum (``prefixsched gap``).

For each of K small instances (random shared-prefix instances, or windows of N consecutive requests
of a real trace) the optimum of the chosen sequential model and objective is computed by an exact
backend, every policy is run on the same instance through
:func:`prefixsched.reference.sequential_runner.run_sequential`, its order is evaluated by the
independent checker, and the ratio ``policy objective / optimum`` is recorded.

Only instances whose optimum is *proven* (status OPTIMAL, gap 0) enter the statistics; the others
are counted and reported as unproven, never silently used.

In the ``fair`` model the optimum is taken subject to the service-gap bound ``delta`` (the price of
fairness); a policy schedule whose own service gap exceeds ``delta`` is counted as a violation and
gets no ratio (it is not a feasible schedule of that model).

Instance sources (time unit = one uncached token, as in the sequential models):

- ``random``: 2-3 clients; prompts from a small prefix tree (3 groups with shared prefixes of 4-16
  tokens, private suffixes of 1-6 tokens); integer arrivals uniform over half of the total no-reuse
  work, so queues form; output lengths 1-8.
- ``trace``: windows of N consecutive requests of a Mooncake-format trace at block granularity: one
  "token" per 512-token block (the trace only shares whole blocks), arrivals converted from seconds
  into block units at the default cost model's prefill rate (1 / (b * 512) blocks per second) and
  rounded to integers, relative to the window's first arrival.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from prefixsched.errors import InputError, raise_if_interrupted
from prefixsched.theory.cost import CostModel
from prefixsched.theory.model import Instance, Limits, Request

__all__ = ["random_instance", "trace_windows", "run_gap", "GapReport", "MAX_INSTANCES"]

#: Most instances one gap run solves (each is solved exactly; 100,000 small ones take hours).
MAX_INSTANCES = 100_000


def random_instance(n: int, rng: np.random.Generator) -> Instance:
    """A random small shared-prefix instance in token units (module docstring)."""
    groups = [tuple(int(t) for t in rng.integers(1000 * (g + 1), 1000 * (g + 1) + 50, size=int(rng.integers(4, 17)))) for g in range(3)]
    clients = int(rng.integers(2, 4))
    prompts = []
    for i in range(n):
        g = groups[int(rng.integers(0, len(groups)))]
        suffix = tuple(int(t) for t in rng.integers(100 * i + 10, 100 * i + 90, size=int(rng.integers(1, 7))))
        prompts.append(g + suffix)
    total = sum(len(p) for p in prompts)
    arrivals = sorted(int(a) for a in rng.integers(0, max(1, total // 2), size=n))
    reqs = tuple(
        Request(
            id=f"q{i}",
            client=f"c{int(rng.integers(0, clients))}",
            arrival=float(arrivals[i]),
            prompt=prompts[i],
            output_len=int(rng.integers(1, 9)),
        )
        for i in range(n)
    )
    return Instance(requests=reqs, cost_model=CostModel.token_units(), limits=Limits(kv_capacity_tokens=10**9))


def trace_windows(path: str, n: int, k: int, rng: np.random.Generator) -> list[Instance]:
    """K windows of N consecutive requests of a trace, at block granularity (module docstring)."""
    from prefixsched.instance_io import load_any
    from prefixsched.theory.model import BlockPrompt

    full = load_any(path)
    reqs = full.requests
    if len(reqs) < n:
        raise InputError("--n", f"the trace has only {len(reqs)} requests, fewer than n={n}")
    blocks_per_s = 1.0 / (CostModel().prefill_per_token_s * 512)
    starts = sorted(int(s) for s in rng.choice(len(reqs) - n + 1, size=min(k, len(reqs) - n + 1), replace=False))
    out = []
    for s in starts:
        win = reqs[s : s + n]
        t0 = win[0].arrival
        new = []
        for r in win:
            p = r.prompt
            toks = tuple(p.blocks) if isinstance(p, BlockPrompt) else tuple(p)
            new.append(
                Request(
                    id=r.id,
                    client=r.client,
                    arrival=float(round((r.arrival - t0) * blocks_per_s)),
                    prompt=toks,
                    output_len=r.output_len,
                )
            )
        new.sort(key=lambda r: r.arrival)
        out.append(Instance(requests=tuple(new), cost_model=CostModel.token_units(), limits=Limits(kv_capacity_tokens=10**12)))
    return out


@dataclass
class GapReport:
    """Per-policy ratio statistics over the proven instances."""

    model: str
    objective: str
    n: int
    solver: str
    proven: int
    unproven: int
    ratios: dict[str, list[float]] = field(default_factory=dict)
    delta: float | None = None
    violations: dict[str, int] = field(default_factory=dict)

    def stats(self) -> dict[str, dict[str, Any]]:
        out = {}
        for p, rs in self.ratios.items():
            a = np.asarray(rs, dtype=float)
            if a.size == 0:
                out[p] = {"mean": None, "p90": None, "max": None, "optimal_fraction": None}
                continue
            out[p] = {
                "mean": float(a.mean()),
                "p90": float(np.percentile(a, 90)),
                "max": float(a.max()),
                "optimal_fraction": float(np.mean(np.abs(a - 1.0) <= 1e-9)),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "objective": self.objective,
            "n": self.n,
            "solver": self.solver,
            "proven_instances": self.proven,
            "unproven_instances": self.unproven,
            "policies": self.stats(),
            "ratios": self.ratios,
            "delta": self.delta,
            "delta_violations": {p: self.violations.get(p, 0) for p in self.ratios},
        }

    def table(self) -> str:
        from prefixsched._table import _table

        rows = []
        for p, s in self.stats().items():
            row = [p, s["mean"], s["p90"], s["max"], s["optimal_fraction"]]
            if self.model == "fair":
                row.append(self.violations.get(p, 0))
            rows.append(row)
        head = (
            f"{self.model} model, objective {self.objective}, n={self.n}: {self.proven} instances proven optimal "
            f"by {self.solver}" + (f", {self.unproven} unproven (excluded)" if self.unproven else "")
        )
        headers = ["policy", "ratio mean", "ratio P90", "ratio max", "optimal"]
        if self.model == "fair":
            head += f"; delta = {self.delta} (ratios over the schedules that meet it)"
            headers.append("gap > delta")
        return head + "\n" + _table(headers, rows)

    def plot(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4))
        names = list(self.ratios)
        ax.boxplot([self.ratios[p] or [math.nan] for p in names], showmeans=True)
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels(names)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_ylabel(f"{self.objective} / optimum")
        ax.set_title(f"{self.model} model, n={self.n}, {self.proven} proven instances")
        fig.tight_layout()
        return fig


def run_gap(
    *,
    model: str,
    n: int,
    instances: int,
    policies: Sequence[str],
    source: str = "random",
    trace: str | None = None,
    seed: int = 0,
    solver: str = "dp",
    time_limit: float = 30.0,
    objective: str = "max-ttft",
    progress: bool = False,
    delta: float | None = None,
) -> GapReport:
    """Compute the gap report (module docstring).

    Raises
    ------
    InputError
        Bad arguments: ``--n`` above the backend's size limit
        (:func:`prefixsched.theory.exact.size_limit`, checked before any instance is built),
        ``--instances`` above :data:`MAX_INSTANCES`, a trace without ``source="trace"`` (it would
        be ignored) or the reverse, a misplaced ``--delta``, an unknown policy.
    """
    from tqdm import tqdm

    from prefixsched.reference.policies import create
    from prefixsched.reference.sequential_runner import run_sequential
    from prefixsched.theory.exact import solve
    from prefixsched.theory.sequential import SeqInstance, evaluate, objective_value, service_gap

    if model == "fair":
        if delta is None:
            raise InputError("--delta", "the fair model needs the service-gap bound --delta (cost units)")
    elif delta is not None:
        raise InputError("--delta", f"only the fair model takes --delta (model is {model!r})")
    for spec in policies:
        create(spec)  # validates names early
    from prefixsched.theory.exact import size_limit

    limit = size_limit(solver, model, time_limit is not None)
    if n > limit:
        raise InputError("--n", f"the {solver} backend solves at most {limit} queries in the {model} model, got {n}")
    if instances > MAX_INSTANCES:
        raise InputError("--instances", f"must be <= {MAX_INSTANCES:,}, got {instances:,}")
    rng = np.random.default_rng(seed)
    if source == "trace":
        if trace is None:
            raise InputError("--trace", "--source trace needs --trace FILE")
        insts = trace_windows(trace, n, instances, rng)
    elif trace is not None:
        raise InputError("--trace", f"is only read with --source trace (source is {source!r})")
    elif source == "random":
        insts = [random_instance(n, rng) for _ in range(instances)]
    else:
        raise InputError("--source", f"must be random or trace, got {source!r}")
    report = GapReport(
        model=model, objective=objective, n=n, solver=solver, proven=0, unproven=0,
        ratios={p: [] for p in policies}, delta=delta,
    )
    for inst in tqdm(insts, desc="instances", file=__import__("sys").stderr, disable=not progress, leave=False):
        raise_if_interrupted()
        res = solve(inst, model=model, objective=objective, solver=solver, time_limit=time_limit, delta=delta)
        if not res.optimal:
            report.unproven += 1
            continue
        report.proven += 1
        opt = float(res.objective)
        seq = SeqInstance.from_instance(inst)
        for spec in policies:
            order = run_sequential(inst, create(spec, seed=seed), model=model)
            sched = evaluate(seq, order, model)
            if model == "fair" and service_gap(seq, sched) > float(delta) + 1e-9:
                report.violations[spec] = report.violations.get(spec, 0) + 1
                continue
            val = float(objective_value(sched, objective))
            if val < opt - 1e-6:
                raise AssertionError(
                    f"policy {spec} beat the proven optimum ({val} < {opt}) on an instance: solver or checker bug"
                )
            ratio = 1.0 if opt == 0 and val == 0 else (val / opt if opt > 0 else math.inf)
            report.ratios[spec].append(ratio)
    return report
