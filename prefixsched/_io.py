"""Atomic output writing: a file is either absent, the old version, or the complete new one.

Every file prefixsched writes (JSON results, instances, plots) goes through :func:`atomic_write`,
which writes to a temporary file in the same directory and ``os.replace``-s it into place, so a
Ctrl-C, a SIGTERM (the CLI turns it into the same exception path) or a crash never leaves a
half-written output or a stray temporary file.

What may be written over (:func:`check_output_path`, run by :func:`atomic_write` and, by the CLI,
for every output option at argument-parsing time, before any work starts):

- a path that does not exist yet (missing parent directories are created when the file is
  written), or an existing **regular file** we may write;
- a **symlink to a regular file** is followed: the file it points to is replaced atomically and
  the link stays a link (decided so: ``results.json -> runs/today.json`` keeps working; replacing
  the link itself by a regular file would silently detach it). A dangling symlink, a symlink loop
  and a symlink to anything but a regular file are refused;
- everything else is refused with :class:`~prefixsched.errors.InputError` naming the option and
  the path: the empty path, a directory, a device (``/dev/full``, ``/dev/null``), a FIFO or a
  socket, a path under a regular file, a read-only file, and a directory where no file can be
  created (checked by creating and removing a probe file, so read-only file systems are caught
  too).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from prefixsched.errors import InputError

__all__ = ["atomic_write", "check_output_path", "dumps_json", "write_json"]


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP for a few system calls (creating or removing the temporary
    file), so an interrupt cannot fall between creating a file and recording its name."""
    sigs = {signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, OSError, ValueError):  # pragma: no cover - no POSIX signal masks
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def check_output_path(path: str | os.PathLike[str], field: str = "path") -> Path:
    """Check that ``path`` may be (over)written (module docstring) and return the file that will
    be replaced: ``path`` itself, or the regular file a symlink leads to.

    Parameters
    ----------
    path:
        The output path.
    field:
        What to name in errors (the CLI option, e.g. ``"--json"``).

    Raises
    ------
    InputError
        ``field: <problem> <path>`` for every refused target (module docstring).
    """
    text = os.fspath(path)
    if isinstance(text, bytes) or text == "" or "\0" in text:
        raise InputError(field, f"must be a file path, got {text!r}")
    p = Path(text)
    if p.is_symlink():
        try:
            real = Path(os.path.realpath(p, strict=True))
        except (OSError, RuntimeError) as e:
            raise InputError(field, f"{text!r} is a symlink that leads nowhere ({getattr(e, 'strerror', None) or e})") from None
        target = real
    else:
        target = p
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise InputError(field, f"cannot write {text!r}: a parent of it is a regular file, not a directory") from None
    except OSError as e:
        raise InputError(field, f"cannot write {text!r}: {e.strerror or e}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise InputError(field, f"{text!r} is a directory; give a file path")
        if not stat.S_ISREG(st.st_mode):
            kind = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO",
                    stat.S_IFSOCK: "a socket"}.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise InputError(field, f"{text!r} is {kind}, not a regular file; refusing to replace it")
        if not os.access(target, os.W_OK):
            raise InputError(field, f"{text!r} exists and is read-only; refusing to replace it")
    # the nearest existing ancestor must be a directory in which a file can be created
    anc = target.parent if str(target.parent) else Path(".")
    while not anc.exists():
        if anc.is_symlink():
            raise InputError(field, f"cannot write {text!r}: {str(anc)!r} is a symlink that leads nowhere")
        anc = anc.parent
    if not anc.is_dir():
        raise InputError(field, f"cannot write {text!r}: {str(anc)!r} is a regular file, not a directory")
    _probe(anc, text, field)
    return target


def _probe(directory: Path, text: str, field: str) -> None:
    try:
        with _signals_deferred():
            fd, tmp = tempfile.mkstemp(prefix=".prefixsched-probe.", suffix=".tmp", dir=directory)
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise InputError(field, f"cannot write {text!r}: no file can be created in {str(directory)!r} "
                                f"({e.strerror or e})") from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", *, field: str = "path") -> Iterator[IO[Any]]:
    """Open a temporary file beside the target; on clean exit, rename it over the target.

    ``mode`` is ``"w"`` (text, UTF-8) or ``"wb"``. The target is checked first
    (:func:`check_output_path`; a symlink to a regular file is followed). On any exception,
    ``KeyboardInterrupt`` included, the temporary file is removed and the target is untouched.
    An existing target keeps its permission bits; a new one gets ``0o666 & ~umask``.

    Raises
    ------
    InputError
        A refused target (naming ``field``).
    ValueError
        A ``mode`` other than ``"w"``/``"wb"``.
    OSError
        Writing failed (e.g. the disk is full); the target is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode: must be 'w' or 'wb', got {mode!r}")
    target = check_output_path(path, field)
    directory = target.parent if str(target.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    try:
        keep_mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        keep_mode = None
    tmp: str | None = None
    try:
        with _signals_deferred():
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
        kwargs = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, keep_mode if keep_mode is not None else 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, target)
        tmp = None
    finally:
        if tmp is not None:
            with _signals_deferred(), contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def dumps_json(obj: Any) -> str:
    """Canonical JSON text: sorted keys, fixed separators, a trailing newline.

    Same object, same bytes: this is what makes "same seed, same output" checkable.
    """
    return json.dumps(obj, sort_keys=True, indent=1, separators=(",", ": "), allow_nan=False) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any, *, field: str = "path") -> None:
    """Write ``obj`` as canonical JSON (see :func:`dumps_json`) atomically."""
    text = dumps_json(obj)  # serialise first: a value JSON cannot hold fails before any file exists
    with atomic_write(path, field=field) as fh:
        fh.write(text)
