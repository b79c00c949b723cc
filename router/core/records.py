"""The decision record: one per request that reaches the service, one versioned schema."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["DRAFT_PREFIX", "SHADOW", "DecisionRecord", "is_draft", "is_extra_call"]

SCHEMA_VERSION = 2


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    ts: float  # unix seconds when the request reached the service
    request_id: str
    tier: str
    caller: str  # a hash of the caller's identity: never the key or the raw address
    model_requested: str
    model: str  # served model name that answered ("" when none did, e.g. a 429)
    worker: str
    role: str  # small | large ("" when no worker answered)
    score: float | None
    threshold: float | None
    reason: str  # x-triage-reason, rate_limited, or draft:<why> for a cascade's escalated draft
    escalated: bool
    cache_hit: bool
    prompt_tokens: int | None
    completion_tokens: int | None
    ttft_ms: float | None  # streams: time to the first chunk; otherwise the whole answer
    latency_ms: float
    status: int  # status the caller got
    cost: float  # USD at the serving worker's prices
    cost_large: float  # USD had the large model served it: the always-large baseline
    prompt: str | None = None  # only when the operator turns storing prompts on
    route: str = ""  # the API the request came through (/chat/completions, /responses, /messages, ...); "" before
    schema: int = SCHEMA_VERSION
    # The priced parts (schema 2): `cost` includes both; cached prompt tokens are part of prompt_tokens and
    # reasoning tokens part of completion_tokens.
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_cached: float = 0.0  # USD for the cached prompt tokens (price_cached_input)
    cost_seconds: float = 0.0  # USD for the wall time on the worker (price_per_second)


COLUMNS = tuple(f.name for f in fields(DecisionRecord))

DRAFT_PREFIX = "draft:"
SHADOW = "shadow"


def is_draft(record: DecisionRecord) -> bool:
    """A cascade's escalated draft: a call with a cost, but not a request (its answer has its own record)."""
    return record.reason.startswith(DRAFT_PREFIX)


def is_extra_call(record: DecisionRecord) -> bool:
    """A call that costs but is no request of its own: a cascade's escalated draft, or a shadow call."""
    return record.reason == SHADOW or record.reason.startswith(DRAFT_PREFIX)
