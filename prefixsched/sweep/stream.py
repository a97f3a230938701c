"""Streaming trace files: one JSON line per request record, written record by record.

``Trace.to_dict()`` / ``ClusterTrace.to_dict()`` build one dict per request and then one JSON
string of the whole run: at 1M requests that is the trace in memory two more times (about 1 GiB
of dicts, then the text). The writer here never holds more than one record's line (plus one
worker's step clock, written as one line) besides the trace itself.

Format (JSON Lines, gzip-compressed when the name ends in ``.gz``; canonical JSON per line):

- line 1, header: ``{"format": "prefixsched.trace-stream/1", "workers": D, "dispatcher": ...,
  "dispatch_meta": ...}`` (``dispatcher`` and ``dispatch_meta`` are None for one worker);
- then one line per worker: ``{"worker": w, "policy": ..., "meta": ..., "step_start": [...],
  "step_end": [...]}`` (plus ``"step_kinds"`` when not every step is a mixed step);
- then one line per request record, in instance order: ``{"worker": w, <RequestRecord fields>}``.

:func:`read_trace_stream` rebuilds the :class:`~prefixsched.theory.trace.Trace` list (and the
dispatch map); ``to_dict()`` of the result equals the original's (tested).
Decision: the file format is this module's; the lead's ``theory.trace`` keeps its ``to_dict``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import astuple, fields
from typing import Any, Iterator

from prefixsched._io import atomic_write
from prefixsched.errors import InputError
from prefixsched.theory.trace import RequestRecord, Trace

__all__ = ["write_trace_stream", "write_cluster_trace_jsonl", "read_trace_stream", "FORMAT"]

FORMAT = "prefixsched.trace-stream/1"
_FIELDS = tuple(f.name for f in fields(RequestRecord))


def _line(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n"


def write_trace_stream(path: str | os.PathLike[str], trace: Any) -> int:
    """Write a :class:`Trace` or a :class:`~prefixsched.reference.cluster.ClusterTrace` to
    ``path`` (module docstring), atomically. Returns the number of request lines.

    Raises
    ------
    InputError
        If ``trace`` is neither.
    """
    if isinstance(trace, Trace):
        traces, worker_of, header = [trace], None, {"workers": 1, "dispatcher": None, "dispatch_meta": None}
        order = [(0, r) for r in trace.requests]
    elif hasattr(trace, "traces") and hasattr(trace, "dispatch"):
        traces = list(trace.traces)
        worker_of = trace.dispatch
        header = {"workers": len(traces), "dispatcher": trace.dispatcher, "dispatch_meta": trace.meta}
        by_id = {}
        for w, t in enumerate(traces):
            for r in t.requests:
                by_id[r.id] = (w, r)
        order = [by_id[rid] for rid in worker_of]  # instance order (dispatch is in instance order)
    else:
        raise InputError("trace", f"must be a Trace or a ClusterTrace, got {type(trace).__name__}")
    gz = os.fspath(path).endswith(".gz")
    n = 0
    with atomic_write(path, "wb") as raw:
        fh: Any = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if gz else raw
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="\n", write_through=False)
        try:
            text.write(_line({"format": FORMAT, **header}))
            for w, t in enumerate(traces):
                wl = {"worker": w, "policy": t.policy, "meta": t.meta, "step_start": t.step_start, "step_end": t.step_end}
                if t.step_kinds is not None:
                    wl["step_kinds"] = t.step_kinds
                text.write(_line(wl))
            for w, r in order:
                d = dict(zip(_FIELDS, astuple(r)))
                d["worker"] = w
                text.write(_line(d))
                n += 1
            text.flush()
        finally:
            text.detach()
            if gz:
                fh.close()
    return n


write_cluster_trace_jsonl = write_trace_stream


def _lines(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    opener: Any = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for k, line in enumerate(fh, 1):
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{os.fspath(path)}:{k}", f"not JSON: {e}") from None


def read_trace_stream(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file of :func:`write_trace_stream`: ``{"traces": [Trace per worker], "dispatch":
    {request id: worker}, "dispatcher": ..., "dispatch_meta": ...}``.

    Raises
    ------
    InputError
        Not this format, or a malformed line (naming the file and line).
    """
    it = _lines(path)
    head = next(it, None)
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise InputError(os.fspath(path), f"not a {FORMAT} file")
    D = int(head["workers"])
    traces: list[Trace] = []
    for _ in range(D):
        d = next(it)
        traces.append(Trace(policy=d["policy"], requests=[], step_start=d["step_start"], step_end=d["step_end"], meta=d["meta"],
                            step_kinds=d.get("step_kinds")))
    dispatch: dict[str, int] = {}
    for d in it:
        w = d.pop("worker")
        rec = RequestRecord(**d)
        traces[w].requests.append(rec)
        dispatch[rec.id] = w
    return {"traces": traces, "dispatch": dispatch, "dispatcher": head["dispatcher"], "dispatch_meta": head["dispatch_meta"]}
