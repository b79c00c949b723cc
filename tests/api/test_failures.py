"""Workers down or slow, clients leaving: clear errors, nothing left running upstream, the gateway lives."""

from __future__ import annotations

import json
import socket

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from router.api.app import create_app
from tests.api.conftest import Stack, settings_for
from tests.servers import ThreadedServer, serving, wait_until
from tests.upstream import Journal, make_upstream

SHORT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def test_worker_down_is_503_and_the_other_still_serves(dead_url: str) -> None:
    journal = Journal()
    with (
        serving(make_upstream("tiny-large", journal)) as large,
        serving(create_app(settings_for(dead_url, f"{large.url}/v1"))) as gw,
    ):
        down = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "tiny-small", "messages": SHORT})
        assert down.status_code == 503  # named model, no other replica: nothing to fail over to
        assert down.json()["error"]["code"] == "upstream_unavailable"
        assert "'small'" in down.json()["error"]["message"]
        up = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "tiny-large", "messages": SHORT})
        assert up.status_code == 200
        ready = httpx.get(f"{gw.url}/ready")
        assert ready.status_code == 200
        assert ready.json()["workers"] == {"small": "down", "large": "up"}


def test_ready_is_503_when_no_worker_answers(dead_url: str) -> None:
    other_dead = dead_url.replace(dead_url.rsplit(":", 1)[1].split("/")[0], "1")  # port 1: nothing there
    with serving(create_app(settings_for(dead_url, other_dead))) as gw:
        r = httpx.get(f"{gw.url}/ready")
        assert r.status_code == 503
        assert r.json()["ready"] is False
        assert httpx.get(f"{gw.url}/health").status_code == 200


def _send_and_hang_up(port: int, body: bytes, journal: Journal) -> None:
    """Sends a request and leaves once the worker has it: the leaving lands while the worker is answering."""
    x_id = json.loads(body)["x_id"]
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        wait_until(lambda: any(b.get("x_id") == x_id for b in journal.bodies), 10, f"{x_id} to reach the worker")


def test_client_leaving_cancels_the_upstream_request(stack: Stack) -> None:
    body = b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"x_id":"plain","x_test":{"sleep":1.2}}'
    _send_and_hang_up(stack.gateway.port, body, stack.small_journal)
    # Not cancelled, the worker would answer after 1.2 s and never record a cancellation.
    wait_until(lambda: "plain" in stack.small_journal.cancelled, 10, "the worker to see the request cancelled")


def test_client_leaving_a_stream_cancels_the_upstream_stream(stack: Stack) -> None:
    body = (
        b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":100,'
        b'"x_id":"stream","x_test":{"chunk_sleep":0.05}}'
    )
    _send_and_hang_up(stack.gateway.port, body, stack.small_journal)
    # 100 chunks at 50 ms would take 5 s; the upstream must notice well before that.
    wait_until(lambda: "stream" in stack.small_journal.cancelled, 1.5, "the worker to see the stream cancelled")


def test_openai_sdk_works_unmodified(stack: Stack) -> None:
    with openai.OpenAI(base_url=f"{stack.gateway.url}/v1", api_key="unused", max_retries=0) as client:
        _exercise_sdk(client)


def _exercise_sdk(client: openai.OpenAI) -> None:
    models = [m.id for m in client.models.list()]
    assert models == ["auto", "tiny-small", "tiny-large"]
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=SHORT, max_tokens=3)
    assert raw.headers["x-triage-model"] == "tiny-small"
    assert raw.parse().usage is not None and raw.parse().usage.completion_tokens == 3  # type: ignore[union-attr]
    stream = client.chat.completions.create(
        model="auto",
        messages=SHORT,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "w0 w1 w2 "
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 10
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=SHORT)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=[])
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="auto", messages=SHORT, extra_body={"x_test": {"sleep": 5}})
    assert info.value.status_code == 504


def test_gateway_survives_a_worker_restart(stack: Stack) -> None:
    """The pool must not keep handing out dead connections after a worker comes back."""
    assert (
        httpx.post(
            f"{stack.gateway.url}/v1/chat/completions", json={"model": "tiny-small", "messages": SHORT}
        ).status_code
        == 200
    )
    port = stack.small.port
    stack.small.stop()
    down = httpx.post(f"{stack.gateway.url}/v1/chat/completions", json={"model": "tiny-small", "messages": SHORT})
    assert down.status_code in (502, 503)
    revived = ThreadedServer(make_upstream("tiny-small"), port=port).start()
    try:
        again = httpx.post(f"{stack.gateway.url}/v1/chat/completions", json={"model": "tiny-small", "messages": SHORT})
        assert again.status_code == 200
    finally:
        revived.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("status", "says"), [(301, "redirect"), (307, "redirect"), (204, "status 204")])
def test_a_worker_answer_that_is_neither_200_nor_4xx_is_a_502(
    stack: Stack, status: int, says: str, stream: bool
) -> None:
    """Regression: a worker's redirect (a base_url moved from http to https, say) or a 204 reached the caller
    as that bare status with no body, which no SDK can read."""
    body = {"model": "tiny-small", "messages": SHORT, "stream": stream, "x_test": {"status": status}}
    r = stack.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["code"] == "upstream_error"
    assert says in error["message"] and "'small'" in error["message"]
