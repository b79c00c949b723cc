"""Decision ledger in a capped Redis stream that several gateway replicas share: each batch is one pipelined
round trip of XADDs, trimmed approximately to `maxlen` entries (the oldest go first)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from router.adapters.ledger_queue import QueuedLedger
from router.core.records import COLUMNS, DecisionRecord

__all__ = ["RedisStreamLedger", "read_stream_records"]

_FLOATS = {"ts", "score", "threshold", "ttft_ms", "latency_ms", "cost", "cost_large", "cost_cached", "cost_seconds"}
_INTS = {"prompt_tokens", "completion_tokens", "status", "schema", "cached_tokens", "reasoning_tokens"}
_ZERO = {"cost_cached", "cost_seconds"}  # absent from records written before they existed
_BOOLS = {"escalated", "cache_hit"}


def _encode(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)


def _decode(column: str, raw: str) -> Any:
    if column in _BOOLS:
        return raw == "1"
    if raw == "" and column in _ZERO:
        return 0.0
    if raw == "" and column not in (
        "request_id",
        "tier",
        "caller",
        "model_requested",
        "model",
        "worker",
        "role",
        "reason",
        "route",  # "" also for entries written before the field existed
    ):
        return None
    if column in _FLOATS:
        return float(raw)
    if column in _INTS:
        return int(raw)
    return raw


class RedisStreamLedger(QueuedLedger[DecisionRecord]):
    def __init__(
        self,
        url: str,
        *,
        stream: str = "triage:decisions",
        maxlen: int = 1_000_000,
        batch: int = 256,
        interval: float = 0.25,
        max_queue: int = 100_000,
        timeout: float = 2.0,
    ) -> None:
        super().__init__(batch=batch, interval=interval, max_queue=max_queue)
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.stream = stream
        self._maxlen = maxlen

    async def _store(self, rows: list[tuple[Any, ...]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for values in rows:
            fields: dict[Any, Any] = {c: _encode(v) for c, v in zip(COLUMNS, values, strict=True)}
            pipe.xadd(self.stream, fields, maxlen=self._maxlen, approximate=True)
        await pipe.execute()

    async def _close(self) -> None:
        await self._redis.aclose()


def read_stream_records(url: str, stream: str = "triage:decisions", chunk: int = 5000) -> Iterator[DecisionRecord]:
    """Every record in the stream, oldest first."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        start = "-"
        while True:
            # decode_responses=True: ids and fields are str
            entries = cast(list[tuple[str, dict[str, str]]], client.xrange(stream, min=start, max="+", count=chunk))
            for _, fields in entries:
                yield DecisionRecord(**{c: _decode(c, fields.get(c, "")) for c in COLUMNS})
            if len(entries) < chunk:
                return
            start = "(" + entries[-1][0]
    finally:
        client.close()
