"""Spend budgets at admission: the worst case a request may cost on the workers it may reach, the per-request
cap (refuse, or pin a routed request to the small model when that brings it under the cap), the budget windows
the request counts against, and the refusal a caller can act on."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from router.core.budgets import BUDGET_HEADER, Cap, caps, format_money
from router.core.costs import priced
from router.core.limits import Admission, duration, retry_after_seconds
from router.core.tiers import Caller, Tier
from router.core.types import Role, Worker
from router.errors import BudgetExceeded, InvalidRequest

__all__ = ["Completion", "Quote", "Reach", "Spending"]


@dataclass(frozen=True, slots=True)
class Reach:
    """The workers a request may reach: `workers` (a named model's, or every model the tier may use, since a
    routed request may escalate or fall back), and the small model's alone when routing may be pinned there."""

    workers: tuple[Worker, ...]
    small: tuple[Worker, ...] = ()
    cascade: bool = False  # the small model drafts and the large one may answer too: both are paid


@dataclass(frozen=True, slots=True)
class Completion:
    """The most a request's completions may generate: `tokens` in all, unless nothing bounds them (`choices`
    completions, each up to what a worker's context leaves after the prompt, when the worker says)."""

    tokens: int
    choices: int = 1
    unbounded: bool = False

    def said(self) -> str:
        if self.unbounded:
            return f"{self.choices} completions as long as the models' context allows"
        return f"{self.tokens} completion tokens"

    def on(self, worker: Worker, prompt: int) -> int:
        if self.unbounded and worker.context_length:
            return max(0, worker.context_length - prompt) * self.choices
        return self.tokens


@dataclass(frozen=True, slots=True)
class Quote:
    reserve: int  # the worst case, micro-units
    pinned: bool  # routed, and kept on the small model to stay under max_cost_per_request


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Spending:
    def __init__(self, tz: ZoneInfo | None = None, clock: Callable[[], int] = _now_ms) -> None:
        self.tz = tz or ZoneInfo("UTC")
        self._clock = clock

    def caps(self, caller: Caller) -> tuple[Cap, ...]:
        """The budget windows (tier's, key's; day, month) this caller's requests count against now."""
        scopes = [(f"tier {caller.tier.name}", f"tier:{caller.tier.name}", caller.tier.budget)]
        if caller.budget.windowed:
            scopes.append((f"key {caller.key}", caller.identity, caller.budget))
        return caps(scopes, self._clock(), self.tz)

    def tier_caps(self, tier: Tier) -> tuple[Cap, ...]:
        """A tier's own budget windows now (its callers' keys aside)."""
        return caps([(f"tier {tier.name}", f"tier:{tier.name}", tier.budget)], self._clock(), self.tz)

    def quote(self, caller: Caller, reach: Reach, prompt: int, completion: Completion, param: str) -> Quote:
        """The reservation; refuses (400) a request whose worst case passes the per-request cap on every model
        it could be kept on."""
        worst = _worst(reach, prompt, completion)
        cap, what = _ceiling(caller)
        if not cap or worst <= cap:
            return Quote(worst, False)
        if reach.small:
            small = _worst(Reach(reach.small), prompt, completion)
            if small <= cap:
                return Quote(small, True)
        # Past a day's or a month's whole budget a request could never be admitted: a 400, not a 429 to retry.
        raise InvalidRequest(
            f"{param}: this request may cost up to {format_money(worst)} (a prompt of about {prompt} tokens and "
            f"{completion.said()} at the prices of the models it may reach), over {what} of "
            f"{format_money(cap)}; {'set' if completion.unbounded else 'lower'} {param}",
            param=param,
            code="cost_exceeds_limit",
        )

    def refusal(self, a: Admission, reserve: int, headers: dict[str, str]) -> BudgetExceeded:
        """The 429 for an admission a budget refused: which budget, its window, when it resets."""
        cap = a.over
        assert cap is not None
        wait = max(0, cap.ends_ms - self._clock())
        reset = datetime.fromtimestamp(cap.ends_ms / 1000, self.tz).isoformat()
        left = max(0, cap.limit - a.over_spent)
        return BudgetExceeded(
            f"Budget exceeded: {cap.scope} has spent {format_money(a.over_spent)} of its spend_per_{cap.window} "
            f"of {format_money(cap.limit)} (reservations included), and this request may cost up to "
            f"{format_money(reserve)}; the {cap.window} "
            f"window resets at {reset} ({self.tz.key}), in {_wait(wait)}.",
            headers={
                **headers,
                "retry-after": str(retry_after_seconds(wait)),
                "retry-after-ms": str(wait),
                BUDGET_HEADER: format_money(left),
            },
        )


def _wait(ms: int) -> str:
    """A wait as people read it: 1ms, 42s, 17h39m53s, 3d4h."""
    if ms < 60_000:
        return duration(ms)
    s = ms // 1000
    d, h, m, sec = s // 86_400, s // 3600 % 24, s // 60 % 60, s % 60
    if d:
        return f"{d}d{h}h"
    return f"{h}h{m}m{sec}s" if h else f"{m}m{sec}s"


def _ceiling(caller: Caller) -> tuple[int, str]:
    """The most one request may cost (0: no bound) and what sets it: the per-request caps, and every whole
    budget (a request costing more than a day's budget could never be admitted)."""
    t, k = caller.tier.budget, caller.budget
    bounds = [
        (t.per_request, "the max_cost_per_request"),
        (k.per_request, "the key's max_cost_per_request"),
        (t.per_day, f"tier {caller.tier.name}'s whole spend_per_day"),
        (t.per_month, f"tier {caller.tier.name}'s whole spend_per_month"),
        (k.per_day, f"key {caller.key}'s whole spend_per_day"),
        (k.per_month, f"key {caller.key}'s whole spend_per_month"),
    ]
    return min(((n, what) for n, what in bounds if n), default=(0, ""))


def _worst(reach: Reach, prompt: int, completion: Completion) -> int:
    """The costliest worker's worst case; a cascade pays the small draft and the large answer."""

    def one(workers: tuple[Worker, ...]) -> int:
        return max(
            (priced(w.prices, prompt, completion.on(w, prompt), seconds=w.timeout).micros for w in workers),
            default=0,
        )

    if reach.cascade:
        return sum(one(tuple(w for w in reach.workers if w.role is role)) for role in Role)
    return one(reach.workers)
