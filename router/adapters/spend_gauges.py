"""Prometheus gauges of each tier's spend and remaining budget (today's and this month's windows), read from
the limiter's store in the background every few seconds, so a scrape never waits on Redis. All in one place:
`spend()` and `remaining()` are what the two labelled gauges read at scrape time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from router.core.budgets import MICROS, Cap
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

    def spend(self) -> dict[tuple[str, ...], float]:
        """(tier, window) -> USD spent in the window, reservations in flight included."""
        return {key: spent / MICROS for key, (spent, _) in self._values.items()}

    def remaining(self) -> dict[tuple[str, ...], float]:
        """(tier, window) -> USD left of the tier's budget in the window."""
        return {key: max(0, limit - spent) / MICROS for key, (spent, limit) in self._values.items()}
