"""CPU time per admission + settlement through the Redis limiter (this process's CPU, so other work on a busy
machine does not count), every limit of the tier in use, callers taking turns, at a given concurrency; then
the in-process limiter's CPU per admission + settlement for one caller whose minute holds few admissions,
against one whose minute holds as many as 2,000 req/s leave (the cost of a long request log).

    ./dev bench limiter_cpu [--concurrency 1 16] [--ops 4000] [--redis redis://127.0.0.1:6379/0]

Run it with PYTHONPATH=<another checkout> to measure that checkout's limiter. Needs Redis; keys are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: another checkout may be measured

import redis
import uvloop

from router.adapters.limiter_memory import MemoryLimiter
from router.adapters.limiter_redis import RedisLimiter
from router.core.limits import WINDOW_MS, TierLimits
from router.core.tiers import Caller, Tier

TIER = Tier(name="bench", limits=TierLimits(requests_per_minute=10**9, tokens_per_minute=10**12, max_concurrent=10**5))


async def measure(url: str, prefix: str, concurrency: int, ops: int) -> tuple[float, float]:
    """(µs of CPU per admit + settle, pairs per second)."""
    lim = RedisLimiter(url, prefix=prefix)
    await lim.warm()

    async def worker(k: int) -> None:
        caller = Caller(tier=TIER, identity=f"c{k}")
        for _ in range(ops // concurrency):
            admission = await lim.admit(caller, 100)
            await lim.settle(caller, admission, 50)

    await asyncio.gather(*(worker(k) for k in range(concurrency)))  # warm-up
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await lim.close()
    return cpu / ops * 1e6, ops / wall


async def measure_memory(rate: int, ops: int) -> float:
    """µs of CPU per admit + settle in the in-process limiter for one caller sending `rate` requests a second
    (on a simulated clock), measured once its minute is full."""
    now = [0.0]
    lim = MemoryLimiter(clock=lambda: int(now[0]))
    caller = Caller(tier=TIER, identity="heavy")

    async def admit_settle(n: int) -> None:
        for _ in range(n):
            now[0] += 1000 / rate
            admission = await lim.admit(caller, 100)
            await lim.settle(caller, admission, 50)

    await admit_settle(rate * WINDOW_MS // 1000 + 1000)  # the window full
    cpu = time.process_time()
    await admit_settle(ops)
    return (time.process_time() - cpu) / ops * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--ops", type=int, default=4000, help="admit + settle pairs per measurement (default 4000)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    if args.ops < 1 or min(args.concurrency) < 1:
        ap.error("--ops and --concurrency must be at least 1")
    prefix = f"bench-limiter-{uuid.uuid4().hex[:8]}"
    try:
        for c in args.concurrency:
            cpu, rate = uvloop.run(measure(args.redis, prefix, c, args.ops))
            print(f"concurrency {c}: {cpu:.0f} µs of CPU per admit + settle, {rate:,.0f} pairs/s")
        for rate in (1, 2000):
            cpu = uvloop.run(measure_memory(rate, args.ops * 5))
            print(f"in-process limiter, one caller at {rate:,} req/s: {cpu:.1f} µs of CPU per admit + settle")
    finally:
        client = redis.Redis.from_url(args.redis)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
