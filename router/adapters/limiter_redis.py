"""Rate limiter in Redis: one Lua script per admission (one round trip), shared by every gateway replica.

Keys per caller share a hash tag, so a caller's keys live on one Redis Cluster slot. Redis' own clock
(TIME) is the only clock, so replicas with skewed clocks still agree."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router.core.limits import BUCKET_MS, DAY_MS, WINDOW_MS, Admission
from router.core.tiers import Caller
from router.errors import LimiterUnavailable

__all__ = ["RedisLimiter"]

# KEYS: 1 request log (zset), 2 token buckets (hash), 3 daily counters prefix, 4 leases (zset)
# ARGV: rpm, tpm, daily requests, daily tokens, max concurrent, estimate, lease id, lease ttl ms
ADMIT = (
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local dreq, dtok, conc = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local est, lease, ttl = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local win, bms, dms = %(window)d, %(bucket)d, %(day)d
local bucket = math.floor(now / bms)
local oldest = bucket - math.floor(win / bms) + 1
local day = math.floor(now / dms)
local dkey = KEYS[3] .. ':' .. day

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - win)
local used_r = redis.call('ZCARD', KEYS[1])
local fields = redis.call('HGETALL', KEYS[2])
local used_t, first_b = 0, bucket
for i = 1, #fields, 2 do
  local b = tonumber(fields[i])
  if b < oldest then redis.call('HDEL', KEYS[2], fields[i])
  else
    used_t = used_t + tonumber(fields[i + 1])
    if b < first_b then first_b = b end
  end
end
local day_r = tonumber(redis.call('HGET', dkey, 'r') or '0')
local day_t = tonumber(redis.call('HGET', dkey, 't') or '0')
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local used_c = redis.call('ZCARD', KEYS[4])

local function oldest_request()
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #first == 0 then return 0 end
  return tonumber(first[2]) + win - now
end
local reset_t = (first_b + math.floor(win / bms)) * bms - now
local deny, retry = '', 0
if rpm > 0 and used_r >= rpm then deny, retry = 'requests', oldest_request()
elseif tpm > 0 and used_t + est > tpm then deny, retry = 'tokens', reset_t
elseif dreq > 0 and day_r >= dreq then deny, retry = 'daily_requests', dms - now % dms
elseif dtok > 0 and day_t + est > dtok then deny, retry = 'daily_tokens', dms - now % dms
elseif conc > 0 and used_c >= conc then
  local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  deny, retry = 'concurrency', math.min(1000, tonumber(first[2]) - now)
end
if deny == '' then
  redis.call('ZADD', KEYS[1], now, lease)
  redis.call('PEXPIRE', KEYS[1], win + bms)
  redis.call('HINCRBY', KEYS[2], bucket, est)
  redis.call('PEXPIRE', KEYS[2], win + bms)
  redis.call('HINCRBY', dkey, 'r', 1)
  redis.call('HINCRBY', dkey, 't', est)
  redis.call('PEXPIRE', dkey, 2 * dms)
  if conc > 0 then
    redis.call('ZADD', KEYS[4], now + ttl, lease)
    redis.call('PEXPIRE', KEYS[4], ttl + bms)
  end
  used_r, used_t = used_r + 1, used_t + est
end
return {deny, retry, used_r, used_t, oldest_request(), reset_t, bucket, day}
""".replace("%(window)d", str(WINDOW_MS))
    .replace("%(bucket)d", str(BUCKET_MS))
    .replace("%(day)d", str(DAY_MS))
)

# KEYS: 2 token buckets, 3 daily counters prefix, 4 leases. ARGV: bucket, day, delta tokens, lease id
SETTLE = """
if ARGV[3] ~= '0' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[3])
end
local dkey = KEYS[2] .. ':' .. ARGV[2]
if ARGV[3] ~= '0' and redis.call('EXISTS', dkey) == 1 then redis.call('HINCRBY', dkey, 't', ARGV[3]) end
redis.call('ZREM', KEYS[3], ARGV[4])
return 1
"""


class RedisLimiter:
    def __init__(self, url: str, *, timeout: float = 0.05, prefix: str = "triage") -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._prefix = prefix
        self._admit = self._redis.register_script(ADMIT)
        self._settle = self._redis.register_script(SETTLE)

    def _keys(self, caller: Caller) -> list[str]:
        base = f"{self._prefix}:{{{caller.tier.name}:{caller.identity}}}"
        return [f"{base}:rq", f"{base}:tk", f"{base}:day", f"{base}:cc"]

    async def admit(self, caller: Caller, estimate: int) -> Admission:
        lim = caller.tier.limits
        lease = uuid.uuid4().hex
        args: list[int | str] = [
            lim.requests_per_minute,
            lim.tokens_per_minute,
            lim.daily_requests,
            lim.daily_tokens,
            lim.max_concurrent,
            estimate,
            lease,
            lim.lease_ttl_ms,
        ]
        try:
            reply = await self._admit(keys=self._keys(caller), args=args)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailable(f"rate limiter store unreachable: {type(exc).__name__}") from None
        deny = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
        return Admission(
            admitted=not deny,
            denied_by=deny,
            retry_after_ms=int(reply[1]),
            limits=lim,
            used_requests=int(reply[2]),
            used_tokens=int(reply[3]),
            reset_requests_ms=int(reply[4]),
            reset_tokens_ms=int(reply[5]),
            lease=lease,
            bucket=int(reply[6]),
            day=int(reply[7]),
            reserved=estimate if not deny else 0,
        )

    async def settle(self, caller: Caller, admission: Admission, actual_tokens: int) -> None:
        keys = self._keys(caller)
        delta = actual_tokens - admission.reserved
        try:
            await self._settle(
                keys=[keys[1], keys[2], keys[3]], args=[admission.bucket, admission.day, delta, admission.lease]
            )
        except (RedisError, OSError) as exc:
            # The reservation stays (the safe side) and the lease expires by itself.
            raise LimiterUnavailable(f"rate limiter store unreachable: {type(exc).__name__}") from None

    async def key_tier(self, sha256: str) -> str | None:
        """Tier of an API key managed in Redis (HSET <prefix>:keys <sha256> <tier>); None if unknown."""
        try:
            value = await self._redis.hget(f"{self._prefix}:keys", sha256)
        except (RedisError, OSError):
            return None
        return value.decode() if isinstance(value, bytes) else value

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
