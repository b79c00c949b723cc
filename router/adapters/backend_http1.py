"""A lean HTTP/1.1 client for workers reached over plain HTTP (vLLM beside the gateway or on its network): asyncio
protocols and httptools' parser (uvicorn's, already a dependency), a keep-alive pool per worker, one request at
a time per connection (no pipelining). Workers behind TLS go to the `tls` backend (aiohttp).

Why not aiohttp here: in the gateway bench its client took about 100 us of CPU per proxied request (request and
response objects, a writer task, timers, header multidicts), a third of a routed request; this one takes a
fraction of that. What it keeps of aiohttp's behaviour: the same timeouts (whole answer; silence inside a
stream; connecting), max_response_bytes, a dropped connection whenever an answer is abandoned (vLLM then aborts
the generation), and no POST sent twice.

The protocol, as a client of one's own must get it right (the wire rules live in http1_connection;
tests/api/worker_protocol/ try each point):
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
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from router.adapters.backend import AiohttpBackend
from router.adapters.http1_connection import Closed, Connection, TooLarge
from router.core.ports import UpstreamReply, UpstreamStream
from router.core.types import Worker
from router.errors import UpstreamError, UpstreamFailed, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable

__all__ = ["Http1Backend", "Http1Stream"]

MAX_IDLE_PER_WORKER = 256  # idle keep-alive connections kept per worker; more are closed when returned
# A pooled connection idle longer than this is closed, not reused: below the 5 s keep-alive of uvicorn (vLLM's
# server), so a request does not meet a worker closing the connection as it arrives (a failure, not a resend).
MAX_IDLE_SECONDS = 4.0
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every request to one worker shares, built once: where to connect and the request head's parts."""

    host: str
    port: int
    head: bytes  # " HTTP/1.1" and the headers up to "Content-Length: "
    target: bytes  # the base URL's path, to which the endpoint's path is appended


class Http1Stream:
    """An open streamed answer on a pooled connection; chunks are yielded as they arrive. The connection goes
    back to the pool when the answer has been read to its end, and is dropped when it is abandoned."""

    def __init__(self, backend: Http1Backend, worker: Worker, conn: Connection) -> None:
        self._backend = backend
        self._worker = worker
        self._conn: Connection | None = conn
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
                except Closed as exc:
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
        self._idle: dict[str, collections.deque[Connection]] = {}  # oldest first
        self._busy: set[Connection] = set()  # closed at shutdown with the idle ones

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
    ) -> Connection:
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
        except Closed as exc:
            self.drop(conn)
            raise UpstreamFailed(f"worker {worker.name!r} failed: {exc}", worker=worker.name) from None
        except TooLarge:
            self.drop(conn)
            raise UpstreamTooLarge(
                f"worker {worker.name!r} answered with more than max_response_bytes ({limit} bytes); the "
                "answer was dropped. Ask for fewer tokens or choices, or stream it."
            ) from None
        except BaseException:  # a timeout, or the caller left: the half-read connection is dropped
            self.drop(conn)
            raise

    def _finish(self, worker: Worker, conn: Connection) -> bytes:
        """A whole answer's body; its connection goes back to the pool."""
        data = conn.body()
        self.release(worker, conn)
        return data

    def release(self, worker: Worker, conn: Connection) -> None:
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

    def drop(self, conn: Connection) -> None:
        self._busy.discard(conn)
        conn.abort()

    def _idle_connection(self, worker: Worker) -> Connection | None:
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

    async def _connect(self, worker: Worker, plan: _Plan, within: float, deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        within = min(within, max(0.0, deadline - loop.time()))
        try:
            async with asyncio.timeout(within):
                _, conn = await loop.create_connection(lambda: Connection(loop), plan.host, plan.port)
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
