"""The lean HTTP/1.1 client for plain-HTTP workers (router.adapters.backend_http1) against a real server on
loopback that misbehaves at the byte level: connection reuse, a worker closing idle connections, answers
delimited by the connection's end or chunked, oversized, malformed or never sent, streams abandoned midway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from router.adapters.backend import AiohttpBackend
from router.adapters.backend_http1 import Http1Backend, Http1Stream
from router.adapters.http1_connection import HIGH_WATER
from router.core.types import Prices, Role, Worker
from router.errors import UpstreamError, UpstreamFailed, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable
from tests.raw_worker import eventually
from tests.servers import free_port

OK = b'{"ok":true}'


def _answer(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: %d\r\n" % len(body)
    return head + b"".join(h + b"\r\n" for h in extra) + b"\r\n" + body


class Worker1:
    """A raw HTTP/1.1 worker. The request's path picks what it does; it counts connections and keeps what
    it was sent."""

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.requests: list[bytes] = []
        self.closed_by_client = asyncio.Event()
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Worker1:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            for index in range(1 << 30):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self._answer(request.split(b" ", 2)[1], index, writer, reader):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.set()
        finally:
            self.open -= 1
            writer.close()

    async def _answer(
        self, path: bytes, index: int, writer: asyncio.StreamWriter, reader: asyncio.StreamReader
    ) -> bool:
        """Answers one request (the connection's `index`th); False closes the connection."""
        if path.endswith(b"/ok") or path.endswith(b"/models"):
            writer.write(_answer(OK))
        elif path.endswith(b"/close-after"):  # answers, then closes without saying so
            writer.write(_answer(OK))
            await writer.drain()
            return False
        elif path.endswith(b"/first-only"):  # a second request on a connection meets its idle close
            if index > 0:
                return False
            writer.write(_answer(OK))
        elif path.endswith(b"/never"):  # closes without answering
            return False
        elif path.endswith(b"/until-eof"):  # no length: the body ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n" + OK)
            await writer.drain()
            return False
        elif path.endswith(b"/chunked"):
            writer.write(b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\n')
        elif path.endswith(b"/big"):
            writer.write(_answer(b" " * 100_000))
        elif path.endswith(b"/endless-head"):  # a header that never ends
            writer.write(b"HTTP/1.1 200 OK\r\nx-long: ")
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        elif path.endswith(b"/two-answers"):  # one request, two answers in one write: the second is not ours
            writer.write(_answer(OK) + b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n")
        elif path.endswith(b"/garbage"):
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        elif path.endswith(b"/silent"):  # reads the request, never answers; waits for the client to leave
            await reader.read()
            self.closed_by_client.set()
            return False
        elif path.endswith(b"/stream"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(3):
                event = b"data: %d\n\n" % i
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
        elif path.endswith(b"/endless"):  # a stream that goes on until the client leaves
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            event = b"data: " + b"x" * 16_000 + b"\n\n"
            while True:
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
        await writer.drain()
        return True


def _worker(
    port: int,
    *,
    timeout: float = 5.0,
    max_response_bytes: int = 1 << 20,
    base_url: str | None = None,
    api_key: str | None = None,
) -> Worker:
    return Worker(
        name="w",
        role=Role.SMALL,
        base_url=base_url or f"http://127.0.0.1:{port}/v1",
        model="m",
        prices=Prices(0.1, 0.1),
        timeout=timeout,
        connect_timeout=1.0,
        api_key=api_key,
        max_response_bytes=max_response_bytes,
    )


@pytest.fixture
async def backend() -> AsyncIterator[Http1Backend]:
    b = Http1Backend(tls=AiohttpBackend())
    await b.start()
    yield b
    await b.close()


async def test_answers_reuse_one_connection(backend: Http1Backend) -> None:
    """Regression: keep-alive was read from the parser after it had reset, so every request connected anew."""
    async with Worker1() as server:
        for _ in range(20):
            reply = await backend.post(_worker(server.port), "/ok", b"{}")
            assert (reply.status, reply.body, reply.content_type) == (200, OK, "application/json")
        assert server.connections == 1
        head = server.requests[0]
        assert head.startswith(b"POST /v1/ok HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % server.port)
        assert head.endswith(b"Content-Length: 2\r\n\r\n{}")


async def test_a_connection_the_worker_closed_while_idle_is_replaced_without_an_error(backend: Http1Backend) -> None:
    async with Worker1() as server:
        w = _worker(server.port)
        for _ in range(3):  # closed after each answer, before the next request is written
            assert (await backend.post(w, "/close-after", b"{}")).body == OK
        assert server.connections == 3
        assert len(server.requests) == 3


async def test_a_request_the_worker_read_before_closing_is_not_sent_again(backend: Http1Backend) -> None:
    """Regression (#24): the pooled connection closed by the worker once it had read the request was taken for
    one closed while idle, and the request was sent again on a new connection."""
    async with Worker1() as server:
        w = _worker(server.port)
        assert (await backend.post(w, "/first-only", b"{}")).body == OK
        with pytest.raises(UpstreamFailed, match="connection closed"):
            await backend.post(w, "/first-only", b"{}")
        assert len(server.requests) == 2
        assert server.connections == 1


async def test_a_new_connection_closed_without_an_answer_is_a_failure_not_a_retry(backend: Http1Backend) -> None:
    async with Worker1() as server:
        with pytest.raises(UpstreamFailed, match="connection closed"):
            await backend.post(_worker(server.port), "/never", b"{}")
        assert len(server.requests) == 1


@pytest.mark.parametrize("path", ["/until-eof", "/chunked"])
async def test_answers_without_a_length_are_read_whole(backend: Http1Backend, path: str) -> None:
    async with Worker1() as server:
        reply = await backend.post(_worker(server.port), path, b"{}")
        assert reply.status == 200
        assert reply.body == (OK if path == "/until-eof" else b'{"a":1}')


async def test_bytes_after_an_answer_are_not_read_as_the_next_one(backend: Http1Backend) -> None:
    """A worker that writes a second answer to one request: the first is the answer, and the connection is not
    kept (its extra bytes would otherwise be read as the answer to the next request)."""
    async with Worker1() as server:
        w = _worker(server.port)
        reply = await backend.post(w, "/two-answers", b"{}")
        assert (reply.status, reply.body) == (200, OK)
        assert (await backend.post(w, "/ok", b"{}")).status == 200
        assert server.connections == 2


async def test_an_answer_over_max_response_bytes_is_refused_and_its_connection_dropped(backend: Http1Backend) -> None:
    async with Worker1() as server:
        with pytest.raises(UpstreamTooLarge):
            await backend.post(_worker(server.port, max_response_bytes=50_000), "/big", b"{}")
        assert (await backend.post(_worker(server.port), "/ok", b"{}")).body == OK
        assert server.connections == 2


@pytest.mark.parametrize("path", ["/garbage", "/endless-head"])
async def test_a_malformed_answer_is_an_upstream_failure(backend: Http1Backend, path: str) -> None:
    async with Worker1() as server:
        with pytest.raises(UpstreamFailed, match="malformed"):
            await backend.post(_worker(server.port), path, b"{}")
        if path == "/endless-head":
            await asyncio.wait_for(server.closed_by_client.wait(), 2)


async def test_a_silent_worker_times_out_and_sees_the_connection_dropped(backend: Http1Backend) -> None:
    async with Worker1() as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamTimeout, match=r"did not answer within 0\.3 s"):
            await backend.post(_worker(server.port, timeout=0.3), "/silent", b"{}")
        assert 0.25 < loop.time() - started < 2
        await asyncio.wait_for(server.closed_by_client.wait(), 2)


async def test_a_cancelled_request_drops_its_connection(backend: Http1Backend) -> None:
    async with Worker1() as server:
        task = asyncio.ensure_future(backend.post(_worker(server.port), "/silent", b"{}"))
        assert await eventually(lambda: server.requests)  # the cancel comes while the worker holds the request
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed_by_client.wait(), 2)


async def test_nobody_listening_is_unavailable(backend: Http1Backend) -> None:
    with pytest.raises(UpstreamUnavailable, match="unreachable"):
        await backend.post(_worker(free_port()), "/ok", b"{}")
    assert not await backend.reachable(_worker(free_port()))


async def test_a_stream_read_to_its_end_returns_its_connection(backend: Http1Backend) -> None:
    async with Worker1() as server:
        w = _worker(server.port)
        for _ in range(2):
            stream = await backend.open_stream(w, "/stream", b"{}")
            assert stream.status == 200
            assert b"".join([c async for c in stream.chunks()]) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        assert await backend.reachable(w)
        assert server.connections == 1


async def test_an_abandoned_stream_drops_its_connection_and_holds_bounded_bytes(backend: Http1Backend) -> None:
    async with Worker1() as server:
        stream = await backend.open_stream(_worker(server.port), "/endless", b"{}")
        assert isinstance(stream, Http1Stream)
        chunks = stream.chunks()
        await chunks.__anext__()
        await asyncio.sleep(0.3)  # a reader that stalls: the worker keeps writing
        conn = stream._conn  # what the connection holds is the point of this test
        assert conn is not None
        assert conn._held <= 2 * HIGH_WATER
        await stream.aclose()
        await asyncio.wait_for(server.closed_by_client.wait(), 2)


async def test_tls_workers_go_to_the_tls_backend(backend: Http1Backend) -> None:
    """An https worker is not spoken to in plain text: aiohttp opens a TLS handshake, which this plain-HTTP
    worker never reads as a request."""
    async with Worker1() as server:
        with pytest.raises(UpstreamError):
            await backend.post(
                _worker(server.port, base_url=f"https://127.0.0.1:{server.port}/v1", timeout=0.5), "/ok", b"{}"
            )
        assert server.connections == 1
        assert server.requests == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("api_key", "k\r\nX-Evil: 1"),
        ("base_url", "http://127.0.0.1:{port}/v1\r\nX-Evil: 1"),
        ("base_url", "http://127.0.0.1:{port}/v 1"),
        ("api_key", "k€y"),
        ("base_url", "http://127.0.0.1:{port}/vé"),
    ],
)
async def test_a_line_break_or_space_in_a_worker_setting_never_reaches_the_wire(
    backend: Http1Backend, field: str, value: str
) -> None:
    async with Worker1() as server:
        setting = value.format(port=server.port)
        w = _worker(server.port, api_key=setting) if field == "api_key" else _worker(server.port, base_url=setting)
        with pytest.raises(UpstreamFailed, match="a space or a control character"):
            await backend.post(w, "/ok", b"{}")
        assert server.requests == []
