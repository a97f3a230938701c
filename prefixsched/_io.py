"""Atomic output writing: a file is either absent, the old version, or the complete new one.

Every file prefixsched writes (JSON results, instances, plots) goes through :func:`atomic_write`,
which writes to a temporary file in the same directory and ``os.replace``-s it into place, so a
Ctrl-C or a crash never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on clean exit, rename it over ``path``.

    ``mode`` is ``"w"`` (text, UTF-8) or ``"wb"``. On an exception the temporary file is removed
    and ``path`` is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode: must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        kwargs = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def dumps_json(obj: Any) -> str:
    """Canonical JSON text: sorted keys, fixed separators, a trailing newline.

    Same object, same bytes: this is what makes "same seed, same output" checkable.
    """
    return json.dumps(obj, sort_keys=True, indent=1, separators=(",", ": "), allow_nan=False) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as canonical JSON (see :func:`dumps_json`) atomically."""
    with atomic_write(path) as fh:
        fh.write(dumps_json(obj))
