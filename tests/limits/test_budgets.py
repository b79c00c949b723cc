"""Spend budgets in both limiters (in memory, and in real Redis): windows reset exactly at the calendar boundary
of the configured zone (an injected clock), reservations are all or nothing across a tier's and a key's
budgets, settlement replaces a reservation by the real cost."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from router.adapters.limiter_memory import MemoryLimiter
from router.adapters.limiter_redis import RedisLimiter
from router.core.budgets import Budget, Cap, caps, format_money, micros, window_ends
from router.core.limits import TierLimits
from router.core.tiers import Caller, Tier
from router.core.types import Prices, Role, Worker
from router.errors import BudgetExceeded
from router.protocol import ChatCompletionRequest, Prompt
from router.service.admission import AdmissionControl
from router.service.spending import Reach, Spending
from tests.limits.conftest import REDIS_URL, forget, require_redis

PARIS = ZoneInfo("Europe/Paris")
# 2027-01-31 23:59:59.999 in Paris (UTC+1): the last millisecond of January there, 22:59:59.999 UTC.
LAST_MS = int(datetime(2027, 1, 31, 23, 59, 59, 999_000, tzinfo=PARIS).timestamp() * 1000)
NEXT_MS = LAST_MS + 1


def _caller(budget: Budget, name: str = "t") -> Caller:
    return Caller(Tier(name, limits=TierLimits(), budget=budget), "ip:someone")


def _caps(caller: Caller, now_ms: int) -> tuple[Cap, ...]:
    return caps([(f"tier {caller.tier.name}", f"tier:{caller.tier.name}", caller.tier.budget)], now_ms, PARIS)


def test_windows_end_at_local_midnight_and_on_the_first_of_the_month() -> None:
    (day, day_ends), (month, month_ends) = window_ends(LAST_MS, PARIS)
    assert (day, month) == ("2027-01-31", "2027-01") and day_ends == month_ends == NEXT_MS
    (day, day_ends), (month, month_ends) = window_ends(NEXT_MS, PARIS)
    assert (day, month) == ("2027-02-01", "2027-02")
    assert day_ends == NEXT_MS + 86_400_000
    assert month_ends == int(datetime(2027, 3, 1, tzinfo=PARIS).timestamp() * 1000)
    (_, _), (month, ends) = window_ends(int(datetime(2027, 12, 31, 12, tzinfo=PARIS).timestamp() * 1000), PARIS)
    assert month == "2027-12" and ends == int(datetime(2028, 1, 1, tzinfo=PARIS).timestamp() * 1000)


def test_money_is_whole_micro_units_rounded_up() -> None:
    assert micros(5) == 5_000_000 and micros(0.1) == 100_000 and micros(0.0000001) == 1 and micros(0) == 0
    assert format_money(1_234_567) == "1.234567" and format_money(8) == "0.000008" and format_money(-5) == "-0.000005"


async def test_a_month_s_budget_resets_exactly_at_the_month_boundary(limiter: MemoryLimiter | RedisLimiter) -> None:
    caller = _caller(Budget(per_month=1_000))
    spent = await limiter.admit(caller, 1, _caps(caller, LAST_MS), 900)
    assert spent.admitted and spent.spend is not None and spent.spend.remaining == 100
    await limiter.settle(caller, spent, 1, 950)  # the real cost replaces the 900 reserved
    refused = await limiter.admit(caller, 1, _caps(caller, LAST_MS), 51)
    assert refused.denied_by == "budget" and refused.over is not None and refused.over_spent == 950
    assert refused.over.window == "month" and refused.over.ends_ms == NEXT_MS
    assert (await limiter.admit(caller, 1, _caps(caller, LAST_MS), 50)).admitted  # exactly what is left
    fresh = await limiter.admit(caller, 1, _caps(caller, NEXT_MS), 1_000)  # one millisecond later
    assert fresh.admitted and fresh.spend is not None and fresh.spend.remaining == 0
    assert await limiter.spent(_caps(caller, LAST_MS)) == [(950, 50)]


async def test_a_reservation_is_all_or_nothing_across_budgets(limiter: MemoryLimiter | RedisLimiter) -> None:
    """A key's day budget refuses: the tier's month budget holds nothing for the refused request either."""
    tier = Tier("team", limits=TierLimits(), budget=Budget(per_month=10_000))
    key = Caller(tier, "key:abc", key="low", budget=Budget(per_day=100))
    windows = caps([("tier team", "tier:team", tier.budget), ("key low", "key:abc", key.budget)], LAST_MS, PARIS)
    assert (await limiter.admit(key, 1, windows, 60)).admitted
    refused = await limiter.admit(key, 1, windows, 60)
    assert refused.over is not None and refused.over.scope == "key low" and refused.over_spent == 60
    assert await limiter.spent(windows) == [(0, 60), (0, 60)]


async def test_a_refusal_says_when_the_window_resets_to_the_millisecond() -> None:
    """Through admission, on an injected clock: at the last millisecond of the month the refusal says it
    resets in 1 ms; a millisecond later the same request is admitted."""
    now = [LAST_MS]
    limiter = MemoryLimiter(clock=lambda: now[0])
    control = AdmissionControl(limiter, spending=Spending(PARIS, clock=lambda: now[0]))
    worker = Worker("w", Role.SMALL, "http://x/v1", "m", Prices(1, 1), 10, 1)
    caller = _caller(Budget(per_month=50))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    request = Prompt(ChatCompletionRequest.model_validate(body))  # reserves 1 + 20 micro-units
    for _ in range(2):
        assert (await control.admit(caller, request, dict(body), Reach((worker,)))).admission is not None
    with pytest.raises(BudgetExceeded) as refused:
        await control.admit(caller, request, dict(body), Reach((worker,)))
    headers = refused.value.headers
    assert headers["retry-after-ms"] == "1" and headers["retry-after"] == "1"
    assert "2027-02-01T00:00:00+01:00 (Europe/Paris), in 1ms" in refused.value.message
    now[0] = NEXT_MS
    admitted = await control.admit(caller, request, dict(body), Reach((worker,)))
    assert admitted.admission is not None and admitted.admission.spend is not None
    assert admitted.admission.spend.remaining == 50 - 21


async def test_reading_spend_never_takes_a_connection_an_admission_was_promised() -> None:
    """Regression: the spend gauges' reads took pool connections past the limiter's slots, so an admission
    found none (MaxConnectionsError, read as an outage: a fail-open tier admitted uncounted). Now both queue on
    the limiter's one pipelined connection."""
    require_redis()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    lim = RedisLimiter(REDIS_URL, timeout=5.0, prefix=prefix)
    caller = _caller(Budget(per_day=10**12))
    windows = _caps(caller, NEXT_MS)
    try:
        calls = [lim.admit(caller, 1, windows, 1) for _ in range(100)] + [lim.spent(windows) for _ in range(100)]
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await lim.close()
        forget(prefix)
    assert [r for r in results if isinstance(r, BaseException)] == []
