"""The tidy tables of a sweep: one row per cell (``results``), one row per (cell, client)
(``per_client``), written as Parquet (pyarrow) and CSV.

Columns of ``results``, in this order:

- ``cell`` (grid position), ``key`` (cache key), ``status`` (``ok`` / ``error`` / ``lost``),
  ``error`` (the exception, or empty);
- the cell's parameters, nested tables flattened with dots (``workload_params.program_rate``),
  ``tags.X`` as ``X``;
- the request count and every metric of the summary row
  (:func:`~prefixsched.theory.metrics.summarize` /
  :func:`~prefixsched.theory.metrics.summarize_cluster`), nested values flattened with dots
  (``max_service_gap.value``); lists and maps (``per_client``, ``requests_per_worker``,
  ``dispatcher``, ``jain_window``, pairs and intervals) as JSON text; a metric whose name is also
  a cell parameter or one of the columns above gets the prefix ``metric.`` in every row
  (``metric.policy``: the policy's name, ``metric.n_requests``: the requests simulated,
  ``metric.workers``, ``metric.status`` of a solve, ``metric.objective``, ``metric.bound``);
- the derived service rates and each probe's values as ``<probe>.<name>``.

Types per column: booleans, integers, floats (a column mixing ints and floats is float), or text
(anything else, JSON for non-strings); missing values are nulls (empty in CSV). CSV floats are
Python's shortest round-trip ``repr``. Same records, same bytes, in both formats (Parquet written
without statistics or timestamps that could vary).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["rows", "per_client_rows", "columns_of", "write_tables", "to_csv_bytes", "to_parquet_bytes"]

# summary keys kept as JSON text (maps keyed by client/worker, or short lists)
_JSON_KEYS = {"per_client", "requests_per_worker", "dispatcher", "jain_window", "pair", "interval", "rates",
              "order", "t", "service"}
_PARAM_SKIP = {"tags", "trace_sha256", "instance_sha256"}
# a metric named like a cell parameter or a bookkeeping column gets the prefix "metric." in every
# row (so a column means the same thing in every row, whichever keys a cell sets)
from prefixsched.sweep.cells import SIMULATE_KEYS, SOLVE_KEYS  # noqa: E402

_RESERVED = SIMULATE_KEYS | SOLVE_KEYS | {"cell", "key", "status", "error"}


def _flatten(d: dict[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and k not in _JSON_KEYS:
            _flatten(v, name + ".", out)
        elif isinstance(v, (list, tuple, dict)):
            out[name] = json.dumps(v, allow_nan=True)
        else:
            out[name] = v


def rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat dict per record (module docstring), in record order."""
    out = []
    for r in records:
        row: dict[str, Any] = {"cell": r["index"], "key": r["key"], "status": r["status"], "error": r.get("error")}
        cell = r["cell"]
        params: dict[str, Any] = {}
        _flatten({k: v for k, v in cell.items() if k not in _PARAM_SKIP}, "", params)
        for k, v in (cell.get("tags") or {}).items():
            params[k] = v if not isinstance(v, (list, dict)) else json.dumps(v)
        row.update(params)
        res = r.get("result")
        if res:
            metrics: dict[str, Any] = {"n_requests": res.get("n_requests")}
            _flatten(res.get("summary") or {}, "", metrics)
            _flatten(res.get("derived") or {}, "", metrics)
            _flatten(res.get("probes") or {}, "", metrics)
            for k, v in metrics.items():
                row[f"metric.{k}" if k.split(".")[0] in _RESERVED else k] = v
        out.append(row)
    return out


def per_client_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (cell, client) from the summary's ``per_client`` totals: ``cell``, ``key``,
    ``client`` and the totals (requests, prompt/cached/extend/output tokens, service in both
    views)."""
    out = []
    for r in records:
        res = r.get("result") or {}
        pc = (res.get("summary") or {}).get("per_client") or {}
        for client, tot in pc.items():
            out.append({"cell": r["index"], "key": r["key"], "client": client, **tot})
    return out


def columns_of(rs: list[dict[str, Any]]) -> list[str]:
    """Column names in order of first appearance."""
    return list(dict.fromkeys(k for r in rs for k in r))


def _kind(values: list[Any]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "string"
    if all(isinstance(v, bool) for v in vals):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return "int"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return "float"
    return "string"


def _typed(rs: list[dict[str, Any]]) -> tuple[list[str], dict[str, str], dict[str, list[Any]]]:
    cols = columns_of(rs)
    data: dict[str, list[Any]] = {}
    kinds: dict[str, str] = {}
    for c in cols:
        vals = [r.get(c) for r in rs]
        k = _kind(vals)
        if k == "float":
            vals = [None if v is None else float(v) for v in vals]
        elif k == "string":
            vals = [None if v is None else (v if isinstance(v, str) else json.dumps(v, allow_nan=True)) for v in vals]
        kinds[c] = k
        data[c] = vals
    return cols, kinds, data


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    return str(v)


def to_csv_bytes(rs: list[dict[str, Any]]) -> bytes:
    """The rows as CSV (header + one line per row; module docstring)."""
    cols, _kinds, data = _typed(rs)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for i in range(len(rs)):
        w.writerow([_csv_cell(data[c][i]) for c in cols])
    return buf.getvalue().encode("utf-8")


def to_parquet_bytes(rs: list[dict[str, Any]]) -> bytes:
    """The rows as a Parquet file (needs pyarrow: ``pip install 'prefixsched[sweep]'``).

    Raises
    ------
    InputError
        If pyarrow is not installed.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        from prefixsched.errors import InputError

        raise InputError("format", "Parquet needs pyarrow: pip install 'prefixsched[sweep]' (or write csv only)") from None
    cols, kinds, data = _typed(rs)
    types = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "string": pa.string()}
    table = pa.table({c: pa.array(data[c], type=types[kinds[c]]) for c in cols})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=False, store_schema=True)
    return buf.getvalue()


def write_tables(result: Any, out: Path, *, formats: tuple[str, ...] = ("parquet", "csv")) -> list[Path]:
    """Write ``results.<fmt>`` and ``per_client.<fmt>`` for each format, and ``sweep.json``
    (name, code version, cell count, failures with their errors: nothing that depends on the cache
    state), all
    atomically, into ``out``. Returns the paths written.

    Raises
    ------
    InputError
        An unknown format, or Parquet without pyarrow.
    """
    from prefixsched._io import atomic_write, write_json
    from prefixsched.errors import InputError

    for f in formats:
        if f not in ("parquet", "csv"):
            raise InputError("format", f"must be 'parquet' or 'csv', got {f!r}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, rs in (("results", result.rows()), ("per_client", per_client_rows(result.records))):
        for f in formats:
            data = to_parquet_bytes(rs) if f == "parquet" else to_csv_bytes(rs)
            p = out / f"{stem}.{f}"
            with atomic_write(p, "wb") as fh:
                fh.write(data)
            written.append(p)
    meta = {
        "name": result.name,
        "code_version": result.code,
        "cells": len(result.records),
        "ok": sum(r["status"] == "ok" for r in result.records),
        "failures": [{"cell": r["index"], "key": r["key"], "status": r["status"], "error": r["error"]} for r in result.failures],
    }
    write_json(out / "sweep.json", meta)
    written.append(out / "sweep.json")
    return written
