"""argparse types shared by every subcommand's parser: integers in a range, named in the error
(``prefixsched CMD: error: argument --jobs: must be >= 1, got 0``). A utility: it imports nothing
of the layers (``tests/test_layers.py``), so the sweep and conformance parsers use it without
importing :mod:`prefixsched.cli`."""

from __future__ import annotations

import argparse
import re

__all__ = ["_int_in", "_positive_int", "_nonneg_int", "_short"]

_INT_TEXT = re.compile(r"\s*[+-]?\d+\s*")


def _int_in(name: str, lo: int, hi: int | None = None):
    """argparse type: an integer in ``[lo, hi]``; the error names the option and the value."""

    rng = f"in [{lo}, {hi:,}]" if hi is not None else f">= {lo}"

    def parse(text: str) -> int:
        digits = len(text.strip().lstrip("+-"))
        if _INT_TEXT.fullmatch(text) and digits > (30 if hi is not None else 4000):
            raise argparse.ArgumentTypeError(f"must be an integer {rng}, got one of {digits} digits")
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {_short(text)}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {rng}, got {v}")
        return v

    return parse


def _positive_int(name: str, hi: int | None = None):
    return _int_in(name, 1, hi)


def _nonneg_int(name: str, hi: int | None = None):
    return _int_in(name, 0, hi)


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")
