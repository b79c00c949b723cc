"""Anthropic's Messages API (`POST /v1/messages`): its request as the gateway reads it, and its error envelope.
`system` is a string or text blocks; each message's content a string or content blocks (text, image, tool_use,
tool_result, ...); `max_tokens` is required. Usage comes as `input_tokens`/`output_tokens`: on the answer, and,
streamed, on `message_start` (the prompt) and `message_delta` (the completion so far)."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import Field

from router.core.limits import text_tokens
from router.protocol import GenerationRequest, MaxTokens, OpenModel, json_tokens

__all__ = [
    "ERROR_TYPES",
    "AnthropicMessage",
    "MessagesRequest",
    "blocks_text",
    "error_body",
    "error_event",
    "error_type",
]

_PROMPT_FIELDS = ("tools",)


class AnthropicMessage(OpenModel):
    role: str
    content: str | list[dict[str, Any]]


class MessagesRequest(GenerationRequest):
    STREAM_REPORTS_USAGE = True
    CASCADES = False

    max_tokens: MaxTokens  # required by the API
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None

    def scored_text(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return blocks_text(message.content)
        return blocks_text(self.messages[-1].content)

    def estimated_prompt_tokens(self) -> int:
        total = text_tokens(blocks_text(self.system))
        for m in self.messages:
            if isinstance(m.content, str):
                total += text_tokens(m.content)
                continue
            for block in m.content:
                # text is read as text; a tool call, a tool's result, a document: as JSON
                text = block.get("text") if block.get("type") == "text" else None
                total += text_tokens(text) if isinstance(text, str) else json_tokens(block)
        extra = self.__pydantic_extra__ or {}
        return total + sum(json_tokens(extra[f]) for f in _PROMPT_FIELDS if extra.get(f))

    def first_turn(self) -> bool | None:
        return not any(m.role == "assistant" for m in self.messages)

    def affinity_text(self) -> str:
        first = next((blocks_text(m.content) for m in self.messages if m.role == "user"), "")
        return f"{blocks_text(self.system)}\0{first}"  # whole: a conversation's key hashes all of it


def blocks_text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")


# Anthropic's error types by status (docs.anthropic.com/en/api/errors); 529 is its `overloaded_error`, but the
# gateway keeps its own 503 (load balancers and SDK retries read it) and names it overloaded too.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


ERROR_TYPES = frozenset({*_TYPES.values(), "api_error", "billing_error", "timeout_error"})


def error_type(status: int) -> str:
    return _TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")


def error_body(message: str, status: int) -> bytes:
    """Anthropic's error envelope."""
    return orjson.dumps({"type": "error", "error": {"type": error_type(status), "message": message}})


def error_event(message: str, status: int) -> bytes:
    """A Messages stream's `error` event (what Anthropic sends when a stream fails after it started)."""
    return b"event: error\ndata: " + error_body(message, status) + b"\n\n"
