"""Value types shared by the core, the service and the adapters."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    SMALL = "small"
    LARGE = "large"


class Reason(StrEnum):
    """Why a worker was chosen; the value is what `x-triage-reason` carries."""

    REQUESTED = "requested"  # the caller named a concrete model
    BELOW_THRESHOLD = "below_threshold"  # routed: score < threshold -> small
    AT_OR_ABOVE_THRESHOLD = "at_or_above_threshold"  # routed: score >= threshold -> large
    TIER_POLICY = "tier_policy"  # routed, but the tier may not use the model size the score chose
    FALLBACK = "fallback"  # the chosen model's workers failed; the other model (allowed by the tier) answered
    CASCADE_ACCEPTED = "cascade_accepted"  # cascade tier: the small model's draft was kept
    ESCALATED = "escalated"  # cascade tier: the draft looked unreliable; the large model answered
    CACHED = "cached"  # an identical deterministic request was answered before: no worker was called


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens."""

    input: float = 0.0
    output: float = 0.0


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


@dataclass(frozen=True, slots=True)
class Decision:
    role: Role
    reason: Reason
    score: float | None = None
    threshold: float | None = None
