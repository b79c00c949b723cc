"""Built-in scorers that need no trained model."""

from __future__ import annotations

__all__ = ["LengthScorer"]


class LengthScorer:
    """Longer prompts score higher: n / (n + midpoint), so a prompt of `midpoint` characters scores 0.5."""

    def __init__(self, midpoint: int = 400) -> None:
        if midpoint <= 0:
            raise ValueError("midpoint must be positive")
        self._midpoint = midpoint

    def score(self, text: str) -> float:
        n = len(text)
        return n / (n + self._midpoint)
