"""The ceiling for a gateway in Python: a bare pass-through (Starlette + aiohttp; llm-triage serves on the same
Starlette) that forwards a chat completion to one upstream and its answer back, JSON or streamed, and does
nothing else.

    python bench/bare_proxy.py PORT UPSTREAM_BASE_URL
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def build(upstream: str) -> Starlette:
    session: list[aiohttp.ClientSession] = []

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
        yield
        await session[0].close()

    async def relay_post(request: Request) -> Response:
        body = await request.body()
        path = request.url.path.removeprefix("/v1")  # the same route upstream: chat, responses or messages
        reply = await session[0].post(upstream + path, data=body, headers={"content-type": "application/json"})
        if reply.content_type == "text/event-stream":

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in reply.content.iter_any():
                        yield chunk
                finally:
                    reply.release()

            return StreamingResponse(relay(), status_code=reply.status, media_type="text/event-stream")
        data = await reply.read()
        reply.release()
        return Response(data, status_code=reply.status, media_type="application/json")

    paths = ("/v1/chat/completions", "/v1/responses", "/v1/messages")
    return Starlette(routes=[Route(p, relay_post, methods=["POST"]) for p in paths], lifespan=lifespan)


if __name__ == "__main__":
    uvicorn.run(
        build(sys.argv[2]),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
