"""`triage analytics spend`: money spent per tier or per API key from the ledger, against each budget of the
gateway's config (today's and this month's windows in limits.budget_timezone)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from router.core.records import SHADOW, DecisionRecord
from router.settings import Settings

__all__ = ["Budgets", "SpendRow", "budgets_of", "caller_of_key", "month_start", "render", "spend_rows"]


@dataclass(frozen=True, slots=True)
class Budgets:
    """What the config says, per group: spend_per_day and spend_per_month in USD (0: none)."""

    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    per_group: dict[str, tuple[float, float]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # the ledger's caller hash -> a key's configured name


@dataclass(slots=True)
class SpendRow:
    group: str
    requests: int = 0
    spend: float = 0.0  # in the period read
    cached: float = 0.0  # of which cached prompt tokens
    seconds: float = 0.0  # of which time on the worker
    refused: int = 0  # 429 budget_exceeded
    today: float = 0.0
    month: float = 0.0
    per_day: float = 0.0
    per_month: float = 0.0


def caller_of_key(sha256: str) -> str:
    """The ledger's `caller` for an API key (see router.service.recording: a hash of the caller's identity)."""
    return hashlib.sha256(("key:" + sha256[:32]).encode()).hexdigest()[:16]


def budgets_of(settings: Settings, by: str) -> Budgets:
    tz = ZoneInfo(settings.limits.budget_timezone)
    if by == "tier":
        return Budgets(tz, {n: (t.spend_per_day, t.spend_per_month) for n, t in settings.tiers.items()})
    names = {caller_of_key(k.sha256): k.name or k.sha256[:8] for k in settings.auth.keys}
    per = {names[caller_of_key(k.sha256)]: (k.spend_per_day, k.spend_per_month) for k in settings.auth.keys}
    return Budgets(tz, per, names)


def month_start(now: float, tz: ZoneInfo) -> float:
    local = datetime.fromtimestamp(now, tz)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def spend_rows(records: Iterable[DecisionRecord], by: str, budgets: Budgets, now: float) -> list[SpendRow]:
    """Rows per tier or key (by caller hash, named when the config names it), costliest first. Shadow calls
    are the operator's, not the caller's: they are left out, as the budgets leave them out."""
    local = datetime.fromtimestamp(now, budgets.tz)
    day0 = local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    month0 = month_start(now, budgets.tz)
    rows: dict[str, SpendRow] = {}
    for r in records:
        if r.reason == SHADOW:
            continue
        group = r.tier if by == "tier" else budgets.names.get(r.caller, r.caller)
        row = rows.get(group)
        if row is None:
            day, month = budgets.per_group.get(group, (0.0, 0.0))
            row = rows[group] = SpendRow(group, per_day=day, per_month=month)
        row.requests += 1
        row.refused += r.reason == "budget_exceeded"
        row.spend += r.cost
        row.cached += r.cost_cached
        row.seconds += r.cost_seconds
        row.today += r.cost if r.ts >= day0 else 0.0
        row.month += r.cost if r.ts >= month0 else 0.0
    return sorted(rows.values(), key=lambda x: -x.spend)


def _against(spent: float, limit: float) -> str:
    return f"{spent:.6f}" if not limit else f"{spent:.6f} of {limit:.6f} ({spent / limit:.0%})"


def render(rows: list[SpendRow], by: str, fmt: str, since: str) -> str:
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=2)
    if not rows:
        return f"no spend recorded since {since}"
    lines = [f"spend since {since} (USD; today and this month against each budget, windows in the config's zone)"]
    lines.append(
        f"{by:<20} requests  429 budget        spend   of it cached  of it time  today / per day   month / per month"
    )
    for r in rows:
        lines.append(
            f"{r.group:<20} {r.requests:8d} {r.refused:11d} {r.spend:12.6f} {r.cached:14.6f} {r.seconds:11.6f}  "
            f"{_against(r.today, r.per_day)}   {_against(r.month, r.per_month)}"
        )
    return "\n".join(lines)
