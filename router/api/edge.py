"""The gateway's ASGI application: FastAPI, with the POST routes that reach workers (chat, completions,
responses, messages, embeddings) dispatched straight from the ASGI call. FastAPI 0.165 runs a request through
eleven layers before a handler (error, telemetry, exception, body-limit and exit-stack middleware, then three
routers); such a request needs none of them, since its handler answers every error in its route's envelope
itself. Everything else (GET/HEAD, other methods on these paths, unknown paths, the OpenAPI document) still goes
through FastAPI."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from router.api.errors import error_response, internal_error_response
from router.errors import Overloaded

__all__ = ["Edge", "Handler"]

log = logging.getLogger("triage.api")

Handler = Callable[[Request], Awaitable[Response]]


class Edge(FastAPI):
    def __init__(self, *, direct: dict[str, Handler] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._direct = direct or {}  # POST path -> handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._direct.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # what Starlette sets, and what the routes read their state from
        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            await send(message)  # may wait for a slow reader first: nothing is written until it returns
            started = True

        try:
            response = await handler(Request(scope, receive))
            await response(scope, receive, sending)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when graceful_shutdown_timeout has passed, and would answer a bare
            # 500: the caller gets a 503 in the route's envelope, which SDKs retry (elsewhere, behind a balancer).
            if started:
                raise
            log.info("%s cut short by the shutdown: answered 503", scope["path"])
            stopping = Overloaded("the gateway is shutting down; retry", code="shutting_down")
            headers = {**stopping.headers, "connection": "close"}
            await error_response(stopping, headers, anthropic=scope["path"] == "/v1/messages")(scope, receive, send)
        except Exception:  # the handler answers its own errors: this is a defect, still never a bare 500
            log.exception("unhandled error on %s", scope["path"])
            if not started:  # in the route's own envelope: Anthropic's SDK reads no other
                anthropic = scope["path"] == "/v1/messages"
                await internal_error_response(anthropic=anthropic)(scope, receive, send)
