"""Rate limiter in Redis: one Lua script per admission, shared by every gateway replica. Script calls made in the
same turn of the event loop share one round trip (router.adapters.redis_batch), and a settlement that only gives
back (the request used no more than it reserved, and its concurrency slot) is not waited for: it leaves with the
next admission's write, or 2 ms later when none comes, so a request at c=1 pays for one write, not two.

Why that stays exact: a pending give-back leaves the store counting more than was used, never less, so every
admission decided while it is pending is at least as strict as an exact one: a reservation released late can
refuse a request early, never admit one too many. A settlement that adds (more used than reserved) is waited
for, as before. Calls leave in the order they were made, so this replica's next admission follows its earlier
settlements; close() sends whatever is still queued.

Keys per caller share a hash tag, so a caller's keys live on one Redis Cluster slot. Redis' own clock
(TIME) is the only clock, so replicas with skewed clocks still agree."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any

from router.adapters.redis_batch import NotSent, ScriptBatch
from router.adapters.resp import ReplyError, Script
from router.core.budgets import Cap, SpendHold
from router.core.limits import BUCKET_MS, DAY_MS, WINDOW_MS, Admission, TierLimits
from router.core.tiers import Caller
from router.errors import LimiterFailed, LimiterUnavailable

__all__ = ["RedisLimiter"]

log = logging.getLogger("triage.limiter")
PROBE_S = 0.005  # how long a loop-responsiveness probe sleeps, past the store deadline
MAX_GIVEN_UP = 10_000  # leases of admissions given up, kept to release once the store answers again

# KEYS[1]: the caller's key prefix; under it :rq request log (zset), :tk token buckets (hash), :day:N daily
# counters (hash), :cc leases (zset), all sharing one hash tag (one Cluster slot).
# KEYS[2..]: spend budget windows (hashes: s settled spend, h held reservations, in micro-units).
# ARGV: "rpm:tpm:daily_requests:daily_tokens:max_concurrent:lease_ttl_ms", estimate, lease id, the money
# reservation, then "limit:expire_at_ms" for each spend key.
ADMIT = """
local SKEYS = {unpack(KEYS, 2)}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local a, b, c, d, e, f = string.match(ARGV[1], '^(%d+):(%d+):(%d+):(%d+):(%d+):(%d+)$')
local rpm, tpm, dreq, dtok, conc, ttl = tonumber(a), tonumber(b), tonumber(c), tonumber(d), tonumber(e), tonumber(f)
local est, lease = tonumber(ARGV[2]), ARGV[3]
local base = KEYS[1]
local KEYS = {base .. ':rq', base .. ':tk', base .. ':day', base .. ':cc'}
local win, bms, dms = WINDOW_MS, BUCKET_MS, DAY_MS
local bucket = math.floor(now / bms)
local day = math.floor(now / dms)
local dkey = KEYS[3] .. ':' .. day
-- Each limit's keys are touched only when that limit is set: a tier with one limit pays for one.
local used_r, used_t, used_c, day_r, day_t, first_b = 0, 0, 0, 0, 0, bucket
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - win)
  used_r = redis.call('ZCARD', KEYS[1])
end
if tpm > 0 then
  local oldest = bucket - math.floor(win / bms) + 1
  local fields = redis.call('HGETALL', KEYS[2])
  for i = 1, #fields, 2 do
    local b = tonumber(fields[i])
    if b < oldest then redis.call('HDEL', KEYS[2], fields[i])
    else
      used_t = used_t + tonumber(fields[i + 1])
      if b < first_b then first_b = b end
    end
  end
end
if dreq > 0 or dtok > 0 then
  local d = redis.call('HMGET', dkey, 'r', 't')
  day_r, day_t = tonumber(d[1] or '0'), tonumber(d[2] or '0')
end
if conc > 0 then
  -- A lease given up by the gateway before this ran (it timed out, or its client left): nobody reads this
  -- reply, and a lease taken now would hold a slot until it expires (see RELEASE).
  if redis.call('ZSCORE', base .. ':gone', lease) then return 'gone' end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  used_c = redis.call('ZCARD', KEYS[4])
end
local function oldest_request()
  if rpm == 0 then return 0 end
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
SPEND_CHECK
if deny == '' then
  SPEND_HOLD
  if rpm > 0 then
    redis.call('ZADD', KEYS[1], now, lease)
    redis.call('PEXPIRE', KEYS[1], win + bms)
  end
  if tpm > 0 then
    redis.call('HINCRBY', KEYS[2], bucket, est)
    redis.call('PEXPIRE', KEYS[2], win + bms)
  end
  if dreq > 0 or dtok > 0 then
    redis.call('HINCRBY', dkey, 'r', 1)
    redis.call('HINCRBY', dkey, 't', est)
    redis.call('PEXPIRE', dkey, 2 * dms)
  end
  if conc > 0 then
    redis.call('ZADD', KEYS[4], now + ttl, lease)
    redis.call('PEXPIRE', KEYS[4], ttl + bms)
  end
  used_r, used_t = used_r + 1, used_t + est
end
-- One string, not an array: the client reads one line instead of eleven. Numbers go out with %d: Lua's
-- default formatting turns 1e14 into "1e+14", which no integer parser reads back. One format call: a loop of
-- ten took 4 us more of Redis' time per admission.
return string.format('%s %d %d %d %d %d %d %d %d %d %d', deny, retry, used_r, used_t, oldest_request(), reset_t,
  bucket, day, remaining, over, over_spent)
"""
# Spend: refused when a budget's spent + held + this reservation would pass its limit; else held in each.
SPEND_CHECK = """
local reserve = ARGV[4] or '0'
local remaining, over, over_spent = -1, 0, 0
if deny == '' then
  for i = 1, #SKEYS do
    local v = redis.call('HMGET', SKEYS[i], 's', 'h')
    local used = tonumber(v[1] or '0') + tonumber(v[2] or '0')
    local left = tonumber(string.match(ARGV[4 + i], '^(%d+):')) - used - tonumber(reserve)
    if left < 0 then
      deny, over, over_spent = 'budget', i, used
      break
    end
    if remaining < 0 or left < remaining then remaining = left end
  end
end
"""
SPEND_HOLD = """
for i = 1, #SKEYS do
  redis.call('HINCRBY', SKEYS[i], 'h', reserve)
  redis.call('PEXPIREAT', SKEYS[i], string.match(ARGV[4 + i], ':(%d+)$'))
end
"""
for _name, _value in (
    ("SPEND_CHECK", SPEND_CHECK),
    ("SPEND_HOLD", SPEND_HOLD),
    ("WINDOW_MS", str(WINDOW_MS)),
    ("BUCKET_MS", str(BUCKET_MS)),
    ("DAY_MS", str(DAY_MS)),
):
    ADMIT = ADMIT.replace(_name, _value)

# KEYS[1]: the caller's key prefix; KEYS[2..] its spend windows. ARGV: bucket, day, delta tokens, lease id,
# money reserved, money spent (micro-units): the reservation leaves each window and the real cost enters it.
SETTLE = """
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if ARGV[5] ~= '0' then redis.call('HINCRBY', KEYS[i], 'h', '-' .. ARGV[5]) end
    redis.call('HINCRBY', KEYS[i], 's', ARGV[6])
  end
end
local base = KEYS[1]
local tk, cc, dkey = base .. ':tk', base .. ':cc', base .. ':day:' .. ARGV[2]
if ARGV[3] ~= '0' and redis.call('HEXISTS', tk, ARGV[1]) == 1 then redis.call('HINCRBY', tk, ARGV[1], ARGV[3]) end
if ARGV[3] ~= '0' and redis.call('EXISTS', dkey) == 1 then redis.call('HINCRBY', dkey, 't', ARGV[3]) end
redis.call('ZREM', cc, ARGV[4])
return 1
"""


# KEYS[1]: the caller's key prefix. ARGV: lease id, and for an admission given up (its reply never read) how long
# to remember that (ms). Frees a concurrency slot whose admission went wrong. An admission given up may still
# run after this (Redis was stopped with it in its socket; the gateway's new connection can be served first):
# the lease is remembered under :gone, and the admission then takes no slot.
RELEASE = """
redis.call('ZREM', KEYS[1] .. ':cc', ARGV[1])
if ARGV[2] then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local gone, ttl = KEYS[1] .. ':gone', tonumber(ARGV[2])
  redis.call('ZREMRANGEBYSCORE', gone, '-inf', now)
  redis.call('ZADD', gone, now + ttl, ARGV[1])
  redis.call('PEXPIRE', gone, ttl)
end
return 1
"""


class RedisLimiter:
    def __init__(self, url: str, *, timeout: float = 0.1, prefix: str = "triage") -> None:
        # One pipelined connection (router.adapters.redis_batch): calls queue on it, replies come back in order.
        # Its queue is bounded upstream (admission sheds load with a 503 past server.max_pending_admissions).
        # Silence is judged here, not by a socket timeout: a socket timeout counts the time the event loop was
        # too busy to read a reply that had arrived, which is exactly what must not make a tier fail open (see
        # _reply). Connecting gets more than `timeout`: a refused connection fails at once anyway, and a burst of
        # work on a saturated machine delays a connect longer than one reply (seen: 0.1 s tripped under load).
        self._timeout = timeout
        self._backstop = max(5.0, 20 * timeout)
        self._prefix = prefix
        # Lease ids: unique across replicas (random per process) and cheap per admission (a counter).
        self._lease_base = os.urandom(6).hex()
        self._leases = itertools.count()
        self._admit = Script(ADMIT)
        self._settle = Script(SETTLE)
        self._release = Script(RELEASE)
        self._last_reply = 0.0  # loop time of the latest reply the store gave any call
        # No retries: re-sending an admission after a timeout could count the request twice.
        self._batch = ScriptBatch(url, connect_timeout=max(1.0, 10 * timeout))
        self.unsettled = 0  # give-backs the store did not take (each reservation then stands until it expires)
        self._given_up = _GivenUp(self._batch, self._release)

    @property
    def batch(self) -> ScriptBatch:
        """Where this limiter's calls queue: other stores on the same Redis may share its round trips."""
        return self._batch

    async def _call(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        return await self._reply(self._batch.call(script, keys, args))

    async def _reply(self, call: asyncio.Future[Any]) -> Any:
        """The store's reply, or TimeoutError when the store is silent. Silent means the store has answered
        nothing at all, to any call of this process, for `timeout` seconds, while the event loop is seen to
        run promptly. A saturated machine makes a live store answer late (measured: 100 ms for a burst of 200
        with both cores busy) and a saturated gateway reads replies late; neither is an outage, and treating
        them as one made fail-open tiers admit past their limits. Waiting is bounded by the backstop.

        Judged by a timer beside the call, not by asyncio.wait: the call is awaited as it is, and the timer only
        runs when the reply is late (asyncio.wait's future, callbacks and sets cost every admission ~6 us)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        silent_store = False
        timer: asyncio.TimerHandle

        def judge(probe_started: float | None) -> None:
            # At the deadline, then every PROBE_S: a probe that fired on time shows a prompt event loop.
            nonlocal timer, silent_store
            if call.done():
                return
            now = loop.time()
            if probe_started is not None:
                prompt = now - probe_started < 2 * PROBE_S
                silent = now - max(self._last_reply, start) > self._timeout
                if (prompt and silent) or now - start > self._backstop:
                    silent_store = True
                    # Drop the connection: every call out on it waits for the same silent store.
                    self._batch.reset(TimeoutError(f"no reply from the store within {self._timeout:g} s"))
                    call.cancel()  # still queued (never written): it must not leave later
                    return
            timer = loop.call_later(PROBE_S, judge, now)

        timer = loop.call_later(self._timeout, judge, None)
        try:
            # Cancelling the request cancels the call too: one not yet written never leaves.
            reply = await call
        except BaseException:
            task = asyncio.current_task()
            # A request cancelled in the turn the store was judged silent stays cancelled (its client left, or
            # the shutdown's time ran out): as a TimeoutError, a fail-open tier would go on to serve it.
            if silent_store and (task is None or task.cancelling() == 0):
                raise TimeoutError(f"no reply from the store within {self._timeout:g} s") from None
            raise
        finally:
            timer.cancel()
        self._last_reply = loop.time()
        if self._given_up:  # the store answers again
            self._given_up.release(now=True)
        return reply

    def _base(self, caller: Caller) -> str:
        return f"{self._prefix}:{{{caller.tier.name}:{caller.identity}}}"

    def _spend_keys(self, caps: tuple[Cap, ...]) -> list[str]:
        return [f"{self._prefix}:{c.key}" for c in caps]

    async def admit(self, caller: Caller, estimate: int, caps: tuple[Cap, ...] = (), reserve: int = 0) -> Admission:
        """`caps`: the budget windows the request counts against, `reserve` its worst-case cost (micro-units):
        checked and held in the same script as the rate limits (one round trip)."""
        lim = caller.tier.limits
        lease = f"{self._lease_base}{next(self._leases):x}"
        packed = (
            f"{lim.requests_per_minute}:{lim.tokens_per_minute}:{lim.daily_requests}:{lim.daily_tokens}:"
            f"{lim.max_concurrent}:{lim.lease_ttl_ms}"
        )
        base = self._base(caller)
        if self._given_up:
            self._given_up.release()  # ahead of this admission in its write: the slots are free when it runs
        try:
            keys = [base, *self._spend_keys(caps)]
            spend_args = [f"{c.limit}:{c.expires_ms}" for c in caps]
            reply = await self._call(self._admit, keys, [packed, estimate, lease, reserve, *spend_args])
        except (ReplyError, OSError, TimeoutError, asyncio.CancelledError) as exc:
            if lim.max_concurrent and not isinstance(exc, ReplyError | NotSent):
                # It may have run, or run later (a stopped Redis resumed): its slot would be held for lease_ttl
                # by a request that is not served through it.
                self._given_up.add(base, lease, lim.lease_ttl_ms)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _translate(exc) from None
        try:
            text = reply.decode() if isinstance(reply, bytes) else str(reply)
            deny, *numbers = text.split(" ")  # an admitted reply starts with the empty deny reason
            retry, used_r, used_t, reset_r, reset_t, bucket, day, left, over, over_spent = (int(n) for n in numbers)
        except ValueError:
            # The script ran and may hold a lease: free it, or this caller waits out lease_ttl for nothing.
            await self._free(base, lease)
            raise LimiterFailed(f"rate limiter store gave an unreadable reply: {reply!r:.80}") from None
        return Admission(
            admitted=not deny,
            denied_by=deny,
            retry_after_ms=retry,
            limits=lim,
            used_requests=used_r,
            used_tokens=used_t,
            reset_requests_ms=reset_r,
            reset_tokens_ms=reset_t,
            lease=lease,
            bucket=bucket,
            day=day,
            reserved=estimate if not deny else 0,
            spend=SpendHold(caps, reserve, left) if caps and not deny else None,
            over=caps[over - 1] if deny == "budget" and 0 < over <= len(caps) else None,
            over_spent=over_spent,
        )

    async def _free(self, base: str, lease: str) -> None:
        try:
            await self._call(self._release, [base], [lease])
        except (ReplyError, OSError, TimeoutError) as exc:
            log.warning("could not free a concurrency lease (%s); it expires by itself", type(exc).__name__)

    async def settle(
        self, caller: Caller, admission: Admission, actual_tokens: int, actual_cost: int | None = None
    ) -> None:
        """`actual_cost` (micro-units) replaces the money held; None keeps the reservation as the spend."""
        delta = actual_tokens - admission.reserved
        hold = admission.spend
        keys, money = [self._base(caller)], [0, 0]
        if hold is not None:
            keys += self._spend_keys(hold.caps)
            money = [hold.reserved, hold.reserved if actual_cost is None else max(0, actual_cost)]
        args: list[str | int] = [admission.bucket, admission.day, delta, admission.lease, *money]
        if delta <= 0 and money[1] <= money[0]:
            # Gives back only (tokens and money): while pending it can only make admissions stricter (see the
            # docstring); a settlement that adds is awaited, or a replica could admit past a limit meanwhile.
            # Lazy: it rides with the next admission's write (at c=1, the next request's), at most 2 ms late.
            base, lim = keys[0], admission.limits
            call = self._batch.call(self._settle, keys, args, lazy=True)
            self._batch.watch(call, lambda exc: self._unsettled(exc, base, admission.lease, lim))
            return
        try:
            await self._call(self._settle, keys, args)
        except (ReplyError, OSError, TimeoutError, asyncio.CancelledError) as exc:
            # The reservation stays (the safe side); the slot is released once the store answers again.
            if admission.limits.max_concurrent:
                self._given_up.add(keys[0], admission.lease, admission.limits.lease_ttl_ms)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _translate(exc) from None

    async def spent(self, caps: tuple[Cap, ...]) -> list[tuple[int, int]]:
        """(settled, held) micro-units in each budget window; (0, 0) for a window nothing was spent in."""
        # Through the limiter's batch, bounded like admissions: a connection taken past them would leave an
        # admission without one (read as an outage: a fail-open tier would admit uncounted).
        calls = [self._batch.command("HMGET", key, "s", "h") for key in self._spend_keys(caps)]
        try:
            rows = [await self._reply(call) for call in calls]
        except (ReplyError, OSError, TimeoutError) as exc:
            for call in calls:
                call.cancel()
            raise _translate(exc) from None
        return [(int(r[0] or 0), int(r[1] or 0)) for r in rows]

    def _unsettled(self, exc: BaseException, base: str, lease: str, limits: TierLimits) -> None:
        self.unsettled += 1
        if self.unsettled == 1 or self.unsettled % 1000 == 0:
            log.warning(
                "%d settlements not taken by the store (%s); their reservations stand until they expire",
                self.unsettled,
                type(exc).__name__,
            )
        if limits.max_concurrent:  # its slot, though, is released once the store answers again
            self._given_up.add(base, lease, limits.lease_ttl_ms)

    async def key_tier(self, sha256: str) -> str | None:
        """Tier of an API key managed in Redis (HSET <prefix>:keys <sha256> <tier>); None if unknown. A store
        that does not answer raises (a 503): a valid key must not be told it is wrong (401) during an outage."""
        try:
            value = await self._reply(self._batch.command("HGET", f"{self._prefix}:keys", sha256))
        except (ReplyError, OSError, TimeoutError) as exc:
            raise _translate(exc) from None
        return value.decode() if isinstance(value, bytes) else value

    async def warm(self) -> None:
        """Connect and load the scripts before the first request, so a first burst does not pay for connection
        set-up and a NOSCRIPT round trip. A store that is down now is only logged: tiers decide per request."""
        try:
            for script in (self._admit, self._settle, self._release):
                await self._reply(self._batch.load(script))
        except (ReplyError, OSError, TimeoutError) as exc:
            log.warning("rate limiter store not reachable at start: %s: %s", type(exc).__name__, exc)

    async def ping(self) -> bool:
        try:
            return bool(await self._reply(self._batch.command("PING")) == b"PONG")
        except (ReplyError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        self._given_up.close()  # what is still held is released once more, drained below with the rest
        await self._batch.close(self._backstop)  # settlements still queued or on their way are not lost


class _GivenUp:
    """Concurrency leases of admissions given up before their reply was read (the store was silent, the
    connection lost, or the client left) and of settlements the store did not take: each would hold a slot for
    lease_ttl, so each is released (RELEASE, remembered under :gone) once the store answers again. Releases are
    not awaited and are lazy (they ride with the next admission's write); those the store does not take are kept
    and tried at most once a second, so an outage does not pack every one of them again for each request."""

    def __init__(self, batch: ScriptBatch, script: Script) -> None:
        self._batch = batch
        self._script = script
        self._held: dict[str, tuple[str, int]] = {}  # lease id -> (the caller's key prefix, lease ttl ms)
        self._releasing = False
        self._closed = False
        self._retry_at = 0.0  # loop time before which no release is tried again (the last one failed)

    def __len__(self) -> int:
        return len(self._held)

    def add(self, base: str, lease: str, ttl_ms: int) -> None:
        if len(self._held) >= MAX_GIVEN_UP:  # a long outage: the oldest are left to expire by themselves
            del self._held[next(iter(self._held))]
        self._held[lease] = (base, ttl_ms)
        self.release()

    def release(self, *, now: bool = False) -> None:
        """Send every lease held; `now`: even within a second of a failed try (the store has just answered)."""
        loop = asyncio.get_running_loop()
        if now:
            self._retry_at = 0.0
        if self._releasing or self._closed or loop.time() < self._retry_at:
            return
        leases, self._held = self._held, {}
        self._releasing = True
        calls = [self._batch.call(self._script, [b], [lease, ttl], lazy=True) for lease, (b, ttl) in leases.items()]

        def done(f: asyncio.Future[list[Any]]) -> None:
            self._releasing = False
            results = [None] * len(leases) if f.cancelled() else f.result()
            taken = False
            for (lease, entry), result in zip(leases.items(), results, strict=True):
                if isinstance(result, BaseException):
                    self._held.setdefault(lease, entry)
                    self._retry_at = loop.time() + 1.0
                else:
                    taken = True
            if taken and self._held:  # the store answers: those given up meanwhile go now
                self.release(now=True)

        asyncio.gather(*calls, return_exceptions=True).add_done_callback(done)

    def close(self) -> None:
        """At shutdown: one last try for what is held, then no call (it would open a connection after it)."""
        if self._held:
            self.release(now=True)
        self._closed = True


def _translate(exc: ReplyError | OSError | TimeoutError) -> LimiterUnavailable | LimiterFailed:
    """The store's failures as the gateway's: unreachable (refused, reset, silent) lets a tier fail open or
    closed; any other error from Redis (a script error, a value it rejects) is a fault that always refuses."""
    if isinstance(exc, OSError | TimeoutError):
        return LimiterUnavailable(f"rate limiter store unreachable: {type(exc).__name__}: {exc}")
    return LimiterFailed(f"rate limiter store error: {type(exc).__name__}: {exc}")
