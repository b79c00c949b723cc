"""Admission throughput and Redis round trips per admission: llm-triage's limiter against the `limits`
library's Redis moving-window limiter, same Redis, same client library (redis-py asyncio), same run.

    ./dev bench ratelimit [--seconds 5] [--concurrency 32] [--callers 1000]

Round trips are counted on the client: every packed command sent on a connection (a pipeline counts once).
`limits` is installed into the project venv on first use. Needs Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from redis.asyncio.connection import Connection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from router.adapters.limiter_redis import RedisLimiter
from router.core.limits import TierLimits
from router.core.tiers import Caller, Tier

URL = "redis://127.0.0.1:6379/0"
SENT = [0]


def count_round_trips() -> None:
    original = Connection.send_packed_command

    async def counted(self: Connection, command: Any, check_health: bool = True) -> None:
        SENT[0] += 1
        await original(self, command, check_health)

    Connection.send_packed_command = counted  # type: ignore[method-assign,assignment]


async def run(name: str, admit: Callable[[int], Awaitable[bool]], seconds: float, concurrency: int) -> dict[str, float]:
    for i in range(200):  # warm-up: connections, script cache
        await admit(i)
    SENT[0] = 0
    done = [0]
    admitted = [0]
    stop = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop:
            admitted[0] += await admit(i)
            done[0] += 1
            i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    result = {
        "admissions_per_s": done[0] / elapsed,
        "round_trips": SENT[0] / done[0],
        "admitted": admitted[0] / done[0],
    }
    print(
        f"  {name:<34} {result['admissions_per_s']:9.0f} admissions/s   {result['round_trips']:.2f} round trips each",
        file=sys.stderr,
    )
    return result


async def main_async(args: argparse.Namespace) -> int:
    import limits as limits_pkg
    from limits import RateLimitItemPerMinute
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    count_round_trips()
    ours = RedisLimiter(URL, timeout=1.0, prefix=f"bench-{uuid.uuid4().hex[:6]}")
    tier = Tier("bench", TierLimits(requests_per_minute=1_000_000))
    callers = [Caller(tier, f"ip:198.51.{i // 256}.{i % 256}") for i in range(args.callers)]

    async def triage_admit(i: int) -> bool:
        return (await ours.admit(callers[i % len(callers)], 1)).admitted

    storage = RedisStorage(
        URL.replace("redis://", "async+redis://"),
        implementation="redispy",
        key_prefix=f"bench-limits-{uuid.uuid4().hex[:6]}",
    )
    window = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerMinute(1_000_000)

    async def limits_admit(i: int) -> bool:
        return await window.hit(item, callers[i % len(callers)].identity)

    print(f"{args.callers} callers, concurrency {args.concurrency}, {args.seconds:g} s each", file=sys.stderr)
    full = Tier(
        "full",
        TierLimits(
            requests_per_minute=1_000_000,
            tokens_per_minute=10**9,
            daily_requests=10**9,
            daily_tokens=10**12,
            max_concurrent=1_000_000,
        ),
    )
    full_callers = [Caller(full, c.identity) for c in callers]

    async def triage_full(i: int) -> bool:
        caller = full_callers[i % len(full_callers)]
        admission = await ours.admit(caller, 1)
        await ours.settle(caller, admission, 1)  # frees the lease, so the settle round trip counts too
        return admission.admitted

    a = await run("llm-triage RedisLimiter.admit", triage_admit, args.seconds, args.concurrency)
    b = await run(f"limits {limits_pkg.__version__} moving window .hit", limits_admit, args.seconds, args.concurrency)
    c = await run("llm-triage, every limit, admit+settle", triage_full, args.seconds, args.concurrency)
    await ours.close()
    print("\n| limiter | admissions/s | Redis round trips per admission |\n|---|---:|---:|")
    print(f"| llm-triage RedisLimiter (requests per minute) | {a['admissions_per_s']:,.0f} | {a['round_trips']:.2f} |")
    print(
        f"| limits {limits_pkg.__version__} MovingWindowRateLimiter (requests only) | {b['admissions_per_s']:,.0f} | "
        f"{b['round_trips']:.2f} |"
    )
    print(
        f"| llm-triage, every limit on (requests, tokens, daily, concurrency), admit + settle | "
        f"{c['admissions_per_s']:,.0f} | {c['round_trips']:.2f} (1 admit + 1 settle) |"
    )
    print(f"\nratio: llm-triage / limits = {a['admissions_per_s'] / b['admissions_per_s']:.2f}x admissions/s")
    return 0


def main() -> int:
    try:
        import limits  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "limits"], check=True)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--callers", type=int, default=1000)
    return uvloop.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
