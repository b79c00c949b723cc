"""Workers behind TLS, through `triage serve`: their requests go to the aiohttp client (plain-HTTP workers have
the gateway's own), so it is tested the same way: real HTTPS workers on loopback that compress what the client
accepts, a certificate authority made for the test and trusted through SSL_CERT_FILE, answers whole and
streamed, the health probe, an answer too large, a silent worker, and a worker whose certificate is not
trusted."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from starlette.middleware.gzip import GZipMiddleware

from tests.limits.gateways import Gateway
from tests.servers import ThreadedServer
from tests.upstream import Journal, make_upstream

SHORT = [{"role": "user", "content": "hi"}]
LIMIT = 8192  # the workers' max_response_bytes


@dataclass
class Stack:
    gateway: Gateway
    small: Journal
    large: Journal

    def chat(self, **body: Any) -> httpx.Response:
        payload = {"model": "auto", "messages": SHORT, "max_tokens": 4, **body}
        return httpx.post(self.gateway.url + "/v1/chat/completions", json=payload, timeout=30)


def _config(tmp: Path, small: str, large: str) -> Path:
    cfg = tmp / "gateway.json"
    worker: dict[str, Any] = {"timeout": 1.5, "max_response_bytes": LIMIT, "api_key_env": "TEST_WORKER_KEY"}
    cfg.write_text(
        json.dumps(
            {
                "server": {"log_level": "warning"},
                "routing": {"scorer": "length"},
                "workers": [
                    {"name": "small", "role": "small", "base_url": f"{small}/v1", "model": "tiny-small", **worker},
                    {"name": "large", "role": "large", "base_url": f"{large}/v1", "model": "tiny-large", **worker},
                ],
                "ledger": {"enabled": False},
                "auth": {"identity_secret_path": str(tmp / "identity.key")},
            }
        )
    )
    return cfg


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[Path, Path]]:
    """(the authority's certificate, (the workers' certificate chain, key)) for 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp / "chain.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(tmp / "chain.pem"), append=True)
    return tmp / "ca.pem", (tmp / "chain.pem", tmp / "key.pem")


@pytest.fixture(scope="module")
def workers(tls: tuple[Path, tuple[Path, Path]]) -> Iterator[tuple[ThreadedServer, ThreadedServer, Journal, Journal]]:
    small_journal, large_journal = Journal(), Journal()
    # Compressing whatever the client accepts, as a proxy before a hosted worker may.
    small = ThreadedServer(GZipMiddleware(make_upstream("tiny-small", small_journal), minimum_size=0), tls=tls[1])
    large = ThreadedServer(GZipMiddleware(make_upstream("tiny-large", large_journal), minimum_size=0), tls=tls[1])
    small.start()
    large.start()
    try:
        yield small, large, small_journal, large_journal
    finally:
        small.stop()
        large.stop()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    tls: tuple[Path, tuple[Path, Path]],
    workers: tuple[ThreadedServer, ThreadedServer, Journal, Journal],
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("gateway")
    small, large, small_journal, large_journal = workers
    assert small.url.startswith("https://")
    env = dict(os.environ, SSL_CERT_FILE=str(tls[0]), TEST_WORKER_KEY="worker-secret")
    gw = Gateway(_config(tmp, small.url, large.url), tmp / "gw.log", env=env)
    try:
        yield Stack(gw, small_journal, large_journal)
    finally:
        gw.kill(signal.SIGTERM)


def test_a_whole_answer_comes_back_over_tls(stack: Stack) -> None:
    """Regression: aiohttp asked for gzip by default and did not decompress, so a worker that compresses
    answered with bytes the gateway could not read: a 502 for every request."""
    before = len(stack.small.bodies)
    r = stack.chat(x_test={"content": "over tls"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "over tls"
    assert r.headers["x-triage-model"] == "tiny-small"
    assert len(stack.small.bodies) == before + 1
    assert stack.small.authorization[-1] == "Bearer worker-secret"


def test_a_stream_comes_back_over_tls(stack: Stack) -> None:
    payload = {"model": "auto", "messages": SHORT, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", stack.gateway.url + "/v1/chat/completions", json=payload, timeout=30) as r:
        assert r.status_code == 200
        text = r.read().decode()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    words = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert "".join(words) == "w0 w1 w2 w3 w4 "


def test_a_stream_whose_worker_dies_ends_with_an_error_event(stack: Stack) -> None:
    payload = {"model": "auto", "messages": SHORT, "max_tokens": 6, "stream": True, "x_test": {"die_after": 2}}
    with httpx.stream("POST", stack.gateway.url + "/v1/chat/completions", json=payload, timeout=30) as r:
        assert r.status_code == 200
        text = r.read().decode()
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-1])["error"]["code"] == "upstream_error"


def test_the_health_probe_reaches_tls_workers(stack: Stack) -> None:
    ready = httpx.get(stack.gateway.url + "/ready", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["workers"] == {"small": "up", "large": "up"}


@pytest.mark.parametrize(
    "behaviour",
    [
        {"chunked": 4 * LIMIT},  # no content-length: counted while read
        {"content": "word " * LIMIT},  # a declared length past the limit
    ],
    ids=["chunked", "declared"],
)
def test_an_answer_past_max_response_bytes_is_a_502(stack: Stack, behaviour: dict[str, Any]) -> None:
    r = stack.chat(x_test=behaviour)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_response_too_large"
    # ... and the client's pool is fine afterwards.
    assert stack.chat().status_code == 200


def test_an_error_answer_to_a_stream_past_max_response_bytes_is_refused_while_read(stack: Stack) -> None:
    """Regression: the body of a non-200 answer to a stream request was read whole without max_response_bytes (or
    a deadline): memory grew with whatever the worker sent, a compressed body inflated without bound."""
    payload = {"model": "auto", "messages": SHORT, "stream": True, "x_test": {"status": 500, "body": "x" * 4 * LIMIT}}
    r = httpx.post(stack.gateway.url + "/v1/chat/completions", json=payload, timeout=30)
    assert r.status_code == 502, r.text
    assert "with a body over max_response_bytes (8192 bytes)" in r.json()["error"]["message"]
    assert stack.chat().status_code == 200


def test_a_silent_tls_worker_is_a_504(stack: Stack) -> None:
    r = stack.chat(x_test={"sleep": 5})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert "did not answer within 1.5 s" in r.json()["error"]["message"]


def test_a_worker_whose_certificate_is_not_trusted_is_refused_with_a_clear_error(
    tmp_path: Path, workers: tuple[ThreadedServer, ThreadedServer, Journal, Journal]
) -> None:
    small, large, small_journal, _ = workers
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    env["TEST_WORKER_KEY"] = "worker-secret"
    gw = Gateway(_config(tmp_path, small.url, large.url), tmp_path / "gw.log", env=env)
    try:
        before = len(small_journal.bodies)
        r = httpx.post(
            gw.url + "/v1/chat/completions", json={"model": "auto", "messages": SHORT, "max_tokens": 2}, timeout=30
        )
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "upstream_unavailable"
        assert "certificate" in error["message"].lower(), error
        assert len(small_journal.bodies) == before  # nothing was sent to a worker the gateway could not verify
        assert httpx.get(gw.url + "/ready", timeout=10).json()["workers"] == {"small": "down", "large": "down"}
    finally:
        gw.kill(signal.SIGTERM)
