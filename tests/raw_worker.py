"""A worker that writes exact bytes: a real TCP server on loopback, in a thread with its own event loop, whose
answer to each request a test scripts. For the worker client's protocol tests (interim answers, resets inside
bodies, connections closed after the request was read) and for the gateway's end-to-end view of them."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.servers import free_port


@dataclass
class Exchange:
    """One request as the worker read it, and the means to answer it."""

    head: bytes
    body: bytes
    index: int  # the request's number on its connection (0: the first)
    writer: asyncio.StreamWriter
    reader: asyncio.StreamReader
    closed_by_client: threading.Event

    @property
    def path(self) -> bytes:
        return self.head.split(b" ", 2)[1]

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_the_client_leaves(self) -> None:
        await self.reader.read()
        self.closed_by_client.set()

    def reset(self) -> None:
        """Close with a TCP reset (RST) instead of an orderly end (FIN): a process that died, a proxy cut off."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


# Answers one request; returns False to close the connection afterwards (a reset one is closed already).
Script = Callable[[Exchange], Awaitable[bool]]


@dataclass
class RawWorker:
    script: Script
    port: int = field(default_factory=free_port)
    requests: list[bytes] = field(default_factory=list)  # every request's body, in the order read
    connections: int = 0
    closed_by_client: threading.Event = field(default_factory=threading.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> RawWorker:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("raw worker did not start")
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            loop.run_until_complete(_stop(loop))
            loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for index in range(1 << 30):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
                body = await reader.readexactly(length)
                self.requests.append(body)
                if not await self.script(Exchange(head, body, index, writer, reader, self.closed_by_client)):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.set()
        except asyncio.CancelledError:  # the worker stops; not re-raised: asyncio's streams log a cancelled handler
            pass
        finally:
            writer.close()


async def _stop(loop: asyncio.AbstractEventLoop) -> None:
    """Ends every connection's handler. Each first gets a step: a handler cancelled before it ever ran cannot
    catch it, and asyncio's streams then log an error for it (Python 3.11)."""
    for _ in range(3):
        await asyncio.sleep(0)
    tasks = asyncio.all_tasks(loop) - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def eventually(predicate: Callable[[], object], within: float = 5.0) -> bool:
    """The async tests' `tests.servers.wait_until`: polls without blocking the loop that must make progress."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def head(status: str, *headers: str) -> bytes:
    return (f"HTTP/1.1 {status}\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n").encode("latin-1")


def answer(body: bytes, status: str = "200 OK", content_type: str = "application/json") -> bytes:
    return head(status, f"content-type: {content_type}", f"content-length: {len(body)}") + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def completion(text: str, model: str = "tiny-small") -> bytes:
    """A chat completion whose content names whom it answers (a test's x_id)."""
    message = {"role": "assistant", "content": text}
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    choice = {"index": 0, "finish_reason": "stop", "message": message}
    return json.dumps(
        {"id": "c", "object": "chat.completion", "created": 0, "model": model, "choices": [choice], "usage": usage}
    ).encode()


def event(text: str, model: str = "tiny-small") -> bytes:
    delta = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    data = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [delta]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"
