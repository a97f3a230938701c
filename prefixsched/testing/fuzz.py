"""Mutation fuzzing of the input files and the ``prefixsched`` command (issue #7).

A *case* is a mutated input file (a Mooncake JSONL trace or a JSON instance) plus a cheap command
line that reads it. Mutations start from a valid seed (a small synthetic trace or instance, or a
window of a real trace) and apply 1-3 of:

- **structure**: a random node of the parsed JSON replaced by an extreme literal (``10**400``, a
  5,000-digit integer, ``1e400``, ``NaN``, ``Infinity``, ``-1``, ``2**63``, ``1e308``, ...), by a
  value of another type, by deep nesting (up to 100k brackets) or a long list; a key deleted or
  added; a number nudged (±1, x10, negated);
- **bytes**: a byte flipped, random or non-UTF-8 bytes inserted, a span deleted, the text
  truncated, lines duplicated or swapped, a UTF-8 BOM, or the whole file replaced by binary
  garbage.

:func:`run_cli` runs one command line in-process (``main`` is passed in: this module sits in the
``testing`` layer, below the CLI) with a wall-clock limit and classifies the outcome:

- ``exit0`` / ``exit2``: accepted, or refused with exactly one ``prefixsched...: error:`` line;
- ``traceback``: an exception escaped ``main`` (or "Traceback" on stderr);
- ``hang``: the command ran past the time limit;
- ``bad-exit``: another exit status; ``bad-stderr``: exit 2 without exactly one error line;
- ``leftover``: a temporary file was left in the output directory, or an output is not valid JSON.

Everything is driven by one ``random.Random``, so a seed reproduces a case exactly; the hypothesis
tests (``tests/test_fuzz_cli.py``) draw that ``Random`` with ``st.randoms()`` and the benchmark
(``benchmarks/fuzz_cli.py``) seeds it.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import signal
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EXTREMES",
    "Raw",
    "dump",
    "seed_trace",
    "seed_instance",
    "mutate",
    "make_case",
    "Case",
    "Result",
    "run_cli",
    "OUTCOMES",
    "GOOD",
]

#: Every outcome :func:`run_cli` reports; :data:`GOOD` are the acceptable ones.
OUTCOMES = ("exit0", "exit2", "traceback", "hang", "bad-exit", "bad-stderr", "leftover")
GOOD = ("exit0", "exit2")


class Raw:
    """A JSON literal written verbatim by :func:`dump` (for text ``json.dumps`` cannot produce)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


#: Extreme values that are still inside the documented ranges (the input may be accepted).
VALID_EXTREMES: tuple[str, ...] = (
    "0", "1", "2", "511", "512", "513", "1e13", "9999999999999", "1000000000000", str(2**63 - 1), "1000", "999.5",
    "1e12", "0.001", "1e-300", "5e-324", "100000", "479999", "1000000", "10000000", "3.0", "7.000000000000001",
)

#: Extreme literals a mutation may put anywhere (as raw JSON text).
EXTREMES: tuple[str, ...] = (
    "1" + "0" * 400,  # 10**400
    "7" * 5000,  # 5,000 digits (Python refuses int() beyond 4,300)
    "-" + "9" * 40,
    "1e400",
    "-1e400",
    "1e308",
    "1e-320",
    "NaN",
    "Infinity",
    "-Infinity",
    "-1",
    "0",
    "-0.0",
    "0.5",
    "2.5e12",
    str(2**63),
    str(2**64 + 1),
    "1e13",
    "4000000000000",
    "true",
    "null",
    '""',
    '"x"',
    "[]",
    "{}",
    '"' + "y" * 5000 + '"',
)


def dump(obj: Any) -> str:
    """JSON text of ``obj`` where :class:`Raw` leaves are written verbatim (iterative enough for
    the depths the mutations build: deep nesting is itself a Raw literal)."""
    if isinstance(obj, Raw):
        return obj.text
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {dump(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(dump(v) for v in obj) + "]"
    return json.dumps(obj)


# ---------------------------------------------------------------------------------------------
# seeds


def seed_trace(rng: random.Random, real_lines: Sequence[str] | None = None) -> str:
    """A valid small Mooncake JSONL trace: 3-6 lines sharing prefixes, or a window of
    ``real_lines`` (lines of a real trace) when given (half of the time)."""
    if real_lines and rng.random() < 0.5:
        n = rng.randint(3, 6)
        start = rng.randrange(max(1, len(real_lines) - n))
        return "".join(line if line.endswith("\n") else line + "\n" for line in real_lines[start : start + n])
    n = rng.randint(3, 6)
    lines = []
    t = 0
    for i in range(n):
        blocks = rng.randint(1, 3)
        n_in = (blocks - 1) * 512 + rng.randint(1, 512)
        ids = [0] + [rng.randint(1, 4) * 10 + k for k in range(blocks - 1)]
        d = {"timestamp": t, "input_length": n_in, "output_length": rng.randint(1, 40), "hash_ids": ids}
        if rng.random() < 0.3:
            d["client"] = f"u{i % 2}"
        lines.append(json.dumps(d) + "\n")
        t += rng.choice([0, 1, 250, 3000])
    return "".join(lines)


def seed_instance(rng: random.Random) -> str:
    """A valid small JSON instance (prefixsched format): 3-5 requests, token-list or block
    prompts, token-unit or default cost model."""
    n = rng.randint(3, 5)
    block = rng.random() < 0.4
    reqs = []
    t = 0.0
    for i in range(n):
        t += rng.choice([0, 1, 3])
        if block:
            k = rng.randint(1, 3)
            prompt: Any = {"blocks": [0] + [rng.randint(1, 3) for _ in range(k - 1)], "length": (k - 1) * 4 + rng.randint(1, 4),
                           "block_size": 4}
        else:
            prompt = [1, 2] + [rng.randint(3, 6) for _ in range(rng.randint(1, 4))]
        reqs.append({"id": f"q{i}", "client": f"c{i % 2}", "arrival": t,
                     "prompt": prompt, "output_len": rng.randint(1, 4)})
    d: dict[str, Any] = {"requests": reqs, "limits": {"kv_capacity_tokens": 1000, "page_size": 1}}
    if rng.random() < 0.7:
        d["cost_model"] = {"prefill_base_s": 0.0, "prefill_per_token_s": 1.0, "c_attn": rng.choice([0.0, 0.5]),
                           "decode_base_s": 0.0, "decode_per_request_s": 0.0, "decode_per_context_token_s": 0.0}
    if rng.random() < 0.3:
        d["weights"] = {"w_e": 1.0, "w_q": 2.0}
    return json.dumps(d, indent=1)


# ---------------------------------------------------------------------------------------------
# mutations


def _paths(obj: Any, prefix: tuple = (), out: list | None = None, depth: int = 0) -> list[tuple]:
    out = [] if out is None else out
    out.append(prefix)
    if depth < 6:
        if isinstance(obj, dict):
            for k, v in obj.items():
                _paths(v, prefix + (k,), out, depth + 1)
        elif isinstance(obj, list):
            for i, v in enumerate(obj[:8]):
                _paths(v, prefix + (i,), out, depth + 1)
    return out


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _set(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    _get(obj, path[:-1])[path[-1]] = value
    return obj


def _other_value(rng: random.Random, old: Any) -> Any:
    r = rng.random()
    if r < 0.25:
        return Raw(rng.choice(EXTREMES))
    if r < 0.45:
        return Raw(rng.choice(VALID_EXTREMES))
    if r < 0.51:
        d = rng.choice([2, 30, 63, 65, 70, 1000, 100_000])
        return Raw("[" * d + rng.choice(["0", "", "1e400"]) + "]" * d)
    if r < 0.55:
        return [rng.randint(-5, 10**6) for _ in range(rng.choice([0, 1, 50, 3000]))]
    if r < 0.85 and isinstance(old, (int, float)) and not isinstance(old, bool):
        op = rng.choice(["+1", "-1", "x10", "neg", "half", "x1e6"])
        try:
            return {"+1": lambda: old + 1, "-1": lambda: old - 1, "x10": lambda: old * 10, "neg": lambda: -old,
                    "half": lambda: old / 2, "x1e6": lambda: old * 10**6}[op]()
        except OverflowError:  # a huge int from an earlier mutation
            return Raw(rng.choice(EXTREMES))
    return rng.choice([True, False, None, "s", {"a": 1}, [], 3.25, -7, ""])


def _mutate_structure(obj: Any, rng: random.Random) -> Any:
    paths = _paths(obj)
    path = rng.choice(paths)
    node = _get(obj, path)
    r = rng.random()
    if r < 0.12 and path and isinstance(_get(obj, path[:-1]), dict):
        del _get(obj, path[:-1])[path[-1]]  # delete a key
        return obj
    if r < 0.2 and isinstance(node, dict):
        node[rng.choice(["extra", "client", "timestamp", "id", "blocks", "cost_model"])] = _other_value(rng, None)
        return obj
    if r < 0.25 and isinstance(node, list) and node:
        node.append(node[rng.randrange(len(node))])
        return obj
    return _set(obj, path, _other_value(rng, node))


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    r = rng.random()
    n = len(data)
    pos = rng.randrange(n + 1) if n else 0
    if r < 0.15 and n:
        b = bytearray(data)
        b[rng.randrange(n)] ^= 1 << rng.randrange(8)
        return bytes(b)
    if r < 0.3:
        junk = rng.choice([b"\xff", b"\xc3\x28", b"\x00", b"\xe2\x82", b"\xed\xa0\x80", b"}", b"]]", b",",
                           bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))])
        return data[:pos] + junk + data[pos:]
    if r < 0.4 and n:
        end = min(n, pos + rng.randint(1, 40))
        return data[:pos] + data[end:]
    if r < 0.5:
        return data[:pos]  # truncation
    if r < 0.62:
        lines = data.split(b"\n")
        if len(lines) > 1:
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if rng.random() < 0.5:
                lines[i], lines[j] = lines[j], lines[i]
            else:
                lines.insert(i, lines[j])
        return b"\n".join(lines)
    if r < 0.68:
        return b"\xef\xbb\xbf" + data
    if r < 0.74:
        return data[:pos] + b"\n\n  \n" + data[pos:]
    if r < 0.78:
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 10, 300, 2000])))
    if r < 0.9:
        return data.replace(b", ", b",", rng.randint(1, 5)).replace(b": ", b":\t", rng.randint(0, 3))  # still valid
    return data + b"\n" if rng.random() < 0.5 else data.rstrip(b"\n")


def mutate(text: str, rng: random.Random, *, jsonl: bool) -> bytes:
    """Apply 0-3 random mutations (module docstring) to the valid JSON/JSONL ``text`` (0: the
    valid seed itself, one case in ten, so the accepting paths are exercised too)."""
    data = text.encode("utf-8")
    for _ in range(rng.choice([0, 1, 1, 1, 1, 2, 2, 2, 3, 3])):
        if rng.random() < 0.7:
            try:
                if jsonl:
                    lines = data.decode("utf-8").split("\n")
                    idx = [i for i, ln in enumerate(lines) if ln.strip()]
                    if not idx:
                        continue
                    i = rng.choice(idx)
                    lines[i] = dump(_mutate_structure(json.loads(lines[i]), rng))
                    data = "\n".join(lines).encode("utf-8")
                else:
                    data = dump(_mutate_structure(json.loads(data.decode("utf-8")), rng)).encode("utf-8")
            except (ValueError, RecursionError, KeyError, IndexError, TypeError):
                data = _mutate_bytes(data, rng)  # no longer JSON: mutate bytes instead
        else:
            data = _mutate_bytes(data, rng)
    return data


# ---------------------------------------------------------------------------------------------
# cases and the harness


@dataclass(frozen=True)
class Case:
    """One fuzz input: the file's suffix and bytes, and the command line ({IN}/{OUT} placeholders)."""

    suffix: str
    data: bytes
    argv: tuple[str, ...]

    def argv_for(self, infile: str, outfile: str) -> list[str]:
        return [a.replace("{IN}", infile).replace("{OUT}", outfile) for a in self.argv]


_TRACE_COMMANDS: tuple[tuple[float, tuple[str, ...]], ...] = (
    (0.75, ("simulate", "--trace", "{IN}", "--policy", "fcfs", "lpm", "--no-progress", "--json", "{OUT}")),
    (0.1, ("simulate", "--trace", "{IN}", "--policy", "dlpm", "--workers", "2", "--no-progress", "--json", "{OUT}")),
    (0.15, ("gap", "--trace", "{IN}", "--n", "3", "--instances", "1", "--policies", "fcfs", "--solver", "brute",
            "--no-progress", "--json", "{OUT}")),
)
_INSTANCE_COMMANDS: tuple[tuple[float, tuple[str, ...]], ...] = (
    (0.35, ("solve", "{IN}", "--solver", "dp", "--json", "{OUT}")),
    (0.2, ("solve", "{IN}", "--solver", "brute", "--model", "radix", "--json", "{OUT}")),
    (0.05, ("solve", "{IN}", "--solver", "cpsat", "--time-limit", "2", "--json", "{OUT}")),
    (0.4, ("simulate", "--trace", "{IN}", "--policy", "fcfs", "vtc", "--no-progress", "--json", "{OUT}")),
)


def _pick(rng: random.Random, table: tuple[tuple[float, tuple[str, ...]], ...]) -> tuple[str, ...]:
    r = rng.random()
    acc = 0.0
    for w, argv in table:
        acc += w
        if r < acc:
            return argv
    return table[-1][1]


def make_case(rng: random.Random, real_lines: Sequence[str] | None = None) -> Case:
    """One random case: a trace (60 %) or an instance (40 %), mutated, with its command line."""
    if rng.random() < 0.6:
        return Case(".jsonl", mutate(seed_trace(rng, real_lines), rng, jsonl=True), _pick(rng, _TRACE_COMMANDS))
    return Case(".json", mutate(seed_instance(rng), rng, jsonl=False), _pick(rng, _INSTANCE_COMMANDS))


@dataclass(frozen=True)
class Result:
    """Outcome of one :func:`run_cli` call (see the module docstring for ``outcome``)."""

    outcome: str
    code: int | None
    stderr: str
    detail: str = ""


class _Timeout(BaseException):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


_ERROR_LINE = re.compile(r"^prefixsched( [\w-]+)?: error: ", re.M)


def run_cli(main: Callable[[list[str]], int], argv: list[str], *, workdir: Path, outfile: Path | None = None,
            timeout_s: float = 60.0) -> Result:
    """Run ``main(argv)`` in-process with stdout/stderr captured and a wall-clock limit
    (SIGALRM; main thread only), then classify it (module docstring). ``workdir`` is scanned
    for leftover temporary files; ``outfile``, if it exists after exit 0, must be valid JSON."""
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    code: int | None = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except _Timeout:
        return Result("hang", None, err.getvalue(), f"ran past {timeout_s} s")
    except KeyboardInterrupt:
        raise
    except BaseException:  # anything escaping main is a crash
        return Result("traceback", None, err.getvalue(), traceback.format_exc())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    stderr = err.getvalue()
    left = [p.name for p in workdir.rglob("*") if p.name.endswith(".tmp")]
    if left:
        return Result("leftover", code, stderr, f"temporary files left: {left}")
    if "Traceback" in stderr:
        return Result("traceback", code, stderr, "Traceback on stderr")
    if code == 0:
        if outfile is not None and outfile.exists():
            try:
                json.loads(outfile.read_text(encoding="utf-8"))
            except ValueError as e:
                return Result("leftover", code, stderr, f"output is not valid JSON: {e}")
        return Result("exit0", code, stderr)
    if code == 2:
        n = len(_ERROR_LINE.findall(stderr))
        if n != 1:
            return Result("bad-stderr", code, stderr, f"{n} error lines")
        return Result("exit2", code, stderr)
    return Result("bad-exit", code, stderr, f"exit status {code}")


def run_case(main: Callable[[list[str]], int], case: Case, workdir: Path, *, timeout_s: float = 60.0) -> Result:
    """Write ``case``'s file into ``workdir`` and run its command line (:func:`run_cli`)."""
    infile = workdir / f"input{case.suffix}"
    infile.write_bytes(case.data)
    outdir = workdir / "out"
    outdir.mkdir(exist_ok=True)
    outfile = outdir / "result.json"
    return run_cli(main, case.argv_for(str(infile), str(outfile)), workdir=workdir, outfile=outfile,
                   timeout_s=timeout_s)
