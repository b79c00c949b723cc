"""An OpenAI-compatible upstream that answers instantly: a fixed chat completion (JSON, ~370 bytes) or a
fixed stream of 12 server-sent events; on /v1/responses and /v1/messages, the same answer in those APIs' shapes
(vLLM's), streamed as 12 events each. Raw asyncio + httptools so that it is never the bottleneck.

    python bench/instant_upstream.py PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

import httptools
import uvloop

MODEL = "bench-model"
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "The answer is four."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }
).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}).encode()


def _chunk(i: int) -> bytes:
    delta = {"content": f"tok{i} "} if i else {"role": "assistant", "content": ""}
    return (
        b"data: "
        + json.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
        ).encode()
        + b"\n\n"
    )


EVENTS = b"".join(_chunk(i) for i in range(11)) + b"data: [DONE]\n\n"  # 12 events


def _response(body: bytes, content_type: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _event(name: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


_RESP_USAGE = {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}
_TEXT = {"type": "output_text", "text": "The answer is four.", "annotations": []}
_ITEM = {"id": "msg_bench", "type": "message", "role": "assistant", "status": "completed", "content": [_TEXT]}
RESPONSE = {"id": "resp_bench", "object": "response", "created_at": 1700000000, "model": MODEL,
            "status": "completed", "output": [_ITEM], "usage": _RESP_USAGE}  # fmt: skip
RESPONSE_EVENTS = (
    _event("response.created", {"type": "response.created", "sequence_number": 0,
                                 "response": {**RESPONSE, "status": "in_progress", "output": [], "usage": None}})
    + b"".join(
        _event("response.output_text.delta", {"type": "response.output_text.delta", "delta": f"tok{i} ",
                                              "item_id": "msg_bench", "output_index": 0, "content_index": 0,
                                              "sequence_number": i})
        for i in range(1, 11)
    )
    + _event("response.completed", {"type": "response.completed", "sequence_number": 11, "response": RESPONSE})
)  # fmt: skip
MESSAGE = {"id": "msg_bench", "type": "message", "role": "assistant", "model": MODEL,
           "content": [{"type": "text", "text": "The answer is four."}], "stop_reason": "end_turn",
           "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 5}}  # fmt: skip
MESSAGE_EVENTS = (
    _event("message_start", {"type": "message_start",
                              "message": {**MESSAGE, "content": [], "usage": {"input_tokens": 12, "output_tokens": 0}}})
    + b"".join(
        _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": f"tok{i} "}})
        for i in range(9)
    )
    + _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                               "usage": {"output_tokens": 5}})
    + _event("message_stop", {"type": "message_stop"})
)  # fmt: skip


JSON_RESPONSE = _response(COMPLETION, b"application/json")
SSE_RESPONSE = _response(EVENTS, b"text/event-stream")
MODELS_RESPONSE = _response(MODELS, b"application/json")
BY_API = {  # the path's end -> (JSON answer, stream)
    b"/responses": (_response(json.dumps(RESPONSE).encode(), b"application/json"),
                    _response(RESPONSE_EVENTS, b"text/event-stream")),
    b"/messages": (_response(json.dumps(MESSAGE).encode(), b"application/json"),
                   _response(MESSAGE_EVENTS, b"text/event-stream")),
}  # fmt: skip


class Handler(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.WriteTransport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.url.endswith(b"/models"):
            self.transport.write(MODELS_RESPONSE)
            return
        body = b"".join(self.body)
        streamed = b'"stream":true' in body or b'"stream": true' in body
        plain, stream = BY_API.get(self.url[self.url.rfind(b"/") :], (JSON_RESPONSE, SSE_RESPONSE))
        self.transport.write(stream if streamed else plain)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Handler, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
