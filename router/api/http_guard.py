"""uvicorn's httptools protocol with the bounds it lacks: a size limit on a request's line and headers (431),
and deadlines for receiving them (408) and the body (the connection is closed). Without them one unterminated
header grows the process by its size, and a client that sends half a request holds a connection forever.
Idle keep-alive connections are closed by uvicorn's own timeout_keep_alive.

It also sends a response's head and body in one write: uvicorn writes them apart, two sends (and two packets,
with TCP_NODELAY) for every JSON answer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from router.protocol import error_body

__all__ = ["guarded_protocol"]

log = logging.getLogger("triage.api")


# What a refused connection is told: the status line's reason and the envelope's code.
_REFUSALS = {
    400: (b"Bad Request", "invalid_http_request"),
    408: (b"Request Timeout", "request_timeout"),
    431: (b"Request Header Fields Too Large", "request_header_fields_too_large"),
}


class _HeadWithBody:
    """A transport that holds a response head declaring a content-length (a response's first write) until its
    body is written (or the response completes, for HEAD; or the connection closes), and sends both in one
    write. A stream's head (no length), a 100 Continue and every later write of a response (its body, whatever
    its bytes look like) leave at once. Aborting drops what is held, as the transport drops its buffer."""

    __slots__ = ("_answering", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._answering = False  # a response's first write is out: what follows is its body, never held

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif not self._answering and data[:9] == b"HTTP/1.1 ":
            if data[9:10] == b"1":  # 100 Continue: the response is still to come
                self._transport.write(data)
                return
            self._answering = True
            if data[-4:] == b"\r\n\r\n" and b"\r\ncontent-length: " in data:
                self._held = data
                return
        self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def answered(self) -> None:
        """The response is complete: its head is sent if still held, and the next write is the next head."""
        self.flush()
        self._answering = False

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Guarded(HttpToolsProtocol):
    max_header_bytes = 32_768
    head_timeout = 10.0
    body_timeout = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._out = _HeadWithBody(transport)
        super().connection_made(cast(asyncio.Transport, self._out))
        self._in_head = True
        self._head_bytes = 0  # bytes of the head being received, counted by the chunks that did not finish it
        self._chunk = 0  # the length of the chunk being parsed
        self._slack = 0  # head bytes that may have gone uncounted: those after a body's end in its last read
        self._heads_seen = 0  # heads completed on this connection
        self._refused = False  # refused with 431 or 408: the rest of what arrives is ignored
        self._pending: tuple[int, str] | None = None  # a refusal waiting for the answers pipelined before it
        self._timer: asyncio.TimerHandle | None = None
        self._arm(self.head_timeout, self._head_expired)  # a connection that never sends a byte is timed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float, callback: object) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)  # type: ignore[arg-type]

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head and self._timer is None:  # the first bytes of a keep-alive connection's next request
            self._arm(self.head_timeout, self._head_expired)
        self._chunk = len(data)
        all_head, heads_before = self._in_head, self._heads_seen
        super().data_received(data)
        # A chunk read in a head that did not finish it is all head: this bounds a head that never ends. Any
        # other chunk holds a body too: it is not counted (the next request's first bytes after a body end go
        # uncounted, at most one read), and a head it finished is measured by on_headers_complete.
        all_head = all_head and self._heads_seen == heads_before
        if self._in_head and not all_head:
            self._slack = len(data)  # a request ended in this read: what follows it is the next head's start
        if all_head and not self._refused and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse(431, f"request line and headers exceed {self.max_header_bytes} bytes")

    def _head_size(self) -> int:
        """The finished head's size as parsed: its target and headers, each with its separators."""
        return len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        # Measured only when the bytes seen could hold an oversized head: one comparison on the common path.
        seen = self._head_bytes + self._slack + self._chunk
        self._slack = 0
        if seen > self.max_header_bytes and self._head_size() > self.max_header_bytes:
            self._refuse(431, f"request line and headers exceed {self.max_header_bytes} bytes")
            return  # never dispatched
        self._in_head = False
        self._head_bytes = 0
        self._heads_seen += 1
        self._arm(self.body_timeout, self._body_expired)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._disarm()
        self._in_head = True
        super().on_message_complete()

    def _head_expired(self) -> None:
        self._timer = None
        if self._in_head and not self.transport.is_closing():
            if self.cycle is not None and not self.cycle.response_complete:
                # A pipelined next request arrived while this one is still being answered: its head wait
                # starts when the answer is done, however long that takes.
                self._arm(self.head_timeout, self._head_expired)
                return
            self._refuse(408, f"request line and headers not received within {self.head_timeout:g} s")

    def _body_expired(self) -> None:
        self._timer = None
        if not self._in_head and not self.transport.is_closing():
            log.warning("closing a connection whose request body did not arrive within %g s", self.body_timeout)
            self.transport.close()  # the request sees a disconnect; there is no one to answer

    def on_response_complete(self) -> None:
        self._out.answered()  # a head whose body is empty, or never written (HEAD), leaves now
        super().on_response_complete()
        # The last request routed before the refused one has its answer: now the refusal.
        if self._pending is not None and self.cycle is not None and self.cycle.response_complete:
            status, message = self._pending
            self._pending = None
            if not self.transport.is_closing():
                self._close_with(status, message)

    def _refuse(self, status: int, message: str) -> None:
        self._refused = True
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            # Pipelined behind requests still being answered: their answers go first, then this one.
            self._pending = (status, message)
            return
        self._close_with(status, message)

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers a request that is not HTTP (two Content-Lengths, Content-Length with chunked, a bad
        # chunk) in plain text: SDKs read errors from the envelope, so it is the envelope here too.
        self._refused = True
        self._close_with(400, "the request is not valid HTTP/1.1: its framing or headers could not be parsed")

    def _close_with(self, status: int, message: str) -> None:
        log.warning("refused a connection: %s", message)
        reason, code = _REFUSALS[status]
        body = error_body(message, "invalid_request_error", code)
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        self.transport.write(head % (status, reason, len(body)) + body)
        self.transport.close()


def guarded_protocol(*, max_header_bytes: int, head_timeout: float, body_timeout: float) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's `http=` with these bounds."""
    return type(
        "GuardedHttpToolsProtocol",
        (_Guarded,),
        {"max_header_bytes": max_header_bytes, "head_timeout": head_timeout, "body_timeout": body_timeout},
    )
