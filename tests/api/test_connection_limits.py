"""Bounds on what a connection may hold, against `triage serve` itself (its HTTP protocol is the one under test):
a header size limit (431), deadlines for a request's head (408) and body, and idle keep-alive connections
closed. Raw sockets, since a well-behaved client cannot misbehave this way."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.limits.gateways import Gateway
from tests.servers import ThreadedServer, wait_until
from tests.upstream import Journal

HEAD_TIMEOUT = 1.0


@pytest.fixture
def gateway(tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, object]) -> Iterator[Gateway]:
    small, large = upstreams[0], upstreams[1]
    cfg = tmp_path / "gateway.json"
    cfg.write_text(
        json.dumps(
            {
                "server": {
                    "log_level": "warning",
                    "max_header_bytes": 8192,
                    "head_timeout": HEAD_TIMEOUT,
                    "body_timeout": HEAD_TIMEOUT,
                    "keep_alive_timeout": 1,
                },
                "routing": {"scorer": "length"},
                "workers": [
                    {"name": "small", "role": "small", "base_url": f"{small.url}/v1", "model": "tiny-small"},
                    {"name": "large", "role": "large", "base_url": f"{large.url}/v1", "model": "tiny-large"},
                ],
                "ledger": {"enabled": False},
                "auth": {"identity_secret_path": str(tmp_path / "identity.key")},
            }
        )
    )
    gw = Gateway(cfg, tmp_path / "gw.log")
    try:
        yield gw
    finally:
        gw.kill(signal.SIGTERM)


def _connect(gw: Gateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=10)


def _read_until_closed(sock: socket.socket, limit: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    sock.settimeout(limit)
    data = b""
    while True:
        try:
            part = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not part:
            break
        data += part
    return data, time.monotonic() - start


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_an_unterminated_huge_header_is_refused_with_431_without_growing(gateway: Gateway) -> None:
    """Regression: one unterminated 64 MB header value raised RSS from 94 to 213 MB."""
    before = _rss_kib(gateway.proc.pid)
    with _connect(gateway) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        block = b"a" * 65536
        try:
            while sent < 64 * 1024 * 1024:
                sock.sendall(block)
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < 8 * 1024 * 1024  # the server closed the connection long before 64 MB were sent
        data, _ = _read_until_closed(sock)
    if data:  # the 431 may be lost to the reset when the client is still sending
        assert data.startswith(b"HTTP/1.1 431")
    assert _rss_kib(gateway.proc.pid) - before < 16 * 1024


def test_headers_over_the_limit_get_431_in_the_envelope(gateway: Gateway) -> None:
    with _connect(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        data, _ = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431")
    assert b'"request_header_fields_too_large"' in data


@pytest.mark.parametrize("size", [9_000, 60_000])
@pytest.mark.parametrize("reads", [1, 2])
def test_a_body_larger_than_the_header_limit_is_served(gateway: Gateway, size: int, reads: int) -> None:
    """Regression: a read that completed a request counted all its bytes as head, so a request with 8 KiB of
    headers allowed (32 KiB by default) whose body, or the body's last read, was larger got a 431."""
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "a" * size}], "max_tokens": 2})
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
    whole = head + b"Content-Length: %d\r\n\r\n" % len(body) + body.encode()
    with _connect(gateway) as sock:
        if reads == 2:  # the head and a few bytes of body, then the rest of the body
            split = whole.index(b"\r\n\r\n") + 10
            sock.sendall(whole[:split])
            time.sleep(0.2)
            whole = whole[split:]
        sock.sendall(whole)  # one write: one read, on loopback
        data, _ = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200"), data[:300]


def test_an_openai_sdk_clients_long_prompts_are_served(gateway: Gateway) -> None:
    """The same regression through an unmodified SDK client: before the fix, 24-40 of 40 prompts of 40-900 KB
    got a 431 against the default 32 KiB limit (here the limit is 8 KiB)."""
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0) as client:
        for size in (12_000, 200_000, 900_000):
            for _ in range(5):
                answer = client.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": "a" * size}], max_tokens=2
                )
                assert answer.choices[0].message.content


def test_headers_over_the_limit_are_refused_before_the_request_is_routed(
    gateway: Gateway, upstreams: tuple[ThreadedServer, ThreadedServer, Journal]
) -> None:
    """A whole request with 9 KB of headers in one chunk: 431, and nothing reaches a worker (a head measured
    only after parsing was dispatched first)."""
    journal = upstreams[2]
    before = len(journal.bodies)
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"X-Big: " + b"a" * 9000 + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
    with _connect(gateway) as sock:
        sock.sendall(head + body)
        data, _ = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431")
    time.sleep(0.3)
    assert len(journal.bodies) == before


def test_a_head_over_the_limit_finished_in_a_later_chunk_is_refused(gateway: Gateway) -> None:
    """Regression: 6 KB of headers, then 4 KB more that finish the head with part of a body: the second chunk
    finished the head, so it was never counted, and the request went on waiting for its body."""
    with _connect(gateway) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-One: " + b"a" * 6000 + b"\r\n")
        time.sleep(0.2)  # two reads
        sock.sendall(b"X-Two: " + b"b" * 4000 + b"\r\nContent-Length: 100\r\n\r\n{")
        data, took = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431"), data[:200]
    assert took < HEAD_TIMEOUT  # refused at once, not cut off by the body deadline


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n",  # both: the request smuggler's pair
        b"Content-Length: 5\r\nContent-Length: 10\r\n\r\n",
        b"Content-Length: -1\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",  # not a chunk size
    ],
    ids=["cl-and-te", "two-cl", "negative-cl", "bad-chunk"],
)
def test_malformed_http_gets_a_400_in_the_envelope(gateway: Gateway, framing: bytes) -> None:
    """uvicorn answered these in plain text ("Invalid HTTP request received."), which SDKs cannot read."""
    with _connect(gateway) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + framing + b'{"model": "auto"}')
        data, _ = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "invalid_http_request"
    assert body["error"]["type"] == "invalid_request_error"


def test_an_oversized_head_pipelined_behind_a_slow_request_waits_for_its_answer(gateway: Gateway) -> None:
    """Regression: the 431 closed the connection at once, and the answer to the request before it was lost."""
    body = json.dumps(
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "x_test": {"sleep": 0.5}}
    ).encode()
    slow = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    slow += b"Content-Length: %d\r\n\r\n" % len(body) + body
    oversized = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    with _connect(gateway) as sock:
        sock.sendall(slow + oversized)
        data, _ = _read_until_closed(sock)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", data) == [b"200", b"431"], data[:200]


def test_pipelined_requests_in_one_chunk_are_all_answered(gateway: Gateway) -> None:
    one = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(gateway) as sock:
        sock.sendall(one * 3 + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data, _ = _read_until_closed(sock)
    assert data.count(b"HTTP/1.1 200") == 4


@pytest.mark.parametrize(
    "partial",
    [b"", b"POST /v1/chat/completions HTT", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty"],
)
def test_a_request_head_that_never_ends_is_timed_out(gateway: Gateway, partial: bytes) -> None:
    """Regression: partial request lines and headers were held open indefinitely."""
    with _connect(gateway) as sock:
        sock.sendall(partial)
        data, took = _read_until_closed(sock)
    assert took < HEAD_TIMEOUT + 3
    assert data.startswith(b"HTTP/1.1 408")


def test_a_body_shorter_than_its_content_length_is_cut_off(gateway: Gateway) -> None:
    """Regression: a Content-Length lie held the connection (and the request) open indefinitely."""
    with _connect(gateway) as sock:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += b"Content-Length: 1000\r\n\r\n"
        sock.sendall(head + b'{"model": ')
        _, took = _read_until_closed(sock)
    assert took < HEAD_TIMEOUT + 3


def test_an_idle_keep_alive_connection_is_closed(gateway: Gateway) -> None:
    with _connect(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data, took = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200")
    assert took < 1 + 3  # keep_alive_timeout 1 s


def test_a_pipelined_request_does_not_time_out_a_long_answer(
    gateway: Gateway, upstreams: tuple[ThreadedServer, ThreadedServer, Journal]
) -> None:
    """The next request's head starts arriving while a slow answer is produced: its head wait starts only when
    that answer is done (a first version of the guard closed the connection, losing the answer)."""
    x_id = f"pipelined-{time.monotonic_ns()}"
    body = json.dumps(
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "x_test": {"sleep": 2.5}, "x_id": x_id}
    )
    slow = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    with _connect(gateway) as sock:
        sock.sendall(slow)
        wait_until(
            lambda: any(b.get("x_id") == x_id for b in upstreams[2].bodies), 10, "the slow request at the worker"
        )
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")  # half a head, pipelined
        time.sleep(HEAD_TIMEOUT + 0.5)  # past the head timeout, before the answer
        sock.sendall(b"st: x\r\nConnection: close\r\n\r\n")
        data, _ = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200")
    assert data.count(b"HTTP/1.1 200") == 2
