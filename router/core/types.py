"""Value types shared by the core, the service and the adapters."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Decision", "Prices", "Reason", "Role", "Routed", "Worker"]


class Role(StrEnum):
    SMALL = "small"
    LARGE = "large"
    EMBEDDINGS = "embeddings"  # serves /v1/embeddings only: never routed to, never a tier's model size


class Reason(StrEnum):
    """Every reason a decision record can carry (the ledger's `reason`). The routing reasons are also what
    `x-triage-reason` carries; the rest say how a request ended without one, or mark a cascade's escalated
    draft. The README lists them all."""

    # Why a worker was chosen (x-triage-reason)
    REQUESTED = "requested"  # the caller named a concrete model
    BELOW_THRESHOLD = "below_threshold"  # routed: score < threshold -> small
    AT_OR_ABOVE_THRESHOLD = "at_or_above_threshold"  # routed: score >= threshold -> large
    TIER_POLICY = "tier_policy"  # routed, but the tier may not use the model size the score chose
    FALLBACK = "fallback"  # the chosen model's workers failed; the other model (allowed by the tier) answered
    CASCADE_ACCEPTED = "cascade_accepted"  # cascade tier: the small model's draft was kept
    ESCALATED = "escalated"  # cascade tier: the draft looked unreliable; the large model answered
    CACHED = "cached"  # an identical deterministic request was answered before: no worker was called
    EMBEDDINGS = "embeddings"  # /v1/embeddings: not scored, sent to a worker with role embeddings
    CONVERSATION = "conversation"  # routed, then moved to the model its conversation's earlier turns got
    SHADOW = "shadow"  # the other model answering a sampled routed request too (a shadow pair), not a request
    # How a request ended when no routing reason describes it
    BUDGET_CAP = "budget_cap"  # routed, and pinned to the small model: the large one's worst case passes the cap
    RATE_LIMITED = "rate_limited"  # 429: a limit of the caller's tier
    BUDGET_EXCEEDED = "budget_exceeded"  # 429: a spend budget (tier or key, day or month) is used up
    COST_EXCEEDS_LIMIT = "cost_exceeds_limit"  # 400: the request's worst case passes max_cost_per_request
    CLIENT_GONE = "client_gone"  # 499: the caller hung up first
    SHUTTING_DOWN = "shutting_down"  # 503: the graceful shutdown's time ran out before the answer
    INTERNAL_ERROR = "internal_error"  # 500: a defect in the gateway
    UPSTREAM_ERROR = "upstream_error"  # 502, or a stream the worker broke off after it had started (200 sent)
    INVALID_REQUEST = "invalid_request"  # 400
    MODEL_NOT_ALLOWED = "model_not_allowed"  # 403
    MODEL_NOT_FOUND = "model_not_found"  # 404
    LIMITER_UNAVAILABLE = "rate_limiter_unavailable"  # 503: Redis down and the tier fails closed
    LIMITER_ERROR = "rate_limiter_error"  # 503: Redis answered with an error
    OVERLOADED = "overloaded"  # 503: the gateway shed load
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"  # 503: no worker could be reached
    UPSTREAM_TIMEOUT = "upstream_timeout"  # 504
    UPSTREAM_TOO_LARGE = "upstream_response_too_large"  # 502: the answer outgrew max_response_bytes
    # A cascade's escalated draft (its own record, with its cost; the answer has another)
    DRAFT_UNREADABLE = "draft:unreadable"
    DRAFT_EMPTY = "draft:empty"
    DRAFT_TRUNCATED = "draft:truncated"
    DRAFT_REFUSED = "draft:refused"
    DRAFT_LOW_CONFIDENCE = "draft:low_confidence"
    DRAFT_ANSWER_SCORER = "draft:answer_scorer"
    DRAFT_FAILED = "draft:draft_failed"
    DRAFT_REJECTED = "draft:draft_status_4xx"  # the small worker refused the request (e.g. its context is short)

    @classmethod
    def of_draft(cls, why: str) -> Reason:
        """The record reason for a draft escalated because `why` (x-triage-escalation's value)."""
        if why.startswith("draft_status_"):
            return cls.DRAFT_REJECTED
        return cls("draft:" + why)

    @classmethod
    def of_error(cls, code: str) -> Reason:
        """The record reason for a request that ended in an error with this code; an unknown code is a defect."""
        try:
            return cls(code)
        except ValueError:
            return cls.INTERNAL_ERROR


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens (the same number is micro-USD per token); per_second: USD per second of a request's
    wall time on the worker, for machines paid by the hour rather than by the token."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None  # cached prompt tokens (vLLM prefix caching); None: the input price
    per_second: float = 0.0


@dataclass(frozen=True, slots=True)
class Worker:
    """One upstream serving one model: an OpenAI-compatible server (vLLM), or a hosted API through litellm."""

    name: str
    role: Role
    base_url: str  # ends in /v1 ("" for a hosted API at its provider's default address)
    model: str  # the served model name the worker expects in requests
    prices: Prices
    timeout: float  # seconds: whole answer, or longest silence inside a stream
    connect_timeout: float
    api_key: str | None = None
    provider: str = "openai"  # openai: an OpenAI-compatible server (vLLM), called directly; litellm: hosted API
    provider_model: str | None = None  # litellm's model string, e.g. "anthropic/claude-3-5-haiku-latest"
    max_response_bytes: int = 32 * 1024 * 1024  # a larger non-streamed answer is refused while it is read
    context_length: int = 0  # tokens the worker's model holds (prompt + completion); 0: not configured


@dataclass(frozen=True, slots=True)
class Decision:
    role: Role
    reason: Reason
    score: float | None = None
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class Routed:
    """Where a request went: the worker that served it and the decision that chose the model."""

    worker: Worker
    decision: Decision
