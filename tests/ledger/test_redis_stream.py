"""The shared ledger in a real Redis stream: written by a gateway, read back by the analytics CLI."""

from __future__ import annotations

import asyncio
import enum
import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
import redis

from router.adapters import ledger_redis
from router.adapters.ledger_redis import RedisStreamLedger, read_stream_records
from router.api.app import create_app
from router.cli import main
from router.core.records import COLUMNS
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


HOSTILE = (
    'quote " backslash \\ nul \x00 tab \t newline \n',
    "emoji 🦜, CJK 漢字, a line separator \u2028, a right-to-left mark \u200f",
    "]}{[,:" * 50,
    "x" * 10_000,
)


async def test_text_and_order_survive_the_batches(stream: str) -> None:
    """Every record as it was, in the order emitted, across many batches; text that JSON must escape included."""
    records = [
        replace(
            HAND[i % len(HAND)],
            request_id=f"r{i:05d}",
            caller=HOSTILE[i % len(HOSTILE)],
            prompt=HOSTILE[(i + 1) % len(HOSTILE)],
            score=i / 7,
            latency_ms=1e-300 * i,
            prompt_tokens=2**62 + i,
        )
        for i in range(1000)
    ]
    ledger = RedisStreamLedger(REDIS_URL, stream=stream)
    await ledger.start()
    for r in records:
        ledger.emit(r)
    await ledger.close()
    assert (ledger.written, ledger.dropped) == (1000, 0)
    assert list(read_stream_records(REDIS_URL, stream, chunk=333)) == records


async def test_a_lone_surrogate_costs_one_character_not_the_batch(stream: str) -> None:
    ledger = RedisStreamLedger(REDIS_URL, stream=stream)
    await ledger.start()
    ledger.emit(replace(HAND[0], caller="a\ud800b"))
    ledger.emit(HAND[1])
    await ledger.close()
    assert [r.caller for r in read_stream_records(REDIS_URL, stream)] == ["a?b", HAND[1].caller]


async def test_the_writer_gives_the_loop_back_between_small_batches(
    stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer must not hold the event loop for a large batch at once (a pipeline of 256 XADDs packed by
    redis-py held it for about 10 ms: the stream's p99 tail). Counted, not timed: the values encoded between two
    steps of a task that yields on every loop iteration."""
    encoded = [0]
    original = ledger_redis._pack

    def counting(rows: list[tuple[object, ...]]) -> bytes:
        encoded[0] += sum(map(len, rows))
        return original(rows)

    monkeypatch.setattr(ledger_redis, "_pack", counting)
    ledger = RedisStreamLedger(REDIS_URL, stream=stream, interval=0.01)
    for i in range(2000):
        ledger.emit(replace(HAND[i % len(HAND)], request_id=f"r{i}"))
    most = [0]

    async def watch() -> None:
        last = 0
        while ledger.written < 2000:
            await asyncio.sleep(0)
            most[0] = max(most[0], encoded[0] - last)
            last = encoded[0]

    watcher = asyncio.create_task(watch())
    await ledger.start()
    await asyncio.wait_for(watcher, 60)
    await ledger.close()
    assert 0 < most[0] <= 64 * len(COLUMNS)  # at most 64 records at once (BATCH is 32)


async def test_close_while_a_flush_is_under_way_loses_nothing(stream: str) -> None:
    """SIGTERM mid-flush: the batch the writer has taken off the queue is written, not dropped on the floor."""
    ledger = RedisStreamLedger(REDIS_URL, stream=stream, interval=0.001)
    total = 5000
    for i in range(total):
        ledger.emit(replace(HAND[i % len(HAND)], request_id=f"r{i}"))
    await ledger.start()
    deadline = asyncio.get_running_loop().time() + 30
    while total - ledger.depth == ledger.written:  # until a batch is off the queue and not yet written
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0)
    await ledger.close()
    assert (ledger.written, ledger.dropped) == (total, 0)
    assert redis.Redis.from_url(REDIS_URL).xlen(stream) == total


def test_records_are_packed_as_each_value_s_text_whatever_its_type() -> None:
    """_pack converts by exact type for speed; every value must come out as _encode writes it (subclasses and
    enums included), or the stream's readers would parse something else."""

    class Kind(enum.StrEnum):
        A = "a"

    class Count(int):
        pass

    values = [None, True, False, 0, -1, 2**70, 0.0, -0.0, 0.1, 1e16, 1e-7, math.inf, math.nan, "x", "", Kind.A]
    values.append(Count(3))
    rows = [tuple(values), tuple(reversed(values))]
    expected = [[ledger_redis._encode(v) for v in row] for row in rows]
    assert json.loads(ledger_redis._pack(rows)) == expected
    assert expected[0][:4] == ["", "1", "0", "0"]
