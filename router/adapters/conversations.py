"""Where conversations' earlier routing is remembered: in process (bounded, with a time to live), or in Redis
when limits use Redis, so that every replica agrees. Both hold at most `max_entries` conversations (the
routing.conversation_max setting). A store that fails is a conversation it does not know, never an error:
routing falls back to the turn's own score."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from router.adapters.redis_batch import ScriptBatch, within
from router.adapters.resp import ReplyError, Script
from router.core.types import Role

__all__ = ["MemoryConversations", "RedisConversations"]

log = logging.getLogger("triage.conversations")


class MemoryConversations:
    def __init__(self, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[str, tuple[float, Role]] = OrderedDict()
        self._max = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> Role | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, role = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return role

    async def put(self, key: str, role: Role, ttl: float) -> None:
        self._entries[key] = (self._clock() + ttl, role)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)  # the least recently used conversation is forgotten


# One write: the conversation's key with its time to live, and an index of keys by expiry in microseconds (a
# sorted set) that bounds how many there are. Expired members leave the index first; past the bound, those that
# expire soonest (written longest ago: the time to live is one setting) are forgotten. Redis's TIME is the
# clock, so replicas with skewed clocks agree. KEYS: the conversation, the index. ARGV: role, ttl ms, max entries.
PUT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl * 1000, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  local gone = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #gone, 2 do redis.call('DEL', gone[i]) end
end
redis.call('PEXPIRE', KEYS[2], ttl)
return over
"""


class RedisConversations:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "triage",
        timeout: float = 0.1,
        max_entries: int = 100_000,
        batch: ScriptBatch | None = None,
    ) -> None:
        """`batch`: the limiter's, so that a turn's lookup shares its admission's round trip (else its own)."""
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._own = batch is None
        self._batch = batch if batch is not None else ScriptBatch(url, connect_timeout=max(1.0, timeout))
        self._timeout = timeout
        self._prefix = f"{prefix}:conv:"
        self._index = f"{prefix}:conv-index"
        self._max = max_entries
        self._put = Script(PUT)
        self.errors = 0

    async def get(self, key: str) -> Role | None:
        try:
            value = await within(self._batch.command("GET", self._prefix + key), self._timeout)
        except (ReplyError, OSError, TimeoutError) as exc:
            self._silent(exc)
            self._failed(exc)
            return None
        if value is None:
            return None
        try:
            return Role(value.decode() if isinstance(value, bytes) else str(value))
        except ValueError:
            return None

    async def put(self, key: str, role: Role, ttl: float) -> None:
        """Not waited for: this replica's later lookups leave after it on the same connection, and a write
        that fails is a conversation forgotten (counted), never a request's error."""
        ttl_ms = max(1, int(ttl * 1000))
        keys = [self._prefix + key, self._index]
        call = self._batch.call(self._put, keys, [role.value, ttl_ms, self._max], lazy=True)
        self._batch.watch(call, self._failed)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning("conversation memory unavailable (%s): turns are routed by their own score", exc)

    def _silent(self, exc: BaseException) -> None:
        """A connection of its own that timed out is dropped (the next call opens another). A shared one is the
        limiter's to judge: a late reply under load is not an outage, and dropping it would fail admissions."""
        if self._own and isinstance(exc, TimeoutError):
            self._batch.reset(TimeoutError("no reply from Redis"))

    async def close(self) -> None:
        if self._own:
            await self._batch.close(max(1.0, self._timeout))
