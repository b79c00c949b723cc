"""The OpenAPI document shows the generation routes, and a schemathesis run against the gateway in front of
fake workers finds no 5xx and no answer outside the document (bounded number of examples)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from router.api.app import create_app
from router.settings import WorkerSettings
from tests.api.conftest import settings_for
from tests.servers import serving

EXAMPLES = 60  # per route: bounded, a few seconds each


def _worker(model: str) -> Starlette:
    """A worker that answers any request at once and briefly, however large the max_tokens it is asked for."""

    async def generate(request: Request) -> Response:
        body = json.loads(await request.body())
        if body.get("stream"):

            async def events() -> Any:
                yield b'data: {"id": "c", "object": "chat.completion.chunk", "choices": []}\n\n'
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}
        return JSONResponse({"id": "c", "object": "chat.completion", "model": model, "choices": [choice]})

    async def responses(request: Request) -> Response:
        body = json.loads(await request.body())
        usage = {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}
        done = {"id": "r", "object": "response", "status": "completed", "output": [], "usage": usage}
        if body.get("stream"):
            event = {"type": "response.completed", "response": done, "sequence_number": 0}
            line = f"event: response.completed\ndata: {json.dumps(event)}\n\n".encode()
            return StreamingResponse(iter([line]), media_type="text/event-stream")
        return JSONResponse(done)

    async def messages(request: Request) -> Response:
        body = json.loads(await request.body())
        usage = {"input_tokens": 3, "output_tokens": 1}
        if body.get("stream"):
            line = b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
            return StreamingResponse(iter([line]), media_type="text/event-stream")
        return JSONResponse({"id": "m", "type": "message", "role": "assistant", "content": [], "usage": usage})

    async def embeddings(_: Request) -> Response:
        data = [{"object": "embedding", "index": 0, "embedding": [0.1]}]
        return JSONResponse({"object": "list", "data": data, "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model"}]})

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", generate, methods=["POST"]),
            Route("/v1/completions", generate, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
        ]
    )


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    with serving(_worker("tiny-small")) as small, serving(_worker("tiny-large")) as large:
        base = settings_for(f"{small.url}/v1", f"{large.url}/v1")
        embed = WorkerSettings(name="embed", role="embeddings", base_url=f"{small.url}/v1", model="tiny-small")
        app = create_app(base.model_copy(update={"workers": [*base.workers, embed]}))
        with serving(app) as gw:
            yield gw.url


def test_the_generation_routes_are_in_the_document(gateway_url: str) -> None:
    """Regression: /openapi.json left out both routes that matter."""
    doc = httpx.get(f"{gateway_url}/openapi.json").json()
    for path, schema in (
        ("/v1/chat/completions", "ChatCompletionRequest"),
        ("/v1/completions", "CompletionRequest"),
        ("/v1/responses", "ResponsesRequest"),
        ("/v1/messages", "MessagesRequest"),
        ("/v1/embeddings", "EmbeddingsRequest"),
    ):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{schema}"}
    schemas = doc["components"]["schemas"]
    assert "messages" in schemas["ChatCompletionRequest"]["required"]
    assert "input" in schemas["ResponsesRequest"]["required"]
    assert {"messages", "max_tokens"} <= set(schemas["MessagesRequest"]["required"])
    error = doc["paths"]["/v1/messages"]["post"]["responses"]["400"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/AnthropicError"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/v1/embeddings"]
)
def test_no_5xx_and_no_answer_outside_the_document(gateway_url: str, path: str, mode: GenerationMode) -> None:
    """Valid bodies get answers the document describes; invalid ones (negative mode) get 4xx, never 5xx."""
    operation = schemathesis.openapi.from_url(f"{gateway_url}/openapi.json")[path]["POST"]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(base_url=gateway_url)

    check()
