"""OpenAI wire types. Requests are validated for what the gateway needs and otherwise passed through:
unknown fields are allowed and the forwarded body is the caller's own dict, not a re-dump of these models."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.errors import InvalidRequest

__all__ = [
    "ChatCompletionRequest",
    "CompletionRequest",
    "GenerationRequest",
    "affinity_key",
    "decode_body",
    "encode",
    "error_body",
    "prompt_chars",
    "prompt_text",
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatMessage(_Open):
    role: str
    content: str | list[dict[str, Any]] | None = None


class GenerationRequest(_Open):
    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]


def decode_body(raw: bytes, schema: type[GenerationRequest]) -> tuple[dict[str, Any], GenerationRequest]:
    """Parse and validate a request body; returns the caller's dict (forwarded as is) and its typed view."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        typed = schema.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"], param=param) from None
    return payload, typed


def _text_of(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(str(part.get("text", "")) for part in content if part.get("type") == "text")


def prompt_text(request: GenerationRequest) -> str:
    """The text a difficulty scorer reads: the last user turn of a chat, or the (first) completion prompt."""
    if isinstance(request, ChatCompletionRequest):
        for message in reversed(request.messages):
            if message.role == "user":
                return _text_of(message.content)
        return _text_of(request.messages[-1].content)
    if isinstance(request, CompletionRequest):
        prompt = request.prompt
        if isinstance(prompt, str):
            return prompt
        if prompt and isinstance(prompt[0], str):
            return str(prompt[0])
        return ""  # token ids: nothing to read
    return ""


def prompt_chars(request: GenerationRequest) -> int:
    """Characters of everything the worker reads as the prompt (the whole conversation for a chat)."""
    if isinstance(request, ChatCompletionRequest):
        return sum(len(_text_of(m.content)) for m in request.messages)
    if isinstance(request, CompletionRequest) and isinstance(request.prompt, list) and request.prompt:
        first = request.prompt[0]
        return sum(len(str(p)) for p in request.prompt) if isinstance(first, str) else len(request.prompt) * 4
    return len(prompt_text(request))


AFFINITY_CHARS = 2048  # enough to tell conversations apart; hashing more buys nothing
AFFINITY_PROMPT_CHARS = 256  # a completion prompt grows turn by turn: only its start is stable


def affinity_key(request: GenerationRequest) -> bytes:
    """What requests of one conversation share at their start: a chat's system turns and first user turn (every
    later turn repeats them), or a completion prompt's beginning. Replicas chosen by it reuse their KV cache."""
    if isinstance(request, ChatCompletionRequest):
        parts = []
        for message in request.messages:
            parts.append(f"{message.role}\0{_text_of(message.content)}")
            if message.role == "user":
                break
        return "\0".join(parts)[:AFFINITY_CHARS].encode()
    return prompt_text(request)[:AFFINITY_PROMPT_CHARS].encode()


def encode(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload)


def error_body(message: str, type_: str, code: str | int | None, param: str | None = None) -> bytes:
    """OpenAI's error envelope."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})
