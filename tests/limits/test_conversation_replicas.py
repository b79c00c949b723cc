"""Conversation memory shared by replicas: two `triage serve` processes on one Redis agree on where a
conversation belongs, and a tier limited to the small model is never moved."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path

import httpx

from tests.limits.conftest import REDIS_URL, require_redis
from tests.limits.gateways import Gateway
from tests.servers import ThreadedServer

LONG = "Explain, with a full derivation, " + "why the spectral theorem holds for every normal operator. " * 8
KEY = "sk-paid-conversation"


def _turns(*texts: str) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    for i, text in enumerate(texts):
        if i:
            messages.append({"role": "assistant", "content": f"answer {i}"})
        messages.append({"role": "user", "content": text})
    return messages


def _post(gw: Gateway, messages: list[dict[str, str]], key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(
        gw.url + "/v1/chat/completions", json={"model": "auto", "messages": messages}, headers=headers, timeout=10
    )
    assert r.status_code == 200, r.text
    return r


def test_replicas_share_the_conversation_memory(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, object]
) -> None:
    require_redis()
    from router.api.auth import hash_key

    small, large = upstreams[0], upstreams[1]
    cfg = tmp_path / "gateway.json"
    cfg.write_text(
        json.dumps(
            {
                "server": {"log_level": "warning"},
                "routing": {"scorer": "length", "length_midpoint": 200, "threshold": 0.5},
                "workers": [
                    {"name": "small", "role": "small", "base_url": f"{small.url}/v1", "model": "tiny-small"},
                    {"name": "large", "role": "large", "base_url": f"{large.url}/v1", "model": "tiny-large"},
                ],
                "tiers": {"anonymous": {"models": ["small"]}, "paid": {}},
                "auth": {"keys": [{"sha256": hash_key(KEY), "tier": "paid"}]},
                "ledger": {"enabled": False},
                "limits": {"redis_url": REDIS_URL, "key_prefix": f"test-{uuid.uuid4().hex[:8]}", "redis_timeout": 1},
            }
        )
    )
    one, two = Gateway(cfg, tmp_path / "one.log"), Gateway(cfg, tmp_path / "two.log")
    try:
        first = _post(one, _turns(LONG), KEY)
        assert (first.headers["x-triage-model"], first.headers["x-triage-reason"]) == (
            "tiny-large",
            "at_or_above_threshold",
        )
        # The follow-up is short (it would score small) and reaches the other replica: it stays on the large model.
        follow = _post(two, _turns(LONG, "and the second case?"), KEY)
        assert (follow.headers["x-triage-model"], follow.headers["x-triage-reason"]) == ("tiny-large", "conversation")
        again = _post(one, _turns(LONG, "and the second case?", "thanks"), KEY)
        assert again.headers["x-triage-reason"] == "conversation"
        # A new conversation with a short opening is routed by its score.
        fresh = _post(two, _turns("hi", "and?"), KEY)
        assert (fresh.headers["x-triage-model"], fresh.headers["x-triage-reason"]) == ("tiny-small", "below_threshold")
        # The anonymous tier may use only the small model: its long opening stays small, and so does the rest.
        opening = _post(one, _turns(LONG))
        assert (opening.headers["x-triage-model"], opening.headers["x-triage-reason"]) == ("tiny-small", "tier_policy")
        anon = _post(two, _turns(LONG, "and the second case?"))
        assert anon.headers["x-triage-model"] == "tiny-small"
    finally:
        one.kill(signal.SIGTERM)
        two.kill(signal.SIGTERM)


async def test_the_redis_memory_holds_at_most_conversation_max() -> None:
    require_redis()
    from router.adapters.conversations import RedisConversations
    from router.core.types import Role

    prefix = f"test-{uuid.uuid4().hex[:8]}"
    memory = RedisConversations(REDIS_URL, prefix=prefix, timeout=1, max_entries=3)
    try:
        for i in range(10):
            await memory.put(f"c{i}", Role.LARGE, ttl=60)
        remembered = [i for i in range(10) if await memory.get(f"c{i}") is Role.LARGE]
        assert remembered == [7, 8, 9]  # the three written last
        await memory.put("c7", Role.SMALL, ttl=60)  # written again: the newest now
        await memory.put("c10", Role.LARGE, ttl=60)
        assert [await memory.get(f"c{i}") for i in (7, 8, 9, 10)] == [Role.SMALL, None, Role.LARGE, Role.LARGE]
        import redis.asyncio as aioredis

        raw = aioredis.Redis.from_url(REDIS_URL)
        try:
            assert len(await raw.keys(f"{prefix}:conv:*")) == 3  # forgotten keys are deleted, not left to expire
            await raw.delete(*await raw.keys(f"{prefix}:*"))
        finally:
            await raw.aclose()
    finally:
        await memory.close()
    assert memory.errors == 0
