"""What one request carries through the service's flows: its context (who, what, where it stands), and what the
flows hand back (which worker, the answer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from router.core.cascade import EscalationRule
from router.core.conversation import ConversationPolicy
from router.core.limits import Admission
from router.core.ports import AnswerScorer, Scorer, UpstreamReply, UpstreamStream
from router.core.share import ShareTarget, target_for
from router.core.tiers import Caller, Tier
from router.core.types import Routed
from router.protocol import GenerationRequest, Prompt
from router.service.recording import Trace

__all__ = ["Endpoint", "Outcome", "RequestContext", "RequestOptions", "Routed", "RoutingPolicy"]


class Endpoint(StrEnum):
    CHAT = "/chat/completions"
    COMPLETIONS = "/completions"


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """How `auto` is decided: the score, the threshold a tier may override, and when a cascade escalates."""

    scorer: Scorer
    threshold: float
    alias: str = "auto"
    rule: EscalationRule = field(default_factory=EscalationRule)
    answer_scorer: AnswerScorer | None = None
    conversation: ConversationPolicy = ConversationPolicy.PER_TURN  # a tier's own policy overrides it
    # routing.target_large_share: `threshold` is then only the cold start's, before the window fills
    target_large_share: float | None = None

    def threshold_for(self, tier: Tier) -> float:
        return self.threshold if tier.threshold is None else tier.threshold

    def target_for(self, tier: Tier) -> ShareTarget | None:
        return target_for(tier, self.target_large_share)

    def conversation_for(self, tier: Tier) -> ConversationPolicy:
        return self.conversation if tier.conversation is None else tier.conversation


@dataclass(frozen=True, slots=True)
class Outcome:
    routed: Routed
    reply: UpstreamReply | UpstreamStream  # a stream only when one was asked for and the worker accepted
    limit_headers: dict[str, str]
    cache: str = ""  # hit | miss | bypass for a cacheable request, else empty
    escalation: str = ""  # cascade: why the small model's draft was escalated


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """What the edge passes along with a request besides its body."""

    request_id: str = ""
    cache_bypass: bool = False  # the caller sent `x-triage-cache: bypass`


@dataclass(slots=True)
class RequestContext:
    """One request as the flows see it. `admission` is None before admission, for an unlimited tier, and for
    the calls inside a cascade (the cascade settles once, for both)."""

    caller: Caller
    endpoint: Endpoint
    payload: dict[str, Any]  # the caller's body, forwarded as is (its `model` is set per attempt)
    request: GenerationRequest
    prompt: Prompt  # read from `request` once, by every flow
    trace: Trace
    admission: Admission | None = None
