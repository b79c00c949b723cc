"""The share target's shared window on a real Redis: replicas read one window; a Redis that fails leaves each
replica on its own copy, and the request path never waits for it."""

from __future__ import annotations

import uuid

import pytest
import redis

from router.adapters.score_windows import RedisScores
from tests.limits.conftest import REDIS_URL, require_redis
from tests.servers import free_port


async def test_two_replicas_read_one_window_trimmed_to_its_size() -> None:
    require_redis()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    a = RedisScores(REDIS_URL, size=10, prefix=prefix, refresh=0.01, timeout=1.0)
    b = RedisScores(REDIS_URL, size=10, prefix=prefix, refresh=0.01, timeout=1.0)
    try:
        for i in range(8):
            a.add("routing", 0.1 * i)  # syncs in the background, at most every 10 ms
        await a.sync()
        for _ in range(6):
            b.add("routing", 0.95)
        await b.sync()
        assert len(b.window("routing")) == 10  # a's newest 4 and its own 6: the shared list, trimmed
        assert b.window("routing").threshold(0.6) == 0.95
        a.add("routing", 0.0)
        assert len(a.window("routing")) == 9  # its own copy until it syncs
        assert a.window("routing").threshold(0.1) == pytest.approx(0.7)
        await a.sync()  # reads b's scores back
        assert a.window("routing").threshold(0.6) == 0.95
        assert a.window("routing").threshold(1.0) == 0.0
        store = redis.Redis.from_url(REDIS_URL)
        try:
            assert store.llen(f"{prefix}:share:routing") == 10
            assert 0 < store.pttl(f"{prefix}:share:routing") <= 86_400_000
            store.lpush(f"{prefix}:share:routing", b"not a score")  # a stranger's write: not fatal
            b.add("routing", 0.5)
            await b.sync()
            assert len(b.window("routing")) == 9  # the shared window, less the stranger's element
            assert b.window("routing").values()[-1] == 0.5 and b.errors == 0
        finally:
            store.delete(f"{prefix}:share:routing")
            store.close()
        assert a.errors == b.errors == 0
    finally:
        await a.close()
        await b.close()


async def test_a_redis_that_is_down_leaves_the_replica_on_its_own_window() -> None:
    scores = RedisScores(f"redis://127.0.0.1:{free_port()}/0", size=5, refresh=0.01, timeout=0.1)
    try:
        for i in range(7):
            scores.add("tier:paid", float(i))  # never raises, never waits
        await scores.sync()
        assert scores.errors >= 1
        assert len(scores.window("tier:paid")) == 5
        assert scores.window("tier:paid").threshold(0.2) == 6.0
    finally:
        await scores.close()
