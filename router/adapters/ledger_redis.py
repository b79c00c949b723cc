"""Decision ledger in a capped Redis stream that several gateway replicas share, trimmed approximately to `maxlen`
entries (the oldest go first).

A batch (BATCH records) goes to Redis as one script call, the records one JSON array of arrays of their fields
as strings, which the script adds in order (one XADD each). This replaced a pipeline of up to 256 XADDs whose
packing by redis-py (about 50 arguments per record, each through its Python encoder) held the event loop for
10-18 ms of CPU per flush (py-spy under wrk): the p99 tail the stream
added. Now the loop is held for one small batch's encoding at a time (a few hundred microseconds on a loaded
machine), and the queue's writer yields between batches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any, cast

import redis

from router.adapters.ledger_queue import QueuedLedger
from router.adapters.redis_batch import ScriptBatch
from router.adapters.resp import Script
from router.core.records import COLUMNS, DecisionRecord

__all__ = ["RedisStreamLedger", "read_stream_records"]

_FLOATS = {"ts", "score", "threshold", "ttft_ms", "latency_ms", "cost", "cost_large", "cost_cached", "cost_seconds"}
_INTS = {"prompt_tokens", "completion_tokens", "status", "schema", "cached_tokens", "reasoning_tokens"}
_ZERO = {"cost_cached", "cost_seconds"}  # absent from records written before they existed
_BOOLS = {"escalated", "cache_hit"}
BATCH = 32  # records per script call: about 0.1-0.3 ms of encoding on the event loop between yields

# KEYS[1]: the stream. ARGV[1]: maxlen; ARGV[2]: the columns as a JSON array; ARGV[3]: the records, a JSON array
# of arrays of their values as strings (in the columns' order). Returns how many records were added.
XADDS = """
local columns = cjson.decode(ARGV[2])
local records = cjson.decode(ARGV[3])
local fields = {}
for i = 1, #records do
  local values = records[i]
  for j = 1, #columns do
    fields[2 * j - 1] = columns[j]
    fields[2 * j] = values[j]
  end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
end
return #records
"""
_COLUMNS_JSON = json.dumps(list(COLUMNS))


def _encode(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)


# _encode by exact type, each a C function: a record has some thirty fields, and a Python call apiece showed.
# Other types (subclasses, enums) take _encode itself.
_TEXT: dict[type, Callable[[Any], str]] = {
    str: str.__str__,
    int: int.__repr__,
    float: float.__repr__,
    bool: {True: "1", False: "0"}.__getitem__,
    type(None): {None: ""}.__getitem__,
}


def _pack(rows: list[tuple[Any, ...]]) -> bytes:
    """Records for the script: each one's values as strings, in a JSON array of arrays. A lone surrogate (no
    UTF-8 for it) becomes "?" rather than failing the whole batch."""
    text = _TEXT.get
    encoded = [[text(type(v), _encode)(v) for v in values] for values in rows]
    return json.dumps(encoded, ensure_ascii=False).encode("utf-8", "replace")


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
        batch: int = BATCH,
        interval: float = 0.25,
        max_queue: int = 100_000,
        timeout: float = 2.0,
    ) -> None:
        super().__init__(batch=batch, interval=interval, max_queue=max_queue)
        self._redis = ScriptBatch(url, connect_timeout=timeout)
        self._timeout = timeout
        self.stream = stream
        self._maxlen = maxlen
        self._xadds = Script(XADDS)

    async def _store(self, rows: list[tuple[Any, ...]]) -> None:
        call = self._redis.call(self._xadds, [self.stream], [self._maxlen, _COLUMNS_JSON, _pack(rows)])
        try:
            added = await asyncio.wait_for(call, self._timeout)
        except TimeoutError:
            self._redis.reset(TimeoutError("the ledger's Redis did not answer"))  # a silent connection is dropped
            raise
        if added != len(rows):
            raise RuntimeError(f"the stream took {added} of {len(rows)} records")

    async def _close(self) -> None:
        await self._redis.close(self._timeout)


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
