"""Admission under a tier's limits: cap max_tokens, reserve an estimate of the tokens (the prompt, and every
choice's completion) and the worst-case cost against the caller's spend budgets, refuse with 429 (or 400 when
the request could never fit); and settle the reservations to the real usage and cost. A store that does not
answer is counted, and the tier decides."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, cast

from router.core.budgets import Cap
from router.core.limits import Admission, estimate_tokens, headers, retry_after_seconds
from router.core.ports import RateLimiter
from router.core.tiers import Caller, Tier, capped_max_tokens
from router.errors import InvalidRequest, LimiterFailed, LimiterUnavailable, Overloaded, RateLimited
from router.protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest, Prompt, choices
from router.service.spending import Completion, Quote, Reach, Spending

__all__ = ["DEFAULT_COMPLETION_ESTIMATE", "WORKER_BOUNDS", "AdmissionControl", "Admitted", "LimiterHealth"]

log = logging.getLogger("triage.service")
DEFAULT_COMPLETION_ESTIMATE = 512  # reserved per choice when neither the request nor the tier bounds max_tokens
# Length fields a worker honours beside the API's own: llama.cpp's server reads `n_predict` before `max_tokens`,
# so a caller could pass a tier's cap (and its reservation) with it. Capped at the bound like the API's fields.
WORKER_BOUNDS = ("n_predict",)


@dataclass(frozen=True, slots=True)
class Admitted:
    admission: Admission | None  # None: nothing to settle (an unlimited tier, or a store down failing open)
    pinned: bool = False  # kept on the small model by max_cost_per_request


NOT_LIMITED = Admitted(None)


@dataclass
class LimiterHealth:
    errors: int = 0
    last_error: str = ""


class AdmissionControl:
    def __init__(self, limiter: RateLimiter, *, max_pending: int = 512, spending: Spending | None = None) -> None:
        self._limiter = limiter
        self.spending = spending or Spending()
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

    async def admit(
        self, caller: Caller, prompt: Prompt, payload: dict[str, Any], reach: Reach | None = None
    ) -> Admitted:
        """`reach`: the workers the request may reach, which price its worst case for the caller's budgets."""
        tier, request = caller.tier, prompt.request
        count = choices(request)
        if count > tier.max_n:
            raise _too_many(tier, request, count)
        bound = _cap(tier, request, payload)
        budgeted = caller.budgeted and reach is not None
        if not tier.limits.any and not budgeted:
            return NOT_LIMITED  # unlimited tier: no store round trip at all
        estimate, completion = _estimate(tier, prompt, bound, count)
        quote, caps = Quote(0, False), cast(tuple[Cap, ...], ())
        if budgeted and reach is not None:
            param = _bound_field(request, bound) if bound is not None else "max_tokens"
            bounded = Completion(completion, count, unbounded=bound is None)
            quote = self.spending.quote(caller, reach, prompt.tokens + 1, bounded, param)  # with the token of slack
            caps = self.spending.caps(caller)
        if not tier.limits.any and not caps:
            return Admitted(None, quote.pinned)  # a per-request cap alone needs no store
        if self.pending >= self._max_pending:
            self.shed += 1
            raise Overloaded(f"the gateway is saturated ({self.pending} requests waiting for admission); retry")
        self.pending += 1
        try:
            admission = await self._limiter.admit(caller, estimate, caps, quote.reserve)
        except LimiterUnavailable as exc:
            self._failed(exc, f"admission for tier {tier.name} fails {'open' if tier.fail_open else 'closed'}")
            if tier.fail_open:
                return Admitted(None, quote.pinned)
            raise
        except LimiterFailed as exc:
            self._failed(exc, "the request is refused (a store fault never fails open)")
            raise
        finally:
            self.pending -= 1
        if admission.denied_by == "budget":
            raise self.spending.refusal(admission, quote.reserve, headers(admission))
        if not admission.admitted:
            raise RateLimited(
                f"Rate limit reached for tier {tier.name} ({admission.denied_by}); retry after "
                f"{retry_after_seconds(admission.retry_after_ms)} s.",
                headers=headers(admission),
            )
        return Admitted(admission, quote.pinned)

    async def settle(
        self, caller: Caller, admission: Admission | None, tokens: int | None, cost: int | None = None
    ) -> None:
        """`tokens` and `cost` (micro-units) are what the request really used; None keeps the reservation."""
        if admission is None:
            return
        try:
            await self._limiter.settle(caller, admission, admission.reserved if tokens is None else tokens, cost)
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
    fields = request.BOUNDS
    if not fields:
        return 0  # nothing generated (embeddings): only the input is reserved
    sent = [(f, v) for f in fields if isinstance(v := getattr(request, f, None), int)]
    if not sent:
        bound = capped_max_tokens(tier, None)
        if bound is not None:
            payload[fields[0]] = bound
    else:
        capped = [(f, capped_max_tokens(tier, v) or v) for f, v in sent]
        payload.update(capped)
        bound = max(v for _, v in capped)
    if bound is not None:
        for name in WORKER_BOUNDS:
            if name not in payload:
                continue
            value = payload[name]
            if type(value) is float and math.isfinite(value) and value >= 0:
                value = int(value)  # as llama.cpp reads a number into an int: 5.0 and 5.7 are 5
            payload[name] = value if type(value) is int and 0 <= value <= bound else bound
    return bound


def _estimate(tier: Tier, prompt: Prompt, bound: int | None, count: int) -> tuple[int, int]:
    """The reservation: the prompt's estimate and `count` completions of `bound` tokens. A request that could
    never fit the tier's token limits is a 400 (a 429 would have it retry forever); without a bound the default
    completion shrinks to what the limit leaves, and the real usage settles it. Returns (the reservation, the
    completions' tokens)."""
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
        if bound is None or not request.BOUNDS:
            param = request.PROMPT
            message = f"{param}: the prompt (about {tokens} tokens) can never be admitted: {what}"
        else:
            param = _bound_field(request, bound)
            message = (
                f"{param}: this request may use {estimate} tokens (a prompt of about {tokens} and {count} x {bound} "
                f"completion tokens), and can never be admitted: {what}; lower {param}"
            )
        raise InvalidRequest(message, param=param, code="tokens_exceed_limit")
    return estimate, per_choice * count


def _bound_field(request: GenerationRequest, bound: int) -> str:
    """The field the caller bounded its completions with (the larger, if it sent both); the tier's own cap
    reads as max_tokens."""
    mct = getattr(request, "max_completion_tokens", None)
    if isinstance(request, ChatCompletionRequest) and mct is not None and mct >= (request.max_tokens or 0):
        return "max_completion_tokens"
    return request.BOUNDS[0]


def _too_many(tier: Tier, request: GenerationRequest, count: int) -> InvalidRequest:
    """More choices than the tier allows: `n` for each prompt of a completions prompt list."""
    limit = f"at most {tier.max_n} choices per request for tier {tier.name}"
    if isinstance(request, CompletionRequest) and count != (request.n or 1):
        prompts = count // (request.n or 1)
        return InvalidRequest(
            f"prompt: {prompts} prompts x n={request.n or 1} is {count} choices; {limit}", param="prompt"
        )
    return InvalidRequest(f"n: {limit}", param="n")
