"""How long the Redis ledger's writer holds the event loop: the CPU time (of the loop's thread, so other processes
on a busy machine do not count) between two steps of a task that yields on every iteration, while the writer
flushes `--records` decision records. The longest of these holds is a floor under the gateway's p99 latency.

    ./dev bench ledger_lag [--records 1000] [--repeats 5] [--redis redis://127.0.0.1:6379/0]

Run it from two checkouts to compare (PYTHONPATH=<checkout>). Needs Redis; its stream is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: another checkout may be measured

import redis

from router.adapters.ledger_redis import RedisStreamLedger
from router.core.records import DecisionRecord

RECORD = DecisionRecord(
    ts=1.7e9,
    request_id="",
    tier="free",
    caller="c" * 16,
    model_requested="auto",
    model="small-model",
    worker="small",
    role="small",
    score=0.25,
    threshold=0.5,
    reason="score",
    escalated=False,
    cache_hit=False,
    prompt_tokens=12,
    completion_tokens=40,
    ttft_ms=3.5,
    latency_ms=12.25,
    status=200,
    cost=1e-6,
    cost_large=3e-5,
    prompt="p" * 200,
)


async def holds(url: str, stream: str, records: int) -> list[float]:
    """The loop's CPU time between consecutive steps of a yielding task while `records` are written."""
    ledger = RedisStreamLedger(url, stream=stream, interval=0.01)
    for i in range(records):
        ledger.emit(replace(RECORD, request_id=f"r{i}"))
    gaps: list[float] = []

    async def tick() -> None:
        last = time.thread_time()
        while ledger.written + ledger.dropped < records:
            await asyncio.sleep(0)
            now = time.thread_time()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await ledger.start()
    await ticker
    await ledger.close()
    if ledger.dropped:
        raise SystemExit(f"{ledger.dropped} records dropped: is Redis up at {url}?")
    return gaps


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1000, help="records per repeat (default 1000)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats (default 5)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    if args.records < 1 or args.repeats < 1:
        ap.error("--records and --repeats must be at least 1")
    stream = f"bench-ledger-lag-{uuid.uuid4().hex[:8]}"
    gaps: list[float] = []
    try:
        for _ in range(args.repeats):
            gaps += await holds(args.redis, stream, args.records)
    finally:
        redis.Redis.from_url(args.redis).delete(stream)
    gaps.sort()
    pick = [gaps[min(len(gaps) - 1, int(len(gaps) * q))] * 1e3 for q in (0.5, 0.99, 0.999)]
    print(
        f"loop held (ms of CPU) while writing {args.records} records x {args.repeats}: p50 {pick[0]:.3f}, "
        f"p99 {pick[1]:.3f}, p99.9 {pick[2]:.3f}, max {gaps[-1] * 1e3:.2f} ({len(gaps)} steps)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
