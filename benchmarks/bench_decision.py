"""Decision overhead: one scheduling pass over a queue of 10,000 waiting requests.

Target (issue brief): a DLPM or LPM pass over 10,000 waiting requests costs < 1 ms per admitted
request.

Workload (synthetic, seeded): 64 shared documents of 64 pages (page = block = 16 tokens, 1024
tokens), each request = one document + 1..32 unique pages, output 32..256 tokens, 8 clients.
64 warm-up requests (one per document, t = 0) fill the cache; then 10,000 requests arrive at
t = 1 and wait. Default limits (480k KV tokens, 16,384 prefill tokens, 256 running).

The policy is wrapped; every ``decide`` while at least ``--min-waiting`` requests wait is timed
(``time.perf_counter``) until ``--passes`` passes are measured, then the run is aborted. Prints per
policy: passes, mean queue length, mean ms per pass, admitted per pass, ms per admitted request,
and the slowest pass.

Usage::

    python benchmarks/bench_decision.py [--policies lpm,dlpm,...] [--passes 40] [--n 10000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from prefixsched.reference.policies import create
from prefixsched.reference.policies.base import Policy
from prefixsched.reference.simulator import simulate
from prefixsched.theory.model import BlockPrompt, Instance, Limits, Request


def make_instance(n: int, seed: int = 0, docs: int = 64, clients: int = 8) -> Instance:
    rng = np.random.default_rng(seed)
    bs = 16
    reqs = []
    nxt_block = docs * 64

    def prompt(doc: int, extra: int) -> BlockPrompt:
        nonlocal nxt_block
        blocks = list(range(doc * 64, doc * 64 + 64)) + list(range(nxt_block, nxt_block + extra))
        nxt_block += extra
        return BlockPrompt(blocks, len(blocks) * bs, bs)

    for d in range(docs):
        reqs.append(Request(f"w{d}", f"c{d % clients}", 0.0, prompt(d, 1), 1))
    for k in range(n):
        d = int(rng.integers(docs))
        reqs.append(
            Request(
                f"r{k}",
                f"c{int(rng.integers(clients))}",
                1.0,
                prompt(d, int(rng.integers(1, 33))),
                int(rng.integers(32, 257)),
            )
        )
    return Instance(tuple(reqs), limits=Limits(page_size=bs))


class _Stop(Exception):
    pass


class Timed(Policy):
    name = "timed"

    def __init__(self, inner: Policy, min_waiting: int, passes: int) -> None:
        self.inner = inner
        self.min_waiting = min_waiting
        self.passes = passes
        self.samples: list[tuple[int, float, int]] = []

    def on_arrival(self, request, now, snap):  # type: ignore[no-untyped-def]
        self.inner.on_arrival(request, now, snap)

    def decide(self, snap):  # type: ignore[no-untyped-def]
        n = snap.waiting_count()
        if n < self.min_waiting:
            if self.samples:
                raise _Stop
            return self.inner.decide(snap)
        t0 = time.perf_counter()
        d = self.inner.decide(snap)
        self.samples.append((n, time.perf_counter() - t0, len(d.admit)))
        if len(self.samples) >= self.passes:
            raise _Stop
        return d

    def on_step_end(self, decoded, finished, snap):  # type: ignore[no-untyped-def]
        self.inner.on_step_end(decoded, finished, snap)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policies", default="lpm,dlpm,k-lpm,vtc,fcfs,dfs-weight")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--passes", type=int, default=40)
    ap.add_argument("--min-waiting", type=int, default=None)
    args = ap.parse_args(argv)
    inst = make_instance(args.n)
    min_waiting = args.min_waiting if args.min_waiting is not None else int(0.9 * args.n)
    for spec in args.policies.split(","):
        pol = Timed(create(spec), min_waiting, args.passes)
        try:
            simulate(inst, pol)
        except _Stop:
            pass
        s = pol.samples
        if not s:
            print(f"{spec:12s} no pass with >= {min_waiting} waiting")
            continue
        tot = sum(x[1] for x in s)
        adm = sum(x[2] for x in s)
        print(
            f"{spec:12s} passes {len(s):3d}  queue {sum(x[0] for x in s) / len(s):7.0f}  "
            f"{1e3 * tot / len(s):7.3f} ms/pass  admitted/pass {adm / len(s):5.1f}  "
            f"{(1e3 * tot / adm) if adm else float('nan'):7.3f} ms/admitted  "
            f"slowest {1e3 * max(x[1] for x in s):7.3f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
