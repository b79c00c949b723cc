"""The response cache in Redis, shared by every gateway replica. Entries expire by Redis' own TTL.

A slow or absent Redis must not slow answers down: each call waits at most `timeout`, and a failure is a miss
(or a skipped store), counted in `errors`."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

__all__ = ["RedisCache"]

log = logging.getLogger("triage.cache")


class RedisCache:
    def __init__(self, url: str, *, prefix: str = "triage", timeout: float = 0.1, max_connections: int = 64) -> None:
        self._pool = aioredis.ConnectionPool.from_url(
            url, max_connections=max_connections, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._redis = aioredis.Redis(connection_pool=self._pool, retry=Retry(NoBackoff(), 0))
        self._prefix = f"{prefix}:cache:"
        self.errors = 0

    def _failed(self, exc: BaseException, what: str) -> None:
        self.errors += 1
        log.warning("response cache %s failed: %s", what, type(exc).__name__)

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(self._prefix + key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "read")
            return None
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        try:
            await self._redis.set(self._prefix + key, value, px=max(1, int(ttl * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc, "write")

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()
