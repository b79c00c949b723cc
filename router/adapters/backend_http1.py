"""A lean HTTP/1.1 client for workers reached over plain HTTP (vLLM beside the gateway or on its network): asyncio
protocols and httptools' parser (uvicorn's, already a dependency), a keep-alive pool per worker, one request at
a time per connection (no pipelining). Workers behind TLS go to the `tls` backend (aiohttp).

Why not aiohttp here: in the gateway bench its client took about 100 us of CPU per proxied request (request and
response objects, a writer task, timers, header multidicts), a third of a routed request; this one takes a
fraction of that. What it keeps of aiohttp's behaviour: the same timeouts (whole answer; silence inside a
stream; connecting), max_response_bytes, a dropped connection whenever an answer is abandoned (vLLM then aborts
the generation), and no POST sent twice.

The protocol, as a client of one's own must get it right (tests/api/worker_protocol/ try each point):
- Interim answers (1xx: 100 Continue, 103 Early Hints) are skipped and the final answer is read: at most
  MAX_INTERIM_ANSWERS of them, their heads counted in MAX_HEAD_BYTES with the final head and any trailers.
  A 101 (switching protocols) is a failure: a worker speaks HTTP/1.1 here.
- A connection returns to the pool only after an answer read to its end that the worker let it keep. Bytes a
  worker sends outside an answer (after it, or on an idle connection) retire the connection; so does idling
  longer than MAX_IDLE_SECONDS, below the keep-alive of the worker's server.
- A request is written once. A pooled connection is checked on its socket just before the write: one that the
  worker closed (or wrote to) while it sat idle is replaced, as urllib3 does, since the worker never read that
  request. Once written, a lost connection is a failure (the gateway fails over), never a resend: the worker may
  have read it (vLLM sends no head until a whole answer is done, so a worker dying mid-generation says nothing).
- A body with neither a length nor chunking ends with the connection: an orderly close (FIN) ends it whole, a
  reset (RST) is a failure, as is any close inside a body of known length or chunking."""

from __future__ import annotations

import asyncio
import collections
import select
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from router.adapters.backend import AiohttpBackend
from router.core.ports import UpstreamReply, UpstreamStream
from router.core.types import Worker
from router.errors import UpstreamError, UpstreamFailed, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable

__all__ = ["Http1Backend", "Http1Stream"]

MAX_IDLE_PER_WORKER = 256  # idle keep-alive connections kept per worker; more are closed when returned
# A pooled connection idle longer than this is closed, not reused: below the 5 s keep-alive of uvicorn (vLLM's
# server), so a request does not meet a worker closing the connection as it arrives (a failure, not a resend).
MAX_IDLE_SECONDS = 4.0
HIGH_WATER = 256 * 1024  # stream bytes held before reading from the worker pauses (its own backpressure)
MAX_HEAD_BYTES = 64 * 1024  # an answer's status lines, headers and trailers, interim answers' included
MAX_INTERIM_ANSWERS = 32  # 1xx answers before the final one; past it the worker is misbehaving
PROBE_TIMEOUT = 2.0


class _Closed(Exception):
    """The connection closed, broke or carried something other than an answer before the answer was complete."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every request to one worker shares, built once: where to connect and the request head's parts."""

    host: str
    port: int
    head: bytes  # " HTTP/1.1" and the headers up to "Content-Length: "
    target: bytes  # the base URL's path, to which the endpoint's path is appended


class _Connection(asyncio.Protocol):
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
        self._head_bytes = 0  # bytes of the status lines and header (and trailer) fields parsed
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
        self._fail(_Closed(reason))

    def data_received(self, data: bytes) -> None:
        if self.complete:  # bytes after the answer, before the next request: the worker is misbehaving
            self.abort()
            return
        size = self._size
        try:
            self._parser.feed_data(data)
        except Exception as exc:  # a malformed answer, a 101's upgrade: never raised into the event loop
            if not self.complete:
                self._fail(_Closed(f"malformed answer: {exc}"))
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

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status) + 16)

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
            self._fail(_TooLarge())
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
            raise _Closed("connection closed")
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
        self._fail(_Closed(f"malformed answer: {why}"))
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


class _TooLarge(Exception):
    pass


class Http1Stream:
    """An open streamed answer on a pooled connection; chunks are yielded as they arrive. The connection goes
    back to the pool when the answer has been read to its end, and is dropped when it is abandoned."""

    def __init__(self, backend: Http1Backend, worker: Worker, conn: _Connection) -> None:
        self._backend = backend
        self._worker = worker
        self._conn: _Connection | None = conn
        self._status = conn.status

    @property
    def status(self) -> int:
        return self._status

    async def chunks(self) -> AsyncIterator[bytes]:
        worker = self._worker
        while (conn := self._conn) is not None:
            chunk = conn.take()
            if chunk is not None:
                yield chunk
            elif conn.complete:
                self._conn = None
                self._backend.release(worker, conn)
                return
            else:
                try:
                    await conn.wait(worker.timeout, lambda: _silent(worker))
                except _Closed as exc:
                    raise UpstreamFailed(f"worker {worker.name!r} failed: {exc}", worker=worker.name) from None

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:  # unfinished: the worker sees the connection drop and aborts the generation
            self._backend.drop(conn)


def _silent(worker: Worker) -> UpstreamError:
    return UpstreamTimeout(f"worker {worker.name!r} did not answer within {worker.timeout:g} s", worker=worker.name)


class Http1Backend:
    """Backend for plain-HTTP workers; a worker with any other scheme goes to `tls`."""

    def __init__(
        self,
        tls: AiohttpBackend,
        *,
        max_idle_seconds: float = MAX_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tls = tls
        self._max_idle = max_idle_seconds
        self._clock = clock
        self._plans: dict[str, _Plan] = {}
        self._idle: dict[str, collections.deque[_Connection]] = {}  # oldest first
        self._busy: set[_Connection] = set()  # closed at shutdown with the idle ones

    def _plan(self, worker: Worker) -> _Plan:
        plan = self._plans.get(worker.name)
        if plan is None:
            plan = self._plans[worker.name] = _plan_for(worker)
        return plan

    # -- Backend -----------------------------------------------------------------------------------------

    async def post(self, worker: Worker, path: str, body: bytes) -> UpstreamReply:
        if not worker.base_url.startswith("http://"):
            return await self._tls.post(worker, path, body)
        conn = await self._send(worker, self._request(worker, b"POST", path, body), worker.max_response_bytes)
        status, content_type = conn.status, conn.content_type or "application/json"
        return UpstreamReply(status, self._finish(worker, conn), content_type)

    async def open_stream(self, worker: Worker, path: str, body: bytes) -> UpstreamStream:
        if not worker.base_url.startswith("http://"):
            return await self._tls.open_stream(worker, path, body)
        return Http1Stream(self, worker, await self._send(worker, self._request(worker, b"POST", path, body), None))

    async def reachable(self, worker: Worker) -> bool:
        if not worker.base_url.startswith("http://"):
            return await self._tls.reachable(worker)
        probe = self._request(worker, b"GET", "/models", b"")
        within = min(worker.timeout, PROBE_TIMEOUT)
        try:
            conn = await self._send(worker, probe, 1 << 20, within, within)
        except (UpstreamError, UpstreamTooLarge):
            return False
        status = conn.status
        self._finish(worker, conn)
        return status == 200

    async def start(self) -> None:
        await self._tls.start()

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.abort()
        self._idle.clear()
        for conn in list(self._busy):
            conn.abort()
        self._busy.clear()
        await self._tls.close()

    # -- one exchange ------------------------------------------------------------------------------------

    def _request(self, worker: Worker, method: bytes, path: str, body: bytes) -> bytes:
        plan = self._plan(worker)
        return b"".join((method, b" ", plan.target, path.encode(), plan.head, b"%d\r\n\r\n" % len(body), body))

    async def _send(
        self,
        worker: Worker,
        request: bytes,
        limit: int | None,
        within: float | None = None,
        connect_within: float | None = None,
    ) -> _Connection:
        """A connection whose whole answer (of at most `limit` bytes) is in, or for a stream (`limit` None)
        whose final head is in. `within` (default: the worker's timeout) bounds the whole answer, or a stream's
        wait for its head; `connect_within` (default: its connect_timeout) the connecting. The request is
        written once: a connection lost after that is a failure, whatever the worker had read."""
        plan = self._plan(worker)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (worker.timeout if within is None else within)

        def expired() -> BaseException:
            return _silent(worker)

        conn = self._idle_connection(worker)
        if conn is None:
            conn = await self._connect(worker, plan, connect_within or worker.connect_timeout, deadline)
        self._busy.add(conn)
        try:
            conn.start(request, limit)
            while not (conn.complete if limit is not None else conn.headers_done):
                await conn.wait(max(0.0, deadline - loop.time()), expired)
            return conn
        except _Closed as exc:
            self.drop(conn)
            raise UpstreamFailed(f"worker {worker.name!r} failed: {exc}", worker=worker.name) from None
        except _TooLarge:
            self.drop(conn)
            raise UpstreamTooLarge(
                f"worker {worker.name!r} answered with more than max_response_bytes ({limit} bytes); the "
                "answer was dropped. Ask for fewer tokens or choices, or stream it."
            ) from None
        except BaseException:  # a timeout, or the caller left: the half-read connection is dropped
            self.drop(conn)
            raise

    def _finish(self, worker: Worker, conn: _Connection) -> bytes:
        """A whole answer's body; its connection goes back to the pool."""
        data = conn.body()
        self.release(worker, conn)
        return data

    def release(self, worker: Worker, conn: _Connection) -> None:
        """An answer read to its end: the connection is kept for the next request if the worker allows."""
        self._busy.discard(conn)
        idle = self._idle.get(worker.name)
        if idle is None:
            idle = self._idle[worker.name] = collections.deque()
        now = self._clock()
        while idle and idle[0].idle_since < now - self._max_idle:  # the pool's oldest, idle too long
            idle.popleft().abort()
        if conn.keep_alive() and len(idle) < MAX_IDLE_PER_WORKER:
            conn.idle_since = now
            idle.append(conn)
        else:
            conn.abort()

    def drop(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        conn.abort()

    def _idle_connection(self, worker: Worker) -> _Connection | None:
        """The most recently used idle connection that can carry a request; the worker never read anything
        from those passed over (closed by it, written to by it, or idle too long), and they are closed."""
        idle = self._idle.get(worker.name)
        if not idle:
            return None
        oldest = self._clock() - self._max_idle
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed by the worker
            if conn.idle_since < oldest:  # and so were all the others, returned earlier
                conn.abort()
                while idle:
                    idle.pop().abort()
                return None
            if conn.usable():
                return conn
            conn.abort()
        return None

    async def _connect(self, worker: Worker, plan: _Plan, within: float, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        within = min(within, max(0.0, deadline - loop.time()))
        try:
            async with asyncio.timeout(within):
                _, conn = await loop.create_connection(lambda: _Connection(loop), plan.host, plan.port)
        except TimeoutError:
            raise UpstreamTimeout(
                f"worker {worker.name!r} did not accept a connection within {within:g} s", worker=worker.name
            ) from None
        except OSError as exc:
            raise UpstreamUnavailable(f"worker {worker.name!r} is unreachable: {exc}", worker=worker.name) from None
        return conn


def _plan_for(worker: Worker) -> _Plan:
    # Checked on the raw settings: urlsplit silently drops line breaks, a space would split the request line,
    # and what is not ASCII cannot be encoded into the head (an error there would be a 500, not a 502).
    if not all("!" <= c <= "~" for c in worker.base_url) or not all(" " <= c <= "~" for c in worker.api_key or ""):
        raise UpstreamFailed(
            f"worker {worker.name!r}: its base_url or api_key holds a space or a control character, or is not ASCII",
            worker=worker.name,
        )
    url = urlsplit(worker.base_url)
    # identity: answers are read as JSON and passed on as they are (without the header any coding is allowed).
    lines = [
        f"Host: {url.netloc.rpartition('@')[2]}",
        "Content-Type: application/json",
        "Accept-Encoding: identity",
        "User-Agent: llm-triage",
    ]
    if worker.api_key:
        lines.append(f"Authorization: Bearer {worker.api_key}")
    head = " HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines) + "Content-Length: "
    return _Plan(url.hostname or "", url.port or 80, head.encode("latin-1"), url.path.rstrip("/").encode("latin-1"))
