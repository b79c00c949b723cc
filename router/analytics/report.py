"""Aggregations over decision records: pure functions, so that every number can be checked by hand."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from router.core.records import SHADOW, DecisionRecord, is_extra_call

__all__ = [
    "Bucket",
    "RouteShare",
    "ShareBucket",
    "Summary",
    "by_tier",
    "percentile",
    "route_name",
    "share_timeline",
    "summarize",
    "timeline",
]

# Decisions a routing threshold made: what a share target holds (not a named model, a cache hit, a cascade, a
# tier's pinned model, nor the conversation policy or a failover moving a request afterwards).
ROUTED_REASONS = frozenset({"below_threshold", "at_or_above_threshold"})


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class RouteShare:
    """What one API route carried: its requests and what they cost (an escalated draft's cost counts too)."""

    requests: int = 0
    cost: float = 0.0


@dataclass
class Summary:
    first_ts: float | None = None
    last_ts: float | None = None
    requests: int = 0
    served: int = 0  # answered 200 by a worker
    share: dict[str, float] = field(default_factory=dict)  # model -> share of served requests
    escalations: int = 0
    conversation_moves: int = 0  # turns the conversation policy moved to their conversation's model
    cache_hits: int = 0
    rate_limited: dict[str, int] = field(default_factory=dict)  # tier -> 429s
    errors: dict[int, int] = field(default_factory=dict)  # status -> count, for status >= 400 but 429
    cost: float = 0.0
    cost_large: float = 0.0
    shadow_calls: int = 0  # shadow pairs' second answers (routing.shadow): their cost is not in `cost`
    shadow_cost: float = 0.0
    routes: dict[str, RouteShare] = field(default_factory=dict)  # API route -> its requests and cost
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> p50/p95/p99
    ttft_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def saving(self) -> float:
        """Fraction of the always-large cost not paid."""
        return 1 - self.cost / self.cost_large if self.cost_large else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "period": {"from": self.first_ts, "to": self.last_ts},
            "requests": self.requests,
            "served": self.served,
            "share": self.share,
            "escalations": self.escalations,
            "conversation_moves": self.conversation_moves,
            "cache_hits": self.cache_hits,
            "rate_limited": self.rate_limited,
            "errors": {str(k): v for k, v in self.errors.items()},
            "cost": {"paid": self.cost, "always_large": self.cost_large, "saving": self.saving},
            "shadow": {"calls": self.shadow_calls, "cost": self.shadow_cost},
            "routes": {k: {"requests": v.requests, "cost": v.cost} for k, v in self.routes.items()},
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
        }


def route_name(route: str) -> str:
    """How the summary names a route: its path under /v1 (a record written before routes were recorded came
    through chat or completions, which it cannot tell apart)."""
    return f"/v1{route}" if route else "(not recorded)"


def summarize(records: Iterable[DecisionRecord]) -> Summary:
    s = Summary()
    served: Counter[str] = Counter()
    latency: defaultdict[str, list[float]] = defaultdict(list)
    ttft: defaultdict[str, list[float]] = defaultdict(list)
    limited: Counter[str] = Counter()
    errors: Counter[int] = Counter()
    for r in records:
        if r.reason == SHADOW:  # learning's cost, shown apart: routing's saving is what routing did
            s.shadow_cost += r.cost
            s.shadow_calls += 1
            continue
        s.cost += r.cost  # an escalated draft's cost counts; the draft is not a request of its own
        route = s.routes.setdefault(route_name(r.route), RouteShare())
        route.cost += r.cost
        if is_extra_call(r):
            continue
        s.requests += 1
        route.requests += 1
        s.first_ts = r.ts if s.first_ts is None else min(s.first_ts, r.ts)
        s.last_ts = r.ts if s.last_ts is None else max(s.last_ts, r.ts)
        s.escalations += r.escalated
        s.conversation_moves += r.reason == "conversation"
        s.cache_hits += r.cache_hit
        s.cost_large += r.cost_large
        if r.status == 429:
            limited[r.tier] += 1
        elif r.status >= 400:
            errors[r.status] += 1
        if r.status == 200 and r.model:
            served[r.model] += 1
            latency[r.model].append(r.latency_ms)
            if r.ttft_ms is not None:
                ttft[r.model].append(r.ttft_ms)
    s.served = sum(served.values())
    s.share = {m: n / s.served for m, n in served.most_common()}
    s.rate_limited = dict(limited)
    s.errors = dict(sorted(errors.items()))
    for store, source in ((s.latency_ms, latency), (s.ttft_ms, ttft)):
        for model, values in source.items():
            store[model] = {f"p{q}": percentile(values, q) for q in (50, 95, 99)}
    return s


@dataclass(frozen=True, slots=True)
class Bucket:
    """One period of the timeline, or one tier."""

    key: str  # period start (ISO, UTC) or tier name
    requests: int
    served: int
    large_share: float  # share of served requests the large model answered
    rate_limited: int
    cost: float
    cost_large: float

    @property
    def saving(self) -> float:
        return 1 - self.cost / self.cost_large if self.cost_large else 0.0


def _bucket(key: str, records: list[DecisionRecord]) -> Bucket:
    requests = [r for r in records if not is_extra_call(r)]
    served = [r for r in requests if r.status == 200 and r.model]
    return Bucket(
        key=key,
        requests=len(requests),
        served=len(served),
        large_share=sum(r.role == "large" for r in served) / len(served) if served else 0.0,
        rate_limited=sum(r.status == 429 for r in requests),
        cost=sum(r.cost for r in records if r.reason != SHADOW),
        cost_large=sum(r.cost_large for r in records),
    )


def timeline(records: list[DecisionRecord], step_seconds: int) -> list[Bucket]:
    """Buckets of `step_seconds`, keyed by their start in UTC."""
    groups: dict[int, list[DecisionRecord]] = defaultdict(list)
    for r in records:
        groups[int(r.ts // step_seconds) * step_seconds].append(r)
    return [
        _bucket(datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), groups[start])
        for start in sorted(groups)
    ]


def by_tier(records: list[DecisionRecord]) -> list[Bucket]:
    groups: dict[str, list[DecisionRecord]] = defaultdict(list)
    for r in records:
        groups[r.tier].append(r)
    return [_bucket(tier, groups[tier]) for tier in sorted(groups)]


@dataclass(frozen=True, slots=True)
class ShareBucket:
    """One period of one tier: the share of its routed decisions that went large, against its target."""

    start: str  # period start (ISO, UTC)
    tier: str
    routed: int
    large: int
    target: float | None  # None: the tier has no share target (or none was given)
    threshold_p50: float  # the median threshold in force over the period's decisions

    @property
    def large_share(self) -> float:
        return self.large / self.routed if self.routed else 0.0


def share_timeline(
    records: Iterable[DecisionRecord], step_seconds: int, targets: dict[str, float], default: float | None = None
) -> list[ShareBucket]:
    """Routed decisions per period and tier: the large model's share and the threshold in force, with each
    tier's target beside them (`targets` by tier name, else `default`)."""
    groups: dict[tuple[int, str], list[DecisionRecord]] = defaultdict(list)
    for r in records:
        if r.reason in ROUTED_REASONS and r.threshold is not None:
            groups[(int(r.ts // step_seconds) * step_seconds, r.tier)].append(r)
    return [
        ShareBucket(
            start=datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            tier=tier,
            routed=len(group),
            large=sum(r.role == "large" for r in group),
            target=targets.get(tier, default),
            threshold_p50=percentile([r.threshold for r in group if r.threshold is not None], 50),
        )
        for (start, tier), group in sorted(groups.items())
    ]
