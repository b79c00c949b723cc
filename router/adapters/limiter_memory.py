"""In-process rate limiter with the Redis limiter's semantics: the embedded default when no Redis URL is
configured. Limits then hold per gateway process, which is why several replicas need Redis.

Memory is bounded: a caller's state exists only while something in it is live (a request in the window, a
token bucket, a lease, today's quota), idle states are swept out, and at most `max_callers` are tracked; past
that, the caller seen least recently is forgotten (a caller-rotation flood cannot grow the process)."""

from __future__ import annotations

import itertools
import time
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable

from router.core.budgets import Cap, SpendHold
from router.core.limits import BUCKET_MS, DAY_MS, WINDOW_MS, Admission
from router.core.tiers import Caller

__all__ = ["MemoryLimiter"]

SWEEP_EVERY = 4096  # admissions between sweeps of idle callers


class _State:
    """One caller's windows. Containers are created on first use: most callers only ever touch one limit."""

    __slots__ = ("buckets", "day", "head", "leases", "requests")

    def __init__(self) -> None:
        # Admission times, oldest first, from `head` on. The expired head is cut off only once it is half the
        # list: a busy caller's log holds a minute of requests (120,000 at 2,000 req/s), and cutting it on every
        # admission moved all of it each time. (A deque costs a block of 64 slots per caller: see max_callers.)
        self.requests: list[int] = []
        self.head = 0
        self.buckets: dict[int, int] | None = None  # bucket -> tokens
        self.day: tuple[int, int, int] | None = None  # (day, requests, tokens)
        self.leases: dict[str, int] | None = None  # lease -> expiry

    def expire(self, now: int) -> None:
        head = self.head = bisect_right(self.requests, now - WINDOW_MS, self.head)
        if head and head * 2 >= len(self.requests):
            del self.requests[:head]
            self.head = 0
        if self.buckets:
            oldest = now // BUCKET_MS - WINDOW_MS // BUCKET_MS + 1
            for b in [b for b in self.buckets if b < oldest]:
                del self.buckets[b]
        if self.day is not None and self.day[0] < now // DAY_MS:
            self.day = None
        if self.leases:
            for lease in [k for k, exp in self.leases.items() if exp <= now]:
                del self.leases[lease]

    def live(self) -> int:
        """Requests in the window (after expire)."""
        return len(self.requests) - self.head

    def idle(self) -> bool:
        return not (self.live() or self.buckets or self.day or self.leases)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryLimiter:
    def __init__(self, clock: Callable[[], int] = _now_ms, *, max_callers: int = 50_000) -> None:
        self._clock = clock
        self._max_callers = max_callers
        self._states: OrderedDict[tuple[str, str], _State] = OrderedDict()  # least recently seen first
        self._since_sweep = 0
        self._spend: dict[str, list[int]] = {}  # budget window key -> [settled, held, expires_ms]
        self._leases = itertools.count()  # lease ids: unique within this process, which alone holds them

    def __len__(self) -> int:
        return len(self._states)

    def _state(self, key: tuple[str, str], now: int) -> _State:
        st = self._states.get(key)
        if st is None:
            self._since_sweep += 1
            if self._since_sweep >= SWEEP_EVERY:
                self._sweep(now)
            while len(self._states) >= self._max_callers:
                self._states.popitem(last=False)  # the caller seen least recently
            st = self._states[key] = _State()
        else:
            self._states.move_to_end(key)
        return st

    def _sweep(self, now: int) -> None:
        """Drop callers with nothing live left (amortised: once per SWEEP_EVERY new callers)."""
        self._since_sweep = 0
        idle = []
        for key, st in self._states.items():
            st.expire(now)
            if st.idle():
                idle.append(key)
        for key in idle:
            del self._states[key]

    def _window(self, cap: Cap, now: int) -> list[int]:
        """A budget window's counters; windows past their expiry are dropped (a few per tier and key)."""
        if len(self._spend) > 4 * self._max_callers:
            for key in [k for k, v in self._spend.items() if v[2] <= now]:
                del self._spend[key]
        row = self._spend.get(cap.key)
        if row is None or row[2] <= now:
            row = self._spend[cap.key] = [0, 0, cap.expires_ms]
        return row

    def _spend_check(self, caps: tuple[Cap, ...], reserve: int, now: int) -> tuple[int, int, int]:
        """(remaining after the reservation, 1-based index of the budget that refuses or 0, what it has used)."""
        remaining = -1
        for i, cap in enumerate(caps, 1):
            settled, held, _ = self._window(cap, now)
            left = cap.limit - settled - held - reserve
            if left < 0:
                return remaining, i, settled + held
            remaining = left if remaining < 0 else min(remaining, left)
        return remaining, 0, 0

    def _hold(self, caps: tuple[Cap, ...], reserve: int, now: int) -> None:
        for cap in caps:
            self._window(cap, now)[1] += reserve

    async def spent(self, caps: tuple[Cap, ...]) -> list[tuple[int, int]]:
        now = self._clock()
        return [(r[0], r[1]) if (r := self._spend.get(c.key)) and r[2] > now else (0, 0) for c in caps]

    async def admit(self, caller: Caller, estimate: int, caps: tuple[Cap, ...] = (), reserve: int = 0) -> Admission:
        lim = caller.tier.limits
        now = self._clock()
        st = self._state((caller.tier.name, caller.identity), now)
        st.expire(now)
        bucket, day = now // BUCKET_MS, now // DAY_MS
        buckets = st.buckets or {}
        requests, head = st.requests, st.head
        used_r, used_t = len(requests) - head, sum(buckets.values())
        _, day_r, day_t = st.day or (day, 0, 0)
        reset_t = (min(buckets, default=bucket) + WINDOW_MS // BUCKET_MS) * BUCKET_MS - now
        leases = st.leases or {}

        def oldest_request() -> int:
            return requests[head] + WINDOW_MS - now if len(requests) > head else 0

        deny, retry = "", 0
        if lim.requests_per_minute and used_r >= lim.requests_per_minute:
            deny, retry = "requests", oldest_request()
        elif lim.tokens_per_minute and used_t + estimate > lim.tokens_per_minute:
            deny, retry = "tokens", reset_t
        elif lim.daily_requests and day_r >= lim.daily_requests:
            deny, retry = "daily_requests", DAY_MS - now % DAY_MS
        elif lim.daily_tokens and day_t + estimate > lim.daily_tokens:
            deny, retry = "daily_tokens", DAY_MS - now % DAY_MS
        elif lim.max_concurrent and len(leases) >= lim.max_concurrent:
            deny, retry = "concurrency", min(1000, min(leases.values()) - now)
        left, over, over_spent = (-1, 0, 0) if deny else self._spend_check(caps, reserve, now)
        deny = deny or ("budget" if over else "")
        lease = f"{next(self._leases):x}"
        if not deny:
            # Only the limits the tier sets keep state, as in the Redis script.
            if lim.requests_per_minute:
                st.requests.append(now)
            if lim.tokens_per_minute:
                st.buckets = buckets
                buckets[bucket] = buckets.get(bucket, 0) + estimate
            if lim.daily_requests or lim.daily_tokens:
                st.day = (day, day_r + 1, day_t + estimate)
            if lim.max_concurrent:
                st.leases = leases
                leases[lease] = now + lim.lease_ttl_ms
            self._hold(caps, reserve, now)
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
            spend=SpendHold(caps, reserve, left) if caps and not deny else None,
            over=caps[over - 1] if over else None,
            over_spent=over_spent,
        )

    async def settle(
        self, caller: Caller, admission: Admission, actual_tokens: int, actual_cost: int | None = None
    ) -> None:
        hold = admission.spend
        if hold is not None:
            cost = hold.reserved if actual_cost is None else max(0, actual_cost)
            for cap in hold.caps:
                row = self._spend.get(cap.key)
                if row is not None:
                    row[0] += cost
                    row[1] -= hold.reserved
        st = self._states.get((caller.tier.name, caller.identity))
        if st is None:
            return
        delta = actual_tokens - admission.reserved
        if delta and st.buckets and admission.bucket in st.buckets:
            st.buckets[admission.bucket] += delta
        if delta and st.day is not None and st.day[0] == admission.day:
            st.day = (st.day[0], st.day[1], st.day[2] + delta)
        if st.leases:
            st.leases.pop(admission.lease, None)
