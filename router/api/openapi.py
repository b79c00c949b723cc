"""The OpenAPI document. The generation routes are plain Starlette routes (FastAPI's per-request dependency
machinery cost ~7% at concurrency 1), so FastAPI cannot see them: their operations are added here, with the
request bodies from the wire types in router.protocol and the error envelope each route's failures use (OpenAI's;
Anthropic's on /v1/messages)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from router.protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest
from router.protocol.embeddings import EmbeddingsRequest
from router.protocol.messages import ERROR_TYPES, MessagesRequest
from router.protocol.responses import ResponsesRequest

__all__ = ["install_openapi"]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"enum": sorted(ERROR_TYPES)}, "message": {"type": "string"}},
        },
    },
}
_FAILURES = {
    "400": "The request is malformed or asks for more than allowed",
    "401": "Unknown API key",
    "403": "The caller's tier may not use the named model",
    "404": "No such model",
    "413": "The body is over the size limit",
    "429": "A rate limit of the caller's tier was reached (Retry-After says when to retry)",
    "500": "A defect in the gateway (the envelope and x-request-id always come with it)",
    "502": "A worker failed, answered with something that is not an answer, or answered too much",
    "503": "No worker can answer, the rate-limit store is down or faulty, or the gateway sheds load",
    "504": "A worker did not answer in time",
}


def _operation(summary: str, schema: type[GenerationRequest], error: str = "Error") -> dict[str, Any]:
    envelope = {"application/json": {"schema": {"$ref": f"#/components/schemas/{error}"}}}
    responses: dict[str, Any] = {
        "200": {
            "description": "The worker's answer (JSON), or server-sent events when `stream` is true",
            "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {}}},
        }
    }
    responses.update({code: {"description": text, "content": envelope} for code, text in _FAILURES.items()})
    return {
        "summary": summary,
        "operationId": schema.__name__,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema.__name__}"}}},
        },
        "responses": responses,
    }


def install_openapi(app: FastAPI) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in (ChatCompletionRequest, CompletionRequest, ResponsesRequest, MessagesRequest, EmbeddingsRequest):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(schema.pop("$defs", {}))
            components[model.__name__] = schema
        components["Error"] = _ERROR
        components["AnthropicError"] = _ANTHROPIC_ERROR
        paths = doc["paths"]
        paths["/v1/chat/completions"] = {"post": _operation("Chat completion", ChatCompletionRequest)}
        paths["/v1/completions"] = {"post": _operation("Text completion", CompletionRequest)}
        paths["/v1/embeddings"] = {"post": _operation("Embeddings (not routed: role embeddings)", EmbeddingsRequest)}
        paths["/v1/responses"] = {"post": _operation("Response (OpenAI Responses API)", ResponsesRequest)}
        paths["/v1/messages"] = {
            "post": _operation("Message (Anthropic Messages API)", MessagesRequest, "AnthropicError")
        }
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]
