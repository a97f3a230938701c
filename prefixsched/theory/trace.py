"""The simulator's output: what happened to every request and when every step ran.

A :class:`Trace` is raw facts only (times, token counts, step indices). Every metric and every
service curve is computed from it by :mod:`prefixsched.theory.metrics`; the independent checker
(:mod:`prefixsched.theory.schedule`) replays it against its :class:`~prefixsched.theory.model.Instance`.

Step semantics (DESIGN.md; issue #2 item 6). Steps are numbered 0, 1, 2, ... and step ``s`` runs
over ``[step_start[s], step_end[s])``; a step has zero length only where the cost model says so (the
token-unit clock of :meth:`CostModel.token_units` makes decode-only steps free). A request admitted in step ``a`` is prefilled in that step
(``extend_tokens`` uncached prompt tokens, ``cached_tokens`` reused from the prefix cache) and its
first output token appears at ``step_end[a]``; it then decodes one token in each following step, so
it produces output token ``j`` (0-based) in step ``a + j`` and finishes in step
``finish_step = a + output_len - 1`` at ``step_end[finish_step]``. Hence the per-client service
timeline is fully determined by the request records: request r adds ``w_e * extend_tokens`` in step
``admit_step`` and ``w_q`` in each step ``admit_step .. finish_step``.

Steps in which nothing runs are not recorded: the engine jumps to the next arrival.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from prefixsched.errors import InputError

__all__ = ["RequestRecord", "Trace"]


@dataclass(frozen=True)
class RequestRecord:
    """What happened to one request. Times in seconds, lengths in tokens.

    Attributes
    ----------
    id, client, arrival:
        Copied from the request.
    admit:
        Start time of the step that admitted (prefilled) it.
    first_token:
        End time of that step (TTFT = first_token - arrival).
    finish:
        End time of the step that produced its last output token.
    admit_step, finish_step:
        Step indices (``finish_step = admit_step + output_len - 1``).
    prompt_len, cached_tokens, extend_tokens, output_len:
        ``cached_tokens + extend_tokens == prompt_len``; ``cached_tokens`` is the prefix hit
        claimed by the engine at admission.
    """

    id: str
    client: str
    arrival: float
    admit: float
    first_token: float
    finish: float
    admit_step: int
    finish_step: int
    prompt_len: int
    cached_tokens: int
    extend_tokens: int
    output_len: int


@dataclass
class Trace:
    """Per-request records plus the step clock of one simulator run.

    Attributes
    ----------
    policy:
        Name of the policy that produced it, with its parameters (``{"name": ..., **params}``).
    requests:
        One :class:`RequestRecord` per request of the instance, in instance order.
    step_start, step_end:
        Seconds; ``step_start[s] <= step_end[s] <= step_start[s+1]``.
    meta:
        Free-form run facts: seed, cache statistics (hit tokens, evicted tokens), wall time is
        *never* stored here (it would break byte-identical output).
    """

    policy: dict[str, Any]
    requests: list[RequestRecord]
    step_start: list[float]
    step_end: list[float]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return len(self.step_start)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "requests": [asdict(r) for r in self.requests],
            "step_start": list(self.step_start),
            "step_end": list(self.step_end),
            "meta": self.meta,
        }

    @staticmethod
    def from_dict(d: Any) -> "Trace":
        if not isinstance(d, dict):
            raise InputError("trace", f"must be a JSON object, got {type(d).__name__}")
        for key in ("policy", "requests", "step_start", "step_end"):
            if key not in d:
                raise InputError(f"trace.{key}", "missing")
        try:
            records = [RequestRecord(**r) for r in d["requests"]]
        except TypeError as e:
            raise InputError("trace.requests", str(e)) from None
        return Trace(
            policy=dict(d["policy"]),
            requests=records,
            step_start=[float(x) for x in d["step_start"]],
            step_end=[float(x) for x in d["step_end"]],
            meta=dict(d.get("meta", {})),
        )
