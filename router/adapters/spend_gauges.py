"""Prometheus gauges of each tier's spend and remaining budget (today's and this month's windows), read from
the limiter's store in the background every few seconds, so a scrape never waits on Redis. All in one place:
`lines()` renders the two gauge families (a prometheus_client custom collector can yield the same)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from router.core.budgets import Cap, format_money
from router.core.ports import RateLimiter
from router.core.tiers import Tier
from router.errors import LimiterFailed, LimiterUnavailable

__all__ = ["SpendGauges"]

log = logging.getLogger("triage.metrics")


class SpendGauges:
    def __init__(
        self, limiter: RateLimiter, caps: Callable[[Tier], tuple[Cap, ...]], tiers: list[Tier], every: float = 5.0
    ) -> None:
        """`caps`: a tier's budget windows now (router.service.spending)."""
        self._limiter = limiter
        self._caps = caps
        self._tiers = [t for t in tiers if t.budget.windowed]
        self._every = every
        self._values: dict[tuple[str, str], tuple[int, int]] = {}  # (tier, window) -> (spent + held, limit)
        self._task: asyncio.Task[None] | None = None

    def __bool__(self) -> bool:
        return bool(self._tiers)

    async def refresh(self) -> None:
        caps: list[tuple[Tier, Cap]] = []
        for tier in self._tiers:
            caps += [(tier, c) for c in self._caps(tier)]
        try:
            spent = await self._limiter.spent(tuple(c for _, c in caps))
        except (LimiterUnavailable, LimiterFailed) as exc:
            log.warning("spend gauges not refreshed: %s", exc.message)
            return
        self._values = {(t.name, c.window): (s + h, c.limit) for (t, c), (s, h) in zip(caps, spent, strict=True)}

    async def start(self) -> None:
        if self._tiers:
            self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._every)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def lines(self) -> list[str]:
        if not self._values:
            return []
        out = [
            "# HELP triage_budget_spend_usd A tier's spend in the budget's current window (in flight included).",
            "# TYPE triage_budget_spend_usd gauge",
        ]
        out += [
            f'triage_budget_spend_usd{{tier="{t}",window="{w}"}} {format_money(v[0])}'
            for (t, w), v in self._values.items()
        ]
        out += [
            "# HELP triage_budget_remaining_usd What is left of a tier's budget in its current window.",
            "# TYPE triage_budget_remaining_usd gauge",
        ]
        out += [
            f'triage_budget_remaining_usd{{tier="{t}",window="{w}"}} {format_money(max(0, v[1] - v[0]))}'
            for (t, w), v in self._values.items()
        ]
        return out
