"""Real HTTP servers on loopback for tests: any ASGI app under uvicorn in a thread, on a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    detail: Callable[[], str] | None = None,
    interval: float = 0.05,
) -> None:
    """Polls `predicate` until it holds; after `timeout` seconds fails the test, saying it waited for `what` (and
    `detail()`, e.g. a log's tail). Tests wait for a condition, not for a fixed time: this machine is noisy.
    The interval is not shorter because a poll costs CPU the awaited process needs (a bare httpx.get is 20 ms)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}" + (f"\n{detail()}" if detail else ""))
        time.sleep(interval)


def listeners(port: int) -> int:
    """Sockets in LISTEN on `port` (any address): one per process that serves it with SO_REUSEPORT."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                count += state == "0A" and int(local.rsplit(":", 1)[1], 16) == port
    return count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ThreadedServer:
    def __init__(self, app: ASGIApp, port: int | None = None, tls: tuple[Path, Path] | None = None) -> None:
        """`tls`: (certificate chain, key) files to serve HTTPS with."""
        self.port = port or free_port()
        self._scheme = "https" if tls else "http"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            proxy_headers=False,  # as `triage serve` runs it: the gateway decides whom to trust
            loop="asyncio",
            timeout_graceful_shutdown=1,
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}"

    def start(self) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@contextmanager
def serving(app: ASGIApp) -> Iterator[ThreadedServer]:
    server = ThreadedServer(app).start()
    try:
        yield server
    finally:
        server.stop()
