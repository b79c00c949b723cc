"""Tier policy applied to a routed request: which models a tier may reach, its threshold, its caps."""

from __future__ import annotations

from dataclasses import dataclass, field

from router.core.budgets import Budget
from router.core.conversation import ConversationPolicy
from router.core.limits import TierLimits
from router.core.types import Role

__all__ = ["Caller", "Tier", "allowed_role", "capped_max_tokens"]


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    limits: TierLimits = field(default_factory=TierLimits)
    roles: frozenset[Role] = frozenset({Role.SMALL, Role.LARGE})  # model sizes this tier may reach
    threshold: float | None = None  # None: the gateway's threshold
    target_large_share: float | None = None  # share of routed requests sent large (a moving threshold)
    max_tokens: int = 0  # cap on a request's max_tokens; 0: no cap
    max_n: int = 16  # most choices (`n`) one request may ask for
    max_body_bytes: int = 0  # 0: the server's limit
    fail_open: bool = True  # when the limiter's store is unreachable: admit (True) or refuse (False)
    cache: bool = True  # deterministic requests may be answered from the response cache (scoped to the tier)
    conversation: ConversationPolicy | None = None  # None: the gateway's routing.conversation
    cascade: bool = False  # the small model drafts routed non-streamed requests; unreliable drafts escalate
    budget: Budget = field(default_factory=Budget)  # the tier's spend, all its callers together


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the tier and a stable identity for limits (a key hash or a masked address)."""

    tier: Tier
    identity: str
    key: str = ""  # the API key's configured name (or its hash's start) when a key with a budget of its own called
    budget: Budget = field(default_factory=Budget)  # that key's own spend limits, on top of the tier's

    @property
    def budgeted(self) -> bool:
        return self.tier.budget.any or self.budget.any


def allowed_role(tier: Tier, wanted: Role) -> Role | None:
    """The role a routed request gets under the tier: the wanted one if allowed, else the one allowed."""
    if wanted in tier.roles:
        return wanted
    return next(iter(tier.roles), None)


def capped_max_tokens(tier: Tier, requested: int | None) -> int | None:
    if not tier.max_tokens:
        return requested
    return tier.max_tokens if requested is None else min(requested, tier.max_tokens)
