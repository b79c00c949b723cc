"""OpenAI's Responses API (`POST /v1/responses`): its request as the gateway reads it. `input` is a string or a
list of input items (messages whose content is a string or typed parts, tool calls and their outputs, ...);
`instructions` is the system prompt. Usage comes as `input_tokens`/`output_tokens`, on the answer and, streamed,
on the final `response.completed` event (router.service.recording reads both shapes)."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import Field

from router.core.limits import text_tokens
from router.protocol import GenerationRequest, MaxTokens, json_tokens

__all__ = ["ResponsesRequest", "error_event", "item_text"]

_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_PROMPT_FIELDS = ("tools",)
_ANSWER_ITEMS = frozenset(
    {"function_call", "function_call_output", "reasoning", "item_reference"}
)  # rendered into the prompt by the worker's chat template


class ResponsesRequest(GenerationRequest):
    BOUNDS = ("max_output_tokens",)
    PROMPT = "input"
    STREAM_REPORTS_USAGE = True
    CASCADES = False

    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: MaxTokens | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)

    def _items(self) -> list[dict[str, Any]]:
        return [{"role": "user", "content": self.input}] if isinstance(self.input, str) else self.input

    def scored_text(self) -> str:
        """The last user turn, as for chat: the same conversation scores alike through either API."""
        items = self._items()
        for item in reversed(items):
            if item.get("role") == "user":
                return item_text(item)
        return item_text(items[-1]) if items else ""

    def estimated_prompt_tokens(self) -> int:
        total = text_tokens(self.instructions or "")
        for item in self._items():
            text = item_text(item)
            total += text_tokens(text)
            rest = {k: v for k, v in item.items() if k not in ("content", "role", "type")}
            if rest and not text:  # a tool call, its output, a reference: read as JSON
                total += json_tokens(rest)
        extra = self.__pydantic_extra__ or {}
        return total + sum(json_tokens(extra[f]) for f in _PROMPT_FIELDS if extra.get(f))

    def first_turn(self) -> bool | None:
        """An answer in the input (an assistant message, a tool call or its output, reasoning) or a previous
        response means the conversation started before."""
        if self.previous_response_id is not None:
            return False
        return not any(i.get("role") == "assistant" or i.get("type") in _ANSWER_ITEMS for i in self._items())

    def worker_state(self) -> tuple[str, str] | None:
        return None if self.previous_response_id is None else ("previous_response_id", self.previous_response_id)

    def affinity_text(self) -> str:
        """What every turn of one conversation starts with: its instructions and first user turn."""
        first = next((item_text(i) for i in self._items() if i.get("role") == "user"), "")
        return f"{self.instructions or ''}\0{first}"


def item_text(item: dict[str, Any]) -> str:
    """The text of one input item: a message's string content or its text parts (images and files carry none)."""
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") in _TEXT_PARTS
        )
    output = item.get("output")  # a function call's output
    return output if isinstance(output, str) else ""


def error_event(message: str, code: str | int | None) -> bytes:
    """A Responses stream's `error` event (what OpenAI sends when a stream fails after it started)."""
    event = {"type": "error", "code": None if code is None else str(code), "message": message, "param": None}
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
