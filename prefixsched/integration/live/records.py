"""What a live run records: one :class:`RequestResult` per request and the run's facts.

Times are seconds on the client's monotonic clock (``time.perf_counter``), relative to the run's
start ``t0``. Definitions follow SGLang's ``bench_serving`` (sglang.md §4):

- **TTFT** = first chunk carrying output tokens - the moment just before the POST (``sent``);
  so it includes HTTP, queueing and prefill.
- **ITL**: for each later chunk, (gap to the previous chunk) / (new tokens in the chunk), one
  value per token.
- **TPOT** = (e2e - TTFT) / (output tokens - 1), None for a one-token output.
- **e2e** = last chunk - ``sent``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RequestResult", "LiveRun", "STATUSES"]

#: ``ok``: streamed to its end; ``error``: HTTP error, connection lost, server gone or the stream
#: ended without a finish; ``not_sent``: never sent (the run was aborted before its arrival).
STATUSES = ("ok", "error", "not_sent")


@dataclass
class RequestResult:
    """One request as the client saw it.

    Attributes
    ----------
    id, client:
        The request id (sent as ``rid``) and the client (sent as ``routing_key`` and header
        ``X-SMG-Routing-Key``).
    arrival:
        Scheduled send time (the workload's arrival times the time scale), seconds.
    sent:
        When the POST was issued (None if never sent).
    prompt_len, max_new_tokens:
        Tokens sent; output tokens asked for (``ignore_eos``: the server must produce all).
    chunk_times, chunk_tokens:
        Receive time of every SSE data chunk carrying output, and ``completion_tokens`` after it
        (cumulative).
    cached_tokens:
        ``meta_info.cached_tokens`` of the last chunk (the prefix hit SGLang reports), or None.
    finish_reason:
        ``meta_info.finish_reason`` of the last chunk (None if it never finished).
    malformed:
        SSE lines that could not be parsed (bad JSON, missing fields): counted, skipped.
    status, error:
        :data:`STATUSES`; the error message when ``status == "error"``.
    """

    id: str
    client: str
    arrival: float
    prompt_len: int
    max_new_tokens: int
    sent: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    cached_tokens: int | None = None
    finish_reason: Any = None
    malformed: int = 0
    status: str = "not_sent"
    error: str | None = None

    # -- derived -----------------------------------------------------------------------------

    @property
    def first_token(self) -> float | None:
        return self.chunk_times[0] if self.chunk_times else None

    @property
    def finish(self) -> float | None:
        return self.chunk_times[-1] if self.chunk_times and self.status == "ok" else None

    @property
    def output_tokens(self) -> int:
        return self.chunk_tokens[-1] if self.chunk_tokens else 0

    @property
    def ttft(self) -> float | None:
        if self.sent is None or self.first_token is None:
            return None
        return self.first_token - self.sent

    @property
    def e2e(self) -> float | None:
        f = self.finish
        return None if f is None or self.sent is None else f - self.sent

    @property
    def tpot(self) -> float | None:
        e, t, n = self.e2e, self.ttft, self.output_tokens
        if e is None or t is None or n <= 1:
            return None
        return (e - t) / (n - 1)

    def itl(self) -> list[float]:
        out: list[float] = []
        for j in range(1, len(self.chunk_times)):
            k = self.chunk_tokens[j] - self.chunk_tokens[j - 1]
            if k > 0:
                out.extend([(self.chunk_times[j] - self.chunk_times[j - 1]) / k] * k)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ttft=self.ttft, tpot=self.tpot, e2e=self.e2e, output_tokens=self.output_tokens)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "RequestResult":
        keys = {f for f in RequestResult.__dataclass_fields__}
        return RequestResult(**{k: v for k, v in d.items() if k in keys})


@dataclass
class LiveRun:
    """A live run: its requests and what went wrong.

    ``partial`` is True when the run did not complete (server unreachable or gone, requests not
    sent or not finished); ``errors`` holds the distinct error messages (first 20) and
    ``malformed_chunks`` the total of unparsable SSE lines.
    """

    url: str
    policy: str | None
    time_scale: float
    results: list[RequestResult]
    wall_s: float = 0.0
    partial: bool = False
    errors: list[str] = field(default_factory=list)
    server_info: dict[str, Any] = field(default_factory=dict)

    @property
    def malformed_chunks(self) -> int:
        return sum(r.malformed for r in self.results)

    def counts(self) -> dict[str, int]:
        c = {s: 0 for s in STATUSES}
        for r in self.results:
            c[r.status] += 1
        return c

    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.status == "ok"]

    def summary(self) -> dict[str, Any]:
        """TTFT / TPOT / ITL / e2e percentiles (seconds) over the finished requests, output
        throughput (tokens/s over first send to last token), cache hit rate (sum of
        ``cached_tokens`` / sum of prompt tokens)."""
        import numpy as np

        ok = self.ok()

        def pct(xs: list[float]) -> dict[str, float | None]:
            if not xs:
                return {"mean": None, "p50": None, "p90": None, "p99": None, "max": None}
            a = np.asarray(xs, dtype=float)
            return {
                "mean": float(a.mean()),
                "p50": float(np.percentile(a, 50)),
                "p90": float(np.percentile(a, 90)),
                "p99": float(np.percentile(a, 99)),
                "max": float(a.max()),
            }

        ttft = [r.ttft for r in ok if r.ttft is not None]
        tpot = [r.tpot for r in ok if r.tpot is not None]
        e2e = [r.e2e for r in ok if r.e2e is not None]
        itl = [x for r in ok for x in r.itl()]
        sent = [r.sent for r in self.results if r.sent is not None]
        last = [r.chunk_times[-1] for r in self.results if r.chunk_times]
        out_tokens = sum(r.output_tokens for r in self.results)
        span = (max(last) - min(sent)) if sent and last else 0.0
        prompt = sum(r.prompt_len for r in ok)
        cached = sum(r.cached_tokens or 0 for r in ok)
        return {
            "requests": self.counts(),
            "ttft_s": pct(ttft),
            "tpot_s": pct(tpot),
            "itl_s": pct(itl),
            "e2e_s": pct(e2e),
            "output_throughput_tok_s": (out_tokens / span) if span > 0 else None,
            "hit_rate": (cached / prompt) if prompt else None,
            "malformed_chunks": self.malformed_chunks,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "policy": self.policy,
            "time_scale": self.time_scale,
            "wall_s": self.wall_s,
            "partial": self.partial,
            "errors": list(self.errors),
            "server_info": self.server_info,
            "summary": _finite(self.summary()),
            "requests": [_finite(r.to_dict()) for r in self.results],
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "LiveRun":
        return LiveRun(
            url=d["url"],
            policy=d.get("policy"),
            time_scale=float(d.get("time_scale", 1.0)),
            results=[RequestResult.from_dict(r) for r in d["requests"]],
            wall_s=float(d.get("wall_s", 0.0)),
            partial=bool(d.get("partial", False)),
            errors=list(d.get("errors", [])),
            server_info=dict(d.get("server_info", {})),
        )


def _finite(x: Any) -> Any:
    """JSON-safe: non-finite floats become None (``allow_nan=False`` writers)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
