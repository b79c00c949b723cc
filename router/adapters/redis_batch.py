"""Calls made in one turn of the event loop go to Redis together: one pipeline, one write, the replies read in
order. Concurrent requests then share round trips (an admission with the settlements of requests that just ended,
many admissions at once), one request's admission shares one with its conversation lookup (the limiter and the
conversation memory hold the same batch), and a call that need not be waited for (a settlement that only gives
back) costs its request nothing.

Calls leave in the order they were made; a batch waits while `max_in_flight` batches are out, and grows."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

__all__ = ["ScriptBatch"]

log = logging.getLogger("triage.redis")

Call = tuple[tuple[Any, ...], AsyncScript | None, "asyncio.Future[Any]"]  # the command, its script, its reply


class ScriptBatch:
    def __init__(self, redis: aioredis.Redis, *, max_in_flight: int = 64, max_batch: int = 512) -> None:
        self._redis = redis
        self._queue: list[Call] = []
        self._scheduled = False
        self._slots = asyncio.Semaphore(max_in_flight)  # the pool's connections: never more batches out at once
        self._max_batch = max_batch
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0  # batches written (round trips), for the tests and the benchmarks

    def call(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> asyncio.Future[Any]:
        """Queue one script call; the future holds its reply, or the error that stopped it (a Redis error reply
        is that call's alone: the rest of its batch is unaffected)."""
        return self._queued(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    def command(self, *args: str | int) -> asyncio.Future[Any]:
        """Queue one plain command (GET key, ...), as `call` does."""
        return self._queued(args, None)

    def _queued(self, command: tuple[Any, ...], script: AsyncScript | None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, script, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)  # after every call this turn of the loop makes
        return future

    def watch(self, future: asyncio.Future[Any], failed: Callable[[BaseException], None]) -> None:
        """For a call nobody awaits: `failed` hears of its error."""

        def done(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is not None:
                failed(f.exception())  # type: ignore[arg-type]

        future.add_done_callback(done)

    def _flush(self) -> None:
        self._scheduled = False
        calls = [c for c in self._queue if not c[2].done()]  # cancelled before it left: never sent
        self._queue = []
        for start in range(0, len(calls), self._max_batch):
            task = asyncio.ensure_future(self._send(calls[start : start + self._max_batch]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, calls: list[Call]) -> None:
        async with self._slots:
            try:
                replies = await self._pipeline(calls)
                missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                if missing:  # Redis restarted or flushed its scripts: they did not run; load them and send those again
                    scripts = {id(s): s for i in missing if (s := calls[i][1]) is not None}
                    for script in scripts.values():
                        await self._redis.script_load(script.script)
                    again = await self._pipeline([calls[i] for i in missing])
                    for i, reply in zip(missing, again, strict=True):
                        replies[i] = reply
            except BaseException as exc:  # the connection failed or timed out: every call of the batch has
                for *_, future in calls:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else ConnectionError("cancelled"))
                if not isinstance(exc, Exception):
                    raise
                return
        for (*_, future), reply in zip(calls, replies, strict=True):
            if future.done():  # its caller stopped waiting (a timeout, or the request went away)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for command, _, _ in calls:
            pipe.execute_command(*command)
        self.sent += 1
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def drain(self) -> None:
        """Send what is queued and wait for every batch out (shutdown: no settlement is left behind)."""
        if self._queue:
            self._flush()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
