"""Round trips to the Redis limiter: calls of one turn of the event loop share a write, a settlement that only
gives back is not waited for, and neither costs exactness (real Redis on loopback; round trips counted on the
client, every write on its connection)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis

from router.adapters.limiter_redis import ADMIT, SETTLE, RedisLimiter
from router.adapters.redis_batch import ScriptBatch
from router.adapters.resp import ReplyError, Script
from router.api.app import create_app
from router.core.limits import TierLimits
from router.core.tiers import Caller, Tier
from router.settings import CacheSettings, LimitsSettings, TierSettings
from tests.api.conftest import settings_for
from tests.limits.conftest import REDIS_URL, require_redis
from tests.servers import serving
from tests.upstream import make_upstream


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write a batch made to its connection, as the bytes written."""
    out: list[bytes] = []

    def recorded(self: ScriptBatch, data: bytes) -> None:
        out.append(data)
        original(self, data)

    original = ScriptBatch._write
    monkeypatch.setattr(ScriptBatch, "_write", recorded)
    return out


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    require_redis()
    name = f"test-rt-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{name}:*"):
        client.delete(key)


def caller(limits: TierLimits, who: str = "ip:a") -> Caller:
    return Caller(Tier("t", limits), who)


async def settled(condition: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


async def test_concurrent_admissions_share_one_round_trip(prefix: str, writes: list[bytes]) -> None:
    lim = RedisLimiter(REDIS_URL, timeout=1.0, prefix=prefix)
    await lim.warm()
    limits = TierLimits(requests_per_minute=100, tokens_per_minute=10_000, max_concurrent=50)
    before = len(writes)
    got = await asyncio.gather(*(lim.admit(caller(limits, f"ip:{i}"), 10) for i in range(16)))
    assert all(a.admitted for a in got)
    assert len(writes) - before == 1
    await lim.close()


async def test_a_give_back_costs_the_request_no_round_trip(prefix: str, writes: list[bytes]) -> None:
    lim = RedisLimiter(REDIS_URL, timeout=1.0, prefix=prefix)
    c = caller(TierLimits(tokens_per_minute=1000, max_concurrent=1))
    first = await lim.admit(c, 100)
    before = len(writes)
    await lim.settle(c, first, 40)  # used less than it reserved, and frees its slot
    assert len(writes) == before  # returned before anything was sent
    leases = redis.Redis.from_url(REDIS_URL)
    await settled(lambda: leases.zcard(f"{prefix}:{{t:ip:a}}:cc") == 0, "the slot is freed soon after")
    second = await lim.admit(c, 100)
    assert (second.admitted, second.used_tokens) == (True, 140)
    await lim.close()


async def test_a_give_back_leaves_with_the_next_admission_or_soon_after(prefix: str, writes: list[bytes]) -> None:
    """Sequential requests (c=1) pay for one write each: a give-back waits for the next admission's write."""
    lim = RedisLimiter(REDIS_URL, timeout=1.0, prefix=prefix)
    await lim.warm()
    c = caller(TierLimits(tokens_per_minute=10_000, max_concurrent=1))
    settle_sha = hashlib.sha1(SETTLE.encode()).hexdigest().encode()
    admit_sha = hashlib.sha1(ADMIT.encode()).hexdigest().encode()
    first = await lim.admit(c, 100)
    before = len(writes)
    await lim.settle(c, first, 40)
    await asyncio.sleep(0)  # a turn of the loop: an eager call would have been written by now
    assert len(writes) == before
    second = await lim.admit(c, 100)  # the slot is free: the give-back left first, in the same write
    assert second.admitted and second.used_tokens == 140
    assert len(writes) == before + 1 and settle_sha in writes[-1] and admit_sha in writes[-1]
    await lim.settle(c, second, 100)  # no admission follows: it leaves by itself
    await settled(lambda: len(writes) == before + 2, "a lone give-back is written within its linger")
    await lim.close()


async def test_a_settlement_that_adds_is_seen_by_another_replica_at_once(prefix: str) -> None:
    a, b = (RedisLimiter(REDIS_URL, timeout=1.0, prefix=prefix) for _ in range(2))
    c = caller(TierLimits(tokens_per_minute=1000))
    first = await a.admit(c, 100)
    await a.settle(c, first, 700)  # the prompt was longer than estimated: 600 more
    seen = await b.admit(c, 350)
    assert not seen.admitted  # 700 + 350 > 1000: a late settlement would have admitted it
    assert seen.used_tokens == 700
    await a.close()
    await b.close()


async def test_this_replicas_next_admission_follows_its_settlement(prefix: str) -> None:
    """A give-back queued before an admission leaves first (one pipeline, in order): no spurious refusal."""
    lim = RedisLimiter(REDIS_URL, timeout=1.0, prefix=prefix)
    c = caller(TierLimits(tokens_per_minute=150, max_concurrent=1))
    first = await lim.admit(c, 100)
    await lim.settle(c, first, 10)
    second = await lim.admit(c, 100)
    assert (second.admitted, second.used_tokens) == (True, 110)
    await lim.close()


async def test_close_sends_the_queued_settlements(prefix: str) -> None:
    lim = RedisLimiter(REDIS_URL, timeout=1.0, prefix=prefix)
    c = caller(TierLimits(max_concurrent=5))
    admitted = [await lim.admit(c, 1) for _ in range(5)]
    for a in admitted:
        await lim.settle(c, a, 1)
    await lim.close()  # SIGTERM right after the requests ended
    assert redis.Redis.from_url(REDIS_URL).zcard(f"{prefix}:{{t:ip:a}}:cc") == 0


async def test_a_give_back_the_store_refuses_is_counted(prefix: str) -> None:
    lim = RedisLimiter(REDIS_URL, timeout=1.0, prefix=prefix)
    c = caller(TierLimits(tokens_per_minute=1000))
    first = await lim.admit(c, 100)
    redis.Redis.from_url(REDIS_URL).set(f"{prefix}:{{t:ip:a}}:tk", "not a hash")  # the script's HEXISTS fails
    await lim.settle(c, first, 50)
    await settled(lambda: lim.unsettled == 1, "the failure is counted")
    await lim.close()


async def test_a_script_redis_lost_is_loaded_and_its_calls_run_once(prefix: str) -> None:
    # A script Redis has never seen (its text is new): every call first meets NOSCRIPT.
    script = Script(f"-- {uuid.uuid4()}\nreturn redis.call('INCR', KEYS[1])")
    batch = ScriptBatch(REDIS_URL)
    key = f"{prefix}:counter"
    got = await asyncio.gather(*(batch.call(script, [key], []) for _ in range(5)))
    assert sorted(got) == [1, 2, 3, 4, 5]
    assert await batch.command("GET", key) == b"5"
    await batch.close()


async def test_an_error_reply_is_that_calls_alone(prefix: str) -> None:
    script = Script("if ARGV[1] == 'bad' then return redis.error_reply('no') end return ARGV[1]")
    batch = ScriptBatch(REDIS_URL)
    assert await batch.command("SCRIPT", "LOAD", script.text) == script.sha.encode()
    before = batch.sent
    calls = [batch.call(script, [f"{prefix}:k"], [v]) for v in ("a", "bad", "c")]
    got = await asyncio.gather(*calls, return_exceptions=True)
    assert got[0] == b"a"
    assert isinstance(got[1], ReplyError) and str(got[1]) == "ERR no"
    assert got[2] == b"c"
    assert batch.sent - before == 1
    await batch.close()


def test_a_later_turns_conversation_lookup_rides_with_its_admission(prefix: str, writes: list[bytes]) -> None:
    """Through the gateway: the admission script and the conversation memory's GET leave in one write."""
    admit_sha = hashlib.sha1(ADMIT.encode()).hexdigest().encode()
    later_turn = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and?"},
    ]
    with serving(make_upstream("tiny-small")) as small, serving(make_upstream("tiny-large")) as large:
        settings = settings_for(f"{small.url}/v1", f"{large.url}/v1").model_copy(
            update={
                "limits": LimitsSettings(redis_url=REDIS_URL, key_prefix=prefix),
                "tiers": {"anonymous": TierSettings(requests_per_minute=2)},
                "cache": CacheSettings(enabled=False),
            }
        )
        with serving(create_app(settings)) as gw:
            # the first also opens the connections and loads the scripts; the third is refused, and the lookup
            # it had started is dropped
            codes = [
                httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": later_turn}).status_code
                for _ in range(3)
            ]
    assert codes == [200, 200, 429]
    together = [w for w in writes if admit_sha in w and b"GET" in w and f"{prefix}:conv:".encode() in w]
    assert together, "the admission and the conversation lookup went in separate writes"


def test_a_cache_lookup_rides_with_its_admission_and_still_hits(prefix: str, writes: list[bytes]) -> None:
    """Through the gateway: the response cache's GET leaves in the admission's write, a miss's store is not
    waited for, and the next identical request is answered from the cache; a refused request's lookup is
    dropped, not answered."""
    admit_sha = hashlib.sha1(ADMIT.encode()).hexdigest().encode()
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    with serving(make_upstream("tiny-small")) as small, serving(make_upstream("tiny-large")) as large:
        settings = settings_for(f"{small.url}/v1", f"{large.url}/v1").model_copy(
            update={
                "limits": LimitsSettings(redis_url=REDIS_URL, key_prefix=prefix),
                "tiers": {"anonymous": TierSettings(requests_per_minute=2)},
                "cache": CacheSettings(enabled=True, backend="redis"),
            }
        )
        with serving(create_app(settings)) as gw:
            replies = [httpx.post(f"{gw.url}/v1/chat/completions", json=body) for _ in range(3)]
    assert [r.status_code for r in replies] == [200, 200, 429]
    assert replies[1].headers["x-triage-cache"] == "hit" and replies[1].json() == replies[0].json()
    together = [w for w in writes if admit_sha in w and b"GET" in w and f"{prefix}:cache:".encode() in w]
    assert len(together) >= 2, "the admission and the cache lookup went in separate writes"
