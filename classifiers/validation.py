"""The checks a classifier file's values pass before a model is built from them: numbers that are numbers (not
strings, not booleans), finite and in range; a feature spec whose size is bounded, so that what a file asks to
allocate is known before anything is decompressed. A file breaking one is refused with a message naming the
field; the gateway keeps the model it has."""

from __future__ import annotations

import math
from typing import Any

from classifiers.features import FeatureSpec

__all__ = [
    "MAX_BITS",
    "MAX_PROBES",
    "MAX_WIDTH",
    "InvalidField",
    "check_meta",
    "check_spec",
    "flag",
    "integer",
    "number",
]

MAX_BITS = 24  # a hashed block of 2**24 columns; the shipped models use 2**18
MAX_WIDTH = 1 << 23  # weight columns in all: 32 MiB of float32
MAX_NGRAM = 16
MAX_CHARS = 1 << 20  # a prompt is read up to spec.max_chars on every request: bounds scoring time
MAX_PROBES = 64


class InvalidField(ValueError):
    """A value of a classifier file that cannot be used; the message names the field."""


def number(value: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidField(f"{what} is {_show(value)}, not a number")
    try:
        x = float(value)
    except OverflowError:  # an integer too large for a float
        x = math.inf
    if not math.isfinite(x):
        raise InvalidField(f"{what} is {_show(value)}, not a finite number")
    if not lo <= x <= hi:
        raise InvalidField(f"{what} is {x}, outside [{lo}, {hi}]")
    return x


def integer(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidField(f"{what} is {_show(value)}, not an integer")
    if not lo <= value <= hi:
        raise InvalidField(f"{what} is {_show(value)}, outside [{lo}, {hi}]")
    return value


def flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidField(f"{what} is {_show(value)}, not true or false")
    return value


def check_spec(data: Any) -> FeatureSpec:
    if not isinstance(data, dict):
        raise InvalidField(f"spec is {_show(data)}, not an object")
    grams = data.get("char_ngrams")
    if not isinstance(grams, list) or len(grams) != 2:
        raise InvalidField(f"spec.char_ngrams is {_show(grams)}, not a pair of integers")
    lo = integer(grams[0], "spec.char_ngrams[0]", 1, MAX_NGRAM)
    spec = FeatureSpec(
        word_bits=integer(data.get("word_bits"), "spec.word_bits", 1, MAX_BITS),
        char_ngrams=(lo, integer(grams[1], "spec.char_ngrams[1]", lo, MAX_NGRAM)),
        char_bits=integer(data.get("char_bits"), "spec.char_bits", 0, MAX_BITS),
        structure=flag(data.get("structure"), "spec.structure"),
        structure_weight=number(data.get("structure_weight"), "spec.structure_weight", 0.0, 1e6),
        max_chars=integer(data.get("max_chars"), "spec.max_chars", 1, MAX_CHARS),
        answer=flag(data.get("answer", False), "spec.answer"),
        tasks=flag(data.get("tasks", False), "spec.tasks"),
    )
    if spec.width > MAX_WIDTH:
        raise InvalidField(f"spec asks for {spec.width} weights, more than the {MAX_WIDTH} a model file may have")
    return spec


def check_meta(meta: Any) -> dict[str, Any]:
    """Free-form provenance, except the threshold the gateway routes at when its config names none."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise InvalidField(f"meta is {_show(meta)}, not an object")
    if "suggested_threshold" in meta:
        number(meta["suggested_threshold"], "meta.suggested_threshold", 0.0, 1.0)
    return dict(meta)


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return "a huge integer"
    return text if len(text) <= 40 else text[:37] + "..."
