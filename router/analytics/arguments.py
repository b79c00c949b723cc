"""Argument types the analytics commands share: numbers that must be positive, refused by argparse with the
flag's name (0 or -1 otherwise slip through: a limit of 0 is falsy, a slice by -1 drops the last item, a
semaphore of 0 waits forever)."""

from __future__ import annotations

import argparse
import math

__all__ = ["count", "positive"]


def count(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1")
    return value


def positive(text: str) -> float:
    """A finite number above 0 (seconds, a rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: a finite number above 0")
    return value
