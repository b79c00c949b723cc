"""Outcomes: the project's own format for what a deployment learned about its traffic. JSONL, one record per
prompt:

    {"prompt": "...", "small": 0.0, "large": 1.0}

`small` and `large` are the two models' outcomes in [0, 1] (correctness, a judge's score, a preference). Optional:
`small_answer` (the small model's answer text: an answer scorer learns from it), `domain`, `ts` (Unix seconds),
`request_id`. Other fields are ignored. A file with any bad record is refused whole, each bad line named with
its reason: a label silently skipped is a label trained wrong."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_PROBLEMS", "Outcome", "OutcomesError", "parse_record", "read_outcomes"]

MAX_PROBLEMS = 20  # named in the error; the rest are counted


@dataclass(frozen=True, slots=True)
class Outcome:
    prompt: str
    small: float
    large: float
    small_answer: str | None = None
    domain: str | None = None
    ts: float | None = None
    request_id: str | None = None


class OutcomesError(ValueError):
    """Bad records, each as `file:line: reason`."""

    def __init__(self, problems: list[str], total: int) -> None:
        self.problems = problems
        self.total = total
        more = f"\n... and {total - len(problems)} more" if total > len(problems) else ""
        super().__init__(f"{total} bad outcome record(s):\n" + "\n".join(problems) + more)


def _score(doc: dict[str, object], field: str) -> float:
    value = doc.get(field)
    if value is None:
        raise ValueError(f"`{field}` is missing")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"`{field}` must be a number in [0, 1], not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ValueError(f"`{field}` must be in [0, 1], not {value!r}")
    return number


def _optional_text(doc: dict[str, object], field: str) -> str | None:
    value = doc.get(field)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"`{field}` must be a string, not {type(value).__name__}")
    return value


def parse_record(line: str) -> Outcome:
    """One JSONL line as an Outcome; ValueError saying what is wrong with it."""
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"a record must be a JSON object, not {type(doc).__name__}")
    prompt = doc.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("`prompt` must be a non-empty string")
    ts = doc.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)):
        raise ValueError("`ts` must be a number (Unix seconds)")
    return Outcome(
        prompt,
        _score(doc, "small"),
        _score(doc, "large"),
        _optional_text(doc, "small_answer"),
        _optional_text(doc, "domain"),
        float(ts) if ts is not None else None,
        _optional_text(doc, "request_id"),
    )


def read_outcomes(paths: Iterable[str | Path]) -> list[Outcome]:
    """Every record of every file, in order. Raises OutcomesError naming each bad line, OSError for a file that
    cannot be read, ValueError when the files hold no record at all."""
    paths = list(paths)
    records: list[Outcome] = []
    problems: list[str] = []
    total = 0
    for path in paths:
        with Path(path).open(encoding="utf-8", errors="strict") as f:
            try:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        records.append(parse_record(line))
                    except ValueError as exc:
                        total += 1
                        if len(problems) < MAX_PROBLEMS:
                            problems.append(f"{path}:{n}: {exc}")
            except UnicodeDecodeError as exc:
                raise OutcomesError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"], 1) from None
    if total:
        raise OutcomesError(problems, total)
    if not records:
        raise ValueError(f"no outcome records in {', '.join(map(str, paths))}")
    return records
