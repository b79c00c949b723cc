"""The only place exceptions become HTTP responses: the route's own error envelope (OpenAI's; Anthropic's on
/v1/messages), never a traceback."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from router.errors import TriageError
from router.protocol import error_body, messages

__all__ = ["error_response", "install_error_handlers", "internal_error_response"]

log = logging.getLogger("triage.api")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}  # OpenAI's codes are strings (or null)
_HTTP_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(exc: TriageError, headers: dict[str, str] | None = None, *, anthropic: bool = False) -> Response:
    body = (
        messages.error_body(exc.message, exc.status)
        if anthropic
        else error_body(exc.message, exc.type, exc.code, exc.param)
    )
    return Response(
        body,
        status_code=exc.status,
        media_type="application/json",
        headers=headers,
    )


def internal_error_response(headers: dict[str, str] | None = None, *, anthropic: bool = False) -> Response:
    message = "internal gateway error; see the gateway log"
    return Response(
        messages.error_body(message, 500) if anthropic else error_body(message, "server_error", "internal_error"),
        status_code=500,
        media_type="application/json",
        headers=headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    async def triage_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, TriageError)
        if exc.status >= 500:
            log.warning("%s: %s", exc.code, exc.message)
        return error_response(exc)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        type_ = _HTTP_TYPES.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error")
        return Response(
            error_body(str(exc.detail), type_, _HTTP_CODES.get(exc.status_code)),
            status_code=exc.status_code,
            media_type="application/json",
            headers=exc.headers,
        )

    async def validation_error(_: Request, exc: Exception) -> Response:
        return Response(
            error_body(str(exc), "invalid_request_error", "invalid_request"),
            status_code=400,
            media_type="application/json",
        )

    async def unexpected(_: Request, exc: Exception) -> Response:
        request_id = uuid.uuid4().hex
        log.error("unhandled error in request %s", request_id, exc_info=exc)
        return internal_error_response({"x-request-id": request_id})

    app.add_exception_handler(TriageError, triage_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
