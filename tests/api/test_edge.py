"""The direct dispatch of the generation routes (router.api.edge): what it serves, what it leaves to FastAPI,
and a defect in a directly served handler still answered in OpenAI's envelope, under uvicorn."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from router.api.app import create_app
from router.api.edge import Edge
from tests.api.conftest import Stack, settings_for
from tests.servers import ThreadedServer, serving, wait_until
from tests.upstream import Journal, make_upstream


def test_the_gateway_serves_generation_directly_and_the_rest_through_fastapi(stack: Stack) -> None:
    ok = stack.client.post(
        "/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert ok.status_code == 200 and ok.headers["x-triage-model"]
    assert stack.client.post("/v1/completions", json={"model": "auto", "prompt": "hi"}).status_code == 200
    assert stack.client.get("/v1/chat/completions").json()["error"]["code"] == "method_not_allowed"
    slash = stack.client.post("/v1/chat/completions/", json={"model": "auto", "messages": []})
    assert slash.status_code == 404 and slash.json()["error"]["code"] == "not_found"
    assert stack.client.get("/v1/models").status_code == 200


class _Breaks(Response):
    """A response that fails while being sent, before or after its start."""

    def __init__(self, after_start: bool) -> None:
        super().__init__(b"")
        self.after_start = after_start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.after_start:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
            await send({"type": "http.response.body", "body": b"12345", "more_body": True})
        raise RuntimeError("a defect")


def test_a_defect_on_the_direct_path_is_an_envelope_not_a_bare_500() -> None:
    async def raises(_: Request) -> Response:
        raise ValueError("a defect in the handler")

    async def breaks_before(_: Request) -> Response:
        return _Breaks(after_start=False)

    async def breaks_after(_: Request) -> Response:
        return _Breaks(after_start=True)

    app = Edge(direct={"/raises": raises, "/before": breaks_before, "/after": breaks_after})
    with serving(app) as server, httpx.Client(base_url=server.url) as client:
        for path in ("/raises", "/before"):
            r = client.post(path)
            assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error", path
        try:  # the status was sent: the connection is cut short, never followed by a second response
            r = client.post("/after")
            cut = r.status_code == 200 and len(r.content) < 10
        except httpx.RemoteProtocolError:
            cut = True
        assert cut
        assert client.post("/raises").status_code == 500  # the server still serves


def test_a_defect_on_the_messages_route_is_in_anthropics_envelope() -> None:
    async def raises(_: Request) -> Response:
        raise ValueError("a defect in the handler")

    with serving(Edge(direct={"/v1/messages": raises})) as server:
        r = httpx.post(f"{server.url}/v1/messages")
    assert r.status_code == 500
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "api_error"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_request_cut_by_the_end_of_a_graceful_shutdown_gets_a_503_in_its_envelope(path: str) -> None:
    """Regression: when graceful_shutdown_timeout (here 1 s) passed, uvicorn cancelled the request and answered a
    bare 500 `Internal Server Error` that no SDK reads as a retryable error."""
    journal = Journal()
    journal.always = {"sleep": 30}  # the worker takes longer than the shutdown allows
    body = {"model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    with serving(make_upstream("tiny-small", journal)) as small, serving(make_upstream("tiny-large")) as large:
        gateway = ThreadedServer(create_app(settings_for(f"{small.url}/v1", f"{large.url}/v1"))).start()
        try:
            with ThreadPoolExecutor(1) as pool:
                answer = pool.submit(httpx.post, f"{gateway.url}{path}", json=body, timeout=30)
                wait_until(lambda: journal.bodies, 10, "the request to reach the worker")
                gateway.stop()
                r = answer.result()
        finally:
            gateway.stop()
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    if path == "/v1/messages":  # Anthropic's SDK reads its own envelope only
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "overloaded_error"
    else:
        assert r.json()["error"]["code"] == "shutting_down" and r.json()["error"]["type"] == "server_error"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_a_stream_cut_by_the_end_of_a_graceful_shutdown_ends_with_an_error_event(path: str) -> None:
    """Regression: a stream still running when graceful_shutdown_timeout passed was cut without a word: the
    connection closed mid-body (an incomplete chunked read, which SDKs raise as a network error, nothing saying
    why or that a retry would do). It now ends, well framed, with the route's error event (OpenAI's `data:`
    line, Anthropic's `event: error`), code shutting_down."""
    journal = Journal()
    journal.always = {"stall_after": 1}  # one event, then a generation longer than the shutdown allows
    body: dict[str, object] = {"model": "auto", "max_tokens": 4, "stream": True}
    if path == "/v1/responses":
        body = {"model": "auto", "max_output_tokens": 4, "stream": True, "input": "hi"}
    else:
        body["messages"] = [{"role": "user", "content": "hi"}]
    with serving(make_upstream("tiny-small", journal)) as small, serving(make_upstream("tiny-large", journal)) as large:
        gateway = ThreadedServer(create_app(settings_for(f"{small.url}/v1", f"{large.url}/v1"))).start()
        try:
            with httpx.stream("POST", f"{gateway.url}{path}", json=body, timeout=30) as r:
                lines = r.iter_lines()
                assert r.status_code == 200
                first = next(line for line in lines if line.startswith("data:"))  # the first event has come
                gateway.stop()
                rest = list(lines)
        finally:
            gateway.stop()
    assert "error" not in first
    if path == "/v1/messages":
        assert "event: error" in rest
        error = json.loads(next(line for line in rest if line.startswith("data:"))[5:])
        assert error["type"] == "error" and error["error"]["type"] == "overloaded_error"
    elif path == "/v1/responses":
        assert "event: error" in rest
        error = json.loads(next(line for line in rest if line.startswith("data:"))[5:])
        assert error["type"] == "error" and error["code"] == "shutting_down"
    else:
        error = json.loads(next(line for line in rest if line.startswith("data:"))[5:])
        assert error["error"]["code"] == "shutting_down" and error["error"]["type"] == "server_error"
