"""An OpenAI-compatible upstream that answers instantly: a fixed chat completion (JSON, ~370 bytes) or a
fixed stream of 12 server-sent events. Raw asyncio + httptools so that it is never the bottleneck.

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


JSON_RESPONSE = _response(COMPLETION, b"application/json")
SSE_RESPONSE = _response(EVENTS, b"text/event-stream")
MODELS_RESPONSE = _response(MODELS, b"application/json")


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
        self.transport.write(SSE_RESPONSE if streamed else JSON_RESPONSE)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Handler, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
