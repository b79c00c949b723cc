"""The stores beside the ledger, against the real Redis: shadow pairs (a stream the replicas share, read back by
`triage label`), conversation memory (a key per conversation with a TTL; a Redis that is down is a memory that
knows nothing), and the quality gauge that re-reads labelled outcomes only when they change."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import uuid
from pathlib import Path

import redis

from router.adapters.conversations import RedisConversations
from router.adapters.pairs import RedisPairs, read_pairs
from router.adapters.quality import QualityGauge, read_labelled
from router.analytics.quality import estimate
from router.core.shadow import ShadowPair
from router.core.types import Role
from router.processes import reuse_port_socket
from tests.limits.conftest import REDIS_URL, require_redis


def pair(i: int) -> ShadowPair:
    return ShadowPair(1000.0 + i, f"r{i}", "free", f"prompt {i}", "small", 0.25 if i % 2 else None, "s", "l", "a", "b")


async def test_pairs_round_trip_through_a_redis_stream() -> None:
    require_redis()
    stream = f"test-{uuid.uuid4().hex[:8]}:pairs"
    sink = RedisPairs(REDIS_URL, stream=stream)
    await sink.start()
    for i in range(1205):  # more than one page of XRANGE
        sink.emit(pair(i))
    await sink.close()
    try:
        got = list(read_pairs(f"{REDIS_URL}#{stream}"))
        assert got == [pair(i) for i in range(1205)]
    finally:
        redis.Redis.from_url(REDIS_URL).delete(stream)


async def test_conversation_memory_in_redis_and_when_redis_is_down() -> None:
    require_redis()
    memory = RedisConversations(REDIS_URL, prefix=f"test-{uuid.uuid4().hex[:8]}", timeout=5.0)  # generous: CI is busy
    try:
        assert await memory.get("c1") is None
        await memory.put("c1", Role.LARGE, ttl=60)
        assert await memory.get("c1") is Role.LARGE
        await memory.put("c2", Role.SMALL, ttl=0.001)
        await asyncio.sleep(0.02)  # Redis keeps the time: past the 1 ms TTL
        assert await memory.get("c2") is None
    finally:
        await memory.close()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = RedisConversations(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        await down.put("c1", Role.LARGE, ttl=60)
        assert await down.get("c1") is None
        assert down.errors == 2
    finally:
        await down.close()


def test_the_quality_gauge_reads_again_only_when_the_file_changed(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.jsonl"
    now = [0.0]
    gauge = QualityGauge(path, interval=30, clock=lambda: now[0])
    kept, pairs = gauge.read()
    assert math.isnan(kept) and pairs == 0  # nothing labelled yet
    rows = [
        {"prompt": "p", "small": 0.0, "large": 1.0, "routed": "small"},
        {"prompt": "q", "small": 1, "large": 1, "routed": "large"},
        {"prompt": "r", "small": 1, "large": 1},
    ]  # the last is not a pair: skipped
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept, pairs = gauge.read()
    assert math.isnan(kept) and pairs == 0  # inside the interval: the old value, not a re-read
    now[0] = 31
    assert gauge.read() == (0.5, 2)
    routed, large, small = read_labelled(path)
    q = estimate(routed, large, small, draws=200)
    assert q is not None and q.pairs == 2 and q.kept == 0.5 and q.low <= 0.5 <= q.high and q.small_share == 0.5
    path.write_text("not json\n")
    now[0] = 62
    assert gauge.read() == (0.5, 2)  # a broken file keeps the last value


def test_processes_can_share_a_port() -> None:
    first = reuse_port_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = reuse_port_socket("127.0.0.1", port)  # SO_REUSEPORT: a second listener on the same port
    try:
        assert second.getsockname()[1] == port
    finally:
        first.close()
        second.close()
