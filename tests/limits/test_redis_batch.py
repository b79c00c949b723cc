"""The hot path's pipelined Redis connection (router.adapters.redis_batch) attacked as a peer would: real Redis on
loopback for the protocol's happy paths, and small asyncio servers on loopback that misbehave (close, reset,
dribble, send garbage or replies nobody asked for, stall) for the rest. Every test also checks that asyncio had
nothing to complain about (a future's error nobody retrieved, a task destroyed pending): see `loop_complaints`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme
import uvloop

from router.adapters import redis_batch
from router.adapters.cache_redis import RedisCache
from router.adapters.conversations import RedisConversations
from router.adapters.limiter_redis import RedisLimiter
from router.adapters.redis_batch import RedisTarget, ScriptBatch
from router.adapters.resp import INCOMPLETE, ReplyError, Script, parse
from router.core.budgets import Cap
from router.core.limits import TierLimits
from router.core.tiers import Caller, Tier
from router.core.types import Role
from router.errors import LimiterUnavailable
from tests.limits.conftest import REDIS_URL, require_redis

PATIENCE = 10.0  # how long a test waits for what should happen at once: generous, the machine is shared
INCR = Script("return redis.call('INCR', KEYS[1])")


@pytest.fixture(autouse=True, scope="module")
def quick_collections() -> Iterator[None]:
    """Full collections after each test, over this module's objects only: what the process held before is set
    aside (a full collection of the whole test process takes a quarter of a second)."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
async def loop_complaints(quick_collections: None) -> AsyncIterator[None]:
    """What the event loop would have logged ("Future exception was never retrieved", "Task was destroyed but it
    is pending", an exception in a callback) fails the test instead."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield
        gc.collect()  # futures die with the frames that held them (cycles through their exceptions' tracebacks)
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert not seen, [c.get("message") for c in seen]


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis()
    name = f"test-rb-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{name}:*", count=10_000))
    if keys:
        client.delete(*keys)
    client.close()


async def until(condition: Callable[[], object], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + PATIENCE
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"waited {PATIENCE} s for {what}"
        await asyncio.sleep(0.01)


async def within(awaitable: Awaitable[Any]) -> Any:
    """`awaitable`, which must finish well within PATIENCE (else it hangs: a defect)."""
    return await asyncio.wait_for(awaitable, PATIENCE)


class Commands:
    """Commands as a server reads them from a connection."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buffer = b""

    async def next(self) -> list[bytes] | None:
        """The next command, or None when the client closed."""
        while True:
            command, after = parse(self._buffer)
            if command is not INCOMPLETE:
                self._buffer = self._buffer[after:]
                assert isinstance(command, list)
                return command
            data = await self._reader.read(65536)
            if not data:
                return None
            self._buffer += data


Handler = Callable[[Commands, asyncio.StreamWriter, int], Awaitable[None]]


class Peer:
    """A Redis impostor on loopback (TCP, or a unix socket at `path`): `handler` serves its n-th connection
    (n from 1). Leaving the context closes every connection it still holds."""

    def __init__(self, handler: Handler, *, path: Path | None = None, tls: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._path = path
        self._tls = tls
        self.connections = 0
        self.commands: list[list[bytes]] = []  # every command read (by handlers that use `read`)
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[Any]] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):  # the test is over, or the client gone
            await self._handler(Commands(reader), writer, self.connections)

    async def __aenter__(self) -> Peer:
        if self._path is not None:
            self._server = await asyncio.start_unix_server(self._serve, str(self._path))
            self.url = f"unix://{self._path}"
        else:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
            port = self._server.sockets[0].getsockname()[1]
            self.url = f"{'rediss' if self._tls else 'redis'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()
        await asyncio.sleep(0.01)  # the aborted transports' connection_lost callbacks


async def answer_pings(commands: Commands, writer: asyncio.StreamWriter, _n: int) -> None:
    """A well-behaved server for PING, ECHO, AUTH and SELECT."""
    while (command := await commands.next()) is not None:
        name = command[0].upper()
        if name == b"ECHO":
            writer.write(b"$%d\r\n%s\r\n" % (len(command[1]), command[1]))
        else:
            writer.write(b"+PONG\r\n" if name == b"PING" else b"+OK\r\n")


async def stall(commands: Commands, _writer: asyncio.StreamWriter, _n: int) -> None:
    """Reads everything, answers nothing."""
    while await commands.next() is not None:
        pass


# --- against the real Redis -------------------------------------------------------------------------------------


async def test_ten_thousand_calls_made_at_once_leave_in_one_write_and_each_gets_its_own_reply(prefix: str) -> None:
    batch = ScriptBatch(REDIS_URL)
    key = f"{prefix}:n"
    calls = [batch.command("ECHO", f"{i}") if i % 2 else batch.call(INCR, [key], []) for i in range(10_000)]
    got = await within(asyncio.gather(*calls))
    assert got == [str(i).encode() if i % 2 else i // 2 + 1 for i in range(10_000)]
    assert batch.sent == 1
    await batch.close()


async def test_megabyte_sized_non_ascii_and_binary_arguments_round_trip(prefix: str) -> None:
    batch = ScriptBatch(REDIS_URL)
    blob = bytes(range(256)) * 4096 * 8  # 8 MiB, every byte value, CRLF included
    text = "héllo ✓ 🙂 \r\n$3\r\n"
    echo = Script("return ARGV[1]")
    set_, got, echoed, scripted = await within(
        asyncio.gather(
            batch.command("SET", f"{prefix}:big", blob),
            batch.command("GET", f"{prefix}:big"),
            batch.command("ECHO", text),
            batch.call(echo, [], [blob]),
        )
    )
    assert set_ == b"OK"
    assert got == blob
    assert echoed == text.encode()
    assert scripted == blob
    await batch.close()


async def test_nested_arrays_nil_and_errors_in_a_reply_come_back_as_values() -> None:
    require_redis()
    batch = ScriptBatch(REDIS_URL)
    nested = Script("return {1, {2, {3, 'x'}}, 'y', {}, false}")  # Lua's false: nil; {}: an empty array
    assert await within(batch.call(nested, [], [])) == [1, [2, [3, b"x"]], b"y", [], None]
    both = Script("return {redis.pcall('INCR', 'not a number key') and 1, redis.error_reply('inner')}")
    got = await within(batch.call(both, [], []))
    assert got[0] == 1
    assert isinstance(got[1], ReplyError)
    assert str(got[1]).endswith("inner")
    await batch.close()


@pytest.mark.parametrize("bad", [True, 1.5, None])
async def test_an_argument_of_a_bad_type_is_a_type_error_and_nothing_leaves(prefix: str, bad: Any) -> None:
    batch = ScriptBatch(REDIS_URL)
    with pytest.raises(TypeError, match=type(bad).__name__):
        batch.command("SET", f"{prefix}:k", bad)
    with pytest.raises(TypeError, match=type(bad).__name__):
        batch.call(INCR, [f"{prefix}:k"], [bad])
    await asyncio.sleep(0.05)
    assert not batch.connected
    assert batch.sent == 0
    assert await within(batch.command("GET", f"{prefix}:k")) is None  # nothing was set, half or whole
    await batch.close()


async def test_a_call_cancelled_before_it_leaves_is_never_sent(prefix: str) -> None:
    batch = ScriptBatch(REDIS_URL)
    key = f"{prefix}:n"
    first, second, third = (batch.call(INCR, [key], []) for _ in range(3))
    second.cancel()
    assert await within(asyncio.gather(first, third)) == [1, 2]
    assert await batch.command("GET", key) == b"2"
    await batch.close()


async def test_a_call_cancelled_after_it_left_does_not_take_the_next_calls_reply(prefix: str) -> None:
    batch = ScriptBatch(REDIS_URL)
    await within(batch.command("PING"))
    sent = batch.sent
    blocking = batch.command("BLPOP", f"{prefix}:list", "0.3")  # holds the connection for 0.3 s, then nil
    await until(lambda: batch.sent > sent, "the BLPOP to leave")
    after = batch.command("ECHO", "mine")
    blocking.cancel()
    assert await within(after) == b"mine"
    assert await within(batch.command("ECHO", "next")) == b"next"
    await batch.close()


async def test_a_script_flushed_between_calls_is_sent_again_in_full_and_each_call_runs_once(prefix: str) -> None:
    batch = ScriptBatch(REDIS_URL)
    key = f"{prefix}:n"
    assert await within(batch.call(INCR, [key], [])) == 1
    redis.Redis.from_url(REDIS_URL).script_flush()
    assert await within(asyncio.gather(*(batch.call(INCR, [key], []) for _ in range(3)))) == [2, 3, 4]
    assert await within(batch.call(INCR, [key], [])) == 5  # loaded again by the EVAL: no NOSCRIPT now
    assert await batch.command("GET", key) == b"5"
    await batch.close()


async def test_after_a_restart_the_next_call_runs_once_on_a_new_connection(prefix: str) -> None:
    """A restart as the client sees it: its connection killed, and the scripts gone."""
    batch = ScriptBatch(REDIS_URL)
    key = f"{prefix}:n"
    assert await within(batch.call(INCR, [key], [])) == 1
    me = await within(batch.command("CLIENT", "ID"))
    store = redis.Redis.from_url(REDIS_URL)
    store.client_kill_filter(_id=str(me))
    store.script_flush()
    await until(lambda: not batch.connected, "the batch to see its connection go")
    assert await within(batch.call(INCR, [key], [])) == 2
    assert await within(batch.command("CLIENT", "ID")) != me
    assert store.get(key) == b"2"
    store.close()
    await batch.close()


async def test_the_database_in_the_url_is_selected_before_any_call(prefix: str) -> None:
    batch = ScriptBatch(REDIS_URL.rsplit("/", 1)[0] + "/2")
    assert await within(batch.command("SET", f"{prefix}:where", "two")) == b"OK"
    await batch.close()
    two = redis.Redis.from_url(REDIS_URL.rsplit("/", 1)[0] + "/2")
    assert two.getdel(f"{prefix}:where") == b"two"
    two.close()
    assert redis.Redis.from_url(REDIS_URL).get(f"{prefix}:where") is None


async def test_close_waits_for_every_call_still_queued_or_out(prefix: str) -> None:
    batch = ScriptBatch(REDIS_URL)
    calls = [batch.call(INCR, [f"{prefix}:n"], []) for _ in range(200)]
    failures: list[BaseException] = []
    for call in calls:
        batch.watch(call, failures.append)
    await within(batch.close())
    assert [c.result() for c in calls] == list(range(1, 201))
    assert not failures


# --- peers that misbehave ----------------------------------------------------------------------------------------


async def test_nothing_listening_fails_the_turns_calls_at_once_and_a_later_call_tries_again() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed on leaving: nothing listens there
    batch = ScriptBatch(f"redis://127.0.0.1:{port}")
    got = await within(asyncio.gather(batch.command("PING"), batch.command("PING"), return_exceptions=True))
    assert all(isinstance(g, ConnectionError) for g in got), got
    with pytest.raises(ConnectionError):
        await within(batch.command("PING"))
    await within(batch.close())
    assert not batch.connected


async def test_a_server_that_closes_after_reading_a_request_fails_it_and_the_next_call_reconnects() -> None:
    async def close_first(commands: Commands, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await commands.next()
            writer.close()
            return
        await answer_pings(commands, writer, n)

    async with Peer(close_first) as peer:
        batch = ScriptBatch(peer.url)
        with pytest.raises(ConnectionError):
            await within(batch.command("PING"))
        assert await within(batch.command("PING")) == b"PONG"
        assert peer.connections == 2
        await batch.close()


async def test_a_reset_in_the_middle_of_a_reply_fails_the_calls_out() -> None:
    async def reset_mid_reply(commands: Commands, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await commands.next()
            writer.write(b"$10\r\nabc")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.transport.abort()
            return
        await answer_pings(commands, writer, n)

    async with Peer(reset_mid_reply) as peer:
        batch = ScriptBatch(peer.url)
        got = await within(asyncio.gather(batch.command("GET", "k"), batch.command("PING"), return_exceptions=True))
        assert all(isinstance(g, ConnectionError) for g in got), got
        assert await within(batch.command("PING")) == b"PONG"  # the half reply is not read as this one's
        await batch.close()


async def test_replies_that_arrive_one_byte_at_a_time_are_matched_whole_and_in_order() -> None:
    stream = b"+OK\r\n:-7\r\n$6\r\na\r\n\r\nb\r\n*3\r\n*1\r\n:1\r\n$-1\r\n-ERR x\r\n$-1\r\n-NOPE\r\n"

    async def dribble(commands: Commands, writer: asyncio.StreamWriter, _n: int) -> None:
        for _ in range(6):
            await commands.next()
        for i in range(len(stream)):
            writer.write(stream[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.001)
        await stall(commands, writer, _n)

    async with Peer(dribble) as peer:
        batch = ScriptBatch(peer.url)
        got = await within(asyncio.gather(*(batch.command("GET", f"{i}") for i in range(6)), return_exceptions=True))
        assert got[:4] == [b"OK", -7, b"a\r\n\r\nb", [[1], None, got[3][2]]]
        assert isinstance(got[3][2], ReplyError)
        assert got[4] is None
        assert isinstance(got[5], ReplyError)
        assert str(got[5]) == "NOPE"
        assert batch.sent == 1
        assert peer.connections == 1
        await batch.close()


async def test_garbage_that_is_not_resp_drops_the_connection_and_the_next_call_gets_a_new_one() -> None:
    async def garbage_first(commands: Commands, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await commands.next()
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await stall(commands, writer, n)
            return
        await answer_pings(commands, writer, n)

    async with Peer(garbage_first) as peer:
        batch = ScriptBatch(peer.url)
        with pytest.raises(ConnectionError, match="protocol"):
            await within(batch.command("PING"))
        assert await within(batch.command("PING")) == b"PONG"
        assert peer.connections == 2
        await batch.close()


async def test_a_bulk_string_longer_than_it_says_drops_the_connection() -> None:
    async def liar(commands: Commands, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await commands.next()
            await commands.next()
            writer.write(b"$1\r\nab\r\n+PONG\r\n")  # a misread "a" would shift "b\r\n..." onto the next call
            await stall(commands, writer, n)
            return
        await answer_pings(commands, writer, n)

    async with Peer(liar) as peer:
        batch = ScriptBatch(peer.url)
        got = await within(asyncio.gather(batch.command("GET", "k"), batch.command("PING"), return_exceptions=True))
        assert all(isinstance(g, ConnectionError) for g in got), got
        assert await within(batch.command("PING")) == b"PONG"
        await batch.close()


async def test_a_reply_nobody_asked_for_drops_the_connection_before_it_is_taken_for_the_next_calls() -> None:
    async def extra_first(commands: Commands, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await commands.next()
            writer.write(b"+PONG\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"$8\r\nimpostor\r\n")
            await stall(commands, writer, n)
            return
        await answer_pings(commands, writer, n)

    async with Peer(extra_first) as peer:
        batch = ScriptBatch(peer.url)
        assert await within(batch.command("PING")) == b"PONG"
        await until(lambda: not batch.connected, "the connection with the extra reply to be dropped")
        assert await within(batch.command("ECHO", "mine")) == b"mine"
        assert peer.connections == 2
        await batch.close()


async def test_a_reply_and_a_close_that_come_as_the_connection_opens_fail_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis at maxclients (or in protected mode) writes an error and closes as soon as it accepts. On a busy
    loop both can arrive before the coroutine that opened the connection resumes; they are the connection's
    all the same. Once, the error was dropped, the close ignored, and the call written to a closed transport:
    it waited forever."""

    async def refuse_first(commands: Commands, writer: asyncio.StreamWriter, n: int) -> None:
        if n > 1:
            await answer_pings(commands, writer, n)
            return
        writer.write(b"-ERR max number of clients reached\r\n")
        await writer.drain()
        writer.close()

    loop = asyncio.get_running_loop()
    opening = loop.create_connection

    async def busy_loop_opening(*args: Any, **kwargs: Any) -> Any:
        pair = await opening(*args, **kwargs)
        await asyncio.sleep(0.2)  # the server's reply and close arrive meanwhile
        return pair

    monkeypatch.setattr(loop, "create_connection", busy_loop_opening)
    async with Peer(refuse_first) as peer:
        batch = ScriptBatch(peer.url)
        first = batch.command("PING")
        await asyncio.sleep(0.15)  # the connection is open and already gone; the coroutine opening it waits on
        meanwhile = batch.command("PING")
        with pytest.raises((ConnectionError, ReplyError)):
            await within(first)
        # made while the connection was going: failed with it, or sent on the next one; never left waiting
        [got] = await within(asyncio.gather(meanwhile, return_exceptions=True))
        assert got == b"PONG" or isinstance(got, ConnectionError), got
        await within(batch.close())


async def test_a_silent_server_keeps_a_call_only_until_its_caller_gives_up() -> None:
    async with Peer(stall) as peer:
        batch = ScriptBatch(peer.url)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batch.command("PING"), 0.2)
        await within(batch.close(patience=0.3))


async def test_drain_does_not_wait_for_replies_no_caller_wants() -> None:
    """A call its caller cancelled after it left stays in line for its reply (to keep the order); a drain waits
    for the calls someone wants, not for that reply. Once, drain spun on it until its patience ran out."""
    async with Peer(stall) as peer:
        batch = ScriptBatch(peer.url)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batch.command("PING"), 0.2)
        await within(batch.drain(patience=60))
        await within(batch.close(patience=60))


async def test_close_on_a_silent_server_returns_within_its_patience_and_fails_what_was_out() -> None:
    async with Peer(stall) as peer:
        batch = ScriptBatch(peer.url)
        failures: list[BaseException] = []
        batch.watch(batch.command("PING"), failures.append)
        await asyncio.sleep(0.05)
        batch.watch(batch.command("PING"), failures.append)  # queued behind it
        await within(batch.close(patience=0.3))
        assert len(failures) == 2
        assert all(isinstance(f, TimeoutError) for f in failures), failures
        assert not batch.connected


async def test_close_on_a_server_that_accepts_and_never_reads_returns_within_its_patience() -> None:
    async def never_read(_commands: Commands, _writer: asyncio.StreamWriter, _n: int) -> None:
        await asyncio.sleep(3600)

    async with Peer(never_read) as peer:
        batch = ScriptBatch(peer.url)
        failures: list[BaseException] = []
        batch.watch(batch.command("SET", "k", b"x" * (16 << 20)), failures.append)  # more than socket buffers
        await within(batch.close(patience=0.3))
        assert len(failures) == 1


def tls_context() -> ssl.SSLContext:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    return server


async def test_close_while_connecting_stops_the_connect() -> None:
    """A connect that outlasts close()'s patience (here a TLS handshake the server never answers) is stopped:
    once, it went on after close() returned, and could open a connection nothing would ever close."""

    async def silent(_commands: Commands, _writer: asyncio.StreamWriter, _n: int) -> None:
        await asyncio.sleep(3600)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]  # accepted by the kernel, never answered: a TLS handshake stalls
        batch = ScriptBatch(f"rediss://127.0.0.1:{port}?ssl_cert_reqs=none", connect_timeout=60)
        call = batch.command("PING")
        await asyncio.sleep(0.05)
        await within(batch.close(patience=0.3))
        with pytest.raises((ConnectionError, TimeoutError)):
            await within(call)
        opening = ("ScriptBatch._connect", "BaseEventLoop.create_connection")
        connecting = [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") in opening]
        assert not connecting, connecting
        assert not batch.connected


# --- addresses -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("redis://127.0.0.1:6379/0", RedisTarget()),
        ("redis://", RedisTarget()),
        ("redis://:secret@cache.internal/2", RedisTarget(host="cache.internal", db=2, password="secret")),
        (
            "redis://app:p%40ss%3Aword@10.0.0.5:6380/3",
            RedisTarget(host="10.0.0.5", port=6380, db=3, username="app", password="p@ss:word"),
        ),
        ("redis://h?db=4", RedisTarget(host="h", db=4)),
        ("redis://[::1]:7000", RedisTarget(host="::1", port=7000)),
        ("rediss://h:6390", RedisTarget(host="h", port=6390, tls=True)),
        ("rediss://h?ssl_cert_reqs=none", RedisTarget(host="h", tls=True, verify=False)),
        ("unix:///run/redis.sock", RedisTarget(path="/run/redis.sock")),
        ("unix://:pw@/run/redis.sock?db=5", RedisTarget(path="/run/redis.sock", db=5, password="pw")),
    ],
)
def test_url_forms(url: str, target: RedisTarget) -> None:
    assert RedisTarget.from_url(url) == target


@pytest.mark.parametrize(
    "url",
    ["http://h:6379", "h:6379", "", "redis://h:port", "redis://h:99999", "redis://h/two", "redis://h/1/2"],
)
def test_a_bad_url_is_a_value_error_naming_it(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        ScriptBatch(url)


@pytest.mark.parametrize(
    ("credentials", "greeting"),
    [
        (":p%40ss@", [[b"AUTH", b"p@ss"], [b"SELECT", b"2"]]),
        ("user:pw@", [[b"AUTH", b"user", b"pw"], [b"SELECT", b"2"]]),
        ("", [[b"SELECT", b"2"]]),
    ],
)
async def test_auth_and_select_are_answered_before_any_call_leaves(
    credentials: str, greeting: list[list[bytes]]
) -> None:
    seen: list[list[bytes]] = []

    async def record(commands: Commands, writer: asyncio.StreamWriter, _n: int) -> None:
        while (command := await commands.next()) is not None:
            seen.append(command)
            writer.write(b"+PONG\r\n" if command[0] == b"PING" else b"+OK\r\n")

    async with Peer(record) as peer:
        batch = ScriptBatch(peer.url.replace("://", f"://{credentials}") + "/2")
        assert await within(batch.command("PING")) == b"PONG"
        assert seen == [*greeting, [b"PING"]]
        assert batch.sent == 2  # the greeting, then the call once it was answered
        await batch.close()


async def test_a_database_redis_refuses_fails_the_calls_and_runs_none_of_them(prefix: str) -> None:
    """Regression: the greeting was pipelined with the first calls, so with a SELECT Redis refused they ran on
    database 0."""
    key = f"{prefix}:wrong-db"
    batch = ScriptBatch(REDIS_URL.rsplit("/", 1)[0] + "/99999")  # past any configured `databases`
    got = await within(asyncio.gather(batch.command("SET", key, "x"), return_exceptions=True))
    assert isinstance(got[0], ReplyError) and "SELECT" in str(got[0])
    check = ScriptBatch(REDIS_URL)
    assert await within(check.command("EXISTS", key)) == 0
    await batch.close()
    await check.close()


async def test_a_unix_socket(tmp_path: Path) -> None:
    seen: list[list[bytes]] = []

    async def record(commands: Commands, writer: asyncio.StreamWriter, n: int) -> None:
        while (command := await commands.next()) is not None:
            seen.append(command)
            writer.write(b"+OK\r\n")

    async with Peer(record, path=tmp_path / "redis.sock") as peer:
        batch = ScriptBatch(f"{peer.url}?db=3")
        assert await within(batch.command("PING")) == b"OK"
        assert seen == [[b"SELECT", b"3"], [b"PING"]]
        await batch.close()


async def test_tls_verifies_the_server_unless_the_url_says_not_to() -> None:
    async with Peer(answer_pings, tls=tls_context()) as peer:
        unverified = ScriptBatch(f"{peer.url}?ssl_cert_reqs=none")
        assert await within(unverified.command("PING")) == b"PONG"
        await unverified.close()
        verified = ScriptBatch(peer.url)  # its certificate is signed by a CA nobody trusts
        with pytest.raises(ConnectionError):
            await within(verified.command("PING"))
        await verified.close()


# --- the limiter on top ------------------------------------------------------------------------------------------


async def stall_first_then_proxy(commands: Commands, writer: asyncio.StreamWriter, n: int) -> None:
    """The first connection goes silent (a half-open connection, a paused server); later ones reach Redis."""
    if n == 1:
        await stall(commands, writer, n)
        return
    reader, upstream = await asyncio.open_connection("127.0.0.1", 6379)
    try:
        while (command := await commands.next()) is not None:
            upstream.write(b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in command))
            buffer = b""
            while (parse(buffer)[0]) is INCOMPLETE:
                buffer += await reader.read(65536)
            writer.write(buffer)
    finally:
        upstream.close()
        await upstream.wait_closed()


async def test_the_limiter_drops_a_silent_connection_and_its_next_call_goes_on_a_fresh_one(prefix: str) -> None:
    async with Peer(stall_first_then_proxy) as peer:
        lim = RedisLimiter(peer.url, timeout=0.2, prefix=prefix)
        caller = Caller(Tier("t", TierLimits(requests_per_minute=10)), "ip:a")
        with pytest.raises(LimiterUnavailable, match="no reply"):
            await within(lim.admit(caller, 1))
        admission = await within(lim.admit(caller, 1))
        assert admission.admitted
        assert peer.connections == 2
        assert await within(lim.ping())
        await within(lim.close())


async def test_the_limiter_on_a_silent_store_leaves_no_error_unretrieved(prefix: str) -> None:
    """Every call out on a connection the limiter drops fails; those it waited on must not be left holding an
    error nobody reads (asyncio logs "Future exception was never retrieved" for each)."""
    caps = tuple(Cap("tier t", "day", f"budget-{i}", 10**9, 2**41) for i in range(3))
    async with Peer(stall_first_then_proxy) as peer:
        lim = RedisLimiter(peer.url, timeout=0.2, prefix=prefix)
        assert not await within(lim.ping())
        assert await within(lim.ping())
        async with Peer(stall) as silent:
            other = RedisLimiter(silent.url, timeout=0.2, prefix=prefix)
            with pytest.raises(LimiterUnavailable):
                await within(other.spent(caps))
            await within(other.batch.close(patience=0.3))
        assert await within(lim.spent(caps)) == [(0, 0)] * 3
        await within(lim.close())


# --- the same under uvloop, the gateway's loop in production --------------------------------------------------------

UNDER_UVLOOP = [
    test_ten_thousand_calls_made_at_once_leave_in_one_write_and_each_gets_its_own_reply,
    test_a_call_cancelled_after_it_left_does_not_take_the_next_calls_reply,
    test_a_script_flushed_between_calls_is_sent_again_in_full_and_each_call_runs_once,
    test_garbage_that_is_not_resp_drops_the_connection_and_the_next_call_gets_a_new_one,
    test_a_reply_nobody_asked_for_drops_the_connection_before_it_is_taken_for_the_next_calls,
    test_a_reset_in_the_middle_of_a_reply_fails_the_calls_out,
    test_drain_does_not_wait_for_replies_no_caller_wants,
    test_close_on_a_silent_server_returns_within_its_patience_and_fails_what_was_out,
    test_the_limiter_drops_a_silent_connection_and_its_next_call_goes_on_a_fresh_one,
]


@pytest.mark.parametrize("test", UNDER_UVLOOP, ids=lambda t: t.__name__.removeprefix("test_"))
def test_under_uvloop(test: Callable[..., Awaitable[None]], prefix: str) -> None:
    """Regression: uvloop's transports are not asyncio.Transport; a check that assumed so broke every connection
    the gateway opened (its tests run on asyncio's own loop)."""

    async def run() -> None:
        seen: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: seen.append(context))
        await (test(prefix) if inspect.signature(test).parameters else test())
        gc.collect()
        await asyncio.sleep(0)
        assert not seen, [c.get("message") for c in seen]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


async def test_a_store_with_a_connection_of_its_own_drops_it_when_silent() -> None:
    """Conversation memory and the response cache on a connection of their own (not the limiter's): a lookup
    that times out drops the connection, so the next one is not stuck behind a silent store for good."""

    async def silent_then_fine(commands: Commands, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await stall(commands, writer, n)
            return
        while (command := await commands.next()) is not None:
            writer.write(b"$5\r\nlarge\r\n" if command[0] == b"GET" else b"+OK\r\n")

    async with Peer(silent_then_fine) as peer:
        memory = RedisConversations(peer.url, timeout=0.2)
        assert await within(memory.get("c")) is None and memory.errors == 1  # timed out
        assert await within(memory.get("c")) is Role.LARGE  # a new connection
        await memory.close()
    async with Peer(silent_then_fine) as peer:
        cache = RedisCache(peer.url, timeout=0.2)
        assert await within(cache.get("k")) is None and cache.errors == 1
        assert await within(cache.get("k")) == b"large"
        await cache.close()


async def test_a_lookup_deadline_times_out_cancels_the_call_and_never_passes_for_the_requests_own_cancel() -> None:
    """`redis_batch.within`, the lookups' deadline: a late call is cancelled (its reply, when it comes, is
    dropped) and reported as TimeoutError; a request cancelled while it waits stays a cancellation (a shutdown
    or a client gone must not be logged as a silent store); an answer in time is returned as it is."""
    loop = asyncio.get_running_loop()
    late: asyncio.Future[Any] = loop.create_future()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await redis_batch.within(late, 0.05)
    assert late.cancelled() and loop.time() - started < PATIENCE

    waiting: asyncio.Future[Any] = loop.create_future()
    task = asyncio.ensure_future(redis_batch.within(waiting, 60))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert waiting.cancelled()

    answered: asyncio.Future[Any] = loop.create_future()
    loop.call_later(0.01, answered.set_result, b"large")
    assert await redis_batch.within(answered, 60) == b"large"


async def test_a_scripts_first_call_keeps_its_place_in_line(prefix: str) -> None:
    """Regression: a script's first call went as EVALSHA; Redis, not knowing it, refused it with NOSCRIPT and it
    was sent again behind the calls made after it: a limiter's give-back then landed after the next admission,
    which was refused (seen when a test's SCRIPT FLUSH came before tests/limits/test_limiters.py)."""
    key = f"{prefix}:order"
    first = Script(f"-- {uuid.uuid4()}\nreturn redis.call('RPUSH', KEYS[1], 'first')")
    second = Script(f"-- {uuid.uuid4()}\nreturn redis.call('RPUSH', KEYS[1], 'second')")
    batch = ScriptBatch(REDIS_URL)
    await within(batch.call(second, [key], []))  # `second` is known to Redis now; `first` never was
    await within(batch.command("DEL", key))
    calls = [batch.call(first, [key], [], lazy=True), batch.call(second, [key], [])]
    await within(asyncio.gather(*calls))
    assert await within(batch.command("LRANGE", key, 0, -1)) == [b"first", b"second"]
    await batch.close()


async def test_a_request_cancelled_in_the_turn_the_store_is_judged_silent_stays_cancelled(prefix: str) -> None:
    """Regression (hostile review): the request is cancelled (its client left, or the shutdown's grace ran out) in the
    same turn of the loop in which `judge` gives the silent store up. The cancel finds the call already failed, so it is
    delivered as a pending cancellation; `_reply` sees `silent_store` and turns it into TimeoutError: the request gets
    LimiterUnavailable, the cancellation is swallowed, and a fail-open tier goes on to serve (and generate for) a
    request nobody waits for. Before (9b45d60) it stayed a CancelledError."""
    async with Peer(stall) as silent:
        lim = RedisLimiter(silent.url, timeout=0.1, prefix=prefix)
        caller = Caller(Tier("t", TierLimits(requests_per_minute=10)), "ip:a")
        task = asyncio.ensure_future(lim.admit(caller, 1))
        reset = lim.batch.reset

        def reset_and_cancel(exc: Exception | None = None) -> None:
            reset(exc)
            task.cancel()  # e.g. the disconnect watcher's step, run in this same turn

        lim.batch.reset = reset_and_cancel  # type: ignore[method-assign]
        done, _ = await asyncio.wait((task,), timeout=PATIENCE)
        assert done
        lim.batch.reset = reset  # type: ignore[method-assign]
        try:
            with pytest.raises(asyncio.CancelledError):
                task.result()
        finally:
            await lim.batch.close(patience=0.3)


async def test_a_lookup_cancelled_in_the_turn_its_deadline_passes_stays_cancelled() -> None:
    """The same race for `within` (held: it asks the task whether it is being cancelled)."""
    loop = asyncio.get_running_loop()
    task: asyncio.Future[Any] | None = None

    class Call(asyncio.Future[Any]):
        def cancel(self, msg: Any = None) -> bool:
            cancelled = super().cancel(msg)
            assert task is not None
            if cancelled:
                task.cancel()  # the request's own cancel, in the turn within's deadline passes
            return cancelled

    call = Call(loop=loop)
    task = asyncio.ensure_future(redis_batch.within(call, 0.05))
    await asyncio.wait((task,), timeout=PATIENCE)
    assert task.cancelled()
