"""The worker client (router.adapters.backend_http1) as a protocol implementation, against a raw-socket worker
that writes exact bytes (issue #24): interim 1xx answers, resets inside every kind of body, connections closed
after the request was read (never sent twice), reuse after every kind of error; on both event loops (conftest)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from router.adapters.backend import AiohttpBackend
from router.adapters.backend_http1 import Http1Backend
from router.adapters.http1_connection import MAX_HEAD_BYTES, MAX_INTERIM_ANSWERS
from router.core.types import Prices, Role, Worker
from router.errors import UpstreamFailed, UpstreamTimeout, UpstreamTooLarge
from tests.raw_worker import Exchange, RawWorker, answer, chunk, eventually, head

SSE = "content-type: text/event-stream"


@pytest.fixture
async def backend() -> AsyncIterator[Http1Backend]:
    b = Http1Backend(tls=AiohttpBackend())
    await b.start()
    yield b
    await b.close()


def _worker(raw: RawWorker, timeout: float = 5.0) -> Worker:
    return Worker(
        name="w",
        role=Role.SMALL,
        base_url=raw.url,
        model="m",
        prices=Prices(0.1, 0.1),
        timeout=timeout,
        connect_timeout=1.0,
        max_response_bytes=1 << 20,
    )


def _own(ex: Exchange) -> bytes:
    """An answer that names the request it answers."""
    return b'{"answers":%s}' % ex.body


async def _read(backend: Http1Backend, w: Worker, path: str, body: bytes, stream: bool) -> tuple[int, bytes]:
    if not stream:
        reply = await backend.post(w, path, body)
        return reply.status, reply.body
    s = await backend.open_stream(w, path, body)
    try:
        return s.status, b"".join([c async for c in s.chunks()])
    finally:
        await s.aclose()


# -- 1. interim answers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    "interim",
    [
        head("100 Continue"),
        head("103 Early Hints", "link: </style.css>; rel=preload"),
        head("102 Processing") + head("103 Early Hints", "link: </a>") + head("100 Continue"),
    ],
    ids=["100", "103", "102-103-100"],
)
async def test_interim_answers_are_skipped_and_each_caller_gets_its_own_answer(
    backend: Http1Backend, interim: bytes, stream: bool
) -> None:
    """Regression (#24): the exchange ended at the 1xx (the caller got a 502) and the connection went back to
    the pool while the real answer was still coming: the next caller on it received the previous one's."""

    async def script(ex: Exchange) -> bool:
        await ex.send(interim)
        await asyncio.sleep(0.05)  # the final answer comes later, as from a worker still generating
        await ex.send(answer(_own(ex)))
        return True

    with RawWorker(script) as raw:
        w = _worker(raw)
        for n in range(3):
            assert await _read(backend, w, "/x", b"%d" % n, stream) == (200, b'{"answers":%d}' % n)
        assert raw.connections == 1


async def test_interim_answers_in_the_same_read_as_the_answer(backend: Http1Backend) -> None:
    async def script(ex: Exchange) -> bool:
        await ex.send(head("100 Continue") * 3 + answer(_own(ex)))
        return True

    with RawWorker(script) as raw:
        for n in range(3):
            assert (await backend.post(_worker(raw), "/x", b"%d" % n)).body == b'{"answers":%d}' % n
        assert raw.connections == 1


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "one-head-per-write"])
async def test_a_flood_of_interim_answers_is_a_failure_and_the_connection_is_dropped(
    backend: Http1Backend, split: bool
) -> None:
    async def script(ex: Exchange) -> bool:
        flood = [head("100 Continue")] * (MAX_INTERIM_ANSWERS + 1)
        for part in flood if split else [b"".join(flood)]:
            await ex.send(part)
        await ex.send(answer(b"{}"))
        await ex.until_the_client_leaves()
        return False

    with RawWorker(script) as raw:
        with pytest.raises(UpstreamFailed, match="interim"):
            await backend.post(_worker(raw), "/x", b"{}")
        assert await eventually(raw.closed_by_client.is_set)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("shape", ["one-huge", "many-large"])
async def test_interim_heads_count_towards_the_head_limit(backend: Http1Backend, shape: str, stream: bool) -> None:
    """A worker cannot make the client hold unbounded head bytes by spreading them over interim answers."""
    big = "x-hint: " + "h" * (MAX_HEAD_BYTES // 4)

    async def script(ex: Exchange) -> bool:
        if shape == "one-huge":
            await ex.send(head("103 Early Hints", "x-hint: " + "h" * (2 * MAX_HEAD_BYTES)))
        else:
            for _ in range(8):
                await ex.send(head("103 Early Hints", big))
        await ex.send(answer(b"{}"))
        await ex.until_the_client_leaves()
        return False

    with RawWorker(script) as raw, pytest.raises(UpstreamFailed, match="headers exceed"):
        await _read(backend, _worker(raw), "/x", b"{}", stream)


async def test_an_interim_answer_with_a_body_is_malformed(backend: Http1Backend) -> None:
    async def script(ex: Exchange) -> bool:
        await ex.send(head("150 Odd", "content-length: 3") + b"abc" + answer(b"{}"))
        return True

    with RawWorker(script) as raw, pytest.raises(UpstreamFailed, match="malformed"):
        await backend.post(_worker(raw), "/x", b"{}")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("tail", [b"", b"\x00binary protocol"], ids=["bare", "with-bytes"])
async def test_switching_protocols_is_a_clean_failure(
    backend: Http1Backend, caplog: pytest.LogCaptureFixture, tail: bytes, stream: bool
) -> None:
    """Regression (#24): a 101 raised inside the protocol's data_received, which the event loop logged as a
    fatal transport error with a traceback."""

    async def script(ex: Exchange) -> bool:
        await ex.send(head("101 Switching Protocols", "upgrade: websocket", "connection: upgrade") + tail)
        return True

    caplog.set_level(logging.DEBUG, logger="asyncio")
    with RawWorker(script) as raw:
        w = _worker(raw)
        with pytest.raises(UpstreamFailed, match="101"):
            await _read(backend, w, "/x", b"{}", stream)
        await asyncio.sleep(0.05)  # room for the event loop to report a transport error, if there were one
        assert [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_trailers_are_not_read_as_headers(backend: Http1Backend, stream: bool) -> None:
    async def script(ex: Exchange) -> bool:
        trailers = "content-type: text/html\r\nx-checksum: 1\r\n\r\n"
        await ex.send(head("200 OK", "content-type: application/json", "transfer-encoding: chunked"))
        await ex.send(chunk(_own(ex)) + b"0\r\n" + trailers.encode())
        return True

    with RawWorker(script) as raw:
        w = _worker(raw)
        for n in range(2):
            assert await _read(backend, w, "/x", b"%d" % n, stream) == (200, b'{"answers":%d}' % n)
        assert (await backend.post(w, "/x", b"2")).content_type == "application/json"
        assert raw.connections == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("shape", ["endless", "many"])
async def test_trailers_count_towards_the_head_limit(backend: Http1Backend, shape: str, stream: bool) -> None:
    """A worker cannot make the client hold unbounded bytes in trailers (the parser holds a field until its end)."""

    async def script(ex: Exchange) -> bool:
        await ex.send(head("200 OK", "transfer-encoding: chunked") + chunk(b"{}") + b"0\r\n")
        if shape == "endless":
            await ex.send(b"x-trailer: ")
        for _ in range(64):
            await ex.send(b"t" * 4096 if shape == "endless" else b"x-trailer: %s\r\n" % (b"t" * 4096))
        await ex.until_the_client_leaves()
        return False

    with RawWorker(script) as raw:
        with pytest.raises(UpstreamFailed, match="headers exceed"):
            await _read(backend, _worker(raw), "/x", b"{}", stream)
        assert await eventually(raw.closed_by_client.is_set)


# -- 2. no POST is sent twice -------------------------------------------------------------------------------


def _first_answers_then(last: Callable[[Exchange], Awaitable[bool]]) -> Callable[[Exchange], Awaitable[bool]]:
    """A worker that answers a connection's first request and does `last` with its second."""

    async def script(ex: Exchange) -> bool:
        if ex.index == 0:
            await ex.send(answer(_own(ex)))
            return True
        return await last(ex)

    return script


async def _dies(ex: Exchange) -> bool:  # read the request, then the process died: FIN, no answer
    return False


async def _resets(ex: Exchange) -> bool:
    ex.reset()
    return False


async def _dies_after_head(ex: Exchange) -> bool:  # a stream's head, then nothing
    await ex.send(head("200 OK", SSE, "transfer-encoding: chunked") + chunk(b"data: 1\n\n"))
    return False


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("how", [_dies, _resets], ids=["close", "reset"])
async def test_a_pooled_connection_lost_after_the_request_was_read_is_a_failure_not_a_resend(
    backend: Http1Backend, how: Callable[[Exchange], Awaitable[bool]], stream: bool
) -> None:
    """Regression (#24): the client resent the request on a fresh connection: a worker that died mid-generation
    (vLLM sends no head until a whole answer is done) saw the same POST twice."""
    with RawWorker(_first_answers_then(how)) as raw:
        w = _worker(raw)
        assert await _read(backend, w, "/x", b"1", stream) == (200, b'{"answers":1}')
        with pytest.raises(UpstreamFailed, match=r"connection (closed|lost)"):
            await _read(backend, w, "/x", b"2", stream)
        assert raw.requests == [b"1", b"2"]  # the second one once, not twice
        # and the next request is served on a fresh connection
        assert await _read(backend, w, "/x", b"3", stream) == (200, b'{"answers":3}')
        assert raw.requests == [b"1", b"2", b"3"]


async def test_a_pooled_connection_seen_closed_before_the_write_is_replaced_without_an_error(
    backend: Http1Backend,
) -> None:
    """What may be resent: a request the worker provably never read, because its connection was already
    closed before the request was written. The event loop is kept busy while the worker closes, so the close
    is in the socket but not yet seen by the transport: the client must look before it writes."""
    closed = threading.Event()

    async def script(ex: Exchange) -> bool:
        await ex.send(answer(_own(ex)))
        ex.writer.close()
        await ex.writer.wait_closed()
        closed.set()
        return False

    with RawWorker(script) as raw:
        w = _worker(raw)
        for n in range(3):
            assert await backend.post(w, "/x", b"%d" % n) is not None
            assert closed.wait(5)  # blocks this loop: the FIN arrives unseen by it
            closed.clear()
        assert raw.requests == [b"0", b"1", b"2"]
        assert raw.connections == 3


async def test_bytes_a_worker_sends_while_the_connection_is_idle_are_never_an_answer(backend: Http1Backend) -> None:
    """A worker (or a proxy) that writes on an idle connection, e.g. a 408 before closing it: if those bytes were
    read after the next request was written, they would be taken for its answer."""
    sent = threading.Event()

    async def script(ex: Exchange) -> bool:
        await ex.send(answer(_own(ex)))
        await asyncio.sleep(0.05)  # the client has read its answer and pooled the connection
        await ex.send(answer(b"not yours", "408 Request Timeout"))
        sent.set()
        return True

    with RawWorker(script) as raw:
        w = _worker(raw)
        for n in range(3):
            assert (await backend.post(w, "/x", b"%d" % n)).body == b'{"answers":%d}' % n
            assert sent.wait(5)  # blocks this loop: the stray answer arrives unseen by it
            sent.clear()
        assert raw.requests == [b"0", b"1", b"2"]


async def test_a_connection_idle_too_long_is_closed_not_reused() -> None:
    """A worker closes idle connections after its keep-alive (uvicorn: 5 s); one reused near that moment could
    meet the close with the request in flight, which is now a failure, not a resend: they are retired first."""
    now = [0.0]
    backend = Http1Backend(tls=AiohttpBackend(), max_idle_seconds=4.0, clock=lambda: now[0])

    async def script(ex: Exchange) -> bool:
        await ex.send(answer(_own(ex)))
        return True

    try:
        with RawWorker(script) as raw:
            w = _worker(raw)
            await backend.post(w, "/x", b"1")
            now[0] += 3.9
            await backend.post(w, "/x", b"2")
            assert raw.connections == 1
            now[0] += 4.1
            assert (await backend.post(w, "/x", b"3")).body == b'{"answers":3}'
            assert raw.connections == 2
            assert await eventually(raw.closed_by_client.is_set)  # the old one was closed, not left open
    finally:
        await backend.close()


async def test_connections_idle_too_long_are_retired_while_others_are_used() -> None:
    now = [0.0]
    backend = Http1Backend(tls=AiohttpBackend(), max_idle_seconds=4.0, clock=lambda: now[0])

    async def script(ex: Exchange) -> bool:
        await asyncio.sleep(0.05)  # two requests at once need two connections
        await ex.send(answer(_own(ex)))
        return True

    try:
        with RawWorker(script) as raw:
            w = _worker(raw)
            await asyncio.gather(backend.post(w, "/x", b"1"), backend.post(w, "/x", b"2"))
            assert raw.connections == 2
            for _ in range(3):  # one connection serves; the other idles past the limit and is closed
                now[0] += 1.5
                await backend.post(w, "/x", b"3")
            assert await eventually(raw.closed_by_client.is_set)
            assert raw.connections == 2
    finally:
        await backend.close()


# -- 3. bodies cut short -----------------------------------------------------------------------------------


def _cut(start: bytes, *, reset: bool) -> Callable[[Exchange], Awaitable[bool]]:
    async def script(ex: Exchange) -> bool:
        if ex.path.endswith(b"/ok"):
            await ex.send(answer(_own(ex)))
            return True
        await ex.send(start)
        await asyncio.sleep(0.05)  # the client reads what was sent before the connection breaks
        if reset:
            ex.reset()
        return False

    return script


BODIES = {
    "length": head("200 OK", "content-length: 100") + b'{"partial":',
    "chunked": head("200 OK", "transfer-encoding: chunked") + chunk(b'{"partial":'),
    "close-delimited": head("200 OK", "content-type: application/json") + b'{"partial":',
    "identity-close": head("200 OK", "transfer-encoding: identity", "connection: close") + b'{"partial":',
    "sse-chunked": head("200 OK", SSE, "transfer-encoding: chunked") + chunk(b"data: 1\n\n"),
    "sse-close-delimited": head("200 OK", SSE, "connection: close") + b"data: 1\n\n",
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", list(BODIES))
async def test_a_reset_inside_any_body_is_a_failure_and_the_next_request_is_served(
    backend: Http1Backend, kind: str, stream: bool
) -> None:
    """Regression (#24): a body that ends with the connection, cut by a reset, was read as a whole 200."""
    with RawWorker(_cut(BODIES[kind], reset=True)) as raw:
        w = _worker(raw)
        assert await _read(backend, w, "/ok", b"1", stream) == (200, b'{"answers":1}')
        with pytest.raises(UpstreamFailed, match=r"reset|closed"):
            await _read(backend, w, "/cut", b"2", stream)
        assert await _read(backend, w, "/ok", b"3", stream) == (200, b'{"answers":3}')
        assert raw.requests == [b"1", b"2", b"3"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", ["length", "chunked"])
async def test_a_close_inside_a_delimited_body_is_a_failure(backend: Http1Backend, kind: str, stream: bool) -> None:
    with RawWorker(_cut(BODIES[kind], reset=False)) as raw, pytest.raises(UpstreamFailed, match="closed"):
        await _read(backend, _worker(raw), "/cut", b"2", stream)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", ["close-delimited", "identity-close", "sse-close-delimited"])
async def test_a_body_ended_by_an_orderly_close_is_whole(backend: Http1Backend, kind: str, stream: bool) -> None:
    """Regression (#24): `Transfer-Encoding: identity` was taken for a length, so its end by close was a 502."""
    with RawWorker(_cut(BODIES[kind], reset=False)) as raw:
        status, body = await _read(backend, _worker(raw), "/cut", b"2", stream)
        assert (status, body) == (200, BODIES[kind].split(b"\r\n\r\n", 1)[1])


# -- slow peers and reuse after errors --------------------------------------------------------------------


async def test_interim_answers_do_not_extend_the_deadline(backend: Http1Backend) -> None:
    async def script(ex: Exchange) -> bool:
        while True:  # a 102 every 50 ms, never an answer: below the count bound for the test's duration
            await ex.send(head("102 Processing"))
            await asyncio.sleep(0.05)

    with RawWorker(script) as raw:
        with pytest.raises(UpstreamTimeout):
            await backend.post(_worker(raw, timeout=0.3), "/x", b"{}")
        assert await eventually(raw.closed_by_client.is_set)


STALE = answer(b'"stale"')  # what a misbehaving worker sends after its failure: never anyone's answer
WAYS: dict[str, bytes] = {
    "/interim-flood": head("100 Continue") * (MAX_INTERIM_ANSWERS + 1) + STALE,
    "/upgrade": head("101 Switching Protocols") + STALE,
    "/garbage": b"NOT HTTP\r\n\r\n" + STALE,
    "/two": answer(b'"first"') + STALE,
    "/two-halves": answer(b'"first"') + STALE[:20],  # the start of a second answer, in the same read
    "/bad-chunk": head("200 OK", "transfer-encoding: chunked") + b"zz\r\n" + STALE,
    "/interim-body": head("150 Odd", "content-length: 2") + b"{}" + STALE,
    "/too-large": answer(b" " * 2_000_000) + STALE,
    "/late": b"",  # answers after the client gave up (its timeout, or its caller left)
    "/stream-abandoned": head("200 OK", SSE, "transfer-encoding: chunked") + chunk(b"data: 1\n\n"),
}


@pytest.mark.parametrize("way", list(WAYS))
async def test_after_every_kind_of_error_the_next_caller_gets_its_own_answer(backend: Http1Backend, way: str) -> None:
    """A connection misbehaves; whatever it sends next is never the answer to the next request."""

    async def script(ex: Exchange) -> bool:
        if ex.path.endswith(b"/ok"):
            await ex.send(answer(_own(ex)))
            return True
        if way == "/late":
            await asyncio.sleep(0.3)
            await ex.send(answer(b'"late"'))
        elif way == "/stream-abandoned":
            await ex.send(WAYS[way])
            await asyncio.sleep(0.1)
            await ex.send(chunk(b"data: 2\n\n") + b"0\r\n\r\n" + STALE)
        else:
            await ex.send(WAYS[way])
        return True

    with RawWorker(script) as raw:
        w = _worker(raw, timeout=0.15 if way == "/late" else 5.0)
        assert (await backend.post(w, "/ok", b"0")).body == b'{"answers":0}'  # a pooled connection to misuse
        if way == "/stream-abandoned":
            stream = await backend.open_stream(w, way, b"{}")
            await stream.chunks().__anext__()
            await stream.aclose()
        else:
            with contextlib.suppress(UpstreamFailed, UpstreamTimeout, UpstreamTooLarge):
                await backend.post(w, way, b"{}")
        for n in range(1, 4):
            assert (await backend.post(_worker(raw), "/ok", b"%d" % n)).body == b'{"answers":%d}' % n
            await asyncio.sleep(0.1)  # room for stray bytes to arrive on the connection just used
        assert (await backend.post(_worker(raw), "/ok", b"4")).body == b'{"answers":4}'
