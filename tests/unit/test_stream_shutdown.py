"""A stream cut by the end of a graceful shutdown (router.api.streaming.PassThroughStream), at its edges: driven under
uvicorn's own RequestResponseCycle (the guarded httptools protocol on a recording transport), cancelled as uvicorn
cancels what still runs when graceful_shutdown_timeout has passed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import Receive, Scope, Send

from router.api.streaming import PassThroughStream
from tests.unit.test_http_guard import serve


class _Upstream:
    """A worker's stream: `events`, then the end (or, with `stall`, nothing more)."""

    def __init__(self, events: list[bytes], stall: bool = False) -> None:
        self.events, self.stall, self.closed = events, stall, False

    @property
    def status(self) -> int:
        return 200

    async def chunks(self) -> AsyncIterator[bytes]:
        for event in self.events:
            yield event
        if self.stall:
            await asyncio.sleep(3600)

    async def read_all(self) -> bytes:
        return b""

    async def aclose(self) -> None:
        self.closed = True


async def _turns(n: int = 30) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_stream_that_ended_as_the_shutdown_cut_it_is_not_sent_a_second_end() -> None:
    """Regression (hostile review): the stream's last body went out (the response is complete) and uvicorn's cancel
    lands before PassThroughStream resumes from its wait (the same turn of the loop): it is taken for a cut stream and
    an error event is sent after the response's end. uvicorn raises RuntimeError ('Unexpected ASGI message
    http.response.body sent, after response already completed'), logged as an exception in the application (and, behind
    the edge, as 'unhandled error'), and the pump's own outcome is never looked at."""
    raised: list[BaseException] = []
    upstream = _Upstream([b"data: {}\n\n", b"data: [DONE]\n\n"])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None

        async def sending(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                asyncio.get_running_loop().call_soon(task.cancel)  # the grace runs out now

        try:
            await PassThroughStream(upstream, {})(scope, receive, sending)
        except BaseException as exc:
            raised.append(exc)
            raise

    async def run() -> bytes:
        protocol, transport = serve(app)
        protocol.data_received(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await _turns()
        protocol.connection_lost(None)
        return b"".join(transport.writes)

    written = asyncio.run(run())
    assert written.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert not [e for e in raised if not isinstance(e, asyncio.CancelledError)], raised


def test_a_stream_cut_before_its_head_left_is_not_sent_a_body_without_a_head() -> None:
    """Regression (hostile review): `_started` was set when the pump began, before its `http.response.start` is written:
    uvicorn's send waits for the transport to drain first (the connection's previous answer still unread by a slow
    client). Cut there, the stream is taken as started: the pump (and the head) is cancelled, then the error event is
    sent as a body with no head before it: uvicorn raises RuntimeError ("Expected ASGI message 'http.response.start'"),
    instead of the CancelledError the edge turns into its 503 in the route's envelope."""
    raised: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await PassThroughStream(_Upstream([b"data: {}\n\n"], stall=True), {})(scope, receive, send)
        except BaseException as exc:
            raised.append(exc)
            raise

    async def run() -> None:
        protocol, transport = serve(app)
        protocol.pause_writing()  # what the transport calls when its buffer is over the high-water mark
        protocol.data_received(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await _turns()
        assert transport.writes == []  # the head is waiting for the drain
        (task,) = protocol.tasks
        task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        await _turns()
        protocol.resume_writing()  # the client reads again
        await _turns()
        protocol.connection_lost(None)

    asyncio.run(run())
    assert raised and isinstance(raised[0], asyncio.CancelledError), raised
