"""A worker's stream, metered as it passes: the usage it reports is noted on the request's trace (and taken out
of the stream when the caller did not ask for it), and whoever opened it learns when it ends (done, broken by
the worker, or abandoned by the client) through a callback, which settles the caller's reservation, ends the
worker's attempt and records the request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from router.core.ports import UpstreamStream
from router.errors import TriageError
from router.service.recording import Trace, usage_of
from router.sse import EVENT_ENDS, events_end, without_usage

__all__ = ["MeteredStream", "StreamEnd"]

StreamEnd = Callable[[bool, int], Awaitable[None]]  # (the worker broke it off, events seen)
MAX_LINE = 1 << 20  # a line longer than this is passed on without being read for usage


class MeteredStream:
    def __init__(self, inner: UpstreamStream, trace: Trace, on_end: StreamEnd, *, hide_usage: bool = False) -> None:
        """`hide_usage`: the worker was asked for a usage chunk the caller did not ask for; it is taken out."""
        self._inner = inner
        self._trace = trace
        self._on_end = on_end
        self._hide_usage = hide_usage
        self._events = 0
        self._tail = b""  # the last read's bytes after its last newline: a line the next read finishes
        self._held = b""  # with hide_usage: the start of an event whose end has not arrived yet
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
                if self._hide_usage:
                    chunk = self._whole_events(chunk)
                    if not chunk:
                        continue
                yield chunk
            if self._tail:  # the worker ended without a newline after its last line: read it all the same
                self._observe(b"\n")
            if self._held:  # the worker ended without a blank line after its last event
                last, self._held = without_usage(self._held), b""
                if last:
                    yield last
        except TriageError:
            self._failed = True
            raise

    def _whole_events(self, chunk: bytes) -> bytes:
        """The whole events read so far, without usage; a cut event waits for its end (usage is found only in
        whole events). A worker that never ends an event is passed on unread past MAX_LINE."""
        data = self._held + chunk if self._held else chunk
        if data.endswith(EVENT_ENDS):
            self._held = b""
            return without_usage(data)
        end = events_end(data)
        if len(data) - end > MAX_LINE:
            self._held = b""
            return data
        self._held = data[end:]
        return without_usage(data[:end])

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
                    self._trace.note(usage_of(line[5:]))  # JSON allows the space before and the CR after

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
