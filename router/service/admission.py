"""Admission under a tier's limits: cap max_tokens, reserve an estimate of the tokens, refuse with 429; and
settle the reservation to the real usage. A store that does not answer is counted, and the tier decides."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from router.core.limits import Admission, estimate_tokens, headers, retry_after_seconds
from router.core.ports import RateLimiter
from router.core.tiers import Caller, capped_max_tokens
from router.errors import InvalidRequest, LimiterFailed, LimiterUnavailable, Overloaded, RateLimited
from router.protocol import ChatCompletionRequest, GenerationRequest, prompt_chars

__all__ = ["DEFAULT_COMPLETION_ESTIMATE", "AdmissionControl", "LimiterHealth"]

log = logging.getLogger("triage.service")
DEFAULT_COMPLETION_ESTIMATE = 512  # reserved when neither the request nor the tier bounds max_tokens


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

    async def admit(self, caller: Caller, request: GenerationRequest, payload: dict[str, Any]) -> Admission | None:
        tier = caller.tier
        if request.n is not None and request.n > tier.max_n:
            raise InvalidRequest(f"n: at most {tier.max_n} choices per request for tier {tier.name}", param="n")
        field = (
            "max_completion_tokens"
            if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None
            else "max_tokens"
        )
        capped = capped_max_tokens(tier, payload.get(field) if isinstance(payload.get(field), int) else None)
        if capped is not None and tier.max_tokens:
            payload[field] = capped
        if not tier.limits.any:
            return None  # unlimited tier: no store round trip at all
        completions = (capped or DEFAULT_COMPLETION_ESTIMATE) * (request.n or 1)
        estimate = estimate_tokens(prompt_chars(request), completions)
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
