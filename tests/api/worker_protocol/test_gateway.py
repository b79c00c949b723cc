"""What a caller sees through the gateway (the app under uvicorn) when a worker misbehaves at the byte level
(issue #24): each caller gets its own answer, no request reaches a worker twice, a broken body is a 502 or a
final error event, never a torn 200."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from router.api.app import create_app
from tests.api.conftest import settings_for
from tests.raw_worker import Exchange, RawWorker, Script, answer, completion, event, head
from tests.servers import ThreadedServer, serving

SSE = "content-type: text/event-stream"


def _ask(gateway: ThreadedServer, who: str, *, stream: bool, model: str = "tiny-small") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, "x_id": who}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=10)


def _content(r: httpx.Response) -> str:
    if r.headers["content-type"].startswith("text/event-stream"):
        return r.text
    content: str = r.json()["choices"][0]["message"]["content"]
    return content


def _whole_or_stream(ex: Exchange, text: str, model: str = "tiny-small") -> bytes:
    if ex.json().get("stream"):
        events = event(text, model) + b"data: [DONE]\n\n"
        return head("200 OK", SSE, f"content-length: {len(events)}") + events
    return answer(completion(text, model))


async def _large(ex: Exchange) -> bool:
    await ex.send(_whole_or_stream(ex, f"large for {ex.json()['x_id']}", "tiny-large"))
    return True


@contextmanager
def _gateway(small: Script) -> Iterator[tuple[ThreadedServer, RawWorker, RawWorker]]:
    """The gateway in front of a small worker that runs `small` and a large one that answers."""
    with (
        RawWorker(small) as worker,
        RawWorker(_large) as large,
        serving(create_app(settings_for(worker.url, large.url))) as gw,
    ):
        yield gw, worker, large


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_after_an_interim_answer_each_caller_gets_its_own_answer(stream: bool) -> None:
    """Regression (#24): the first caller got a 502 and the second the first one's answer."""

    async def small(ex: Exchange) -> bool:
        await ex.send(head("100 Continue"))
        await asyncio.sleep(0.05)  # the real answer comes later
        await ex.send(_whole_or_stream(ex, f"for {ex.json()['x_id']}"))
        return True

    with _gateway(small) as (gw, worker, large):
        callers = ("alice", "bob", "carol")
        for who in callers:
            r = _ask(gw, who, stream=stream)
            assert r.status_code == 200
            assert [name for name in callers if f"for {name}" in _content(r)] == [who]
    assert worker.connections == 1
    assert len(worker.requests) == 3
    assert large.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_worker_that_dies_after_reading_a_request_sees_it_once_and_the_caller_is_served_elsewhere(
    stream: bool,
) -> None:
    """Regression (#24): the request was resent on a fresh connection, so the worker saw it twice. Now the loss
    is one failed attempt: the routed request fails over to the other model."""

    async def small(ex: Exchange) -> bool:
        if ex.index == 0:  # the connection's first request is answered; it is then pooled
            await ex.send(_whole_or_stream(ex, f"for {ex.json()['x_id']}"))
            return True
        await asyncio.sleep(0.05)  # generating... then the process dies without a word
        return False

    with _gateway(small) as (gw, worker, large):
        first = _ask(gw, "alice", stream=stream, model="auto")
        assert (first.status_code, first.headers["x-triage-model"]) == (200, "tiny-small")
        second = _ask(gw, "bob", stream=stream, model="auto")
        assert second.status_code == 200
        assert second.headers["x-triage-reason"] == "fallback"
        assert "large for bob" in _content(second)
    assert [b.count(b'"bob"') for b in worker.requests] == [0, 1]  # bob's request reached the worker once
    assert len(large.requests) == 1


def test_a_reset_inside_a_body_ended_by_the_connection_is_a_502() -> None:
    """Regression (#24): the cut body was passed on as a 200."""

    async def small(ex: Exchange) -> bool:
        await ex.send(head("200 OK", "content-type: application/json") + b'{"id":"c","choices":[')
        await asyncio.sleep(0.05)
        ex.reset()
        return False

    with _gateway(small) as (gw, _, large):
        r = _ask(gw, "alice", stream=False)
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "upstream_error"
        assert "'small'" in r.json()["error"]["message"]
    assert large.requests == []  # a model named by the caller: no other model tried


def test_a_reset_inside_a_stream_ended_by_the_connection_is_a_final_error_event() -> None:
    """Regression (#24): the stream ended as if the worker had finished it."""

    async def small(ex: Exchange) -> bool:
        await ex.send(head("200 OK", SSE, "connection: close") + event("one"))
        await asyncio.sleep(0.05)
        ex.reset()
        return False

    with _gateway(small) as (gw, _, large):
        r = _ask(gw, "alice", stream=True)
        assert r.status_code == 200
        events = [e for e in r.text.split("\n\n") if e]
        assert '"one"' in events[0]
        assert '"upstream_error"' in events[-1] and "connection lost" in events[-1]
    assert large.requests == []  # nothing is retried once a stream has started


def test_switching_protocols_is_a_502_without_a_transport_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def small(ex: Exchange) -> bool:
        await ex.send(head("101 Switching Protocols", "upgrade: h2c", "connection: upgrade") + b"\x00\x00\x12\x04")
        await ex.until_the_client_leaves()
        return False

    caplog.set_level(logging.DEBUG, logger="asyncio")
    with _gateway(small) as (gw, worker, _):
        r = _ask(gw, "alice", stream=False)
        assert r.status_code == 502
        assert "switched protocols (101)" in r.json()["error"]["message"]
        assert worker.closed_by_client.wait(5)  # the connection was dropped, not pooled
    noisy = [
        f"{r.name} {r.levelname}: {r.getMessage()}"
        for r in caplog.records
        if (r.name == "asyncio" and r.levelno >= logging.WARNING) or "Fatal error" in r.getMessage() or r.exc_info
    ]
    assert noisy == []
