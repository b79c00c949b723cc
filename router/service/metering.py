"""A worker's stream, metered as it passes: the usage it reports is noted on the request's trace, and whoever
opened it learns when it ends (done, broken by the worker, or abandoned by the client) through a callback,
which settles the caller's reservation, ends the worker's attempt and records the request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from router.core.ports import UpstreamStream
from router.errors import TriageError
from router.service.recording import Trace, usage_of

__all__ = ["MeteredStream", "StreamEnd"]

StreamEnd = Callable[[bool, int], Awaitable[None]]  # (the worker broke it off, events seen)
MAX_LINE = 1 << 20  # a line longer than this is passed on without being read for usage


class MeteredStream:
    def __init__(self, inner: UpstreamStream, trace: Trace, on_end: StreamEnd) -> None:
        self._inner = inner
        self._trace = trace
        self._on_end = on_end
        self._events = 0
        self._tail = b""  # the last read's bytes after its last newline: a line the next read finishes
        self._closed = False
        self._failed = False

    @property
    def status(self) -> int:
        return self._inner.status

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner.chunks():
                self._trace.first_chunk()
                self._observe(chunk)
                yield chunk
        except TriageError:
            self._failed = True
            raise

    def _observe(self, chunk: bytes) -> None:
        # Reads cut events anywhere: only whole lines are read, and a line's start waits for its end.
        data = self._tail + chunk if self._tail else chunk
        end = data.rfind(b"\n") + 1
        self._tail = data[end:] if len(data) - end <= MAX_LINE else b""
        lines = data[:end] if end < len(data) else data
        self._events += lines.count(b"data:")  # SSE allows "data:" with or without a space, lines ended by CRLF
        if b'"usage"' in lines:
            for line in lines.split(b"\n"):
                if line.startswith(b"data:") and b'"usage"' in line:
                    usage = usage_of(line[5:])  # JSON allows the space before and the CR after
                    if usage is not None:
                        self._trace.usage = usage

    async def read_all(self) -> bytes:
        return await self._inner.read_all()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._inner.aclose()
        finally:
            await self._on_end(self._failed, self._events)
