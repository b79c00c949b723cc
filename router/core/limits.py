"""Rate-limit arithmetic shared by the Redis and in-memory limiters: no I/O.

Semantics (both limiters):
- requests per minute: a sliding-window log, exact: at most N admissions in any 60 s.
- tokens per minute: the request's estimated tokens are reserved at admission in 1-second buckets summed
  over a sliding minute; when the response ends the reservation is settled to the real usage.
- daily quotas (requests and tokens) per UTC day.
- concurrency: a lease per request, with an expiry, so that a gateway that dies frees its slots.
Failed upstream requests count: admission is what is counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.core.budgets import BUDGET_HEADER, Cap, SpendHold, format_money

__all__ = [
    "Admission",
    "TierLimits",
    "duration",
    "estimate_tokens",
    "headers",
    "ms_to_next_day",
    "retry_after_seconds",
    "text_tokens",
]

WINDOW_MS = 60_000
BUCKET_MS = 1_000
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class TierLimits:
    """0 means unlimited."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    daily_requests: int = 0
    daily_tokens: int = 0
    max_concurrent: int = 0
    lease_ttl_ms: int = 600_000  # longest a request may hold a concurrency slot

    @property
    def token_ceiling(self) -> tuple[int, str] | None:
        """The most tokens one request can ever be granted, and the window that sets it (minute | day); None
        when tokens are not limited. A request that needs more is refused for good, not asked to retry."""
        windows = [(n, w) for n, w in ((self.tokens_per_minute, "minute"), (self.daily_tokens, "day")) if n]
        return min(windows) if windows else None

    @property
    def any(self) -> bool:
        """Whether anything is limited at all (an unlimited tier never touches the store)."""
        return bool(
            self.requests_per_minute
            or self.tokens_per_minute
            or self.daily_requests
            or self.daily_tokens
            or self.max_concurrent
        )


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    # "" when admitted; else requests | tokens | daily_requests | daily_tokens | concurrency | budget
    denied_by: str
    retry_after_ms: int
    limits: TierLimits
    used_requests: int  # in the current minute, this request included when admitted
    used_tokens: int
    reset_requests_ms: int  # until the oldest request leaves the window
    reset_tokens_ms: int
    lease: str  # identifies this admission for settle/release
    bucket: int  # token bucket the reservation went into
    day: int  # UTC day number of the admission
    reserved: int  # tokens reserved
    spend: SpendHold | None = None  # money reserved against the caller's budgets (None: no budget windows)
    over: Cap | None = None  # the budget that refused the request (denied_by "budget")
    over_spent: int = 0  # what that budget had spent and reserved, in micro-units


def text_tokens(text: str) -> int:
    """Tokens a text is estimated at before a worker counts it: ~4 ASCII characters a token (English, code,
    JSON), and a token for each other character. Tokenizers spend one to three tokens on a CJK character, a
    Cyrillic letter or an emoji: counted by 4s, a 12,000-token CJK prompt was reserved as about 1,000."""
    if text.isascii():
        return len(text) // 4
    ascii_chars = len(text.encode("ascii", "ignore"))  # C speed; no per-character loop in Python
    return ascii_chars // 4 + len(text) - ascii_chars


def estimate_tokens(prompt_tokens: int, completion_tokens: int) -> int:
    """Reservation at admission: the prompt's estimate (see text_tokens), one token of slack, and the most the
    completions may use."""
    return prompt_tokens + 1 + completion_tokens


def duration(ms: int) -> str:
    """OpenAI's reset format: 1s, 6m0s, 20ms."""
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s"


def retry_after_seconds(ms: int) -> int:
    """Whole seconds for Retry-After, rounded up, at least 1."""
    return max(1, -(-ms // 1000))


def headers(a: Admission) -> dict[str, str]:
    """x-ratelimit-* headers (OpenAI's names) for a tier's per-minute limits."""
    out: dict[str, str] = {}
    lim = a.limits
    if lim.requests_per_minute:
        out["x-ratelimit-limit-requests"] = str(lim.requests_per_minute)
        out["x-ratelimit-remaining-requests"] = str(max(0, lim.requests_per_minute - a.used_requests))
        out["x-ratelimit-reset-requests"] = duration(a.reset_requests_ms)
    if lim.tokens_per_minute:
        out["x-ratelimit-limit-tokens"] = str(lim.tokens_per_minute)
        out["x-ratelimit-remaining-tokens"] = str(max(0, lim.tokens_per_minute - a.used_tokens))
        out["x-ratelimit-reset-tokens"] = duration(a.reset_tokens_ms)
    if a.spend is not None:
        out[BUDGET_HEADER] = format_money(max(0, a.spend.remaining))
    if not a.admitted:
        out["retry-after"] = str(retry_after_seconds(a.retry_after_ms))
        out["retry-after-ms"] = str(max(0, a.retry_after_ms))
    return out


def ms_to_next_day(now_ms: int) -> int:
    return DAY_MS - now_ms % DAY_MS
