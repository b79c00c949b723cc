"""OpenAI-compatible worker client on aiohttp.

aiohttp rather than httpx on the hot path: in the gateway benchmark an httpx pass-through lost throughput as
concurrency grew (its pool scans every connection per request), while aiohttp kept 2-3x more req/s at c=64.
Bodies pass through untouched: requests are sent as given, answers and stream chunks are returned as bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

from router.core.ports import Backend, UpstreamReply, UpstreamStream
from router.core.types import Worker
from router.errors import UpstreamError, UpstreamFailed, UpstreamTimeout, UpstreamTooLarge, UpstreamUnavailable

__all__ = ["AiohttpBackend", "AiohttpStream", "BackendByProvider"]

# The User-Agent is given, not skipped: aiohttp's skip_auto_headers builds and sorts a header dict on every
# request (5% of a routed request's CPU in a profile), while a given one takes its fast path. Accept-Encoding
# too: aiohttp's own asks for gzip, and a worker (or a proxy before it) that compresses would hand the gateway
# bytes it cannot read as JSON, nor pass on without their header (auto_decompress is off).
_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity", "User-Agent": "llm-triage"}


def _translate(worker: Worker, exc: BaseException) -> UpstreamError:
    """aiohttp's exceptions -> the gateway's: refused/unreachable 503, silent too long 504, broken 502."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailable(f"worker {worker.name!r} is unreachable: {exc.os_error}", worker=worker.name)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout(f"worker {worker.name!r} did not answer within {worker.timeout:g} s", worker=worker.name)
    return UpstreamFailed(f"worker {worker.name!r} failed: {type(exc).__name__}: {exc}", worker=worker.name)


async def _read_bounded(worker: Worker, response: aiohttp.ClientResponse) -> bytes:
    """The whole answer, refused (and its connection dropped) once it outgrows worker.max_response_bytes."""
    limit = worker.max_response_bytes
    declared = response.content_length
    if declared is not None and declared <= limit:
        return await response.read()  # the common case: one read of a known, acceptable size
    data = bytearray()
    if declared is None:  # chunked: count while reading
        async for chunk in response.content.iter_any():
            data += chunk
            if len(data) > limit:
                break
        else:
            return bytes(data)
    raise UpstreamTooLarge(
        f"worker {worker.name!r} answered with more than max_response_bytes ({limit} bytes); the answer was "
        "dropped. Ask for fewer tokens or choices, or stream it."
    )


class AiohttpStream:
    """An open streamed answer; chunks are yielded as they arrive, without re-encoding."""

    def __init__(self, worker: Worker, response: aiohttp.ClientResponse) -> None:
        self._worker = worker
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(self._worker, exc) from None

    async def read_all(self) -> bytes:
        """The whole body (a non-200 answer to a stream request), bounded as a whole answer is: in size, and in
        time by the worker's timeout (unbounded, an endless error body grew memory, or held the request)."""
        worker = self._worker
        try:
            async with asyncio.timeout(worker.timeout):
                return await _read_bounded(worker, self._response)
        except UpstreamTooLarge:
            raise UpstreamFailed(
                f"worker {worker.name!r} answered status {self.status} with a body over max_response_bytes "
                f"({worker.max_response_bytes} bytes)",
                worker=worker.name,
            ) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(worker, exc) from None

    async def aclose(self) -> None:
        # close(), not release(): an unfinished stream must drop its connection so the worker aborts the
        # generation instead of the pool waiting for it to finish.
        if not self._response.closed:
            self._response.close()


class AiohttpBackend:
    def __init__(self, *, max_connections: int = 0) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[str, tuple[aiohttp.ClientTimeout, aiohttp.ClientTimeout]] = {}
        self._headers: dict[str, dict[str, str]] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _session_or_fail(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("AiohttpBackend.start() was not awaited")
        return self._session

    def _plan(self, worker: Worker) -> tuple[aiohttp.ClientTimeout, aiohttp.ClientTimeout, dict[str, str]]:
        """Per-worker timeouts (whole answer; silence inside a stream) and headers, built once."""
        timeouts = self._timeouts.get(worker.name)
        if timeouts is None:
            whole = aiohttp.ClientTimeout(total=worker.timeout, sock_connect=worker.connect_timeout)
            stream = aiohttp.ClientTimeout(total=None, sock_connect=worker.connect_timeout, sock_read=worker.timeout)
            timeouts = self._timeouts[worker.name] = (whole, stream)
            headers = dict(_HEADERS)
            if worker.api_key:
                headers["Authorization"] = f"Bearer {worker.api_key}"
            self._headers[worker.name] = headers
        return timeouts[0], timeouts[1], self._headers[worker.name]

    async def post(self, worker: Worker, path: str, body: bytes) -> UpstreamReply:
        whole, _, headers = self._plan(worker)
        try:
            async with self._session_or_fail().post(
                worker.base_url + path, data=body, headers=headers, timeout=whole
            ) as response:
                data = await _read_bounded(worker, response)
                return UpstreamReply(response.status, data, response.content_type or "application/json")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(worker, exc) from None

    async def open_stream(self, worker: Worker, path: str, body: bytes) -> AiohttpStream:
        _, stream, headers = self._plan(worker)
        try:
            response = await self._session_or_fail().post(
                worker.base_url + path, data=body, headers=headers, timeout=stream
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(worker, exc) from None
        return AiohttpStream(worker, response)

    async def reachable(self, worker: Worker) -> bool:
        _, _, headers = self._plan(worker)
        probe = aiohttp.ClientTimeout(total=min(worker.timeout, 2.0))
        try:
            async with self._session_or_fail().get(
                worker.base_url + "/models", headers=headers, timeout=probe
            ) as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False


class BackendByProvider:
    """Sends each worker's requests to the client for its provider: hosted APIs to `hosted`, the rest direct."""

    def __init__(self, direct: Backend, hosted: Backend) -> None:
        self._direct = direct
        self._hosted = hosted

    def _for(self, worker: Worker) -> Backend:
        return self._hosted if worker.provider == "litellm" else self._direct

    async def post(self, worker: Worker, path: str, body: bytes) -> UpstreamReply:
        return await self._for(worker).post(worker, path, body)

    async def open_stream(self, worker: Worker, path: str, body: bytes) -> UpstreamStream:
        return await self._for(worker).open_stream(worker, path, body)

    async def reachable(self, worker: Worker) -> bool:
        return await self._for(worker).reachable(worker)
