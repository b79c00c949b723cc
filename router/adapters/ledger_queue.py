"""What every decision ledger shares: an in-memory queue that never blocks the request path, batches written
by a background task, drops counted when the queue is full, and a drain on close (SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from operator import attrgetter
from typing import Any, Generic, TypeVar

from router.core.records import COLUMNS

__all__ = ["QueuedLedger", "row"]

log = logging.getLogger("triage.ledger")

SETTLE_EVERY = 16  # batches between _flushed() calls within one flush

# attrgetter, not dataclasses.astuple: astuple deep-copies every field, on the event loop's thread.
row = attrgetter(*COLUMNS)


Item = TypeVar("Item")


class QueuedLedger(Generic[Item]):
    """Subclasses store batches of rows (`_store`, each row made by `_row`) and may do periodic upkeep
    (`_tick`). The items are decision records, or shadow pairs."""

    def __init__(self, *, batch: int, interval: float, max_queue: int) -> None:
        self._batch = batch
        self._interval = interval
        self._max_queue = max_queue
        self._queue: deque[Item] = deque()
        self.dropped = 0
        self.written = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()  # set by close(): the writer stops waiting for its interval
        self._unsettled = 0  # rows stored since the last _flushed(): lost with it if it fails

    @property
    def depth(self) -> int:
        return len(self._queue)

    def _row(self, item: Item) -> tuple[Any, ...]:
        """A decision record's columns, in order; a store of other items overrides this."""
        values: tuple[Any, ...] = row(item)
        return values

    def emit(self, record: Item) -> None:
        if len(self._queue) >= self._max_queue:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("decision ledger queue full: %d records dropped so far", self.dropped)
            return
        self._queue.append(record)

    async def start(self) -> None:
        await self._open()
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            await self._flush()
            await self._tick()

    async def _flush(self) -> None:
        batches = 0
        while self._queue:
            take = self._queue.popleft
            rows = [self._row(take()) for _ in range(min(self._batch, len(self._queue)))]
            try:
                await self._store(rows)
                self.written += len(rows)
            except Exception as exc:  # a store failure must never reach requests; it is counted and logged
                self._lost(exc, len(rows))
                if self._stopping and isinstance(exc, TimeoutError | OSError):
                    # Shutting down with the store silent or gone: each batch would wait out its timeout again (a
                    # stalled Redis held SIGTERM for 2 s per 32 records); what is left is dropped, counted, at once.
                    # A batch refused for its own records (a bad value) does not stop the others.
                    left = len(self._queue)
                    self._queue.clear()
                    if left:
                        self._lost(exc, left)
                    break
            batches += 1
            if batches % SETTLE_EVERY == 0:  # a queue that keeps filling still gets durable writes
                await self._settle()
            await asyncio.sleep(0)  # let requests run between batches
        await self._settle()

    async def _settle(self) -> None:
        try:
            await self._flushed()
        except Exception as exc:
            self.written -= self._unsettled
            self._lost(exc, self._unsettled)
        self._unsettled = 0

    def _lost(self, exc: Exception, rows: int) -> None:
        self.dropped += rows
        log.error("decision ledger write failed (%s: %s): %d records dropped", type(exc).__name__, exc, rows)

    async def close(self) -> None:
        # The writer is woken and awaited, not cancelled: cancelled inside a store, it would lose the batch it had
        # taken off the queue (neither written nor counted as dropped). A store is bounded by its own timeout.
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self._flush()
        await self._close()
        log.info("decision ledger closed: %d written, %d dropped", self.written, self.dropped)

    async def _open(self) -> None: ...

    async def _store(self, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    async def _flushed(self) -> None:
        """After the batches of one flush (a store may make them durable here, once)."""

    async def _tick(self) -> None: ...

    async def _close(self) -> None: ...
