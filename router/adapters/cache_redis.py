"""The response cache in Redis, shared by every gateway replica. Entries expire by Redis' own TTL.

A slow or absent Redis must not slow answers down: a lookup waits at most `timeout`, a store is not waited for,
and a failure is a miss (or a skipped store), counted in `errors`. Given the limiter's batch, a lookup made
beside an admission leaves in the admission's write (one round trip for both)."""

from __future__ import annotations

import logging

from router.adapters.redis_batch import ScriptBatch, within
from router.adapters.resp import ReplyError

__all__ = ["RedisCache"]

log = logging.getLogger("triage.cache")


class RedisCache:
    def __init__(
        self, url: str, *, prefix: str = "triage", timeout: float = 0.1, batch: ScriptBatch | None = None
    ) -> None:
        self._own = batch is None
        self._batch = batch if batch is not None else ScriptBatch(url, connect_timeout=max(1.0, timeout))
        self._timeout = timeout
        self._prefix = f"{prefix}:cache:"
        self.errors = 0

    def _failed(self, exc: BaseException, what: str) -> None:
        self.errors += 1
        log.warning("response cache %s failed: %s", what, type(exc).__name__)

    async def get(self, key: str) -> bytes | None:
        try:
            value = await within(self._batch.command("GET", self._prefix + key), self._timeout)
        except (ReplyError, OSError, TimeoutError) as exc:
            self._silent(exc)
            self._failed(exc, "read")
            return None
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl: float) -> None:
        call = self._batch.command("SET", self._prefix + key, value, "PX", max(1, int(ttl * 1000)), lazy=True)
        self._batch.watch(call, lambda exc: self._failed(exc, "write"))

    def _silent(self, exc: BaseException) -> None:
        """A connection of its own that timed out is dropped (the next call opens another). A shared one is the
        limiter's to judge: a late reply under load is not an outage, and dropping it would fail admissions."""
        if self._own and isinstance(exc, TimeoutError):
            self._batch.reset(TimeoutError("no reply from Redis"))

    async def close(self) -> None:
        if self._own:
            await self._batch.close(max(1.0, self._timeout))
