"""Thin HTTP routes: read and validate, hand to the service, shape the answer. No decisions here."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from router.api.errors import error_response, internal_error_response, worker_error_body
from router.api.state import gateway
from router.api.streaming import ClientGone, ErrorEvent, PassThroughStream, openai_error_event, until_disconnect
from router.core.ports import UpstreamReply
from router.core.types import Routed
from router.errors import InvalidRequest, Overloaded, PayloadTooLarge, RateLimited, TriageError
from router.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    decode_body,
    messages,
    responses,
)
from router.protocol.embeddings import EmbeddingsRequest
from router.service.context import Endpoint, RequestOptions

__all__ = ["Api", "build_router", "generation_routes", "header_value"]

log = logging.getLogger("triage.api")

HandlerT = TypeVar("HandlerT", bound=Callable[..., Awaitable[Any]])
_CLIENT_CLOSED = 499  # nginx's convention; the client never sees it, logs do


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read straight from the ASGI messages (Starlette's stream() is an async generator per request)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    parts: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] != "http.request":  # http.disconnect: hung up, or cut off by server.body_timeout
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _refuse_encoded(request: Request) -> None:
    """A compressed body is refused saying so, rather than as JSON that does not parse."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise InvalidRequest(
            f"Content-Encoding {encoding[:40]!r} is not supported: send the request body uncompressed",
            param="content-encoding",
        )


# Printable ASCII but the escape itself: what a header value carries as it is.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_value(text: str) -> str:
    """A name a worker reported, fit for a response header: percent-encoded unless it is printable ASCII. A CR/LF
    (or any control or non-Latin-1 character) in a header made uvicorn drop the whole answer."""
    if text.isascii() and text.isprintable():
        return text
    return quote(text, safe=_HEADER_SAFE)


def _headers(routed: Routed, request_id: str) -> dict[str, str]:
    d = routed.decision
    return {
        "x-request-id": request_id,
        "x-triage-model": header_value(routed.worker.model),
        "x-triage-score": "-" if d.score is None else f"{d.score:.4f}",
        "x-triage-reason": d.reason.value,
    }


@dataclass(frozen=True, slots=True)
class Api:
    """What one generation route speaks: its endpoint, its request type, and its error envelope and event."""

    endpoint: Endpoint
    schema: type[GenerationRequest]
    error_event: ErrorEvent = openai_error_event
    anthropic: bool = False  # Anthropic's error envelope (its SDK reads no other)


def _responses_error_event(exc: TriageError) -> bytes:
    return responses.error_event(exc.message, exc.code)


def _messages_error_event(exc: TriageError) -> bytes:
    return messages.error_event(exc.message, exc.status)


CHAT = Api(Endpoint.CHAT, ChatCompletionRequest)
COMPLETIONS = Api(Endpoint.COMPLETIONS, CompletionRequest)
RESPONSES = Api(Endpoint.RESPONSES, responses.ResponsesRequest, _responses_error_event)
MESSAGES = Api(Endpoint.MESSAGES, messages.MessagesRequest, _messages_error_event, anthropic=True)
EMBEDDINGS = Api(Endpoint.EMBEDDINGS, EmbeddingsRequest)


def _reply(reply: UpstreamReply, headers: dict[str, str], api: Api) -> Response:
    body, media_type = reply.body, reply.content_type
    if reply.status >= 400:
        if not api.anthropic:  # a worker's 4xx reaches the SDK as OpenAI's envelope, whatever the worker sent
            body, media_type = worker_error_body(reply.status, body), "application/json"
        elif not _is_anthropic_envelope(body):
            # Anthropic's SDK reads its own envelope only; vLLM's /v1/messages names its error types its own way.
            text = _error_text(_worker_error(body), body, reply.status)
            body, media_type = messages.error_body(text, reply.status), "application/json"
    return Response(body, status_code=reply.status, media_type=media_type, headers=headers)


def _worker_error(body: bytes) -> dict[str, Any] | None:
    """The `error` object of a worker's error answer (OpenAI's and Anthropic's envelopes both have one)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else None


def _is_anthropic_envelope(body: bytes) -> bool:
    error = _worker_error(body)
    return error is not None and error.get("type") in messages.ERROR_TYPES and isinstance(error.get("message"), str)


def _error_text(error: dict[str, Any] | None, body: bytes, status: int) -> str:
    message = error.get("message") if error is not None else None
    if isinstance(message, str) and message:
        return message
    return body[:500].decode("utf-8", "replace") or f"worker answered {status}"


async def _generate(request: Request, api: Api) -> Response:
    state = gateway(request)
    request_id = os.urandom(16).hex()  # as unique as uuid4().hex, a third of its cost on the hot path
    base = {"x-request-id": request_id}
    try:
        caller = await state.auth.identify(request)
        limit = caller.tier.max_body_bytes or state.max_body_bytes
        raw = await _read_body(request, limit)
        try:
            payload, typed = decode_body(raw, api.schema)
        except InvalidRequest:
            _refuse_encoded(request)  # on the error path only: a compressed body never parses as JSON
            raise
        bypass = request.headers.get("x-triage-cache", "").lower() == "bypass"
        outcome = await until_disconnect(
            state.service.handle(caller, api.endpoint, payload, typed, RequestOptions(request_id, bypass)),
            request.receive,
        )
    except ClientGone:
        return Response(status_code=_CLIENT_CLOSED)
    except (RateLimited, Overloaded) as exc:
        return error_response(exc, {**base, **exc.headers}, anthropic=api.anthropic)
    except TriageError as exc:
        return error_response(exc, base, anthropic=api.anthropic)
    except Exception:  # a defect: logged with its request id, answered in the envelope, never a bare 500
        log.exception("unhandled error in request %s", request_id)
        return internal_error_response(base, anthropic=api.anthropic)
    headers = {**_headers(outcome.routed, request_id), **outcome.limit_headers}
    if outcome.cache:
        headers["x-triage-cache"] = outcome.cache
    if outcome.escalation:
        headers["x-triage-escalation"] = outcome.escalation
    if isinstance(outcome.reply, UpstreamReply):
        return _reply(outcome.reply, headers, api)
    return PassThroughStream(outcome.reply, headers, api.error_event)


def _get_and_head(router: APIRouter, path: str) -> Callable[[HandlerT], HandlerT]:
    """GET in the OpenAPI document, and HEAD beside it (probes and load balancers use HEAD) outside it."""

    def register(handler: HandlerT) -> HandlerT:
        router.add_api_route(path, handler, methods=["GET"])
        router.add_api_route(path, handler, methods=["HEAD"], include_in_schema=False)
        return handler

    return register


def generation_routes() -> dict[str, Callable[[Request], Awaitable[Response]]]:
    """The hot paths, by path: POST only. router.api.edge calls them straight from the ASGI call."""

    def route(api: Api) -> Callable[[Request], Awaitable[Response]]:
        async def generate(request: Request) -> Response:
            return await _generate(request, api)

        return generate

    apis = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETIONS, "/v1/responses": RESPONSES}
    apis |= {"/v1/messages": MESSAGES, "/v1/embeddings": EMBEDDINGS}
    return {path: route(api) for path, api in apis.items()}


def build_router() -> APIRouter:
    router = APIRouter()
    # Also routed here, as plain Starlette routes, so that an app without the direct dispatch serves them and
    # other methods on these paths get FastAPI's 405.
    for path, handler in generation_routes().items():
        router.add_route(path, handler, methods=["POST"])

    @_get_and_head(router, "/v1/models")
    async def models(request: Request) -> Response:
        return Response(gateway(request).models_body, media_type="application/json")

    @_get_and_head(router, "/metrics")
    async def metrics(request: Request) -> Response:
        metrics = gateway(request).metrics
        return Response(metrics.render(), headers={"content-type": metrics.content_type})

    @_get_and_head(router, "/health")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @_get_and_head(router, "/ready")
    async def ready(request: Request) -> Response:
        """Ready while at least one worker answers its health probe and its breaker is not open: the gateway
        can still serve what reaches it. A worker whose breaker is open reads as down."""
        state = gateway(request)
        workers = state.service.workers
        health = state.service.health()
        reachable = await asyncio.gather(*(state.backend.reachable(w) for w in workers))
        up = [ok and health.breakers[w.name] != "open" for w, ok in zip(workers, reachable, strict=True)]
        body = {
            "ready": any(up),
            "workers": {w.name: ("up" if ok else "down") for w, ok in zip(workers, up, strict=True)},
            "breakers": health.breakers,
            "limiter_errors": health.limiter_errors,  # store unreachable or faulty since start (see the log)
        }
        if state.policy_files is not None:
            src = state.policy_files.source
            body["classifier"] = {
                "path": src.classifier,
                "sha256": src.classifier_sha256,
                "answer_scorer_sha256": src.answer_scorer_sha256,
                "loaded_at": datetime.fromtimestamp(src.loaded_at, UTC).isoformat(timespec="seconds"),
                "reloads": src.reloads,
                "failed_reloads": src.failed_reloads,
            }
        return Response(orjson.dumps(body), status_code=200 if any(up) else 503, media_type="application/json")

    return router
