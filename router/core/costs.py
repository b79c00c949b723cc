"""Token cost arithmetic."""

from __future__ import annotations

from router.core.types import Prices

__all__ = ["cost"]

PER_MILLION = 1_000_000


def cost(prices: Prices, prompt_tokens: int, completion_tokens: int) -> float:
    """USD paid for one request at the given per-million-token prices."""
    return (prompt_tokens * prices.input + completion_tokens * prices.output) / PER_MILLION
