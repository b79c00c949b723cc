"""An OpenAI-compatible worker for tests that can be told to misbehave.

The request body's `x_test` field (which the gateway passes through untouched, like any unknown field) picks
the behaviour: {"sleep": s}, {"status": n, "body": "..."}, {"die_after": k} (stream: k chunks, then the
connection drops); the answer itself: {"content": text, "finish_reason": r, "logprob": per-token logprob}.
{"chunked": bytes} (a 200 of that many bytes without content-length), {"die_mid_event": k} (stream: k
events, then half of one, then the connection drops), {"stall_after": k} (stream: k events, then nothing for a
minute, the connection open), {"crlf": true} and {"gate": true} (see `_events`).
Usage: {"prompt_tokens": k} (what the worker says the prompt was; default 7); a stream sends its usage chunk
only when asked, as vLLM does, or {"usage_on_last": true} on its last content chunk (llama.cpp's way), and
{"null_usage": true} adds `"usage": null` to every other chunk (OpenAI's way); {"cached_tokens": k} reports k
of the prompt's tokens as served from the prefix cache (vLLM's prompt_tokens_details). Like vLLM, the answer has `n`
choices for each prompt of a completions prompt list.
`Journal.always` applies a behaviour to every request. Every request is recorded, and so is each one the client
abandoned. The Responses and Messages APIs answer in tests/upstream_apis.py."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Journal:
    bodies: list[dict[str, Any]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    authorization: list[str] = field(default_factory=list)  # each request's Authorization header ("" if none)
    always: dict[str, Any] = field(default_factory=dict)  # behaviour for every request (a test may change it)
    # {"gate": true}: a stream sends its first event, then waits until a test sets this
    gate: threading.Event = field(default_factory=threading.Event)


def _usage(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def _choices(body: dict[str, Any]) -> int:
    """`n` for each prompt (a list of strings or of token-id lists is several prompts), as vLLM answers."""
    prompt = body.get("prompt")
    prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
    return prompts * int(body.get("n") or 1)


async def hung_up_within(request: Request, seconds: float) -> bool:
    """Sleep, but return True as soon as the client disconnects."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def _bytes(size: int) -> Any:
    block = b" " * 65536
    while size > 0:
        yield block[: min(size, len(block))]
        size -= len(block)


def make_upstream(model: str, journal: Journal | None = None) -> Starlette:
    journal = journal if journal is not None else Journal()

    async def models(_: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "test"}]})

    async def generate(request: Request) -> Response:
        body = json.loads(await request.body())
        journal.bodies.append(body)
        journal.authorization.append(request.headers.get("authorization", ""))
        test = {**journal.always, **(body.get("x_test") or {})}
        if body.get("model") != model:
            return JSONResponse(
                {
                    "error": {
                        "message": f"The model `{body.get('model')}` does not exist.",
                        "type": "NotFoundError",
                        "param": "model",
                        "code": 404,
                    }
                },
                404,
            )
        if "chunked" in test:  # an answer of this many bytes with no content-length
            size = int(test["chunked"])
            return StreamingResponse(_bytes(size), media_type="application/json")
        if "status" in test:
            return Response(
                test.get("body", ""), status_code=test["status"], media_type=test.get("type", "application/json")
            )
        if "sleep" in test and await hung_up_within(request, test["sleep"]):
            # Like vLLM: a request whose client left is aborted, and we note that it was.
            journal.cancelled.append(body.get("x_id", "?"))
            return Response(status_code=499)
        if body.get("stream"):
            return StreamingResponse(_events(body, test, journal), media_type="text/event-stream")
        completion = int(body.get("max_tokens") or 5)
        kind = "chat.completion" if "messages" in body else "text_completion"
        text = test.get("content", "word " * completion)
        tokens = text.split()
        completion = len(tokens) if "content" in test else completion
        count = _choices(body)
        choice: dict[str, Any] = {"index": 0, "finish_reason": test.get("finish_reason", "length")}
        lp = float(test.get("logprob", -0.5))
        if "messages" in body:
            choice["message"] = {"role": "assistant", "content": text}
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [{"token": t, "logprob": lp, "top_logprobs": []} for t in tokens]}
        else:
            choice["text"] = text
            if body.get("logprobs") is not None:
                choice["logprobs"] = {"tokens": tokens, "token_logprobs": [lp] * len(tokens)}
        return JSONResponse(
            {
                "id": "cmpl-test",
                "object": kind,
                "created": int(time.time()),
                "model": model,
                "choices": [{**choice, "index": i} for i in range(count)],
                "usage": _usage(int(test.get("prompt_tokens", 7)), completion * count, test.get("cached_tokens")),
                "echo": body,
            }
        )

    async def _events(body: dict[str, Any], test: dict[str, Any], journal: Journal) -> Any:
        n = int(body.get("max_tokens") or 5)
        count = _choices(body)
        usage = _usage(int(test.get("prompt_tokens", 7)), n * count, test.get("cached_tokens"))
        asked = bool((body.get("stream_options") or {}).get("include_usage"))
        # {"crlf": true}: lines end in CRLF and fields have no space after the colon, as SSE allows (sse-starlette's
        # default, which llama-cpp-python's server uses)
        prefix, end = (b"data:", b"\r\n\r\n") if test.get("crlf") else (b"data: ", b"\n\n")
        try:
            for i in range(n):
                if i == 1 and test.get("gate"):
                    await asyncio.to_thread(journal.gate.wait, 30)
                if "die_after" in test and i == test["die_after"]:
                    # A moment after its last event, as a real worker dies: aiohttp drops bytes it has buffered
                    # once it sees the broken payload, so dying within microseconds made the test flaky.
                    await asyncio.sleep(0.05)
                    raise ConnectionAbortedError("worker died mid-stream")
                if "die_mid_event" in test and i == test["die_mid_event"]:
                    yield b'data: {"id": "chunk-test", "choi'  # half an event, then the connection drops
                    await asyncio.sleep(0.05)
                    raise ConnectionAbortedError("worker died mid-event")
                if "chunk_sleep" in test:
                    await asyncio.sleep(test["chunk_sleep"])
                if "stall_after" in test and i == test["stall_after"]:
                    await asyncio.sleep(60)  # a long generation: events stop coming, the connection stays open
                for index in range(count):
                    last = i == n - 1 and index == count - 1
                    chunk: dict[str, Any] = {
                        "id": "chunk-test",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": model,
                        # like vLLM, the last content chunk carries the finish reason
                        "choices": [
                            {
                                "index": index,
                                "delta": {"content": f"w{i} "},
                                "finish_reason": "length" if i == n - 1 else None,
                            }
                        ],
                    }
                    if asked and test.get("usage_on_last") and last:
                        chunk["usage"] = usage
                    elif asked and test.get("null_usage"):
                        chunk["usage"] = None
                    yield prefix + json.dumps(chunk).encode() + end
            if asked and not test.get("usage_on_last"):
                final = {
                    "id": "chunk-test",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                yield prefix + json.dumps(final).encode() + end
            yield prefix + b"[DONE]" + end
        except (asyncio.CancelledError, GeneratorExit):
            journal.cancelled.append(body.get("x_id", "?"))
            raise

    from tests.upstream_apis import embeddings_handler, messages_handler, responses_handler  # they import Journal

    return Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", generate, methods=["POST"]),
            Route("/v1/completions", generate, methods=["POST"]),
            Route("/v1/responses", responses_handler(model, journal), methods=["POST"]),
            Route("/v1/messages", messages_handler(model, journal), methods=["POST"]),
            Route("/v1/embeddings", embeddings_handler(model, journal), methods=["POST"]),
        ]
    )
