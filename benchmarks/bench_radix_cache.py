"""Benchmark of the radix prefix cache on the real Mooncake conversation trace.

Three phases, page_size 512 (Mooncake's block size), capacity large enough that nothing is
evicted:

1. ``insert``: insert the page keys of every prompt, in trace order.
2. ``match``: match every prompt again (``touch=True``).
3. ``watch``: a fresh cache with every prompt registered as a waiter, then every prompt
   inserted in trace order (each insert updates only the affected waiters' matches); then the
   whole tree is evicted (every waiter drops back to 0).

Prints wall time per phase (seconds, ``time.perf_counter``) and the peak RSS of the process
(``resource.getrusage``, MiB). Skips with a message when the trace is missing.

Usage: ``python benchmarks/bench_radix_cache.py [--trace PATH]``
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from prefixsched.reference.radix_cache import RadixCache
from prefixsched.theory.model import BlockPrompt, page_keys

PAGE = 512
DEFAULT_TRACE = Path(__file__).resolve().parents[2] / "shared/data/mooncake/conversation_trace.jsonl"


def load_keys(path: Path) -> list[tuple]:
    out = []
    with path.open() as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            prompt = BlockPrompt(d["hash_ids"], d["input_length"], PAGE)
            out.append(page_keys(prompt, PAGE))
    return out


def peak_rss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    args = ap.parse_args(argv)
    if not args.trace.exists():
        print(f"SKIP: trace not found at {args.trace}")
        return 0

    t0 = time.perf_counter()
    all_keys = load_keys(args.trace)
    t_load = time.perf_counter() - t0
    n_pages = sum(len(k) for k in all_keys)
    cap = n_pages * PAGE + PAGE
    print(f"trace: {len(all_keys)} prompts, {n_pages} full pages ({n_pages * PAGE} tokens); parse {t_load:.3f} s")

    cache = RadixCache(cap, PAGE)
    t0 = time.perf_counter()
    new = 0
    for k in all_keys:
        new += cache.insert(k).new_pages
    t_ins = time.perf_counter() - t0
    print(
        f"insert: {t_ins:.3f} s ({t_ins / len(all_keys) * 1e6:.1f} us/prompt); "
        f"stored {cache.total_tokens} tokens in {cache.num_nodes} nodes, hit ratio "
        f"{1 - new / max(n_pages, 1):.3f} of full pages"
    )

    t0 = time.perf_counter()
    hit = 0
    for k in all_keys:
        hit += cache.match_prefix(k, count_hit=True).pages
    t_match = time.perf_counter() - t0
    assert hit == n_pages, "every inserted prompt must match fully"
    print(f"match:  {t_match:.3f} s ({t_match / len(all_keys) * 1e6:.1f} us/prompt)")

    changes = [0]

    def cb(wid: object, pages: int) -> None:
        changes[0] += 1

    wc = RadixCache(cap, PAGE, on_match_change=cb)
    t0 = time.perf_counter()
    for i, k in enumerate(all_keys):
        wc.watch(i, k)
    t_watch = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in all_keys:
        wc.insert(k)
    t_winsert = time.perf_counter() - t0
    ok = all(wc.watched_pages(i) == len(k) for i, k in enumerate(all_keys))
    t0 = time.perf_counter()
    evicted = wc.evict(wc.total_tokens)
    t_wevict = time.perf_counter() - t0
    ok = ok and evicted == cache.total_tokens and all(wc.watched_pages(i) == 0 for i in range(len(all_keys)))
    print(
        f"watch:  register {len(all_keys)} waiters {t_watch:.3f} s; insert all {t_winsert:.3f} s; "
        f"evict all {t_wevict:.3f} s; {changes[0]} callbacks; waiters exact: {ok}"
    )
    print(f"peak RSS: {peak_rss_mib():.1f} MiB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
