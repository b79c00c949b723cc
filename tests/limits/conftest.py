"""Limiters under test: the in-memory one, and the Redis one against the real server on 127.0.0.1:6379."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis

from router.adapters.limiter_memory import MemoryLimiter
from router.adapters.limiter_redis import RedisLimiter

REDIS_URL = "redis://127.0.0.1:6379/0"


def forget(prefix: str) -> None:
    """Delete a test's keys: spend budgets' windows are kept for 40 days after they end."""
    store = redis.Redis.from_url(REDIS_URL)
    keys = list(store.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        store.delete(*keys)


def require_redis() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.fail(f"these tests need Redis on 127.0.0.1:6379 (./dev test starts one): {exc}")


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[MemoryLimiter | RedisLimiter]:
    if request.param == "memory":
        yield MemoryLimiter()
        return
    require_redis()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    lim = RedisLimiter(REDIS_URL, timeout=1.0, prefix=prefix)
    try:
        yield lim
    finally:
        await lim.close()
        forget(prefix)
