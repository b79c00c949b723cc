"""The shared ledger in a real Redis stream: written by a gateway, read back by the analytics CLI."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from router.adapters.ledger_redis import RedisStreamLedger, read_stream_records
from router.api.app import create_app
from router.cli import main
from router.settings import LedgerSettings, LimitsSettings, TierSettings
from tests.api.conftest import settings_for
from tests.ledger.test_report import HAND
from tests.limits.conftest import REDIS_URL, require_redis
from tests.servers import serving
from tests.upstream import make_upstream


@pytest.fixture
def stream() -> Iterator[str]:
    require_redis()
    name = f"test-decisions-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(REDIS_URL).delete(name)


async def test_round_trip_keeps_every_field(stream: str) -> None:
    ledger = RedisStreamLedger(REDIS_URL, stream=stream, batch=3)
    await ledger.start()
    for r in HAND:
        ledger.emit(r)
    await ledger.close()
    assert ledger.written == len(HAND)
    assert list(read_stream_records(REDIS_URL, stream, chunk=2)) == HAND


async def test_the_stream_is_capped(stream: str) -> None:
    ledger = RedisStreamLedger(REDIS_URL, stream=stream, maxlen=100)
    await ledger.start()
    for i in range(3000):
        ledger.emit(HAND[i % len(HAND)])
    await ledger.close()
    length = redis.Redis.from_url(REDIS_URL).xlen(stream)
    assert 100 <= length < 3000  # trimmed approximately, never below the cap


def test_gateway_writes_the_shared_stream(stream: str, capsys: pytest.CaptureFixture[str]) -> None:
    with serving(make_upstream("tiny-small")) as small, serving(make_upstream("tiny-large")) as large:
        base = settings_for(f"{small.url}/v1", f"{large.url}/v1")
        settings = base.model_copy(
            update={
                "ledger": LedgerSettings(stream=stream),  # backend auto + Redis limits -> the stream
                "limits": LimitsSettings(redis_url=REDIS_URL, key_prefix=f"test-{uuid.uuid4().hex[:6]}"),
                "tiers": {"anonymous": TierSettings(requests_per_minute=2)},
            }
        )
        with serving(create_app(settings)) as gw:
            codes = [
                httpx.post(
                    f"{gw.url}/v1/chat/completions",
                    json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
                ).status_code
                for _ in range(3)
            ]
    assert codes == [200, 200, 429]
    records = list(read_stream_records(REDIS_URL, stream))
    assert [(r.status, r.model, r.role) for r in records] == [
        (200, "tiny-small", "small"),
        (200, "tiny-small", "small"),
        (429, "", ""),
    ]
    assert main(["analytics", "summary", "--ledger", REDIS_URL, "--stream", stream, "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["requests"], summary["served"], summary["rate_limited"]) == (3, 2, {"anonymous": 1})
