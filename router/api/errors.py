"""The only place exceptions become HTTP responses: the route's own error envelope (OpenAI's; Anthropic's on
/v1/messages), never a traceback."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from router.errors import TriageError
from router.protocol import error_body, messages

__all__ = ["error_response", "install_error_handlers", "internal_error_response", "worker_error_body"]

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


def worker_error_body(status: int, body: bytes) -> bytes:
    """A worker's 4xx as OpenAI's envelope, which the SDKs parse: passed on as it is when it is one; its fields
    mended when they are not what the SDKs expect (vLLM sends `code` as an integer, the SDKs' type says a string
    or null); built around the worker's words when it is no envelope at all (a proxy's page, FastAPI's
    `detail`, a bare string)."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        if _well_formed(error):
            return body
        mended = {
            **error,
            "message": _text(error.get("message")) or f"the worker answered {status}",
            "type": error.get("type") if isinstance(error.get("type"), str) else _type_of(status),
            "param": error.get("param") if isinstance(error.get("param"), str) else None,
            "code": _code(error.get("code")),
        }
        return orjson.dumps({"error": mended})
    words = error if isinstance(error, str) else None
    if words is None and isinstance(doc, dict):
        words = next((v for k in ("message", "detail") if isinstance(v := doc.get(k), str)), None)
    if words is None:
        words = body[:500].decode("utf-8", "replace").strip()
    return error_body(words[:500] or f"the worker answered {status}", _type_of(status), None)


def _well_formed(error: dict[str, Any]) -> bool:
    return (
        isinstance(error.get("message"), str)
        and isinstance(error.get("type"), str)
        and (error.get("param") is None or isinstance(error.get("param"), str))
        and (error.get("code") is None or isinstance(error.get("code"), str))
    )


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else orjson.dumps(value, default=str).decode()[:500]


def _code(value: object) -> str | None:
    """OpenAI's codes are strings or null: a worker's number becomes its digits; anything else, null."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _type_of(status: int) -> str:
    return _HTTP_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


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
