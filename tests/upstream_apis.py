"""The Responses and Messages APIs of the scriptable test worker (tests/upstream.py), in vLLM's shapes (checked
against vLLM CPU 0.32.0): the same `x_test` behaviours ({"status": n, "body": ...}, {"die_after": k},
{"prompt_tokens": k}); `max_output_tokens` / `max_tokens` words are generated."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tests.upstream import Journal, hung_up_within

Handler = Callable[[Request], Any]


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


async def _read(
    request: Request, journal: Journal, model: str
) -> tuple[dict[str, Any], dict[str, Any], Response | None]:
    body = json.loads(await request.body())
    journal.bodies.append(body)
    journal.authorization.append(request.headers.get("authorization", ""))
    test = {**journal.always, **(body.get("x_test") or {})}
    if body.get("model") != model:
        error = {"message": f"The model `{body.get('model')}` does not exist.", "type": "NotFoundError", "code": 404}
        return body, test, JSONResponse({"error": error}, 404)
    if "status" in test:
        return body, test, Response(test.get("body", ""), status_code=test["status"], media_type="application/json")
    if "sleep" in test and await hung_up_within(request, test["sleep"]):  # as chat completions do
        return body, test, Response(status_code=499)
    return body, test, None


async def _stream(events: list[bytes], test: dict[str, Any]) -> AsyncIterator[bytes]:
    for i, event in enumerate(events):
        if "die_after" in test and i == test["die_after"]:
            await asyncio.sleep(0.05)  # a moment after the last event, as a real worker dies
            raise ConnectionAbortedError("worker died mid-stream")
        if "stall_after" in test and i == test["stall_after"]:
            await asyncio.sleep(60)  # a long generation: events stop coming, the connection stays open
        yield event


def responses_handler(model: str, journal: Journal) -> Handler:
    async def responses(request: Request) -> Response:
        body, test, refused = await _read(request, journal, model)
        if refused is not None:
            return refused
        n = int(body.get("max_output_tokens") or 5)
        prompt = int(test.get("prompt_tokens", 7))
        usage = {"input_tokens": prompt, "output_tokens": n, "total_tokens": prompt + n}
        text = "word " * n
        item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip
        done = {"id": "resp_test", "object": "response", "created_at": 0, "model": model, "status": "completed",
                "output": [item], "usage": usage, "echo": body}  # fmt: skip
        if not body.get("stream"):
            return JSONResponse(done)
        started = {**done, "status": "in_progress", "output": [], "usage": None}
        opened = {**item, "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        events = [
            _event("response.created", {"type": "response.created", "response": started, "sequence_number": 0}),
            _event(
                "response.output_item.added",
                {"type": "response.output_item.added", "item": opened, "output_index": 0, "sequence_number": 0},
            ),
            _event(
                "response.content_part.added",
                {
                    "type": "response.content_part.added",
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "part": part,
                    "sequence_number": 0,
                },
            ),
        ]
        for i in range(n):
            delta = {"type": "response.output_text.delta", "delta": "word ", "item_id": "msg_1", "output_index": 0,
                     "content_index": 0, "sequence_number": i + 1}  # fmt: skip
            events.append(_event("response.output_text.delta", delta))
        completed = {"type": "response.completed", "response": done, "sequence_number": n + 1}
        events.append(_event("response.completed", completed))
        return StreamingResponse(_stream(events, test), media_type="text/event-stream")

    return responses


def messages_handler(model: str, journal: Journal) -> Handler:
    async def messages(request: Request) -> Response:
        body, test, refused = await _read(request, journal, model)
        if refused is not None:
            return refused
        n = int(body["max_tokens"])
        prompt = int(test.get("prompt_tokens", 7))
        message = {"id": "msg_test", "type": "message", "role": "assistant", "model": model,
                   "content": [{"type": "text", "text": "word " * n}], "stop_reason": "max_tokens",
                   "stop_sequence": None, "usage": {"input_tokens": prompt, "output_tokens": n}}  # fmt: skip
        if not body.get("stream"):
            return JSONResponse(message)
        start = {**message, "content": [], "stop_reason": None, "usage": {"input_tokens": prompt, "output_tokens": 0}}
        events = [
            _event("message_start", {"type": "message_start", "message": start}),
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
        ]
        for _ in range(n):
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "word "}}
            events.append(_event("content_block_delta", delta))
        # Anthropic's own message_delta carries only output tokens (vLLM's adds input_tokens)
        usage = {"output_tokens": n} if test.get("delta_output_only") else {"input_tokens": prompt, "output_tokens": n}
        events += [
            _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": usage}),
            _event("message_stop", {"type": "message_stop"}),
        ]
        return StreamingResponse(_stream(events, test), media_type="text/event-stream")

    return messages


def embeddings_handler(model: str, journal: Journal) -> Handler:
    """vLLM's answer: one vector per input, usage with prompt tokens only (a token per word here)."""

    async def embeddings(request: Request) -> Response:
        body, _, refused = await _read(request, journal, model)
        if refused is not None:
            return refused
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if inputs and isinstance(inputs[0], int):
            inputs = [inputs]
        tokens = sum(len(i.split()) if isinstance(i, str) else len(i) for i in inputs)
        data = [{"object": "embedding", "index": i, "embedding": [0.5, -0.5]} for i in range(len(inputs))]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "model": model, "data": data, "usage": usage})

    return embeddings
