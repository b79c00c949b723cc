"""OpenAI wire types. Requests are validated for what the gateway needs and otherwise passed through:
unknown fields are allowed and the forwarded body is the caller's own dict, not a re-dump of these models."""

from __future__ import annotations

import functools
from typing import Annotated, Any, TypeGuard

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from router.core.limits import text_tokens
from router.errors import InvalidRequest

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_N",
    "MAX_TOKENS_BOUND",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "GenerationRequest",
    "Prompt",
    "StreamOptions",
    "affinity_key",
    "asking_usage",
    "choices",
    "decode_body",
    "draft_logprobs_request",
    "encode",
    "error_body",
    "prompt_text",
    "prompt_tokens",
    "read_draft",
    "strip_logprobs",
    "wants_usage",
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatMessage(_Open):
    role: str
    content: str | list[dict[str, Any]] | None = None


# Bounds that keep every later stage exact: a reservation of n x max_tokens stays far inside the 2^53 that
# Lua's numbers (and so the Redis limiter) hold exactly, and JSON this deep still re-encodes (orjson stops
# near 255 levels) and hashes for the cache key.
MAX_TOKENS_BOUND = 1 << 24  # no served model has a context near 16.7M tokens
MAX_N = 128  # OpenAI's own ceiling for `n`; a tier's max_n is usually far lower
MAX_JSON_DEPTH = 64

# Counts are whole numbers: "100000", 99.5 and true are refused naming the field. A whole number written as a
# float (100000.0, which JSON Schema and so the OpenAPI document count as an integer) is taken at its value and
# forwarded as an int (see decode_body). A lax int took all of them while the body kept the float or string, and
# the tier's cap, reading the body, let them through unreserved.
MaxTokens = Annotated[int, Field(strict=True, ge=1, le=MAX_TOKENS_BOUND)]
_COUNTS = ("max_tokens", "max_completion_tokens", "n")


class GenerationRequest(_Open):
    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None
    n: Annotated[int, Field(strict=True, ge=1, le=MAX_N)] | None = None
    temperature: float | None = Field(default=None, ge=0)

    @field_validator("temperature", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        # JSON's true/false are not numbers, though Python's bool is an int.
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value

    @field_validator(*_COUNTS, mode="before", check_fields=False)
    @classmethod
    def _whole(cls, value: Any) -> Any:
        return int(value) if isinstance(value, float) and value.is_integer() else value


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: MaxTokens | None = None


TokenId = Annotated[int, Field(ge=0, lt=1 << 31)]  # vocabularies are far smaller; JSON parsers stop at 64 bits


class CompletionRequest(GenerationRequest):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]


def decode_body(raw: bytes, schema: type[GenerationRequest]) -> tuple[dict[str, Any], GenerationRequest]:
    """Parse and validate a request body; returns the caller's dict (forwarded as is) and its typed view."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    # Only a body with that many brackets can be that deep: the walk is skipped for ordinary requests.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _deeper_than(payload, MAX_JSON_DEPTH):
        raise InvalidRequest(f"request body is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        typed = schema.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"], param=param) from None
    for count in _COUNTS:
        if type(payload.get(count)) is float:  # a whole number written as a float: the worker gets the int
            payload[count] = getattr(typed, count)
    return payload, typed


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` levels. Level by level, with exact type checks (orjson makes
    plain dicts and lists): 8x faster than a stack of (node, depth) pairs on a body of 30,000 small messages,
    which took 32 ms; no recursion limit to hit."""
    level, depth = [value], 1
    while level:
        if depth > limit:
            return True
        below = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    below.append(child)
        level, depth = below, depth + 1
    return False


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


_PROMPT_FIELDS = ("tools", "functions")  # request fields a chat template renders into the prompt


def prompt_tokens(request: GenerationRequest) -> int:
    """Estimated tokens of everything the worker reads as the prompt, before it counts them: a chat's whole
    conversation (text parts, and a message's other fields such as tool calls, as JSON) and its tool
    definitions; a completion's prompts, token ids one token each."""
    if isinstance(request, ChatCompletionRequest):
        total = 0
        for m in request.messages:
            total += text_tokens(_text_of(m.content))
            if m.__pydantic_extra__:  # the field itself: `model_extra` is a property, ~0.4 us a message
                total += _json_tokens(m.__pydantic_extra__)
        extra = request.__pydantic_extra__ or {}
        return total + sum(_json_tokens(extra[f]) for f in _PROMPT_FIELDS if extra.get(f))
    if isinstance(request, CompletionRequest):
        prompt = request.prompt
        if isinstance(prompt, str):
            return text_tokens(prompt)
        return sum(text_tokens(p) if isinstance(p, str) else len(p) if isinstance(p, list) else 1 for p in prompt)
    return 0


def _json_tokens(value: Any) -> int:
    try:
        return text_tokens(orjson.dumps(value).decode())
    except TypeError:  # not JSON (cannot come from a parsed body)
        return 0


def choices(request: GenerationRequest) -> int:
    """Completions one request asks for: `n` for each prompt (a completions prompt may be a list of prompts,
    as strings or as token-id lists; a single list of token ids is one prompt)."""
    prompt = request.prompt if isinstance(request, CompletionRequest) else None
    prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
    return prompts * (request.n or 1)


def wants_usage(request: GenerationRequest) -> bool:
    """Whether the caller asked for a stream's usage chunk."""
    return bool(request.stream_options and request.stream_options.include_usage)


def asking_usage(payload: dict[str, Any]) -> dict[str, Any]:
    """A stream's payload asking the worker for its usage chunk, so that the stream is settled from the
    worker's count whether or not the caller asked (a chunk the caller did not ask for is taken out)."""
    options = payload.get("stream_options")
    return {**payload, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}


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


def draft_logprobs_request(payload: dict[str, Any], chat: bool) -> tuple[dict[str, Any], bool]:
    """The payload for a cascade's draft, asking for token logprobs; and whether they were added (the caller
    did not ask, so they are removed from the answer it gets)."""
    if chat:
        if payload.get("logprobs"):
            return payload, False
        return {**payload, "logprobs": True}, True
    if payload.get("logprobs") is not None:
        return payload, False
    return {**payload, "logprobs": 1}, True


def read_draft(body: bytes) -> tuple[str, str | None, list[float]] | None:
    """(text, finish_reason, token logprobs) of an answer's first choice; None if it is not one."""
    try:
        doc = orjson.loads(body)
        choice = doc["choices"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(choice, dict):
        return None
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    if isinstance(message, dict) and message.get("tool_calls") and not text:
        text = orjson.dumps(message["tool_calls"]).decode()  # a tool call is an answer, not an empty one
    logprobs: list[float] = []
    lp = choice.get("logprobs")
    if isinstance(lp, dict):  # a worker's entry that is not a number (null, a string, a boolean) is skipped
        if isinstance(lp.get("content"), list):  # chat
            logprobs = [float(v) for t in lp["content"] if isinstance(t, dict) and _number(v := t.get("logprob"))]
        elif isinstance(lp.get("token_logprobs"), list):  # completions
            logprobs = [float(v) for v in lp["token_logprobs"] if _number(v)]
    finish = choice.get("finish_reason")
    return (text if isinstance(text, str) else "", finish if isinstance(finish, str) else None, logprobs)


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def strip_logprobs(body: bytes) -> bytes:
    """The answer without the logprobs the gateway asked for on the caller's behalf."""
    try:
        doc = orjson.loads(body)
        for choice in doc.get("choices") or []:
            if isinstance(choice, dict) and "logprobs" in choice:
                choice["logprobs"] = None
    except (orjson.JSONDecodeError, AttributeError):
        return body
    return orjson.dumps(doc)


def encode(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload)


def error_body(message: str, type_: str, code: str | int | None, param: str | None = None) -> bytes:
    """OpenAI's error envelope."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


class Prompt:
    """What the flows read of a request's prompt, computed once per request and only when first read: its text
    (scored, stored, judged), its token estimate (reserved, settled) and its affinity key (balanced)."""

    __slots__ = ("__dict__", "request")

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request

    @functools.cached_property
    def text(self) -> str:
        return prompt_text(self.request)

    @functools.cached_property
    def tokens(self) -> int:
        return prompt_tokens(self.request)

    @functools.cached_property
    def affinity(self) -> bytes:
        return affinity_key(self.request)
