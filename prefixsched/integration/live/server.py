"""A small stand-in for an SGLang server, for the live harness's tests: it speaks SGLang's
``/generate`` SSE format and serves tokens at the pace of a :class:`~prefixsched.theory.cost.CostModel`.

Endpoints: ``POST /generate`` (the native API, ``input_ids`` in, ``output_ids`` out, as SGLang
with ``--skip-tokenizer-init``), ``GET /health``, ``GET /server_info`` and ``/get_server_info``
(its limits), ``POST /flush_cache`` (empties the prefix cache when idle, as SGLang's).
Listens on 127.0.0.1 only.

Engine (a continuous-batching loop shaped like SGLang's, sglang.md §1.6): prefill and decode are
separate forward passes and a prefill runs whenever something waits and a slot is free.

- Admission: FCFS, up to ``max_running_requests`` running and ``max_prefill_tokens`` extend
  tokens per prefill pass (the first request of a pass may exceed it alone); no chunking, no KV
  limit, no retraction.
- Prefix cache: a token trie of every prompt prefilled so far, never evicted. A request's
  ``cached_tokens`` is its longest prefix in the trie, capped at ``len - 1``; its extend is the
  rest. The prompt is inserted when its prefill pass ends.
- Clock: a prefill pass takes ``cost.prefill_time(sum weighted_extend)``, a decode pass
  ``cost.decode_time(n, context)``. Passes are laid back to back on an ideal timeline (a pass
  starts when the previous one ended, or at the arrival that woke an idle server) and the
  tokens of a pass are sent when its ideal end is reached, so sleep overshoot does not
  accumulate.
- Streaming: one ``data:`` chunk per output token (``stream_interval`` 1) with cumulative
  ``output_ids`` and ``meta_info`` = ``id``, ``finish_reason`` (``None`` until the last token, then
  ``{"type": "length", "length": N}``), ``prompt_tokens``, ``completion_tokens``,
  ``cached_tokens``; then ``data: [DONE]``.

Fault injection for the tests: ``malformed_every=K`` sends an unparsable ``data:`` line before
every K-th chunk; ``die_after_tokens=N`` makes the process exit abruptly (``os._exit``) once N
tokens have been sent (run it as a subprocess: ``python -m prefixsched.integration.live.server``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prefixsched.theory.cost import CostModel

__all__ = ["StandInServer", "serve", "main"]


class _Trie:
    __slots__ = ("root",)

    def __init__(self) -> None:
        self.root: dict[int, Any] = {}

    def match(self, ids: list[int]) -> int:
        node = self.root
        n = 0
        for t in ids:
            nxt = node.get(t)
            if nxt is None:
                break
            node = nxt
            n += 1
        return n

    def insert(self, ids: list[int]) -> None:
        node = self.root
        for t in ids:
            node = node.setdefault(t, {})


@dataclass
class _Job:
    rid: str
    ids: list[int]
    max_new: int
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cached: int = 0
    out: list[int] = field(default_factory=list)


class StandInServer:
    """The stand-in (module docstring). ``await start(port)`` binds 127.0.0.1; ``port`` 0 picks
    a free port (``self.port`` after start)."""

    def __init__(
        self,
        cost: CostModel,
        *,
        max_running_requests: int = 64,
        max_prefill_tokens: int = 16384,
        malformed_every: int | None = None,
        die_after_tokens: int | None = None,
    ) -> None:
        cost.validate()
        self.cost = cost
        self.max_running = max_running_requests
        self.max_prefill = max_prefill_tokens
        self.malformed_every = malformed_every
        self.die_after = die_after_tokens
        self.trie = _Trie()
        self.waiting: deque[_Job] = deque()
        self.running: list[_Job] = []
        self.tokens_sent = 0
        self.steps: list[tuple[str, float, float, int]] = []  # (kind, start, end, batch size): for tests
        self.port = 0
        self._wake: asyncio.Event | None = None
        self._runner: Any = None
        self._task: asyncio.Task | None = None
        self._chunks = 0

    # -- HTTP --------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=1 << 28)
        app.router.add_post("/generate", self._generate)
        app.router.add_get("/health", self._health)
        app.router.add_get("/get_server_info", self._info)
        app.router.add_get("/server_info", self._info)
        app.router.add_post("/flush_cache", self._flush)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._engine())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, request: Any) -> Any:
        from aiohttp import web

        return web.Response(text="ok")

    async def _flush(self, request: Any) -> Any:
        from aiohttp import web

        if self.waiting or self.running:
            return web.Response(status=400, text="cannot flush the cache: requests are in flight")
        self.trie = _Trie()
        return web.Response(text="Cache flushed.")

    async def _info(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(
            {
                "server": "prefixsched stand-in",
                "max_running_requests": self.max_running,
                "max_prefill_tokens": self.max_prefill,
                "chunked_prefill_size": -1,
                "page_size": 1,
                "cost_model": self.cost.__dict__,
            }
        )

    async def _generate(self, request: Any) -> Any:
        from aiohttp import web

        try:
            body = await request.json()
            ids = [int(t) for t in body["input_ids"]]
            max_new = int(body.get("sampling_params", {}).get("max_new_tokens", 16))
            rid = str(body.get("rid") or f"r{id(body)}")
            if not ids or max_new < 1:
                raise ValueError("input_ids must be non-empty and max_new_tokens >= 1")
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            return web.json_response({"error": {"message": f"bad request: {e}"}}, status=400)
        job = _Job(rid, ids, max_new)
        self.waiting.append(job)
        assert self._wake is not None
        self._wake.set()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        while True:
            item = await job.queue.get()
            if item is None:
                await resp.write(b"data: [DONE]\n\n")
                break
            await resp.write(item)
        await resp.write_eof()
        return resp

    # -- engine ------------------------------------------------------------------------------

    def _chunk(self, job: _Job) -> bytes:
        done = len(job.out) >= job.max_new
        meta = {
            "id": job.rid,
            "finish_reason": {"type": "length", "length": job.max_new} if done else None,
            "prompt_tokens": len(job.ids),
            "completion_tokens": len(job.out),
            "cached_tokens": job.cached,
        }
        data = b"data: " + json.dumps({"output_ids": job.out, "meta_info": meta}).encode() + b"\n\n"
        self._chunks += 1
        if self.malformed_every and self._chunks % self.malformed_every == 0:
            data = b'data: {"output_ids": [1, 2, \n\n' + data
        return data

    def _emit(self, job: _Job) -> None:
        job.out.append((len(job.out) * 7919 + 13) % 32000)
        job.queue.put_nowait(self._chunk(job))
        if len(job.out) >= job.max_new:
            job.queue.put_nowait(None)
        self.tokens_sent += 1
        if self.die_after is not None and self.tokens_sent >= self.die_after:
            sys.stdout.flush()
            os._exit(3)

    async def _engine(self) -> None:
        loop = asyncio.get_running_loop()
        t_end = loop.time()
        cost = self.cost
        assert self._wake is not None
        while True:
            if not self.waiting and not self.running:
                self._wake.clear()
                await self._wake.wait()
                t_end = max(t_end, loop.time())
            start = max(t_end, loop.time()) if not self.running else t_end
            if self.waiting and len(self.running) < self.max_running:
                batch: list[_Job] = []
                ext_sum = 0
                weighted = 0.0
                while self.waiting and len(self.running) + len(batch) < self.max_running:
                    job = self.waiting[0]
                    cached = min(self.trie.match(job.ids), len(job.ids) - 1)
                    ext = len(job.ids) - cached
                    if batch and ext_sum + ext > self.max_prefill:
                        break
                    self.waiting.popleft()
                    job.cached = cached
                    batch.append(job)
                    ext_sum += ext
                    weighted += cost.weighted_extend(ext, len(job.ids))
                dt = cost.prefill_time(weighted)
                t_end = start + dt
                await asyncio.sleep(max(0.0, t_end - loop.time()))
                self.steps.append(("prefill", start, t_end, len(batch)))
                for job in batch:
                    self.trie.insert(job.ids)
                    self._emit(job)
                    if len(job.out) < job.max_new:
                        self.running.append(job)
            elif self.running:
                n = len(self.running)
                ctx = sum(len(j.ids) + len(j.out) for j in self.running)
                dt = cost.decode_time(n, ctx)
                t_end = start + dt
                await asyncio.sleep(max(0.0, t_end - loop.time()))
                self.steps.append(("decode", start, t_end, n))
                still = []
                for job in self.running:
                    self._emit(job)
                    if len(job.out) < job.max_new:
                        still.append(job)
                self.running = still
            await asyncio.sleep(0)  # let the HTTP handlers flush


async def serve(server: StandInServer, port: int = 0) -> None:
    """Start ``server`` and run until cancelled (prints ``LISTENING <port>`` once bound)."""
    await server.start(port)
    print(f"LISTENING {server.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m prefixsched.integration.live.server --cost-model JSON [--port P] ...``"""
    p = argparse.ArgumentParser(prog="prefixsched-standin", description="SGLang-compatible stand-in server (tests)")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: %(default)s = any free port)")
    p.add_argument("--cost-model", default="{}", help="CostModel fields as a JSON object (default: the CostModel defaults)")
    p.add_argument("--max-running-requests", type=int, default=64, help="running slots (default: %(default)s)")
    p.add_argument("--max-prefill-tokens", type=int, default=16384, help="extend tokens per prefill pass (default: %(default)s)")
    p.add_argument("--malformed-every", type=int, default=None, help="an unparsable chunk before every K-th chunk (default: off)")
    p.add_argument("--die-after-tokens", type=int, default=None, help="exit abruptly after N tokens (default: off)")
    a = p.parse_args(argv)
    cost = CostModel.from_dict(json.loads(a.cost_model))
    srv = StandInServer(
        cost,
        max_running_requests=a.max_running_requests,
        max_prefill_tokens=a.max_prefill_tokens,
        malformed_every=a.malformed_every,
        die_after_tokens=a.die_after_tokens,
    )
    try:
        asyncio.run(serve(srv, a.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
