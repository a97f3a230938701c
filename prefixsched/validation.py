"""The one input-validation layer: strict JSON text, bounded numbers, documented ranges (issue #7).

Every loader of untrusted data goes through this module: the Mooncake JSONL loader
(:func:`prefixsched.reference.traces.load_mooncake`), the JSON instance loader
(:func:`prefixsched.instance_io.load_instance` -> :meth:`prefixsched.theory.model.Instance.from_dict`)
and, for every instance however it was built, :meth:`prefixsched.theory.model.Instance.validate`
(called by ``Instance.__post_init__``), which checks the ranges below on every request, the cost
model and the limits. A new loader inherits the checks by building an ``Instance`` and by reading
its text with :func:`read_text` / :func:`parse_json` and its fields with :func:`number`,
:func:`integer` and :func:`int_list`.

It sits below every area (like :mod:`prefixsched.errors`): it imports nothing from prefixsched but
the errors, so ``theory`` may use it.

What is refused, and how it is reported (always :class:`~prefixsched.errors.InputError` naming the
field, the value and, where known, ``file:line`` or the request index):

- bytes that are not UTF-8 (the message gives the byte, its offset and its line);
- JSON syntax errors, ``NaN``/``Infinity`` literals (not JSON, but Python's parser takes them),
  number literals a float cannot hold (``1e400``), integer literals Python will not convert
  (more than 4,300 digits), and nesting deeper than :data:`MAX_JSON_DEPTH`. Such number literals
  are kept as :class:`JSONNumber` placeholders during parsing, so the *field* reader that meets
  one names its field (``timestamp: must be a finite number ... got 1e400``); a long integer that
  Python does hold (``10**400``) stays an exact int, compared with the range without any float
  conversion (``got <integer of about 401 digits>``);
- numbers that are not finite, booleans where numbers are expected, and values outside the
  documented ranges.

Documented ranges (the limits are far above any real workload and keep every derived quantity
finite: with all of them at their maximum a step still lasts under 1e30 s, so no sum, product or
difference the simulator, the checker or the solvers form can overflow to ``inf`` or become ``nan``):

==============================  ====================================  ==============================
quantity                        range                                 constant
==============================  ====================================  ==============================
arrival time                    ``0 .. 1e12`` s or token units        :data:`MAX_ARRIVAL`
Mooncake ``timestamp``          ``0 .. 1e13`` ms (= 1e10 s)           :data:`MAX_TIMESTAMP_MS`
prompt length                   ``1 .. 10**7`` tokens                 :data:`MAX_PROMPT_TOKENS`
output length                   ``1 .. 10**6`` tokens                 :data:`MAX_OUTPUT_TOKENS`
token id, block id              ``0 .. 2**63 - 1``                    :data:`MAX_TOKEN_ID`
block size, page size           ``1 .. 2**20`` tokens                 :data:`MAX_BLOCK_SIZE`
token limits (KV pool, budgets)  ``1 .. 10**15`` tokens                :data:`MAX_LIMIT_TOKENS`
``max_running_requests``        ``1 .. 10**7``                        :data:`MAX_RUNNING_REQUESTS`
cost-model seconds parameters   ``0 .. 1e3`` s (per step / token)     :data:`MAX_COST_SECONDS`
cost-model ``c_attn``           ``0 .. 1e3`` per token                :data:`MAX_C_ATTN`
service weights ``w_e, w_q``    ``0 .. 1e6``                          :data:`MAX_WEIGHT`
==============================  ====================================  ==============================

Why these times: a Mooncake trace may span ``1e10`` s (317 years; Unix-epoch timestamps in ms,
~1.7e12, fit), and float64 still resolves 2e-6 s at that clock, finer than any step of the default
cost model. Instances in the sequential models' token units read the same trace ~59 units per
second (``prefixsched gap --source trace``), hence ``1e12`` for instance arrivals; every time of
such an instance (plus its work) stays an exact float64 integer (below 2**53) and below cpsat's
2**50.
"""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
import sys
from typing import Any

from prefixsched.errors import InputError

__all__ = [
    "MAX_ARRIVAL",
    "MAX_TIMESTAMP_MS",
    "MAX_PROMPT_TOKENS",
    "MAX_OUTPUT_TOKENS",
    "MAX_TOKEN_ID",
    "MAX_BLOCK_SIZE",
    "MAX_LIMIT_TOKENS",
    "MAX_RUNNING_REQUESTS",
    "MAX_COST_SECONDS",
    "MAX_C_ATTN",
    "MAX_WEIGHT",
    "MAX_INT_DIGITS",
    "MAX_JSON_DEPTH",
    "JSONNumber",
    "show",
    "decode_utf8",
    "read_text",
    "parse_json",
    "number",
    "integer",
    "int_list",
]

MAX_ARRIVAL = 1e12
MAX_TIMESTAMP_MS = 1e13
MAX_PROMPT_TOKENS = 10**7
MAX_OUTPUT_TOKENS = 10**6
MAX_TOKEN_ID = 2**63 - 1
MAX_BLOCK_SIZE = 2**20
MAX_LIMIT_TOKENS = 10**15
MAX_RUNNING_REQUESTS = 10**7
MAX_COST_SECONDS = 1e3
MAX_C_ATTN = 1e3
MAX_WEIGHT = 1e6
#: In a document with an integer literal Python refuses (over 4,300 digits), every integer literal
#: longer than this becomes a JSONNumber (2**63 has 19 digits).
MAX_INT_DIGITS = 30
#: Deepest JSON nesting accepted (the formats need 4: instance -> requests -> request -> prompt).
MAX_JSON_DEPTH = 64


class JSONNumber:
    """A JSON number literal that has no faithful Python value: ``NaN``/``Infinity``, a float
    literal out of float range (``1e400``) or an integer literal of more than
    :data:`MAX_INT_DIGITS` digits. :func:`parse_json` puts one where the literal was; every field
    reader (:func:`number`, :func:`integer`) refuses it, naming its field."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        t = self.text
        if len(t) > 24:
            digits = sum(ch.isdigit() for ch in t)
            return f"{t[:12]}...({digits} digits)"
        return t


class _Repr(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxlist = self.maxtuple = 8
        self.maxdict = 4
        self.maxstring = 60
        self.maxother = 60

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 100:  # repr of a > 4,300-digit int raises; long ones are unreadable
            return f"<integer of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return repr(x)

    def repr_float(self, x: float, level: int) -> str:
        return repr(x)


_REPR = _Repr()


def show(value: Any) -> str:
    """A short, safe ``repr`` of any value for an error message: bounded length, bounded depth
    (a 100k-deep list prints as ``[[[...]]]``), huge integers by their digit count."""
    try:
        text = _REPR.repr(value)
    except Exception:  # pragma: no cover - a foreign object with a broken __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 120 else text[:117] + "..."


# ---------------------------------------------------------------------------------------------
# text and JSON


def decode_utf8(data: bytes, where: str | None = None, *, field: str = "encoding") -> str:
    """``data`` decoded as UTF-8; an :class:`InputError` naming the bad byte, its offset and
    line (``where`` is prefixed, e.g. the file name) otherwise."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(
            field, f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} (line {line}): {e.reason}", where
        ) from None


def read_text(path: str | os.PathLike[str], what: str = "file") -> str:
    """Read a whole file as UTF-8 text. :class:`InputError` (field ``path``) if it cannot be read
    (missing, a directory, no permission) or is not UTF-8 (field ``encoding``)."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise InputError("path", f"cannot read {what} {name!r}: {e.strerror or e}") from None
    return decode_utf8(data, name)


def _parse_int(text: str) -> Any:
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        return JSONNumber(text)
    return int(text)


def _parse_float(text: str) -> Any:
    v = float(text)
    return v if math.isfinite(v) else JSONNumber(text)


#: The fast decoder parses integers in C (an int of up to 4,300 digits is an exact Python int, which
#: every field reader compares without converting it); only a document with a longer integer
#: literal, which int() refuses, is parsed again with the hook that makes it a JSONNumber.
_FAST = json.JSONDecoder(parse_float=_parse_float, parse_constant=JSONNumber)
_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=JSONNumber)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def _depth(text: str) -> int:
    """Deepest bracket nesting of JSON ``text`` (strings ignored)."""
    import numpy as np

    s = _STRINGS.sub("", text).encode("utf-8", "surrogatepass")
    b = np.frombuffer(s, dtype=np.uint8)
    step = (b == ord("[")).astype(np.int64) + (b == ord("{")) - (b == ord("]")) - (b == ord("}"))
    return int(np.cumsum(step).max(initial=0))


def parse_json(text: str, where: str | None = None, *, first_line: int = 1, field: str = "json") -> Any:
    """Parse one JSON document strictly (module docstring).

    Parameters
    ----------
    text:
        The JSON text.
    where:
        The file name (or ``file:line`` for one line of a JSONL file) used in messages.
    first_line:
        Line number of ``text``'s first line in its file (for ``where`` of syntax errors: a
        multi-line document reports ``file:line``; pass ``where`` = ``file:line`` and
        ``first_line=0`` for one JSONL line).
    field:
        The field named by the errors (``json``; the JSONL loader says ``line``).

    Returns
    -------
    The parsed value; literals without a faithful Python value are :class:`JSONNumber`.

    Raises
    ------
    InputError
        Field ``field``: a syntax error (with line and column), nesting deeper than
        :data:`MAX_JSON_DEPTH`.
    """

    def loc(lineno: int) -> str | None:
        if where is None:
            return None
        return f"{where}:{lineno + first_line - 1}" if first_line else where

    try:
        try:
            value = _FAST.decode(text)
        except json.JSONDecodeError:
            raise
        except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
            value = _DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise InputError(field, f"not valid JSON: {e.msg} (column {e.colno})", loc(e.lineno)) from None
    except RecursionError:
        raise InputError(field, f"JSON nested deeper than {MAX_JSON_DEPTH} levels", where) from None
    # valid JSON here, so stripping its strings leaves exactly its brackets
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _depth(text) > MAX_JSON_DEPTH:
        raise InputError(field, f"JSON nested deeper than {MAX_JSON_DEPTH} levels", where)
    return value


# ---------------------------------------------------------------------------------------------
# field readers


_FLOAT_MAX = sys.float_info.max


def _fmt_bound(x: float | int) -> str:
    if isinstance(x, int) and abs(x) >= 10**6:
        e = len(str(abs(x))) - 1
        if x == 10**e:
            return f"10**{e}"
        if x == 2**63 - 1:
            return "2**63 - 1"
        if x & (x - 1) == 0:
            return f"2**{x.bit_length() - 1}"
    return f"{x:g}" if isinstance(x, float) else str(x)


def _range_text(lo: float | int | None, hi: float | int | None, lo_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{_fmt_bound(lo)}, {_fmt_bound(hi)}]"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {_fmt_bound(lo)}"
    if hi is not None:
        return f"<= {_fmt_bound(hi)}"
    return "finite"


def number(
    v: Any,
    field: str,
    *,
    lo: float | int | None = None,
    hi: float | int | None = None,
    lo_open: bool = False,
    where: str | None = None,
    unit: str = "",
) -> float:
    """A finite JSON/Python number within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), as float.

    Raises :class:`InputError` naming ``field`` (and ``where``): a bool, a non-number, a
    :class:`JSONNumber`, ``nan``/``inf`` or a value outside the range (an int of any size is
    compared exactly, never converted to an overflowing float).
    """
    t = type(v)
    if (t is float and math.isfinite(v)) or (t is int and -_FLOAT_MAX <= v <= _FLOAT_MAX):  # the fast path
        if (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or v <= hi):
            return float(v)
    u = f" ({unit})" if unit else ""
    rng = f" {_range_text(lo, hi, lo_open)}" if (lo is not None or hi is not None) else ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        kind = "finite number" if isinstance(v, JSONNumber) else "number"
        raise InputError(field, f"must be a {kind}{rng}{u}, got {show(v)}", where)
    if isinstance(v, float) and not math.isfinite(v):
        raise InputError(field, f"must be a finite number{rng}{u}, got {v!r}", where)
    if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
        raise InputError(field, f"must be {_range_text(lo, hi, lo_open)}{u}, got {show(v)}", where)
    if not -_FLOAT_MAX <= v <= _FLOAT_MAX:  # an exact int beyond any float: it would overflow
        raise InputError(field, f"must be a finite number{rng}{u} (a float64), got {show(v)}", where)
    return float(v)


def integer(
    v: Any,
    field: str,
    *,
    lo: int | None = None,
    hi: int | None = None,
    where: str | None = None,
    unit: str = "",
) -> int:
    """An integer within ``[lo, hi]``; an integral float (``5.0``) is accepted as its int.

    Raises :class:`InputError` naming ``field`` (and ``where``) otherwise.
    """
    if type(v) is int and (lo is None or v >= lo) and (hi is None or v <= hi):  # the fast path
        return v
    u = f" ({unit})" if unit else ""
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        rng = f" {_range_text(lo, hi, False)}" if (lo is not None or hi is not None) else ""
        raise InputError(field, f"must be an integer{rng}{u}, got {show(v)}", where)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise InputError(field, f"must be {_range_text(lo, hi, False)}{u}, got {show(v)}", where)
    return v


def int_list(
    v: Any,
    field: str,
    *,
    lo: int | None = None,
    hi: int | None = None,
    max_len: int | None = None,
    where: str | None = None,
) -> list[int]:
    """A JSON list of integers in ``[lo, hi]`` (at most ``max_len`` of them).

    Raises :class:`InputError` naming ``field`` or ``field[i]`` (and ``where``).
    """
    if not isinstance(v, list):
        raise InputError(field, f"must be a list of integers, got {type(v).__name__} {show(v)}", where)
    if max_len is not None and len(v) > max_len:
        raise InputError(field, f"must hold at most {_fmt_bound(max_len)} entries, got {len(v)}", where)
    out = v
    for x in v:  # fast path: plain ints in range need no copy
        if type(x) is not int or (lo is not None and x < lo) or (hi is not None and x > hi):
            out = [integer(x, f"{field}[{i}]", lo=lo, hi=hi, where=where) for i, x in enumerate(v)]
            break
    return out
