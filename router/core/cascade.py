"""The cascade's rule: keep the small model's draft, or escalate to the large model, and why. Pure."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["REFUSALS", "Draft", "EscalationRule", "confidence", "judge"]

# How refusals start, lower-cased. A refusal from the small model is worth asking the large one about.
REFUSALS = (
    "i'm sorry",
    "i am sorry",
    "sorry, but",
    "i cannot",
    "i can't",
    "i can not",
    "i'm unable",
    "i am unable",
    "i won't",
    "as an ai",
)


@dataclass(frozen=True, slots=True)
class Draft:
    """What the rule reads from the small model's answer (its first choice)."""

    text: str
    finish_reason: str | None
    logprobs: Sequence[float] = ()  # per generated token; empty when the worker sent none


@dataclass(frozen=True, slots=True)
class EscalationRule:
    # Escalate when the geometric mean of the tokens' probabilities is below this (0: never for confidence).
    min_confidence: float = 0.5
    escalate_on_length: bool = True  # an answer cut off by max_tokens is incomplete
    answer_threshold: float | None = None  # escalate when the answer scorer's score is at or above this


def confidence(logprobs: Sequence[float]) -> float:
    """exp(mean logprob): the per-token probability the model gave its own answer, on average."""
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else 1.0


def judge(draft: Draft | None, rule: EscalationRule, risk: Callable[[], float] | None = None) -> str | None:
    """None to keep the draft, else the reason to escalate. Cheap checks first; `risk` (the answer scorer)
    runs only when they pass."""
    if draft is None:
        return "unreadable"
    text = draft.text.strip()
    if not text:
        return "empty"
    if rule.escalate_on_length and draft.finish_reason == "length":
        return "truncated"
    if text[:40].lower().startswith(REFUSALS):
        return "refused"
    if rule.min_confidence > 0 and draft.logprobs and confidence(draft.logprobs) < rule.min_confidence:
        return "low_confidence"
    if risk is not None and rule.answer_threshold is not None and risk() >= rule.answer_threshold:
        return "answer_scorer"
    return None
