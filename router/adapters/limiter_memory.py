"""In-process rate limiter with the Redis limiter's semantics: the embedded default when no Redis URL is
configured. Limits then hold per gateway process, which is why several replicas need Redis."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from router.core.limits import BUCKET_MS, DAY_MS, WINDOW_MS, Admission
from router.core.tiers import Caller

__all__ = ["MemoryLimiter"]


@dataclass
class _State:
    requests: deque[int] = field(default_factory=deque)  # admission times, oldest first
    buckets: dict[int, int] = field(default_factory=dict)  # bucket -> tokens
    days: dict[int, list[int]] = field(default_factory=dict)  # day -> [requests, tokens]
    leases: dict[str, int] = field(default_factory=dict)  # lease -> expiry


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryLimiter:
    def __init__(self, clock: Callable[[], int] = _now_ms) -> None:
        self._clock = clock
        self._states: dict[tuple[str, str], _State] = {}

    async def admit(self, caller: Caller, estimate: int) -> Admission:
        lim = caller.tier.limits
        now = self._clock()
        st = self._states.setdefault((caller.tier.name, caller.identity), _State())
        while st.requests and st.requests[0] <= now - WINDOW_MS:
            st.requests.popleft()
        bucket, day = now // BUCKET_MS, now // DAY_MS
        oldest = bucket - WINDOW_MS // BUCKET_MS + 1
        for b in [b for b in st.buckets if b < oldest]:
            del st.buckets[b]
        for d in [d for d in st.days if d < day - 1]:
            del st.days[d]
        for lease in [k for k, exp in st.leases.items() if exp <= now]:
            del st.leases[lease]
        used_r, used_t = len(st.requests), sum(st.buckets.values())
        day_r, day_t = st.days.get(day, [0, 0])
        reset_t = (min(st.buckets, default=bucket) + WINDOW_MS // BUCKET_MS) * BUCKET_MS - now

        def oldest_request() -> int:
            return st.requests[0] + WINDOW_MS - now if st.requests else 0

        deny, retry = "", 0
        if lim.requests_per_minute and used_r >= lim.requests_per_minute:
            deny, retry = "requests", oldest_request()
        elif lim.tokens_per_minute and used_t + estimate > lim.tokens_per_minute:
            deny, retry = "tokens", reset_t
        elif lim.daily_requests and day_r >= lim.daily_requests:
            deny, retry = "daily_requests", DAY_MS - now % DAY_MS
        elif lim.daily_tokens and day_t + estimate > lim.daily_tokens:
            deny, retry = "daily_tokens", DAY_MS - now % DAY_MS
        elif lim.max_concurrent and len(st.leases) >= lim.max_concurrent:
            deny, retry = "concurrency", min(1000, min(st.leases.values()) - now)
        lease = uuid.uuid4().hex
        if not deny:
            st.requests.append(now)
            st.buckets[bucket] = st.buckets.get(bucket, 0) + estimate
            counters = st.days.setdefault(day, [0, 0])
            counters[0] += 1
            counters[1] += estimate
            if lim.max_concurrent:
                st.leases[lease] = now + lim.lease_ttl_ms
            used_r, used_t = used_r + 1, used_t + estimate
        return Admission(
            admitted=not deny,
            denied_by=deny,
            retry_after_ms=retry,
            limits=lim,
            used_requests=used_r,
            used_tokens=used_t,
            reset_requests_ms=oldest_request(),
            reset_tokens_ms=reset_t,
            lease=lease,
            bucket=bucket,
            day=day,
            reserved=estimate if not deny else 0,
        )

    async def settle(self, caller: Caller, admission: Admission, actual_tokens: int) -> None:
        st = self._states.get((caller.tier.name, caller.identity))
        if st is None:
            return
        delta = actual_tokens - admission.reserved
        if delta and admission.bucket in st.buckets:
            st.buckets[admission.bucket] += delta
        if delta and admission.day in st.days:
            st.days[admission.day][1] += delta
        st.leases.pop(admission.lease, None)
