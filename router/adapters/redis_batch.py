"""The hot path's connection to Redis: one connection per store, pipelined. Calls made in one turn of the event
loop leave in one write; replies come back in the order the calls left and are matched to them as they arrive.
Concurrent requests then share round trips (an admission with the settlements of requests that just ended, many
admissions at once), one request's admission shares one with its conversation lookup (the limiter and the
conversation memory hold the same batch), and a call that need not be waited for (a settlement that only gives
back) costs its request nothing.

Why not redis-py's pipelines: each one took a pooled connection, built a pipeline object and packed its commands
through redis-py's encoders (py-spy under wrk: 17% of a core at c=1, most of what limits in Redis cost; an
admission with its settlement cost 145 µs of CPU, `./dev bench limiter_cpu`, 52 µs here). Here a call is packed
once, by bytes formatting, and the reply parsed by router.adapters.resp.

Failures: a refused or lost connection fails the calls that were out on it (their commands may or may not have
run, as with any client); the next call opens a new one. `reset` drops a connection its owner found silent.
An error reply is its call's alone. A script Redis does not know (restarted, flushed) is sent again in full."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from router.adapters.resp import INCOMPLETE, ProtocolError, ReplyError, Script, pack, parse

__all__ = ["NotSent", "RedisTarget", "ScriptBatch", "within"]

log = logging.getLogger("triage.redis")

Arg = str | bytes | int


class NotSent(ConnectionError):
    """The call never left (no connection could be opened): Redis did not run it."""


@dataclass(frozen=True)
class RedisTarget:
    """Where a Redis URL points: redis://[[user]:password@]host[:port][/db], rediss:// (TLS) or
    unix://[[user]:password@]/path[?db=N]."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    verify: bool = True

    @classmethod
    def from_url(cls, url: str) -> RedisTarget:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"not a Redis URL (redis://, rediss:// or unix://): {url!r}")
        db_text = query.get("db", [parts.path.lstrip("/") if parts.scheme != "unix" else ""])[0] or "0"
        try:
            db = int(db_text)
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"a Redis URL with a bad port or database number: {url!r}") from None
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            path=parts.path if parts.scheme == "unix" else None,
            db=db,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            tls=parts.scheme == "rediss",
            verify=query.get("ssl_cert_reqs", ["required"])[0] != "none",
        )

    def greeting(self) -> list[tuple[Arg, ...]]:
        """What a new connection sends before any call: AUTH and SELECT, where the URL asks for them."""
        out: list[tuple[Arg, ...]] = []
        if self.password is not None:
            out.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            out.append(("SELECT", self.db))
        return out


async def within(call: asyncio.Future[Any], seconds: float) -> Any:
    """The call's reply, or TimeoutError after `seconds`, the call then cancelled (a reply that comes
    later is dropped): asyncio.wait_for on a plain future, for a timer instead of its waiter future, callbacks
    and cancellation hand-shake (~4 us of every lookup)."""
    expired = False

    def expire() -> None:
        nonlocal expired
        if not call.done():
            expired = True
            call.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        return await call
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if expired and (task is None or task.cancelling() == 0):  # ours, not the request's own cancellation
            raise TimeoutError(f"no reply from Redis within {seconds:g} s") from None
        raise
    finally:
        timer.cancel()


@dataclass(slots=True)
class _Call:
    packed: bytes
    future: asyncio.Future[Any]
    command: tuple[Arg, ...] | None = None  # an EVALSHA's arguments, to send again as EVAL on NOSCRIPT
    script: Script | None = None


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: ScriptBatch) -> None:
        self._owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._owner._made(self, cast(asyncio.Transport, transport))  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        self._owner._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._lost(self, exc)


class ScriptBatch:
    def __init__(self, url: str, *, connect_timeout: float = 1.0, linger: float = 0.002) -> None:
        self._target = RedisTarget.from_url(url)
        self._connect_timeout = connect_timeout
        self._queue: list[_Call] = []  # made this turn, not yet written
        self._pending: deque[_Call] = deque()  # written, waiting for their replies, in order
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._ready = False  # the connection's AUTH and SELECT answered: calls may leave
        self._known: set[str] = set()  # scripts this batch has sent in full (EVALSHA from then on)
        self._connecting: asyncio.Task[None] | None = None
        self._scheduled = False
        self._linger = linger
        self._lingering: asyncio.TimerHandle | None = None  # the write lazy calls wait for, at the latest
        self._buffer = bytearray()
        self.sent = 0  # writes (round trips), for the tests and the benchmarks

    @property
    def connected(self) -> bool:
        return self._transport is not None

    def call(
        self, script: Script, keys: Sequence[str], args: Sequence[Arg], *, lazy: bool = False
    ) -> asyncio.Future[Any]:
        """Queue one script call; the future holds its reply, or the error that stopped it (ReplyError for an
        error reply, ConnectionError or TimeoutError when the connection failed). A `lazy` call does not ask for
        a write of its own: it leaves with the next call that does, or after `linger` seconds."""
        command: tuple[Arg, ...] = ("EVALSHA", script.sha, len(keys), *keys, *args)
        if script.sha not in self._known:
            # Its first call carries the script (EVAL loads it into Redis' cache, which outlives connections):
            # an EVALSHA refused with NOSCRIPT is sent again behind the calls made after it, so a give-back
            # could land after the next admission. Calls after this one, in order on the connection, find it.
            self._known.add(script.sha)
            command = ("EVAL", script.text, *command[2:])
        return self._queued(_Call(pack(command), asyncio.get_running_loop().create_future(), command, script), lazy)

    def load(self, script: Script) -> asyncio.Future[Any]:
        """SCRIPT LOAD: the calls queued after it use EVALSHA (Redis runs them after the load)."""
        self._known.add(script.sha)
        return self.command("SCRIPT", "LOAD", script.text)

    def command(self, *args: Arg, lazy: bool = False) -> asyncio.Future[Any]:
        """Queue one plain command (GET key, ...), as `call` does."""
        return self._queued(_Call(pack(args), asyncio.get_running_loop().create_future()), lazy)

    def _queued(self, call: _Call, lazy: bool = False) -> asyncio.Future[Any]:
        self._queue.append(call)
        if self._scheduled:
            return call.future
        loop = asyncio.get_running_loop()
        if not lazy:
            self._scheduled = True
            loop.call_soon(self._flush)  # after every call this turn of the loop makes
        elif self._lingering is None:
            self._lingering = loop.call_later(self._linger, self._flush)
        return call.future

    def watch(self, future: asyncio.Future[Any], failed: Callable[[BaseException], None]) -> None:
        """For a call nobody awaits: `failed` hears of its error."""

        def done(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is not None:
                failed(f.exception())  # type: ignore[arg-type]

        future.add_done_callback(done)

    def _flush(self) -> None:
        self._scheduled = False
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        if self._transport is None:
            if self._connecting is None and self._queue:
                self._connecting = asyncio.ensure_future(self._connect())
            return  # the connection flushes the queue once it is open
        if not self._ready:
            return  # AUTH or SELECT not answered yet: the queue leaves once they are
        calls = [c for c in self._queue if not c.future.done()]  # cancelled before it left: never sent
        self._queue = []
        if calls:
            self._pending.extend(calls)
            self._write(b"".join(c.packed for c in calls))

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)
        self.sent += 1

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        target = self._target
        try:
            if target.path is not None:
                opening = loop.create_unix_connection(lambda: _Protocol(self), target.path)
            else:
                context = None
                if target.tls:
                    context = ssl.create_default_context()
                    if not target.verify:
                        context.check_hostname = False
                        context.verify_mode = ssl.CERT_NONE
                opening = loop.create_connection(lambda: _Protocol(self), target.host, target.port, ssl=context)
            await asyncio.wait_for(opening, self._connect_timeout)
        except BaseException as exc:
            self._connecting = None
            failure = exc if isinstance(exc, Exception) else NotSent("connecting to Redis was cancelled")
            if isinstance(failure, OSError | TimeoutError):
                failure = NotSent(f"cannot connect to Redis: {failure}")
            queued, self._queue = self._queue, []
            for call in queued:
                if not call.future.done():
                    call.future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            return
        self._connecting = None
        if self._queue and self._transport is None:  # the connection went before this resumed: calls made since
            self._flush()  # try a new one

    def _made(self, protocol: _Protocol, transport: asyncio.Transport) -> None:
        """The connection is the batch's from its first moment, not from when `_connect` resumes: what Redis
        sends, or its close, may come in between (Redis at maxclients writes an error and closes at once)."""
        self._transport, self._protocol = transport, protocol
        self._buffer.clear()
        greeting = self._target.greeting()
        if not greeting:
            self._ready = True
            self._flush()
            return
        # AUTH and SELECT are answered before any call leaves: pipelined with them, calls would run on
        # database 0 when SELECT fails. One round trip more per connection, none per call.
        loop = asyncio.get_running_loop()
        calls = [_Call(pack(g), loop.create_future()) for g in greeting]
        self._pending.extend(calls)
        self._write(b"".join(c.packed for c in calls))
        answered = asyncio.gather(*(c.future for c in calls), return_exceptions=True)
        answered.add_done_callback(lambda f: self._greeted(protocol, f))

    def _greeted(self, protocol: _Protocol, answered: asyncio.Future[list[Any]]) -> None:
        if protocol is not self._protocol or answered.cancelled():
            return  # that connection is gone: its calls have failed already
        refused = [r for r in answered.result() if isinstance(r, BaseException)]
        if refused:
            # A reply error, not a lost connection: a wrong password or database is a fault to refuse on, never
            # an outage a fail-open tier would admit through.
            failure = ReplyError(f"Redis refused the connection's set-up (AUTH or SELECT): {refused[0]}")
            log.error("%s", failure)
            self.reset(failure)
            self._fail_queued(failure)
            return
        self._ready = True
        self._flush()

    def _received(self, protocol: _Protocol, data: bytes) -> None:
        if protocol is not self._protocol:
            return  # a connection already dropped
        buffer = self._buffer
        buffer += data
        pending = self._pending
        pos = 0
        try:
            while pending:
                reply, after = parse(buffer, pos)
                if reply is INCOMPLETE:
                    break
                pos = after
                self._deliver(pending.popleft(), reply)
            if pos:
                del buffer[:pos]
            if buffer and not pending:
                raise ProtocolError("a reply nobody asked for")
        except ProtocolError as exc:
            log.error("Redis sent what is not RESP (%s): dropping the connection", exc)
            self.reset(ConnectionError(f"Redis protocol error: {exc}"))

    def _deliver(self, call: _Call, reply: Any) -> None:
        future = call.future
        if isinstance(reply, ReplyError):
            if call.script is not None and call.command is not None and str(reply).startswith("NOSCRIPT"):
                self._known.discard(call.script.sha)  # flushed (SCRIPT FLUSH): the next calls carry it again
                # Redis does not know the script (restarted or flushed): it did not run; send it in full once.
                again = ("EVAL", call.script.text, *call.command[2:])
                self._queued(_Call(pack(again), future))
                return
            if not future.done():
                future.set_exception(reply)
            return
        if not future.done():  # done: its caller stopped waiting (a timeout, or the request went away)
            future.set_result(reply)

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is self._protocol:
            self.reset(ConnectionError(f"the connection to Redis was lost: {exc or 'closed by Redis'}"))

    def reset(self, exc: Exception | None = None) -> None:
        """Drop the connection (its owner found it silent, or it failed): the calls out on it fail with `exc`;
        calls not yet written go out on the next connection."""
        transport, self._transport, self._protocol = self._transport, None, None
        self._ready = False
        if transport is not None:
            transport.abort()
        failure = exc or ConnectionError("the connection to Redis was dropped")
        pending, self._pending = self._pending, deque()
        for call in pending:
            if not call.future.done():
                call.future.set_exception(failure)
        if self._queue and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def drain(self, patience: float = 5.0) -> None:
        """Send what is queued and wait for every reply out (shutdown: no settlement is left behind); past
        `patience` seconds the store is taken for silent and the connection dropped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while True:
            if self._queue:
                self._flush()
            # Calls someone still wants: one its caller cancelled after it left keeps its place in line for its
            # reply, but nobody waits for that reply.
            waiting: list[asyncio.Future[Any]] = [
                c.future for c in (*self._queue, *self._pending) if not c.future.done()
            ]
            if self._connecting is not None:
                waiting.append(self._connecting)
            if not waiting:
                return
            left = deadline - loop.time()
            if left <= 0:
                failure = TimeoutError("Redis did not answer before shutdown")
                self.reset(failure)
                self._fail_queued(failure)
                connecting = self._connecting
                if connecting is not None:  # given up, not left to open a connection after shutdown
                    connecting.cancel()
                    await asyncio.wait((connecting,))
                return
            await asyncio.wait(waiting, timeout=left)

    def _fail_queued(self, exc: Exception) -> None:
        queued, self._queue = self._queue, []
        for call in queued:
            if not call.future.done():
                call.future.set_exception(exc)

    async def close(self, patience: float = 5.0) -> None:
        await self.drain(patience)
        transport, self._transport, self._protocol = self._transport, None, None
        if transport is not None:
            transport.close()
