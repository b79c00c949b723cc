"""The exact response cache through the gateway: in memory, and in the real Redis shared by two gateways."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.adapters.ledger_sqlite import read_records
from router.api.app import create_app
from router.api.auth import hash_key
from router.core.caching import cache_key
from router.settings import (
    AuthSettings,
    CacheSettings,
    KeySettings,
    LedgerSettings,
    LimitsSettings,
    Settings,
    TierSettings,
)
from tests.api.conftest import settings_for
from tests.limits.conftest import REDIS_URL, require_redis
from tests.servers import serving, wait_until
from tests.upstream import Journal, make_upstream

DETERMINISTIC = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 3}


def _with(base: Settings, **update: Any) -> Settings:
    return base.model_copy(update=update)


def test_cache_key_only_for_deterministic_requests_and_scoped() -> None:
    assert cache_key("free", "/chat", {**DETERMINISTIC}) is not None
    assert cache_key("free", "/chat", {**DETERMINISTIC, "user": "a"}) == cache_key("free", "/chat", DETERMINISTIC)
    assert cache_key("free", "/chat", DETERMINISTIC) != cache_key("paid", "/chat", DETERMINISTIC)
    assert cache_key("free", "/chat", {**DETERMINISTIC, "max_tokens": 4}) != cache_key("free", "/chat", DETERMINISTIC)
    assert cache_key("free", "/chat", {**DETERMINISTIC, "temperature": 0.7}) is None
    assert cache_key("free", "/chat", {k: v for k, v in DETERMINISTIC.items() if k != "temperature"}) is None
    assert cache_key("free", "/chat", {**DETERMINISTIC, "stream": True}) is None
    assert cache_key("free", "/chat", {**DETERMINISTIC, "n": 2}) is None


def test_hit_bypass_and_non_deterministic_in_memory(tmp_path: Path) -> None:
    journal = Journal()
    path = tmp_path / "ledger.sqlite"
    with serving(make_upstream("tiny-small", journal)) as small, serving(make_upstream("tiny-large")) as large:
        settings = _with(settings_for(f"{small.url}/v1", f"{large.url}/v1"), ledger=LedgerSettings(path=path))
        with serving(create_app(settings)) as gw, httpx.Client(base_url=gw.url) as client:
            first = client.post("/v1/chat/completions", json=DETERMINISTIC)
            second = client.post("/v1/chat/completions", json=DETERMINISTIC)
            assert first.headers["x-triage-cache"] == "miss" and second.headers["x-triage-cache"] == "hit"
            assert second.content == first.content
            assert second.headers["x-triage-model"] == "tiny-small"
            assert second.headers["x-triage-reason"] == "cached"
            assert len(journal.bodies) == 1
            bypass = client.post("/v1/chat/completions", json=DETERMINISTIC, headers={"x-triage-cache": "bypass"})
            assert bypass.headers["x-triage-cache"] == "bypass" and len(journal.bodies) == 2
            warm = client.post("/v1/chat/completions", json={**DETERMINISTIC, "temperature": 0.7})
            again = client.post("/v1/chat/completions", json={**DETERMINISTIC, "temperature": 0.7})
            assert "x-triage-cache" not in warm.headers and "x-triage-cache" not in again.headers
            assert len(journal.bodies) == 4
            streamed = client.post("/v1/chat/completions", json={**DETERMINISTIC, "stream": True})
            assert streamed.status_code == 200 and "x-triage-cache" not in streamed.headers
            assert len(journal.bodies) == 5
    records = list(read_records(path))
    assert [r.cache_hit for r in records] == [False, True, False, False, False, False]
    miss, hit = records[0], records[1]
    assert hit.cost == 0 and hit.cost_large == pytest.approx(miss.cost_large) and miss.cost > 0
    assert hit.reason == "cached" and hit.model == "tiny-small"


def test_tiers_do_not_share_answers_and_a_tier_can_opt_out() -> None:
    journal = Journal()
    with serving(make_upstream("tiny-small", journal)) as small, serving(make_upstream("tiny-large")) as large:
        base = settings_for(f"{small.url}/v1", f"{large.url}/v1")
        settings = _with(
            base,
            tiers={"anonymous": TierSettings(), "paid": TierSettings(), "nocache": TierSettings(cache=False)},
            auth=AuthSettings(
                keys=[
                    KeySettings(sha256=hash_key("sk-paid"), tier="paid"),
                    KeySettings(sha256=hash_key("sk-nocache"), tier="nocache"),
                ]
            ),
        )
        with serving(create_app(settings)) as gw, httpx.Client(base_url=gw.url) as client:

            def ask(key: str | None) -> str:
                headers = {"authorization": f"Bearer {key}"} if key else {}
                r = client.post("/v1/chat/completions", json=DETERMINISTIC, headers=headers)
                assert r.status_code == 200
                return str(r.headers.get("x-triage-cache", ""))

            assert [ask(None), ask(None), ask("sk-paid"), ask("sk-paid")] == ["miss", "hit", "miss", "hit"]
            assert [ask("sk-nocache"), ask("sk-nocache")] == ["", ""]
            assert len(journal.bodies) == 4


def test_redis_cache_is_shared_by_replicas_and_expires() -> None:
    require_redis()
    journal = Journal()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    with serving(make_upstream("tiny-small", journal)) as small, serving(make_upstream("tiny-large")) as large:
        settings = _with(
            settings_for(f"{small.url}/v1", f"{large.url}/v1"),
            limits=LimitsSettings(redis_url=REDIS_URL, key_prefix=prefix, redis_timeout=1.0),
            cache=CacheSettings(ttl=0.8),
        )
        with serving(create_app(settings)) as one, serving(create_app(settings)) as two:
            url = "/v1/chat/completions"
            assert httpx.post(one.url + url, json=DETERMINISTIC).headers["x-triage-cache"] == "miss"
            assert httpx.post(two.url + url, json=DETERMINISTIC).headers["x-triage-cache"] == "hit"
            assert len(journal.bodies) == 1
            # Hits until the entry's TTL (0.8 s) has passed in Redis; then a miss, which asks the worker again.
            wait_until(
                lambda: httpx.post(two.url + url, json=DETERMINISTIC).headers["x-triage-cache"] == "miss",
                10,
                "the cached answer to expire",
            )
            assert len(journal.bodies) == 2


def test_unreachable_redis_cache_is_a_miss_not_an_error() -> None:
    journal = Journal()
    with serving(make_upstream("tiny-small", journal)) as small, serving(make_upstream("tiny-large")) as large:
        settings = _with(
            settings_for(f"{small.url}/v1", f"{large.url}/v1"),
            limits=LimitsSettings(redis_url="redis://127.0.0.1:1/0", redis_timeout=0.2),
            cache=CacheSettings(backend="redis"),
        )
        with serving(create_app(settings)) as gw:
            for _ in range(2):
                r = httpx.post(f"{gw.url}/v1/chat/completions", json=DETERMINISTIC)
                assert r.status_code == 200 and r.headers["x-triage-cache"] == "miss"
            assert len(journal.bodies) == 2
            metrics = httpx.get(f"{gw.url}/metrics").text
            errors = next(line for line in metrics.splitlines() if line.startswith("triage_cache_errors_total "))
            assert float(errors.split()[1]) >= 2  # a lookup and a store per request at least once each
