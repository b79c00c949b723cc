"""Admission under a tier's limits: cap max_tokens, reserve an estimate of the tokens (the prompt, and every
choice's completion), refuse with 429 (or 400 when the request could never fit); and settle the reservation to
the real usage. A store that does not answer is counted, and the tier decides."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from router.core.limits import Admission, estimate_tokens, headers, retry_after_seconds
from router.core.ports import RateLimiter
from router.core.tiers import Caller, Tier, capped_max_tokens
from router.errors import InvalidRequest, LimiterFailed, LimiterUnavailable, Overloaded, RateLimited
from router.protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest, Prompt, choices

__all__ = ["DEFAULT_COMPLETION_ESTIMATE", "AdmissionControl", "LimiterHealth"]

log = logging.getLogger("triage.service")
DEFAULT_COMPLETION_ESTIMATE = 512  # reserved per choice when neither the request nor the tier bounds max_tokens
_BOUNDS = ("max_tokens", "max_completion_tokens")  # a worker honours either: a tier's cap applies to both


@dataclass
class LimiterHealth:
    errors: int = 0
    last_error: str = ""


class AdmissionControl:
    def __init__(self, limiter: RateLimiter, *, max_pending: int = 512) -> None:
        self._limiter = limiter
        self.health = LimiterHealth()
        # Requests waiting on the limiter at once. Past it the gateway is saturated: it refuses new requests
        # with 503 + Retry-After (Envoy's overload manager does the same) instead of letting them queue until
        # the store's deadline passes and a fail-open tier admits them past their limit.
        self._max_pending = max_pending
        self.pending = 0
        self.shed = 0

    def busy(self) -> bool:
        """Optional work (shadow calls) waits while an eighth of the admission queue is in use."""
        return self.pending * 8 >= self._max_pending

    async def admit(self, caller: Caller, prompt: Prompt, payload: dict[str, Any]) -> Admission | None:
        tier, request = caller.tier, prompt.request
        count = choices(request)
        if count > tier.max_n:
            raise _too_many(tier, request, count)
        bound = _cap(tier, request, payload)
        if not tier.limits.any:
            return None  # unlimited tier: no store round trip at all
        estimate = _estimate(tier, prompt, bound, count)
        if self.pending >= self._max_pending:
            self.shed += 1
            raise Overloaded(f"the gateway is saturated ({self.pending} requests waiting for admission); retry")
        self.pending += 1
        try:
            admission = await self._limiter.admit(caller, estimate)
        except LimiterUnavailable as exc:
            self._failed(exc, f"admission for tier {tier.name} fails {'open' if tier.fail_open else 'closed'}")
            if tier.fail_open:
                return None
            raise
        except LimiterFailed as exc:
            self._failed(exc, "the request is refused (a store fault never fails open)")
            raise
        finally:
            self.pending -= 1
        if not admission.admitted:
            raise RateLimited(
                f"Rate limit reached for tier {tier.name} ({admission.denied_by}); retry after "
                f"{retry_after_seconds(admission.retry_after_ms)} s.",
                headers=headers(admission),
            )
        return admission

    async def settle(self, caller: Caller, admission: Admission | None, tokens: int | None) -> None:
        if admission is None:
            return
        try:
            await self._limiter.settle(caller, admission, admission.reserved if tokens is None else tokens)
        except (LimiterUnavailable, LimiterFailed) as exc:
            self._failed(exc, "the reservation stays until its window passes")

    def _failed(self, exc: LimiterUnavailable | LimiterFailed, consequence: str) -> None:
        self.health.errors += 1
        self.health.last_error = exc.message
        log.warning("%s; %s", exc.message, consequence)


def _cap(tier: Tier, request: GenerationRequest, payload: dict[str, Any]) -> int | None:
    """Caps every completion bound the caller sent at the tier's max_tokens (and sets max_tokens when it sent
    none); returns the most tokens a choice may use (None: unbounded). Both fields given with different values
    are both capped and the larger is reserved: whichever the worker honours is covered."""
    chat = isinstance(request, ChatCompletionRequest)
    sent = [(f, v) for f in _BOUNDS if (f == "max_tokens" or chat) and isinstance(v := getattr(request, f, None), int)]
    if not sent:
        bound = capped_max_tokens(tier, None)
        if bound is not None:
            payload["max_tokens"] = bound
        return bound
    capped = [(f, capped_max_tokens(tier, v) or v) for f, v in sent]
    payload.update(capped)
    return max(v for _, v in capped)


def _estimate(tier: Tier, prompt: Prompt, bound: int | None, count: int) -> int:
    """The reservation: the prompt's estimate and `count` completions of `bound` tokens. A request that could
    never fit the tier's token limits is a 400 (a 429 would have it retry forever); without a bound the default
    completion shrinks to what the limit leaves, and the real usage settles it."""
    request, tokens = prompt.request, prompt.tokens
    ceiling = tier.limits.token_ceiling
    per_choice = bound
    if per_choice is None:
        room = (ceiling[0] - tokens - 1) // count if ceiling else DEFAULT_COMPLETION_ESTIMATE
        per_choice = max(0, min(DEFAULT_COMPLETION_ESTIMATE, room))
    estimate = estimate_tokens(tokens, per_choice * count)
    if ceiling is not None and estimate > ceiling[0]:
        limit, window = ceiling
        what = f"tier {tier.name} allows {limit} tokens per {window}"
        if bound is None:
            param = "messages" if isinstance(request, ChatCompletionRequest) else "prompt"
            message = f"{param}: the prompt (about {tokens} tokens) can never be admitted: {what}"
        else:
            param = _bound_field(request, bound)
            message = (
                f"{param}: this request may use {estimate} tokens (a prompt of about {tokens} and {count} x {bound} "
                f"completion tokens), and can never be admitted: {what}; lower {param}"
            )
        raise InvalidRequest(message, param=param, code="tokens_exceed_limit")
    return estimate


def _bound_field(request: GenerationRequest, bound: int) -> str:
    """The field the caller bounded its completions with (the larger, if it sent both); the tier's own cap
    reads as max_tokens."""
    mct = getattr(request, "max_completion_tokens", None)
    if isinstance(request, ChatCompletionRequest) and mct is not None and mct >= (request.max_tokens or 0):
        return "max_completion_tokens"
    return "max_tokens"


def _too_many(tier: Tier, request: GenerationRequest, count: int) -> InvalidRequest:
    """More choices than the tier allows: `n` for each prompt of a completions prompt list."""
    limit = f"at most {tier.max_n} choices per request for tier {tier.name}"
    if isinstance(request, CompletionRequest) and count != (request.n or 1):
        prompts = count // (request.n or 1)
        return InvalidRequest(
            f"prompt: {prompts} prompts x n={request.n or 1} is {count} choices; {limit}", param="prompt"
        )
    return InvalidRequest(f"n: {limit}", param="n")
