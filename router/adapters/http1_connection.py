"""One HTTP/1.1 connection to a worker and the answer it is receiving: an asyncio protocol fed to httptools'
parser (uvicorn's). It owns the wire rules of the worker client (see backend_http1): interim 1xx answers
skipped and bounded, heads and trailers bounded, a body's end told apart from a cut (FIN or RST), bytes outside
an answer never read as one, and whether an idle connection can still carry a request."""

from __future__ import annotations

import asyncio
import collections
import select
from collections.abc import Callable

import httptools

__all__ = ["HIGH_WATER", "MAX_HEAD_BYTES", "MAX_INTERIM_ANSWERS", "Closed", "Connection", "TooLarge"]

HIGH_WATER = 256 * 1024  # stream bytes held before reading from the worker pauses (its own backpressure)
MAX_HEAD_BYTES = 64 * 1024  # an answer's status lines, headers and trailers, interim answers' included
MAX_INTERIM_ANSWERS = 32  # 1xx answers before the final one; past it the worker is misbehaving


class Closed(Exception):
    """The connection closed, broke or carried something other than an answer before the answer was complete."""


class TooLarge(Exception):
    """The whole answer outgrew the limit it was read with."""


class Connection(asyncio.Protocol):
    """One connection and the answer it is receiving. Parser callbacks fill the answer; a waiter wakes the
    reader when the final head is in (streams), when the answer is complete (whole answers) or when it breaks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._poll: select.poll | None = None  # the socket, to see a close before the event loop reads it
        self.closed = False
        self._dropped = False  # closed by this side
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._held = 0  # bytes in _chunks
        self._size = 0  # body bytes received
        self._stalled = 0  # bytes of the reads since the last body byte: bounds a header that never ends
        self._head_bytes = 0  # bytes of the header (and trailer) fields, which the parser holds until each ends
        self._interim = 0  # 1xx answers received
        self._limit: int | None = None  # body bytes allowed in a whole answer; None: a stream, unbounded
        self._paused = False
        self.status = 0
        self.content_type = ""
        self.headers_done = False  # the final answer's head is in
        self.complete = False  # the final answer is in, to its end
        self._keep_alive = False
        self.error: BaseException | None = None
        self._message_interim = False  # the message being parsed is a 1xx
        self._length_known = False  # content-length or chunked: else the body runs until the connection closes

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete:
            return
        if exc is None and not self._dropped and self.headers_done and not self._length_known:
            self._end()  # an answer delimited by the connection's orderly end
            return
        if self._dropped:
            reason = "connection dropped"
        elif exc is not None:
            reason = f"connection lost: {exc}"  # a reset: the body (if any) was cut, whatever its framing
        else:
            reason = "connection closed before the answer was complete" if self.headers_done else "connection closed"
        self._fail(Closed(reason))

    def data_received(self, data: bytes) -> None:
        if self.complete:  # bytes after the answer, before the next request: the worker is misbehaving
            self.abort()
            return
        size = self._size
        try:
            self._parser.feed_data(data)
        except Exception as exc:  # a malformed answer, a 101's upgrade: never raised into the event loop
            if not self.complete:
                self._fail(Closed(f"malformed answer: {exc}"))
            self.abort()
            return
        if self.complete or self.error is not None:
            return
        if self._size > size:
            self._stalled = 0
        else:  # no body byte: all head, interim answers, trailers or framing, which the parser may be holding
            self._stalled += len(data)
            if self._stalled > MAX_HEAD_BYTES:
                self._malformed(f"its headers exceed {MAX_HEAD_BYTES} bytes")

    # -- httptools callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second message after the answer: not ours, and the connection is not kept
            self._keep_alive = False
            return
        self.content_type = ""
        self._length_known = self._message_interim = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return
        self._count_head(len(name) + len(value) + 4)
        if self.headers_done:  # a trailer (after a chunked body): counted, never read as the answer's header
            return
        key = name.lower()
        if key == b"content-type":
            self.content_type = value.split(b";", 1)[0].strip().lower().decode("latin-1")
        elif key == b"content-length":
            self._length_known = True
        elif key == b"transfer-encoding":  # only a final chunked coding delimits the body (RFC 9112 6.3)
            self._length_known = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"

    def on_headers_complete(self) -> None:
        if self.complete or self.error is not None:
            return
        status = self._parser.get_status_code()
        if status == 101:
            self._message_interim = True
            self._malformed("it switched protocols (101)")
        elif status < 200:  # interim: the final answer follows
            self._message_interim = True
            self._interim += 1
            if self._interim > MAX_INTERIM_ANSWERS:
                self._malformed(f"more than {MAX_INTERIM_ANSWERS} interim (1xx) answers")
        else:
            self.status = status
            self.headers_done = True
            if status in (204, 304):
                self._length_known = True
            if self._limit is None:
                self._wake()  # a stream's head is in: its status is known

    def on_body(self, body: bytes) -> None:
        if self.complete or self.error is not None:
            return
        if self._message_interim:
            self._malformed("an interim (1xx) answer has a body")
            return
        self._size += len(body)
        if self._limit is not None and self._size > self._limit:
            self._fail(TooLarge())
            self.abort()
            return
        self._chunks.append(body)
        self._held += len(body)
        if self._limit is None:
            if self._held > HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        if self.complete:
            self._keep_alive = False
            return
        if self._message_interim:
            self._message_interim = False
            return
        if self.error is None:
            self._end()

    # -- the reader's side -----------------------------------------------------------------------------

    def start(self, request: bytes, limit: int | None) -> None:
        """Send one request; the answer's state starts afresh."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise Closed("connection closed")
        self._chunks.clear()
        self._held = self._size = self._stalled = self._head_bytes = self._interim = 0
        self._limit = limit
        self.status, self.content_type = 0, ""
        self.headers_done = self.complete = self._length_known = self._message_interim = False
        self.error = None
        self.transport.write(request)

    def keep_alive(self) -> bool:
        return self.complete and self._keep_alive and self.error is None and not self.closed

    def usable(self) -> bool:
        """An idle connection can carry a request: the worker has neither closed it nor written to it. Asked of
        the socket, not only of the transport: a close that has arrived but that the event loop has not read yet
        is seen here, before the request is written (urllib3's is_connection_dropped does the same)."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        return self._poll is None or not self._poll.poll(0)

    async def wait(self, within: float, expired: Callable[[], BaseException]) -> None:
        """Until the parser has something for the reader (or the answer broke); after `within` seconds the
        answer fails with `expired()` and the connection is dropped."""
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(within, self._expire, waiter, expired)
        try:
            await waiter
        finally:
            self._waiter = None
            timer.cancel()
        if self.error is not None:
            raise self.error

    def body(self) -> bytes:
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._held = 0
        return data

    def take(self) -> bytes | None:
        """The next stream chunk held, if any; reading resumes once the reader has caught up."""
        if not self._chunks:
            return None
        chunk = self._chunks.popleft()
        self._held -= len(chunk)
        if self._paused and self._held < HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    def abort(self) -> None:
        self.closed = self._dropped = True
        if self.transport is not None:
            self.transport.abort()

    def _end(self) -> None:
        self.complete = True
        self._keep_alive = self._parser.should_keep_alive()  # read now: the parser forgets once the feed ends
        self._wake()

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES and not self.complete:
            self._malformed(f"its headers exceed {MAX_HEAD_BYTES} bytes")

    def _malformed(self, why: str) -> None:
        self._fail(Closed(f"malformed answer: {why}"))
        self.abort()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _expire(self, waiter: asyncio.Future[None], expired: Callable[[], BaseException]) -> None:
        if waiter is self._waiter:
            self._fail(expired())
            self.abort()
