"""The live client: send a workload's requests to SGLang's ``/generate`` at their arrival times and
record the streamed responses.

Request body (SGLang's native API, ``srt/entrypoints/http_server.py::generate_request``)::

    {"rid": ID, "input_ids": [...], "stream": true, "routing_key": CLIENT,
     "sampling_params": {"max_new_tokens": N, "ignore_eos": true, "temperature": 0}}

with header ``X-SMG-Routing-Key: CLIENT`` as well (read by SGLang's OpenAI routes; harmless on
``/generate``). ``ignore_eos`` makes the output length exactly the workload's, so the
server's work is the workload's work. The server must run with ``--skip-tokenizer-init`` (token
ids in, token ids out).

Response: Server-Sent Events, one ``data: {json}`` line per streamed chunk, a blank line after
each, ``data: [DONE]`` at the end. A chunk is ``{"output_ids": [...], "meta_info": {"id",
"finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens", ...}}``
(``managers/tokenizer_manager.py``: cumulative ``output_ids`` unless incremental streaming is on;
the client reads ``completion_tokens``, so both work). Lines that are not valid SSE data or whose
JSON lacks ``meta_info.completion_tokens`` are counted in ``malformed`` and skipped; an
``{"error": ...}`` chunk ends the request with that error.

Failure handling (decisions): the server is probed first (``GET /health``; an unreachable URL is
:class:`LiveRunError` before anything is sent). A connection refused or reset *during* the run
marks the server gone: requests not yet sent are not sent (``status="not_sent"``), in-flight
ones end in ``status="error"``, and the run is returned marked ``partial`` (the caller writes
what was gathered). Each read waits at most ``read_timeout_s``.

Token ids: a workload's prompt token ids are sent as they are when all are below the model's
vocabulary size; otherwise (block-hashed traces, whose ids are ``block * 512 + offset``) every id
``t`` is sent as ``1 + (t * 2654435761 mod 2**32) mod (vocab - 2)``: equal ids stay equal, so
shared prefixes stay shared; two different ids collide with probability ~1/vocab per position,
which can only lengthen a shared prefix by accident at its divergence point.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from prefixsched.errors import PrefixschedError
from prefixsched.integration.live.records import LiveRun, RequestResult
from prefixsched.theory.model import Request

__all__ = ["LiveRunError", "prompt_token_ids", "probe", "drive", "run_requests"]


class LiveRunError(PrefixschedError):
    """The live run could not start or did not complete; ``run`` holds what was gathered (None
    if nothing was)."""

    def __init__(self, message: str, run: LiveRun | None = None) -> None:
        super().__init__(message)
        self.run = run


def prompt_token_ids(request: Request, vocab_size: int | None) -> list[int]:
    """The token ids to send for ``request`` (module docstring)."""
    ids = list(iter(request.prompt))
    if vocab_size is None or not ids or max(ids) < vocab_size:
        return ids
    span = vocab_size - 2
    return [1 + ((t * 2654435761) & 0xFFFFFFFF) % span for t in ids]


def _aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - the live extra is missing
        raise PrefixschedError("the live harness needs aiohttp: pip install 'prefixsched[live]'") from None
    return aiohttp


async def _probe(url: str, timeout_s: float) -> dict[str, Any]:
    aiohttp = _aiohttp()
    info: dict[str, Any] = {}
    to = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=to) as s:
            async with s.get(url + "/health") as r:
                if r.status != 200:
                    raise LiveRunError(f"server at {url} is not healthy: GET /health returned HTTP {r.status}")
            for path in ("/server_info", "/get_server_info"):
                try:
                    async with s.get(url + path) as r:
                        if r.status == 200:
                            info = await r.json(content_type=None)
                            break
                except (aiohttp.ClientError, json.JSONDecodeError, asyncio.TimeoutError):
                    continue
    except LiveRunError:
        raise
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        raise LiveRunError(f"server at {url} is unreachable: {type(e).__name__}: {e}") from None
    return info if isinstance(info, dict) else {}


async def _flush(url: str, timeout_s: float) -> str | None:
    aiohttp = _aiohttp()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
            async with s.post(url + "/flush_cache") as r:
                if r.status == 200:
                    return None
                return f"POST /flush_cache returned HTTP {r.status}: {(await r.text())[:200]}"
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        return f"POST /flush_cache failed: {type(e).__name__}: {e}"


def probe(url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """``GET /health`` (must answer 200) and the server's info (``/get_server_info``, ``{}`` if
    unavailable). Raises :class:`LiveRunError` naming the URL if it is unreachable."""
    return asyncio.run(_probe(url.rstrip("/"), timeout_s))


class _Shared:
    def __init__(self) -> None:
        self.dead: str | None = None
        self.done = 0


def _parse_chunk(line: bytes) -> tuple[str, Any]:
    """``("data", obj)``, ``("done", None)``, ``("skip", None)`` or ``("bad", None)``."""
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    if not text or text.startswith(":"):
        return "skip", None
    if text.startswith("data:"):
        payload = text[5:].strip()
        if payload == "[DONE]":
            return "done", None
        try:
            return "data", json.loads(payload)
        except json.JSONDecodeError:
            return "bad", None
    if text.split(":", 1)[0] in ("event", "id", "retry"):
        return "skip", None
    return "bad", None


async def _one(
    session: Any,
    url: str,
    req: Request,
    res: RequestResult,
    ids: list[int],
    t0: float,
    scale: float,
    shared: _Shared,
    read_timeout_s: float,
    on_done: Callable[[], None],
) -> None:
    aiohttp = _aiohttp()
    delay = t0 + req.arrival * scale - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    if shared.dead is not None:
        res.status = "not_sent"
        on_done()
        return
    body = {
        "rid": req.id,
        "input_ids": ids,
        "stream": True,
        "routing_key": req.client,
        "sampling_params": {"max_new_tokens": req.output_len, "ignore_eos": True, "temperature": 0},
    }
    headers = {"X-SMG-Routing-Key": req.client}
    res.sent = time.perf_counter() - t0
    finished = False
    try:
        async with session.post(url + "/generate", json=body, headers=headers) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                res.status, res.error = "error", f"HTTP {resp.status}: {text}"
                return
            while True:
                try:
                    line = await asyncio.wait_for(resp.content.readline(), timeout=read_timeout_s)
                except asyncio.TimeoutError:
                    res.status, res.error = "error", f"no data for {read_timeout_s} s"
                    return
                except ValueError:  # a line longer than the read buffer
                    res.malformed += 1
                    continue
                if not line:
                    break
                kind, obj = _parse_chunk(line)
                if kind == "skip":
                    continue
                if kind == "done":
                    break
                if kind == "bad" or not isinstance(obj, dict):
                    res.malformed += 1
                    continue
                if "error" in obj and "meta_info" not in obj:
                    err = obj["error"]
                    msg = err.get("message") if isinstance(err, dict) else err
                    res.status, res.error = "error", f"server error: {msg}"
                    return
                meta = obj.get("meta_info")
                n = meta.get("completion_tokens") if isinstance(meta, dict) else None
                if not isinstance(n, int) or isinstance(n, bool):
                    res.malformed += 1
                    continue
                now = time.perf_counter() - t0
                if n > (res.chunk_tokens[-1] if res.chunk_tokens else 0):
                    res.chunk_times.append(now)
                    res.chunk_tokens.append(n)
                ct = meta.get("cached_tokens")
                if isinstance(ct, int) and not isinstance(ct, bool):
                    res.cached_tokens = ct
                if meta.get("finish_reason") is not None:
                    res.finish_reason = meta["finish_reason"]
                    finished = True
        if finished:
            res.status = "ok"
        else:
            res.status, res.error = "error", "the stream ended before the request finished"
    except aiohttp.ClientConnectorError as e:
        res.status, res.error = "error", f"connection failed: {e}"
        shared.dead = shared.dead or res.error
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as e:
        res.status, res.error = "error", f"server closed the connection: {type(e).__name__}: {e}"
        shared.dead = shared.dead or res.error
    except (aiohttp.ClientError, OSError) as e:
        res.status, res.error = "error", f"{type(e).__name__}: {e}"
    finally:
        on_done()


def _unsent(requests: Sequence[Request], time_scale: float) -> list[RequestResult]:
    return [RequestResult(r.id, r.client, r.arrival * time_scale, r.prompt_len, r.output_len) for r in requests]


async def drive(
    url: str,
    requests: Sequence[Request],
    *,
    time_scale: float = 1.0,
    vocab_size: int | None = None,
    read_timeout_s: float = 300.0,
    progress: Callable[[int, int], None] | None = None,
    policy: str | None = None,
    server_info: dict[str, Any] | None = None,
) -> LiveRun:
    """Send ``requests`` (sorted by arrival) at ``arrival * time_scale`` seconds after the start,
    stream the responses, and return the :class:`LiveRun` (module docstring). Does not raise for
    failures during the run: they are in the results and ``partial``."""
    aiohttp = _aiohttp()
    url = url.rstrip("/")
    shared = _Shared()
    results = _unsent(requests, time_scale)
    ids = [prompt_token_ids(r, vocab_size) for r in requests]
    total = len(requests)

    def on_done() -> None:
        shared.done += 1
        if progress is not None:
            progress(shared.done, total)

    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    to = aiohttp.ClientTimeout(total=None, sock_connect=30)
    start = time.perf_counter()
    t0 = start + 0.05  # a moment for the tasks to be scheduled before the first arrival
    # SGLang's chunks carry the cumulative output ids: long outputs make long SSE lines
    async with aiohttp.ClientSession(connector=conn, timeout=to, read_bufsize=1 << 22) as session:
        await asyncio.gather(
            *(
                _one(session, url, r, res, i, t0, time_scale, shared, read_timeout_s, on_done)
                for r, res, i in zip(requests, results, ids)
            )
        )
    run = LiveRun(url=url, policy=policy, time_scale=time_scale, results=results, server_info=dict(server_info or {}))
    run.wall_s = time.perf_counter() - start
    errs: list[str] = []
    for r in results:
        if r.error and r.error not in errs:
            errs.append(r.error)
    run.errors = errs[:20]
    run.partial = any(r.status != "ok" for r in results)
    return run


def run_requests(
    url: str,
    requests: Sequence[Request],
    *,
    time_scale: float = 1.0,
    vocab_size: int | None = None,
    read_timeout_s: float = 300.0,
    progress: Callable[[int, int], None] | None = None,
    policy: str | None = None,
    probe_timeout_s: float = 10.0,
    flush_cache: bool = False,
) -> LiveRun:
    """:func:`probe` the server, then :func:`drive` the requests (one event loop). With
    ``flush_cache`` the server's prefix cache is emptied first (SGLang's ``POST /flush_cache``),
    so runs of several policies on one server start from the same cold cache; a refusal is
    recorded in ``server_info["flush_cache"]``.

    Raises
    ------
    LiveRunError
        If the server is unreachable at the start (nothing sent; ``run`` is an empty partial
        run). Failures during the run do not raise: see ``LiveRun.partial``.
    """
    url = url.rstrip("/")

    async def main() -> LiveRun:
        try:
            info = await _probe(url, probe_timeout_s)
        except LiveRunError as e:
            results = _unsent(requests, time_scale)
            e.run = LiveRun(url=url, policy=policy, time_scale=time_scale, results=results, partial=True, errors=[str(e)])
            raise
        if flush_cache:
            info = dict(info)
            info["flush_cache"] = (await _flush(url, probe_timeout_s)) or "ok"
        return await drive(
            url,
            requests,
            time_scale=time_scale,
            vocab_size=vocab_size,
            read_timeout_s=read_timeout_s,
            progress=progress,
            policy=policy,
            server_info=info,
        )

    return asyncio.run(main())
