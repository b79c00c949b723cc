"""Where share targets keep their recent routed scores: in process (per replica), or in Redis when limits use
Redis, so that every replica reads its threshold from the same window.

The shared window is a Redis list per key, newest first, trimmed to the window's size. A replica never waits
for it on the request path: scores go into its own copy at once and into a pending batch; at most every
`refresh` seconds (when traffic comes) one script call in the background pushes the batch, trims the list and
reads it back, and the copy becomes what Redis holds. A replica's threshold is thus at most about
`refresh` seconds stale. A Redis that fails leaves each replica on its own copy (logged, counted): the share
still holds per replica."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from array import array

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


# KEYS: the windows; ARGV[1]: their size; ARGV[2]: their time to live (ms); ARGV[2 + i]: the scores new here for
# KEYS[i], packed as 8-byte doubles, oldest first. Pushes them, trims, and returns each window whole as one string
# of packed doubles, newest first: one bulk reply a window, not one per score (redis-py's parser in Python cost
# about 6 ms of CPU per sync of a 1,000-score window read as a list, measured on a loaded 2-core machine).
SYNC = """
local size = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local blob = ARGV[2 + i]
  local n = math.floor(#blob / 8)
  if n > 0 then
    for j = math.max(1, n - size + 1), n do
      redis.call('LPUSH', key, string.sub(blob, (j - 1) * 8 + 1, j * 8))
    end
    redis.call('LTRIM', key, 0, size - 1)
    redis.call('PEXPIRE', key, ARGV[2])
  end
  local window = redis.call('LRANGE', key, 0, size - 1)
  local scores = {}
  for _, v in ipairs(window) do
    if #v == 8 then scores[#scores + 1] = v end  -- a stranger's element is left out, not misread
  end
  out[i] = table.concat(scores)
end
return out
"""


class RedisScores:
    def __init__(
        self,
        url: str,
        *,
        size: int,
        prefix: str = "triage",
        refresh: float = 0.5,
        timeout: float = 0.1,
    ) -> None:
        # Reads a whole window back: a longer socket timeout than the limiter's single-key calls.
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=max(1.0, timeout), socket_connect_timeout=max(1.0, timeout)
        )
        self._script = self._redis.register_script(SYNC)
        self._local = MemoryScores(size)
        self._size = size
        self._prefix = f"{prefix}:share:"
        self._refresh = refresh
        self._pending: dict[str, array[float]] = {}
        self._task: asyncio.Task[None] | None = None
        self._next = 0.0
        self.errors = 0
        self.syncs = 0

    def window(self, key: str) -> ScoreWindow:
        return self._local.window(key)

    def add(self, key: str, score: float) -> None:
        self._local.add(key, score)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = array("d")
        pending.append(score)
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
        batches = [_packed(pending.get(key)) for key in keys]
        try:
            replies = await self._script(
                keys=[self._prefix + key for key in keys], args=[self._size, KEY_TTL_MS, *batches]
            )
        except (RedisError, OSError) as exc:
            self._failed(exc)
        else:
            for key, blob in zip(keys, replies, strict=True):
                shared = _unpacked(blob)
                if shared is not None:
                    self._local.window(key).replace(shared)
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


def _packed(scores: array[float] | None) -> bytes:
    """Little-endian doubles, whatever this machine's byte order (replicas may differ)."""
    if not scores:
        return b""
    if sys.byteorder != "little":
        scores = array("d", scores)
        scores.byteswap()
    return scores.tobytes()


def _unpacked(blob: object) -> list[float] | None:
    """A window as the script returns it (newest first), oldest first. None for a blob that is not whole doubles
    (a stranger wrote to the key): the replica keeps its own copy."""
    if not isinstance(blob, bytes) or len(blob) % 8:
        return None
    scores = array("d")
    scores.frombytes(blob)
    if sys.byteorder != "little":
        scores.byteswap()
    scores.reverse()
    return scores.tolist()
