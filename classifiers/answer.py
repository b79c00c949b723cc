"""Features of a (prompt, answer) pair, for an answer scorer: does the small model's answer look unreliable?

A cascade reads the small model's answer before deciding; these counts describe what a prompt cannot show:
whether the worked arithmetic is right, whether a final answer was given, whether the answer ran on into
another question. `answer_text` joins the pair into the one string a Classifier scores, so an answer scorer
is a Classifier like the difficulty one and loads with the same `classifiers.load()`."""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["ANSWER_SEP", "ANSWER_STRUCTURE", "answer_structure", "answer_text", "split_answer_text"]

ANSWER_SEP = "\n\u241eANSWER\u241e\n"  # a record separator no prompt contains by accident
ANSWER_STRUCTURE = (
    "log_answer_chars",
    "log_answer_lines",
    "final_marker",
    "log_equations",
    "wrong_equations",
    "wrong_equation_share",
    "final_number_in_prompt",
    "no_number",
    "runs_on",
    "repeated_lines",
    "final_not_integer",
    "hedges",
)

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"
_EQUATION = re.compile(rf"({_NUM})\s*([-+*/x×÷])\s*({_NUM})\s*=\s*({_NUM})")
_NUMBER = re.compile(_NUM)
_MARKERS = ("the answer is", "####", "answer:", "therefore", "so the answer")
_HEDGES = ("approximately", "assume", "however", "not possible", "cannot", "unclear", "not enough information")


def answer_text(prompt: str, answer: str) -> str:
    """The string an answer scorer scores. Both sides are kept whole: the featurizer reads each side."""
    return f"{prompt}{ANSWER_SEP}{answer}"


def split_answer_text(text: str) -> tuple[str, str]:
    prompt, _, answer = text.partition(ANSWER_SEP)
    return prompt, answer


def _value(token: str) -> Fraction | None:
    try:
        return Fraction(token.replace(",", "").replace("$", ""))
    except (ValueError, ZeroDivisionError):
        return None


def _wrong(a: str, op: str, b: str, c: str) -> bool | None:
    """Whether `a op b = c` is false; None when a side is not a number."""
    x, y, z = _value(a), _value(b), _value(c)
    if x is None or y is None or z is None:
        return None
    if op == "+":
        got = x + y
    elif op == "-":
        got = x - y
    elif op in "*x×":
        got = x * y
    elif y == 0:
        return None
    else:
        got = x / y
    return abs(float(got - z)) > 0.01 * max(1.0, abs(float(z)))  # rounding in a worked answer is fine


def answer_structure(prompt: str, answer: str) -> list[float]:
    """Counts scaled to roughly [0, 3], like the prompt's structure features."""
    lowered = answer.lower()
    lines = [line.strip() for line in answer.splitlines() if line.strip()]
    checks = [_wrong(*m.groups()) for m in _EQUATION.finditer(answer)]
    checked = [c for c in checks if c is not None]
    wrong = sum(checked)
    numbers = _NUMBER.findall(answer)
    final = _value(numbers[-1]) if numbers else None
    prompt_numbers = {_value(n) for n in _NUMBER.findall(prompt)}
    return [
        math.log1p(len(answer)) / 4,
        math.log1p(len(lines)) / 2,
        float(any(m in lowered for m in _MARKERS)),
        math.log1p(len(checked)) / 2,
        float(wrong > 0),
        wrong / len(checked) if checked else 0.0,
        float(final is not None and final in prompt_numbers),
        float(not numbers),
        float("question:" in lowered),
        (1 - len(set(lines)) / len(lines)) * 3 if lines else 0.0,
        float(final is not None and final.denominator != 1),
        math.log1p(sum(lowered.count(h) for h in _HEDGES)) / 2,
    ]
