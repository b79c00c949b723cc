"""Where share targets keep their recent routed scores: in process (per replica), or in Redis when limits use
Redis, so that every replica reads its threshold from the same window.

The shared window is a Redis list per key, newest first, trimmed to the window's size. A replica never waits
for it on the request path: scores go into its own copy at once and into a pending batch; at most every
`refresh` seconds (when traffic comes) one pipelined round trip in the background pushes the batch, trims the
list and reads it back, and the copy becomes what Redis holds. A replica's threshold is thus at most about
`refresh` seconds stale. A Redis that fails leaves each replica on its own copy (logged, counted): the share
still holds per replica."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router.core.share import ScoreWindow

__all__ = ["MemoryScores", "RedisScores"]

log = logging.getLogger("triage.share")

KEY_TTL_MS = 86_400_000  # a window untouched for a day is dropped: its traffic has gone, or changed


class MemoryScores:
    def __init__(self, size: int) -> None:
        self._size = size
        self._windows: dict[str, ScoreWindow] = {}

    def window(self, key: str) -> ScoreWindow:
        found = self._windows.get(key)
        if found is None:
            found = self._windows[key] = ScoreWindow(self._size)
        return found

    def add(self, key: str, score: float) -> None:
        self.window(key).add(score)

    def keys(self) -> list[str]:
        return list(self._windows)


class RedisScores:
    def __init__(
        self,
        url: str,
        *,
        size: int,
        prefix: str = "triage",
        refresh: float = 0.1,
        timeout: float = 0.1,
    ) -> None:
        # Reads a whole window back: a longer socket timeout than the limiter's single-key calls.
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=max(1.0, timeout), socket_connect_timeout=max(1.0, timeout)
        )
        self._local = MemoryScores(size)
        self._size = size
        self._prefix = f"{prefix}:share:"
        self._refresh = refresh
        self._pending: dict[str, list[float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._next = 0.0
        self.errors = 0
        self.syncs = 0

    def window(self, key: str) -> ScoreWindow:
        return self._local.window(key)

    def add(self, key: str, score: float) -> None:
        self._local.add(key, score)
        self._pending.setdefault(key, []).append(score)
        if self._task is None and time.monotonic() >= self._next:
            self._task = asyncio.get_running_loop().create_task(self._sync())

    async def sync(self) -> None:
        """Push what is pending and read the shared windows back now (after a sync under way)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self._sync()

    async def _sync(self) -> None:
        pending, self._pending = self._pending, {}
        keys = self._local.keys()  # every window is refreshed, also one without new scores here
        try:
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                name = self._prefix + key
                batch = pending.get(key)
                if batch:
                    pipe.lpush(name, *(repr(s) for s in batch))
                    pipe.ltrim(name, 0, self._size - 1)
                    pipe.pexpire(name, KEY_TTL_MS)
                pipe.lrange(name, 0, self._size - 1)
            replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)
        else:
            shared = [r for r in replies if isinstance(r, list)]  # the LRANGEs, one per key in order
            for key, values in zip(keys, shared, strict=True):
                self._local.window(key).replace(_floats(reversed(values)))
            self.syncs += 1
        finally:
            self._task = None
            self._next = time.monotonic() + self._refresh

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning("share target's shared window unavailable (%s): this replica holds the share on its own", exc)

    async def close(self) -> None:
        task = self._task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        await self._redis.aclose()


def _floats(values: Iterable[object]) -> list[float]:
    """Scores as Redis returns them (bytes); anything unreadable (a stranger's write) is skipped."""
    out = []
    for item in values:
        try:
            out.append(float(item))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
    return out
