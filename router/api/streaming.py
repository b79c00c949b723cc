"""Pass a worker's answer to the client: chunk by chunk for streams, cancelling upstream on disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from router.core.ports import UpstreamStream
from router.core.types import Reason
from router.errors import Overloaded, TriageError, UpstreamError
from router.protocol import error_body
from router.sse import EVENT_ENDS, events_end

__all__ = ["ClientGone", "ErrorEvent", "PassThroughStream", "openai_error_event", "until_disconnect"]

log = logging.getLogger("triage.api")
T = TypeVar("T")
MAX_HELD_BYTES = 1 << 20

WATCH_AFTER = 0.05  # seconds before a disconnect watcher starts (see until_disconnect)


class ClientGone(Exception):
    """The caller hung up before its answer was ready."""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(work: Awaitable[T], receive: Receive, watch_after: float = WATCH_AFTER) -> T:
    """Await `work`, cancelling it (and so its upstream request) if the client disconnects first.

    The work runs in the request's own task; a watcher task, started only once the work has run for
    `watch_after` seconds, cancels it on a disconnect. Most answers come sooner than that and pay for a timer
    instead of a task (a task, its wait on the connection and its cancellation: ~8 us of every request). A
    client that leaves sooner costs at most `watch_after` of generation."""
    current = asyncio.current_task()
    assert current is not None
    loop = asyncio.get_running_loop()
    gone = False
    watcher: asyncio.Future[None] | None = None

    async def watch() -> None:
        nonlocal gone
        await _disconnected(receive)
        gone = True
        current.cancel(Reason.CLIENT_GONE)  # recorded as such (499), not as a request the shutdown cut

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(watch())

    timer = loop.call_later(watch_after, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:  # our own cancel: the client left; else shutdown, pass it on
            raise ClientGone from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


ErrorEvent = Callable[[TriageError], bytes]  # a worker's failure, or the gateway's own (its shutdown)


def openai_error_event(exc: TriageError) -> bytes:
    return b"data: " + error_body(exc.message, exc.type, exc.code) + b"\n\n"


class PassThroughStream(Response):
    """Server-sent events from a worker, forwarded without re-encoding.

    A worker failing mid-stream ends the stream with the route's error event (the status is already sent);
    a client leaving mid-stream closes the upstream connection, which makes vLLM abort the generation."""

    media_type = "text/event-stream"

    def __init__(self, stream: UpstreamStream, headers: dict[str, str], error_event: ErrorEvent | None = None) -> None:
        """`error_event`: the route's own event for a failure mid-stream (default: OpenAI's chat and completions
        `data:` line with the error envelope)."""
        self._stream = stream
        self._error_event = error_event or openai_error_event
        self._started = self._ended = False  # the response's head is written; its end is
        self.status_code = 200
        self.background = None
        self.init_headers({**headers, "cache-control": "no-cache"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._started = self._ended = False
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(_disconnected(receive))
        cut = False
        try:
            await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The shutdown's grace ran out (uvicorn cancels what still runs): the client is still there. Cut, the
            # body is an incomplete chunked read (a network error to SDKs); it ends with the route's error event.
            if not self._started:
                raise  # no head written yet: the edge answers 503 in the route's envelope
            cut = not self._ended  # the last body may have left in the very turn the cancel came
        finally:
            watch.cancel()
            if not pump.done():
                pump.cancel()
                await asyncio.wait((pump,))
            await self._stream.aclose()
        failure = None if pump.cancelled() else pump.exception()  # retrieved whatever else happens
        if cut:
            log.info("a stream cut short by the shutdown: ended with an error event")
            stopping = Overloaded("the gateway is shutting down and cut this answer short; retry", code="shutting_down")
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": self._error_event(stopping), "more_body": False})
        if failure is not None and not isinstance(failure, OSError):
            raise failure

    async def _pump(self, send: Send) -> None:
        # uvicorn's send may wait for a slow reader before it writes the head: started once it is written.
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        self._started = True
        held = b""  # the start of an event whose end has not arrived yet
        try:
            async for chunk in self._stream.chunks():
                data = held + chunk if held else chunk
                held = b""
                if not data.endswith(EVENT_ENDS):  # a worker's chunks are whole events, except when cut
                    end = events_end(data)
                    if len(data) - end <= MAX_HELD_BYTES:  # a worker that never ends an event is not buffered
                        data, held = data[:end], data[end:]
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
        except UpstreamError as exc:
            # A half-sent event glued to the error event would be unreadable JSON, and SDKs would never see
            # the error: the partial event is dropped and the error event stands alone.
            if held:
                log.warning("dropped %d bytes of an unfinished event", len(held))
                held = b""
            log.warning("%s mid-stream: %s", exc.code, exc.message)
            await send({"type": "http.response.body", "body": self._error_event(exc), "more_body": True})
        await send({"type": "http.response.body", "body": held, "more_body": False})
        self._ended = True
