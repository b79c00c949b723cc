"""The same semantics from both limiters, checked against each."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from router.adapters.limiter_memory import SWEEP_EVERY, MemoryLimiter
from router.adapters.limiter_redis import RedisLimiter
from router.core.limits import WINDOW_MS, TierLimits, headers
from router.core.tiers import Caller, Tier

Limiter = MemoryLimiter | RedisLimiter


def caller(limits: TierLimits, who: str = "ip:203.0.113.7") -> Caller:
    return Caller(Tier("t", limits), who)


async def test_requests_per_minute_is_exact(limiter: Limiter) -> None:
    c = caller(TierLimits(requests_per_minute=5))
    results = await asyncio.gather(*(limiter.admit(c, 1) for _ in range(20)))
    assert sum(a.admitted for a in results) == 5
    denied = next(a for a in results if not a.admitted)
    assert denied.denied_by == "requests"
    assert 0 < denied.retry_after_ms <= WINDOW_MS
    h = headers(denied)
    assert h["x-ratelimit-limit-requests"] == "5"
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert int(h["retry-after"]) >= 1


async def test_callers_are_counted_apart(limiter: Limiter) -> None:
    limits = TierLimits(requests_per_minute=1)
    assert (await limiter.admit(caller(limits, "ip:a"), 1)).admitted
    assert (await limiter.admit(caller(limits, "ip:b"), 1)).admitted
    assert not (await limiter.admit(caller(limits, "ip:a"), 1)).admitted


async def test_tokens_reserved_then_settled(limiter: Limiter) -> None:
    c = caller(TierLimits(tokens_per_minute=100))
    first = await limiter.admit(c, 60)
    assert first.admitted
    assert first.used_tokens == 60
    assert not (await limiter.admit(c, 60)).admitted  # 60 reserved + 60 > 100
    await limiter.settle(c, first, 10)  # the answer was short: 50 tokens come back
    second = await limiter.admit(c, 60)
    assert second.admitted
    assert second.used_tokens == 70
    h = headers(second)
    assert (h["x-ratelimit-limit-tokens"], h["x-ratelimit-remaining-tokens"]) == ("100", "30")


async def test_daily_quota(limiter: Limiter) -> None:
    c = caller(TierLimits(daily_requests=2))
    got = [(await limiter.admit(c, 1)) for _ in range(3)]
    assert [a.admitted for a in got] == [True, True, False]
    assert got[2].denied_by == "daily_requests"
    assert got[2].retry_after_ms > 0


async def test_concurrency_slots_are_released_by_settle(limiter: Limiter) -> None:
    c = caller(TierLimits(max_concurrent=2))
    a, b = await limiter.admit(c, 1), await limiter.admit(c, 1)
    third = await limiter.admit(c, 1)
    assert (a.admitted, b.admitted, third.admitted, third.denied_by) == (True, True, False, "concurrency")
    await limiter.settle(c, a, 1)
    assert (await limiter.admit(c, 1)).admitted


async def test_leases_expire_when_never_settled(limiter: Limiter) -> None:
    """A gateway that dies never settles: its slots come back after the lease TTL. Redis keeps the time (its
    own clock), so it is waited for; the in-memory limiter's clock is moved instead."""
    now = [1_000_000]
    if isinstance(limiter, MemoryLimiter):
        limiter = MemoryLimiter(clock=lambda: now[0])
    c = caller(TierLimits(max_concurrent=1, lease_ttl_ms=300))
    assert (await limiter.admit(c, 1)).admitted
    assert not (await limiter.admit(c, 1)).admitted
    if isinstance(limiter, MemoryLimiter):
        now[0] += 299
        assert not (await limiter.admit(c, 1)).admitted
        now[0] += 1
    else:
        await asyncio.sleep(0.4)
    assert (await limiter.admit(c, 1)).admitted


def test_memory_window_slides_with_the_clock() -> None:
    now = [1_000_000]
    lim = MemoryLimiter(clock=lambda: now[0])
    c = caller(TierLimits(requests_per_minute=2, tokens_per_minute=10))

    async def run() -> list[bool]:
        out = [(await lim.admit(c, 4)).admitted, (await lim.admit(c, 4)).admitted, (await lim.admit(c, 1)).admitted]
        now[0] += WINDOW_MS - 1
        out.append((await lim.admit(c, 1)).admitted)  # both still inside the minute
        now[0] += 1
        out.append((await lim.admit(c, 4)).admitted)  # the first two left the window
        return out

    assert asyncio.run(run()) == [True, True, False, False, True]


async def test_memory_request_log_counts_exactly_while_its_expired_head_is_cut_off_lazily() -> None:
    """The log keeps expired entries until they are half of it: the counts, the resets and the refusals must
    be those of an exact sliding window all along (checked against one kept here, over several minutes of
    admissions and refusals at an uneven pace)."""
    now = [1_000_000]
    lim = MemoryLimiter(clock=lambda: now[0])
    c = caller(TierLimits(requests_per_minute=300))
    window: list[int] = []  # admission times of the reference sliding log
    for i in range(6_000):
        now[0] += (7, 13, 40, 1)[i % 4] + (500 if i % 997 == 0 else 0)
        window = [t for t in window if t > now[0] - WINDOW_MS]
        a = await lim.admit(c, 1)
        assert a.admitted == (len(window) < 300), i
        if a.admitted:
            window.append(now[0])
        assert a.used_requests == len(window), i
        assert a.reset_requests_ms == window[0] + WINDOW_MS - now[0], i
    assert 0 < sum(1 for t in window if t > now[0] - WINDOW_MS) <= 300


@pytest.mark.parametrize(("ms", "text"), [(20, "20ms"), (1500, "1.5s"), (360_000, "6m0s"), (-5, "0ms")])
def test_reset_durations_in_openai_format(ms: int, text: str) -> None:
    from router.core.limits import duration

    assert duration(ms) == text


async def test_memory_limiter_forgets_idle_callers() -> None:
    now = [1_000_000]
    lim = MemoryLimiter(clock=lambda: now[0])
    limits = TierLimits(requests_per_minute=5)
    for i in range(SWEEP_EVERY - 1):
        assert (await lim.admit(caller(limits, f"ip:{i}"), 1)).admitted
    assert len(lim) == SWEEP_EVERY - 1
    now[0] += WINDOW_MS + 1  # every window has passed: nothing live is left
    await lim.admit(caller(limits, "ip:new"), 1)  # the sweep runs once per SWEEP_EVERY new callers
    assert len(lim) == 1


async def test_memory_limiter_stays_exact_for_a_caller_it_keeps() -> None:
    lim = MemoryLimiter(max_callers=100)
    limits = TierLimits(requests_per_minute=3)
    regular = caller(limits, "ip:regular")
    admitted = 0
    for i in range(500):  # a rotation flood around a regular caller
        await lim.admit(caller(limits, f"ip:rot{i}"), 1)
        if i % 50 == 0:  # seen more recently than the cap's worth of new callers: never the one forgotten
            admitted += (await lim.admit(regular, 1)).admitted
    assert len(lim) <= 100
    assert admitted == 3


def test_memory_limiter_memory_is_bounded_under_a_caller_rotation_flood() -> None:
    """Regression: 100k distinct callers held 175 MiB. Measured in a fresh interpreter, as RSS growth."""
    script = """
import asyncio, gc
from router.adapters.limiter_memory import MemoryLimiter
from router.core.limits import TierLimits
from router.core.tiers import Caller, Tier

def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096

async def main():
    tier = Tier('anonymous', limits=TierLimits(requests_per_minute=60, tokens_per_minute=100000))
    callers = [Caller(tier, 'ip:%032x' % i) for i in range(100_000)]
    lim = MemoryLimiter()
    gc.collect()
    before = rss()
    for c in callers:
        await lim.admit(c, 10)
    gc.collect()
    print(rss() - before, len(lim))

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    grown, tracked = (int(v) for v in out.stdout.split())
    assert tracked <= 50_000
    assert grown < 48 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MiB for 100k callers"
