"""Tiers through a real gateway: keys, anonymous addresses, caps, policy, 429s with OpenAI's headers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from router.api.app import create_app
from router.api.auth import hash_key
from router.settings import AuthSettings, KeySettings, LimitsSettings, RoutingSettings, Settings, TierSettings
from tests.api.conftest import settings_for
from tests.limits.conftest import REDIS_URL, require_redis
from tests.servers import ThreadedServer, serving
from tests.upstream import Journal, make_upstream

SHORT = [{"role": "user", "content": "hi"}]
LONG = [{"role": "user", "content": "explain " * 100}]
PAID_KEY = "sk-paid-0123456789"
FREE_KEY = "sk-free-abcdef"


def tiered(small: str, large: str, trusted: list[str] | None = None) -> Settings:
    base = settings_for(small, large)
    return Settings(
        server=base.server,
        workers=base.workers,
        ledger=base.ledger,
        routing=RoutingSettings(scorer="length", threshold=0.5, length_midpoint=100),
        tiers={
            "anonymous": TierSettings(requests_per_minute=3, max_tokens=16, models=["small"]),
            "free": TierSettings(requests_per_minute=50, tokens_per_minute=400, max_tokens=64),
            "paid": TierSettings(),
        },
        auth=AuthSettings(
            keys=[
                KeySettings(sha256=hash_key(PAID_KEY), tier="paid", name="acme"),
                KeySettings(sha256=hash_key(FREE_KEY), tier="free"),
            ],
            trusted_proxies=trusted or [],
        ),
    )


@pytest.fixture
def upstreams() -> Iterator[tuple[ThreadedServer, ThreadedServer, Journal, Journal]]:
    js, jl = Journal(), Journal()
    with serving(make_upstream("tiny-small", js)) as small, serving(make_upstream("tiny-large", jl)) as large:
        yield small, large, js, jl


def post(url: str, key: str | None = None, messages: object = SHORT, **extra: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        f"{url}/v1/chat/completions", json={"model": "auto", "messages": messages, **extra}, headers=headers
    )


def test_anonymous_limit_headers_and_429(upstreams: tuple[ThreadedServer, ...]) -> None:
    small, large = upstreams[0], upstreams[1]
    with serving(create_app(tiered(f"{small.url}/v1", f"{large.url}/v1"))) as gw:
        ok = [post(gw.url) for _ in range(3)]
        assert [r.status_code for r in ok] == [200, 200, 200]
        assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == ["2", "1", "0"]
        assert ok[0].headers["x-ratelimit-limit-requests"] == "3"
        limited = post(gw.url)
        assert limited.status_code == 429
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["x-ratelimit-remaining-requests"] == "0"
        # A paid key is another caller with another tier: unaffected.
        assert post(gw.url, PAID_KEY).status_code == 200


def test_invalid_key_is_401_not_anonymous(upstreams: tuple[ThreadedServer, ...]) -> None:
    with serving(create_app(tiered(f"{upstreams[0].url}/v1", f"{upstreams[1].url}/v1"))) as gw:
        r = post(gw.url, "sk-made-up")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"


def test_anonymous_tier_policy_small_only_and_max_tokens_cap(
    upstreams: tuple[ThreadedServer, ThreadedServer, Journal, Journal],
) -> None:
    small, large, js, jl = upstreams
    with serving(create_app(tiered(f"{small.url}/v1", f"{large.url}/v1"))) as gw:
        routed = post(gw.url, messages=LONG, max_tokens=500)  # the score says large; the tier says small
        assert routed.status_code == 200
        assert routed.headers["x-triage-model"] == "tiny-small"
        assert routed.headers["x-triage-reason"] == "tier_policy"
        assert js.bodies[-1]["max_tokens"] == 16  # capped
        named = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "tiny-large", "messages": SHORT})
        assert named.status_code == 403
        assert named.json()["error"]["type"] == "permission_error"
        paid = post(gw.url, PAID_KEY, messages=LONG)
        assert paid.headers["x-triage-model"] == "tiny-large"
        assert "max_tokens" not in jl.bodies[-1]  # no cap for paid, nothing added


def test_token_limit_is_exact_within_one_reservation(upstreams: tuple[ThreadedServer, ...]) -> None:
    """Admitted requests' real usage never passes the limit, and falls short by less than one reservation."""
    small, large = upstreams[0], upstreams[1]
    with serving(create_app(tiered(f"{small.url}/v1", f"{large.url}/v1"))) as gw:
        used, reservation = 0, 0
        for _ in range(100):
            r = post(gw.url, FREE_KEY, max_tokens=40)
            if r.status_code == 429:
                assert "tokens" in r.json()["error"]["message"]
                break
            assert r.status_code == 200
            used += r.json()["usage"]["total_tokens"]
            reservation = len("hi") // 4 + 1 + 40
        else:
            pytest.fail("the token limit never bit")
        assert used <= 400
        assert used > 400 - reservation - 47  # 47: the largest single request's usage (7 prompt + 40)


def test_untrusted_forwarded_for_cannot_dodge_the_limit(upstreams: tuple[ThreadedServer, ...]) -> None:
    small, large = upstreams[0], upstreams[1]
    with serving(create_app(tiered(f"{small.url}/v1", f"{large.url}/v1"))) as gw:
        codes = [
            httpx.post(
                f"{gw.url}/v1/chat/completions",
                json={"model": "auto", "messages": SHORT},
                headers={"x-forwarded-for": f"198.51.100.{i}"},
            ).status_code
            for i in range(5)
        ]
        assert codes == [200, 200, 200, 429, 429]


def test_trusted_proxy_forwarded_for_is_honoured(upstreams: tuple[ThreadedServer, ...]) -> None:
    small, large = upstreams[0], upstreams[1]
    with serving(create_app(tiered(f"{small.url}/v1", f"{large.url}/v1", trusted=["127.0.0.1/32"]))) as gw:

        def send(xff: str) -> int:
            return httpx.post(
                f"{gw.url}/v1/chat/completions",
                json={"model": "auto", "messages": SHORT},
                headers={"x-forwarded-for": xff},
            ).status_code

        assert [send("198.51.100.1") for _ in range(4)] == [200, 200, 200, 429]
        assert send("198.51.100.2") == 200  # another client behind the proxy
        # A client prepending a fake hop gets the proxy-appended address, its real one.
        assert send("10.9.9.9, 198.51.100.1") == 429


def test_a_second_forwarded_for_line_from_the_proxy_is_the_one_believed(upstreams: tuple[ThreadedServer, ...]) -> None:
    """Regression: behind a proxy that appends its own line (HAProxy's `option forwardfor`), only the client's
    first line was read, so a client naming a new address each time got 6 of 6 admitted at 3 rpm."""
    small, large = upstreams[0], upstreams[1]
    with serving(create_app(tiered(f"{small.url}/v1", f"{large.url}/v1", trusted=["127.0.0.1/32"]))) as gw:
        codes = [
            httpx.post(
                f"{gw.url}/v1/chat/completions",
                json={"model": "auto", "messages": SHORT},
                headers=[("x-forwarded-for", f"10.2.2.{i}"), ("x-forwarded-for", "10.1.1.1")],
            ).status_code
            for i in range(6)
        ]
        assert codes == [200, 200, 200, 429, 429, 429]
        unparseable = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "auto", "messages": SHORT},
            headers={"x-forwarded-for": "unknown"},
        )
        assert unparseable.status_code == 200  # its own bucket, not the proxy's (which 10.1.1.1 did not use)


def test_a_tier_s_max_body_bytes_is_its_own_limit(upstreams: tuple[ThreadedServer, ...]) -> None:
    base = tiered(f"{upstreams[0].url}/v1", f"{upstreams[1].url}/v1")
    tiers = {**base.tiers, "free": TierSettings(max_body_bytes=600)}
    with serving(create_app(base.model_copy(update={"tiers": tiers}))) as gw:
        body = [{"role": "user", "content": "x" * 1000}]
        refused = post(gw.url, FREE_KEY, messages=body)
        assert refused.status_code == 413
        assert refused.json()["error"]["code"] == "request_too_large"
        assert post(gw.url, FREE_KEY).status_code == 200  # a small body from the same tier passes
        assert post(gw.url, PAID_KEY, messages=body).status_code == 200  # the server's limit for the others


def test_api_keys_held_in_redis_map_to_their_tier(upstreams: tuple[ThreadedServer, ...]) -> None:
    require_redis()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    base = tiered(f"{upstreams[0].url}/v1", f"{upstreams[1].url}/v1")
    settings = base.model_copy(
        update={"limits": LimitsSettings(redis_url=REDIS_URL, key_prefix=prefix, redis_timeout=1.0)}
    )
    store = redis.Redis.from_url(REDIS_URL)
    try:
        with serving(create_app(settings)) as gw:
            assert post(gw.url, "sk-from-redis").status_code == 401  # not in the file, not yet in Redis
            store.hset(f"{prefix}:keys", hash_key("sk-from-redis"), "anonymous")  # added while serving
            ok = [post(gw.url, "sk-from-redis") for _ in range(4)]
            # The anonymous tier's 3 requests a minute, counted for this key, not for the address.
            assert [r.status_code for r in ok] == [200, 200, 200, 429]
            assert post(gw.url).status_code == 200
            assert post(gw.url, PAID_KEY).status_code == 200  # keys in the file still work beside Redis
            store.hdel(f"{prefix}:keys", hash_key("sk-from-redis"))  # revoked
            assert post(gw.url, "sk-from-redis").status_code == 401
    finally:
        store.delete(f"{prefix}:keys")
        store.close()
