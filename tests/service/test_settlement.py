"""What a request leaves behind at the ports: the reservation settled to what was generated (or kept when
nobody knows), the limiter's failures counted, the cache's bounds, and a record for every ending."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from router.adapters.conversations import MemoryConversations
from router.adapters.ledger_queue import QueuedLedger
from router.core.conversation import ConversationPolicy
from router.core.limits import TierLimits, estimate_tokens, text_tokens
from router.core.ports import UpstreamReply
from router.core.records import DecisionRecord
from router.core.types import Role
from router.errors import LimiterUnavailable, UpstreamUnavailable
from router.service.context import RequestOptions
from router.service.coordinator import MAX_CACHED_BYTES
from tests.service.fakes import FakeStream, answer, ask, caller, stack

DETERMINISTIC = {"temperature": 0}


def sse(*events: dict[str, Any]) -> list[bytes]:
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


TOKENS: list[dict[str, Any]] = [
    {"choices": [{"delta": {"content": w}}]} for w in ("one", "two", "three", "four", "five")
]


async def drain(reply: object) -> None:
    stream = reply
    assert hasattr(stream, "chunks") and hasattr(stream, "aclose")
    try:
        async for _ in stream.chunks():
            pass
    finally:
        await stream.aclose()


async def test_a_stream_without_a_usage_chunk_settles_the_prompt_s_estimate_and_what_arrived() -> None:
    s = stack(score=0.1)
    s.backend.on("small-0", FakeStream(200, sse(*TOKENS)))
    s.backend.on("small-1", FakeStream(200, sse(*TOKENS)))
    out = await ask(s, caller(), {"stream": True, "max_tokens": 50})
    assert s.limiter.settled == []  # not before the stream ends
    assert s.sink.records == []
    await drain(out.reply)
    # Six events (five tokens and [DONE]) -> four completion tokens by vLLM's one-token-per-event, plus the
    # prompt's estimate ("What is 2+2?": 12 chars -> 4 tokens).
    assert s.limiter.settled == [4 + 4]
    (record,) = s.sink.records
    assert (record.status, record.reason, record.completion_tokens) == (200, "below_threshold", 4)


async def test_a_stream_with_a_usage_chunk_settles_exactly() -> None:
    s = stack(score=0.1)
    usage: dict[str, Any] = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}}
    s.backend.on("small-0", FakeStream(200, sse(*TOKENS, usage)))
    s.backend.on("small-1", FakeStream(200, sse(*TOKENS, usage)))
    out = await ask(s, caller(), {"stream": True})
    await drain(out.reply)
    assert s.limiter.settled == [14]
    assert (s.sink.records[0].prompt_tokens, s.sink.records[0].completion_tokens) == (9, 5)


async def test_a_stream_the_worker_breaks_off_is_recorded_as_an_upstream_error_and_opens_no_slot_leak() -> None:
    s = stack(score=0.1)
    s.backend.on("small-0", FakeStream(200, sse(*TOKENS), fail_after=2))
    s.backend.on("small-1", FakeStream(200, sse(*TOKENS), fail_after=2))
    out = await ask(s, caller(), {"stream": True})
    with pytest.raises(UpstreamUnavailable):
        await drain(out.reply)
    assert len(s.limiter.settled) == 1
    (record,) = s.sink.records
    assert (record.status, record.reason) == (200, "upstream_error")
    assert all(s.balancer.outstanding(w) == 0 for w in s.service.workers)


async def test_a_stream_refused_with_a_4xx_is_read_whole_closed_and_passed_on() -> None:
    s = stack(score=0.1)
    refused = FakeStream(400, [b'{"error": {"message": "bad"}}'])
    s.backend.on("small-0", refused)
    s.backend.on("small-1", refused)
    out = await ask(s, caller(), {"stream": True})
    assert isinstance(out.reply, UpstreamReply) and out.reply.status == 400
    assert refused.closed


async def test_a_cache_hit_settles_nothing_generated_and_costs_nothing() -> None:
    s = stack(cache=True)
    first = await ask(s, caller(), DETERMINISTIC)
    hit = await ask(s, caller(), DETERMINISTIC)
    assert (first.cache, hit.cache) == ("miss", "hit")
    assert len(s.backend.calls) == 1
    assert s.limiter.settled == [15, 0]
    assert hit.routed.decision.reason == "cached"
    assert isinstance(hit.reply, UpstreamReply) and isinstance(first.reply, UpstreamReply)
    assert hit.reply.body == first.reply.body
    miss, cached = s.sink.records
    assert (cached.cache_hit, cached.cost, cached.reason) == (True, 0.0, "cached")
    assert cached.cost_large == miss.cost_large > 0  # what the baseline would have paid still counts


async def test_cache_entries_expire_on_the_clock_and_a_bypass_refreshes_them() -> None:
    s = stack(cache=True)
    assert (await ask(s, caller(), DETERMINISTIC)).cache == "miss"
    s.clock.advance(299)
    assert (await ask(s, caller(), DETERMINISTIC)).cache == "hit"
    s.clock.advance(2)  # past the 300 s TTL
    assert (await ask(s, caller(), DETERMINISTIC)).cache == "miss"
    bypass = await ask(s, caller(), DETERMINISTIC, options=RequestOptions(cache_bypass=True))
    assert bypass.cache == "bypass"
    assert len(s.backend.calls) == 3


async def test_answers_over_one_mib_are_not_cached() -> None:
    s = stack(cache=True)
    big = answer("x" * MAX_CACHED_BYTES)
    assert len(big) > MAX_CACHED_BYTES
    for name in ("small-0", "small-1"):
        s.backend.on(name, UpstreamReply(200, big, "application/json"), UpstreamReply(200, big, "application/json"))
    assert (await ask(s, caller(), DETERMINISTIC)).cache == "miss"
    assert (await ask(s, caller(), DETERMINISTIC)).cache == "miss"
    assert len(s.backend.calls) == 2


async def test_a_limiter_failure_during_settle_is_counted_and_the_answer_still_served() -> None:
    s = stack()
    s.limiter.fail_settle = True
    out = await ask(s, caller())
    assert isinstance(out.reply, UpstreamReply) and out.reply.status == 200
    assert s.service.health().limiter_errors == 1
    assert s.admission.health.last_error == "the rate-limit store did not answer"
    assert s.sink.records[0].status == 200


async def test_max_completion_tokens_is_capped_by_the_tier_and_the_reservation_follows() -> None:
    s = stack()
    who = caller(max_tokens=100, limits=TierLimits(tokens_per_minute=10_000))
    out = await ask(s, who, {"max_completion_tokens": 5000})
    sent = s.backend.calls[0][1]
    assert sent["max_completion_tokens"] == 100 and "max_tokens" not in sent
    assert out.limit_headers["x-ratelimit-remaining-tokens"] == str(
        10_000 - estimate_tokens(text_tokens("What is 2+2?"), 100)
    )


async def test_a_defect_is_recorded_as_an_internal_error_and_the_slot_freed() -> None:
    s = stack()

    def broken(text: str) -> float:
        raise RuntimeError("scorer bug")

    s.scorer.score = broken  # type: ignore[method-assign]
    who = caller(limits=TierLimits(max_concurrent=1))
    with pytest.raises(RuntimeError):
        await ask(s, who)
    assert (s.sink.records[0].status, s.sink.records[0].reason) == (500, "internal_error")
    assert (await s.limiter.admit(who, 1)).admitted


async def test_a_fail_closed_tier_refuses_when_the_store_is_down_and_records_why() -> None:
    s = stack()

    async def down(*_: object) -> None:
        raise LimiterUnavailable("the rate-limit store did not answer")

    s.limiter.admit = down  # type: ignore[method-assign, assignment]
    with pytest.raises(LimiterUnavailable):
        await ask(s, caller(fail_open=False))
    out = await ask(s, caller(fail_open=True))
    assert out.limit_headers == {}
    assert s.sink.reasons == ["rate_limiter_unavailable", "below_threshold"]
    assert s.service.health().limiter_errors == 2


class FailingLedger(QueuedLedger[DecisionRecord]):
    async def _store(self, rows: list[tuple[object, ...]]) -> None:
        raise OSError("disk full")


async def test_a_ledger_write_failure_is_counted_as_dropped_and_never_reaches_requests() -> None:
    ledger = FailingLedger(batch=2, interval=0.001, max_queue=100)
    s = stack(ledger=ledger)
    await ledger.start()
    for _ in range(5):
        assert (await ask(s, caller())).reply.status == 200
    await ledger.close()
    assert (ledger.written, ledger.dropped) == (0, 5)


async def test_the_record_of_a_request_is_written_once_even_when_the_stream_is_closed_twice() -> None:
    s = stack(score=0.1)
    s.backend.on("small-0", FakeStream(200, sse(*TOKENS)))
    s.backend.on("small-1", FakeStream(200, sse(*TOKENS)))
    out = await ask(s, caller(), {"stream": True})
    await drain(out.reply)
    await out.reply.aclose()  # type: ignore[union-attr]
    await asyncio.sleep(0)
    assert len(s.sink.records) == 1 and len(s.limiter.settled) == 1


class _StuckMemory(MemoryConversations):
    """A conversation store whose writes hang (a Redis that stopped answering within its timeout)."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = asyncio.Event()

    async def put(self, key: str, role: Role, ttl: float) -> None:
        self.writing.set()
        await asyncio.Event().wait()

    def __bool__(self) -> bool:  # an empty store is still the store (stack() takes `memory or` its own)
        return True


async def test_a_stream_abandoned_while_its_turn_is_remembered_is_closed_settled_and_recorded() -> None:
    """Regression: a client leaving (or a shutdown) while the conversation store was writing the turn of a
    streamed answer cancelled the request with the open stream in hand: nobody closed it, so the worker's
    connection stayed open (its generation ran on), the reservation was never settled to what was generated,
    the worker's in-flight count never came down and the request left no record."""
    memory = _StuckMemory()
    s = stack(score=0.1, conversation=ConversationPolicy.STICKY, memory=memory)
    streams = [FakeStream(200, sse(*TOKENS)), FakeStream(200, sse(*TOKENS))]
    s.backend.on("small-0", streams[0])
    s.backend.on("small-1", streams[1])
    task = asyncio.ensure_future(ask(s, caller(), {"stream": True, "max_tokens": 50}))
    await asyncio.wait_for(memory.writing.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [stream.closed for stream in streams].count(True) == 1
    assert len(s.limiter.settled) == 1 and s.limiter.settled[0] < 4 + 50  # what arrived: nothing
    assert [w.name for w in s.balancer.workers if s.balancer.outstanding(w) > 0] == []
    assert [r.status for r in s.sink.records] == [200]
