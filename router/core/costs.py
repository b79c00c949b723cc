"""Cost arithmetic: a call's cost from its priced parts, and the worst case a request may cost.

Prices are per million tokens, so a price is exactly micro-units per token. Parts are computed in Decimal from
the configured prices; budgets count whole micro-units (router.core.budgets), rounded up per call, so a budget
never under-counts a bill."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from router.core.types import Prices

__all__ = ["Priced", "cost", "priced"]

PER_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class Priced:
    """One call's cost by part, in micro-units (exact; the ledger keeps the parts apart)."""

    input: Decimal  # prompt tokens not served from the worker's prefix cache
    cached: Decimal  # cached prompt tokens, at price_cached_input (the input price when none is set)
    output: Decimal  # completion tokens, reasoning tokens included
    seconds: Decimal  # price_per_second x the request's wall time on the worker

    @property
    def total(self) -> Decimal:
        return self.input + self.cached + self.output + self.seconds

    @property
    def micros(self) -> int:
        """The whole cost in micro-units, rounded up."""
        return int(self.total.to_integral_value(ROUND_CEILING))

    def usd(self, part: Decimal) -> float:
        return float(part / PER_MILLION)


def cost(prices: Prices, prompt_tokens: int, completion_tokens: int) -> float:
    """USD paid for one request at the given per-million-token prices (tokens only)."""
    return (prompt_tokens * prices.input + completion_tokens * prices.output) / PER_MILLION


def _d(value: float) -> Decimal:
    return Decimal(repr(value))


_ZERO = Decimal(0)


@functools.lru_cache(maxsize=256)
def _rates(prices: Prices) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """A worker's prices as Decimals (input, cached input, output, per second x 1e6), converted once: a request
    is priced three times (its settlement, its record and the always-large baseline), each at 4 conversions."""
    cached = prices.input if prices.cached_input is None else prices.cached_input
    return _d(prices.input), _d(cached), _d(prices.output), _d(prices.per_second) * PER_MILLION


def priced(prices: Prices, prompt: int, completion: int, *, cached: int = 0, seconds: float = 0.0) -> Priced:
    """A call's cost: `cached` of the `prompt` tokens at the cached price, the rest at the input price."""
    cached = max(0, min(cached, prompt))
    input_rate, cached_rate, output_rate, second_rate = _rates(prices)
    return Priced(
        input=(prompt - cached) * input_rate,
        cached=cached * cached_rate,
        output=completion * output_rate,
        seconds=_d(seconds) * second_rate if seconds > 0 and prices.per_second else _ZERO,
    )
