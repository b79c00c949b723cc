"""The Responses and Messages requests as the service reads them (scored text, prompt size, affinity, held
state), their usage shapes, and Anthropic's error types. Pure logic: no I/O."""

from __future__ import annotations

import orjson
import pytest

from router.core.limits import text_tokens
from router.protocol import affinity_key, prompt_text, prompt_tokens
from router.protocol.messages import MessagesRequest, error_body, error_type
from router.protocol.responses import ResponsesRequest
from router.service.recording import usage_of


def test_responses_scores_the_last_user_turn_of_its_input() -> None:
    assert prompt_text(ResponsesRequest(model="auto", input="plain")) == "plain"
    items = [
        {"role": "user", "content": "first"},
        {"type": "function_call_output", "call_id": "c", "output": "42"},
        {"role": "user", "content": [{"type": "input_text", "text": "second"}, {"type": "input_image", "url": "x"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "answer"}]},
    ]
    request = ResponsesRequest(model="auto", input=items, instructions="be brief")
    assert prompt_text(request) == "second"
    tools = [{"type": "function", "name": "f", "parameters": {}}]
    with_tools = ResponsesRequest(model="auto", input=items, instructions="be brief", tools=tools)
    assert prompt_tokens(with_tools) > prompt_tokens(request) >= text_tokens("be brief") + text_tokens("first")
    assert affinity_key(request) == b"be brief\0first"
    assert request.worker_state() is None
    chained = ResponsesRequest(model="auto", input="next", previous_response_id="resp_1")
    assert chained.worker_state() == ("previous_response_id", "resp_1")


def test_messages_scores_the_text_blocks_of_the_last_user_message() -> None:
    request = MessagesRequest(
        model="auto",
        max_tokens=5,
        system=[{"type": "text", "text": "sys"}],
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": "9"},
                    {"type": "text", "text": "go"},
                ],
            },
        ],
    )
    assert prompt_text(request) == "go"
    assert prompt_tokens(request) > text_tokens("sys") + text_tokens("first") + text_tokens("go")  # tool blocks too
    assert affinity_key(request) == b"sys\0first"


@pytest.mark.parametrize(
    ("event", "usage"),
    [
        ({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}, (3, 4)),  # chat, completions
        ({"usage": {"input_tokens": 5, "output_tokens": 6, "total_tokens": 11}}, (5, 6)),  # responses, messages
        ({"type": "response.completed", "response": {"usage": {"input_tokens": 7, "output_tokens": 8}}}, (7, 8)),
        ({"type": "response.created", "response": {"usage": None}}, None),
        ({"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}}, (9, 1)),
        ({"type": "message_delta", "usage": {"output_tokens": 12}}, (0, 12)),  # the stream keeps the prompt's count
        ({"usage": {"input_tokens": "x"}}, None),
    ],
)
def test_usage_in_every_apis_shape(event: dict[str, object], usage: tuple[int, int] | None) -> None:
    read = usage_of(orjson.dumps(event))
    assert (None if read is None else (read.prompt, read.completion)) == usage


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
     (404, "not_found_error"), (413, "request_too_large"), (422, "invalid_request_error"),
     (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"), (503, "overloaded_error"),
     (504, "api_error")],
)  # fmt: skip
def test_anthropic_error_types(status: int, kind: str) -> None:
    assert error_type(status) == kind
    assert orjson.loads(error_body("m", status)) == {"type": "error", "error": {"type": kind, "message": "m"}}
