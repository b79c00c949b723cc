"""Spend budgets in money: per tier (all its callers together) and per API key, per calendar day and month in a
configured time zone, plus a cap on one request's worst-case cost. No I/O.

Money is counted in integer micro-units of the prices' currency (1 USD = 1,000,000): the stores add integers,
so sums never drift. A worker's price per million tokens is exactly its price in micro-units per token.

A request reserves its worst case at admission against every budget that applies (the tier's and its key's,
day and month); the reservation is replaced by the real cost when the answer ends. A budget refuses a request
whose reservation would take spent + reserved past its limit, so with reservations the spend admitted never
passes a budget."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from zoneinfo import ZoneInfo

__all__ = [
    "BUDGET_HEADER",
    "MICROS",
    "Budget",
    "Cap",
    "SpendHold",
    "caps",
    "format_money",
    "micros",
    "window_ends",
]

MICROS = 1_000_000
BUDGET_HEADER = "x-triage-budget-remaining"  # on every answer to a budgeted caller: what its tightest budget has left
KEEP_MS = 40 * 86_400_000  # a window's counters outlive its end by this much: reports read last month's


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits in micro-units; 0 means none."""

    per_day: int = 0
    per_month: int = 0
    per_request: int = 0

    @property
    def windowed(self) -> bool:
        """Whether a store keeps counters for it (the per-request cap needs none)."""
        return bool(self.per_day or self.per_month)

    @property
    def any(self) -> bool:
        return bool(self.per_day or self.per_month or self.per_request)


@dataclass(frozen=True, slots=True)
class Cap:
    """One budget window a request is counted against."""

    scope: str  # who: "tier <name>" or "key <name>", as refusals and reports say it
    window: str  # day | month
    key: str  # the store's key for this scope's window (under the store's prefix)
    limit: int  # micro-units
    ends_ms: int  # unix ms when the window ends (the budget resets)

    @property
    def expires_ms(self) -> int:
        """When the store may forget the window's counters: a while after it ends, so reports read them."""
        return self.ends_ms + KEEP_MS


@dataclass(frozen=True, slots=True)
class SpendHold:
    """What an admission reserved against its budgets (settled later), and what the caller has left."""

    caps: tuple[Cap, ...]
    reserved: int  # micro-units
    remaining: int  # micro-units left under the tightest budget after this reservation


def micros(amount: float) -> int:
    """An amount of money (a config value) in micro-units, rounded up (a limit of 0.0000005 is 1, never 0)."""
    return int((Decimal(str(amount)) * MICROS).to_integral_value(ROUND_CEILING))


def format_money(amount_micros: int) -> str:
    """Micro-units as a plain decimal amount: 1234567 -> 1.234567."""
    sign = "-" if amount_micros < 0 else ""
    whole, frac = divmod(abs(amount_micros), MICROS)
    return f"{sign}{whole}.{frac:06d}"


def window_ends(now_ms: int, tz: ZoneInfo) -> tuple[tuple[str, int], tuple[str, int]]:
    """((day id, ms the day ends), (month id, ms the month ends)) for the calendar in `tz`: the windows reset
    exactly at local midnight and on the first of the month (daylight saving moves them, as a wall clock)."""
    local = datetime.fromtimestamp(now_ms / 1000, tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    next_day = (midnight + timedelta(days=1)).replace(tzinfo=None)
    first = midnight.replace(day=1).replace(tzinfo=None)
    next_month = (
        first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)
    )
    return (
        (local.strftime("%Y-%m-%d"), _epoch_ms(next_day, tz)),
        (local.strftime("%Y-%m"), _epoch_ms(next_month, tz)),
    )


def _epoch_ms(naive_local: datetime, tz: ZoneInfo) -> int:
    return int(naive_local.replace(tzinfo=tz).timestamp() * 1000)


def caps(scopes: list[tuple[str, str, Budget]], now_ms: int, tz: ZoneInfo) -> tuple[Cap, ...]:
    """The windows a request counts against: for each (scope name, store key base, budget), its day and month
    limits that are set. A scope's keys share a hash tag (one Redis Cluster slot per scope)."""
    (day, day_ends), (month, month_ends) = window_ends(now_ms, tz)
    out: list[Cap] = []
    for scope, base, budget in scopes:
        if budget.per_day:
            out.append(Cap(scope, "day", f"spend:{{{base}}}:d:{day}", budget.per_day, day_ends))
        if budget.per_month:
            out.append(Cap(scope, "month", f"spend:{{{base}}}:m:{month}", budget.per_month, month_ends))
    return tuple(out)
