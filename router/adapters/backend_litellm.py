"""Workers that are hosted APIs (OpenAI, Anthropic, Bedrock, ...), called through litellm.

Only workers configured with `provider: litellm` come here; vLLM workers stay on the direct aiohttp client,
which is several times cheaper per request. litellm is imported on first use and is an optional extra
(`pip install llm-triage[hosted]`). Its answers are OpenAI-shaped already: they are serialised back to the
OpenAI JSON and SSE the caller expects."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson

from router.core.ports import UpstreamReply
from router.core.types import Prices, Worker
from router.errors import ConfigError, UpstreamError, UpstreamFailed, UpstreamTimeout, UpstreamUnavailable
from router.protocol import error_body

__all__ = ["LitellmBackend", "LitellmStream", "litellm_prices"]

# Request fields litellm takes as arguments; anything else goes to the provider untouched, in extra_body.
_KNOWN = frozenset(
    {
        "messages",
        "prompt",
        "temperature",
        "top_p",
        "n",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "seed",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "stream",
        "stream_options",
    }
)


def _litellm() -> Any:
    # litellm fetches its price table from GitHub at import unless told to use the copy it ships; these
    # machines must not reach out at run time, and a gateway should not depend on GitHub to start.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError:
        raise ConfigError("a worker has provider litellm: install llm-triage[hosted]") from None
    litellm.telemetry = False
    litellm.suppress_debug_info = True  # errors reach the caller and the log; no banner on stdout
    return litellm


def litellm_prices(model: str) -> Prices | None:
    """USD per million tokens from litellm's price table, or None for a model it does not list."""
    entry = _litellm().model_cost.get(model) or _litellm().model_cost.get(model.split("/", 1)[-1])
    if not isinstance(entry, dict) or "input_cost_per_token" not in entry:
        return None
    return Prices(
        float(entry["input_cost_per_token"]) * 1e6,
        float(entry.get("output_cost_per_token") or 0.0) * 1e6,
    )


def _translate(worker: Worker, exc: Exception) -> UpstreamError | UpstreamReply:
    """litellm's exceptions -> a retriable gateway error, or (a caller's 4xx) a reply to pass through."""
    if isinstance(exc, UpstreamError):  # the adapter's own refusal
        return exc
    lib = _litellm()
    status = getattr(exc, "status_code", None)
    message = str(getattr(exc, "message", exc))[:500]
    if isinstance(exc, lib.Timeout) or status == 408:
        return UpstreamTimeout(f"worker {worker.name!r} did not answer within {worker.timeout:g} s", worker=worker.name)
    if isinstance(exc, lib.APIConnectionError):
        return UpstreamUnavailable(f"worker {worker.name!r} is unreachable: {message}", worker=worker.name)
    if isinstance(status, int) and 400 <= status < 500 and status != 429:
        return UpstreamReply(status, error_body(message, "invalid_request_error", status), "application/json")
    # 429 here is the provider's quota, not the caller's: another worker may still serve.
    return UpstreamFailed(f"worker {worker.name!r} failed: {type(exc).__name__}: {message}", worker=worker.name)


class LitellmStream:
    """litellm's chunk iterator as OpenAI SSE bytes; the first chunk is read on open, so that a provider
    that refuses the request does so before the gateway answers 200."""

    def __init__(self, worker: Worker, chunks: Any, first: Any) -> None:
        self._worker = worker
        self._chunks = chunks
        self._first = first

    @property
    def status(self) -> int:
        return 200

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._first is not None:
            yield _event(self._first)
        try:
            async for chunk in self._chunks:
                yield _event(chunk)
        except Exception as exc:  # litellm raises its own tree; map what escapes a started stream
            err = _translate(self._worker, exc)
            raise (
                err if isinstance(err, UpstreamError) else UpstreamFailed(str(exc), worker=self._worker.name)
            ) from None
        yield b"data: [DONE]\n\n"

    async def read_all(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    async def aclose(self) -> None:
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()


def _event(chunk: Any) -> bytes:
    return b"data: " + orjson.dumps(chunk.model_dump(exclude_none=True)) + b"\n\n"


class LitellmBackend:
    def __init__(self) -> None:
        self._text_clients: dict[str, Any] = {}

    async def start(self) -> None:
        """Imports litellm before the first request: the import takes seconds (4 s on an idle core here, past 10 s
        on a busy machine), and on the event loop it would stall every request in flight."""
        await asyncio.to_thread(_litellm)

    def _text_client(self, worker: Worker, args: dict[str, Any]) -> Any:
        """litellm builds (and never closes) a new OpenAI client on every text completion to an `openai/`
        model; one client per worker, closed with the gateway, avoids a socket left to the garbage collector."""
        client = self._text_clients.get(worker.name)
        if client is None:
            import openai  # a dependency of litellm

            client = openai.AsyncOpenAI(base_url=args.get("api_base"), api_key=args.get("api_key"), max_retries=0)
            self._text_clients[worker.name] = client
        return client

    def _call_args(self, worker: Worker, body: bytes) -> dict[str, Any]:
        payload = orjson.loads(body)
        payload.pop("model", None)
        args = {k: v for k, v in payload.items() if k in _KNOWN}
        extra = {k: v for k, v in payload.items() if k not in _KNOWN}
        args.update(model=worker.provider_model or worker.model, timeout=worker.timeout, num_retries=0)
        if worker.base_url:
            args["api_base"] = worker.base_url
        if worker.api_key:
            args["api_key"] = worker.api_key
        elif worker.base_url:
            # A self-hosted OpenAI-compatible server often wants no key, but the openai client insists on one
            # (and would otherwise take OPENAI_API_KEY, a real key meant for someone else).
            args["api_key"] = "EMPTY"
        if extra:
            args["extra_body"] = extra
        return args

    async def _request(self, worker: Worker, path: str, args: dict[str, Any]) -> Any:
        if path not in ("/chat/completions", "/completions"):
            # The Responses and Messages APIs are served by workers that speak them (vLLM does); a hosted
            # provider behind litellm is refused naming the worker, and failover tries the others.
            raise UpstreamFailed(f"worker {worker.name!r} (litellm) does not serve {path}", worker=worker.name)
        lib = _litellm()
        if path == "/chat/completions":
            return await lib.acompletion(**args)
        if str(args["model"]).startswith("openai/"):
            args["client"] = self._text_client(worker, args)
        return await lib.atext_completion(**args)

    async def post(self, worker: Worker, path: str, body: bytes) -> UpstreamReply:
        args = self._call_args(worker, body)
        try:
            response = await self._request(worker, path, args)
        except Exception as exc:
            err = _translate(worker, exc)
            if isinstance(err, UpstreamReply):
                return err
            raise err from None
        return UpstreamReply(200, orjson.dumps(response.model_dump(exclude_none=True)), "application/json")

    async def open_stream(self, worker: Worker, path: str, body: bytes) -> LitellmStream | _Refused:
        args = self._call_args(worker, body)
        try:
            chunks = await self._request(worker, path, args)
            first = await anext(aiter(chunks), None)
        except Exception as exc:
            err = _translate(worker, exc)
            if isinstance(err, UpstreamReply):
                return _Refused(err)
            raise err from None
        return LitellmStream(worker, chunks, first)

    async def close(self) -> None:
        """Close the HTTP clients litellm caches between calls (it keeps them for the process's life)."""
        for client in self._text_clients.values():
            await client.close()
        self._text_clients.clear()
        if "litellm" in sys.modules:
            await _litellm().close_litellm_async_clients()

    async def reachable(self, worker: Worker) -> bool:
        # A hosted API is not probed (a probe would be a billed call): its breaker says when it is failing.
        return True


class _Refused:
    """A stream the provider refused with a 4xx: the status and error body, no chunks."""

    def __init__(self, reply: UpstreamReply) -> None:
        self._reply = reply

    @property
    def status(self) -> int:
        return self._reply.status

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._reply.body

    async def read_all(self) -> bytes:
        return self._reply.body

    async def aclose(self) -> None:
        return None
