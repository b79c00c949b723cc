"""Task-type indicators: what kind of request a prompt is (code, arithmetic, formal maths, an open-ended
instruction, a short factual question, a bare word list), as 0/1 features.

They exist for the prior's level across kinds of request: how much a large model gains differs far more between
kinds of task than between items of one kind, and the structure counts read surface form (length, digits) as
"hard" whatever the kind. Fitted to the outcome gap uncentred, these few indicators carry which kinds gain
(classifiers/lab/lodo.py, the `tasks` features); being few and coarse, they transfer to families never trained on
where hashed n-grams do not. Cheap: a handful of substring tests and two anchored regexes per prompt."""

from __future__ import annotations

import re

__all__ = ["TASKS", "task_kind"]

TASKS = ("code", "arithmetic", "latex_math", "instruction", "short_question", "word_list")

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_QUANTITY = re.compile(r"how (?:many|much)|\$\d|total|calculate|percent|%|cost|price|earn|pay|spend")
_INSTRUCTION = re.compile(
    r"\s*(?:write|describe|compose|explain|create|draft|imagine|suggest|generate|give|list|provide|help|act as|"
    r"pretend|edit|rewrite|summari[sz]e|tell|design|develop|plan|discuss|translate|please|can you|could you|"
    r"i want|i need)\b",
    re.I,
)
_QUESTION = re.compile(r"\s*(?:who|what|when|where|which|whose|whom|how|in which|in what|name)\b", re.I)


def task_kind(text: str) -> list[float]:
    """One 0/1 value per name in TASKS."""
    lowered = text.lower()
    words = text.split()
    commas = text.count(",")
    code = (
        "```" in text
        or "#include" in text
        or "function " in text
        or ("def " in text and ('"""' in text or "return" in text or ">>>" in text))
    )
    arithmetic = _QUANTITY.search(lowered) is not None and len(_NUMBER.findall(text)) >= 2
    latex = ("$" in text and ("\\" in text or "^" in text)) or "\\frac" in text
    question = len(words) < 25 and "\n" not in text and _QUESTION.match(text) is not None
    word_list = commas >= 3 and len(words) <= 2 * commas + 2 and "?" not in text
    return [
        float(code),
        float(arithmetic),
        float(latex),
        float(_INSTRUCTION.match(text) is not None),
        float(question),
        float(word_list),
    ]
