"""What a request leaves behind: one decision record per request, built by a Trace as the request goes and
written through a Recorder (the sink, the large model's prices for the always-large baseline, and whether
prompts are kept). Nothing here knows the service."""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass

import orjson

from router.core import costs
from router.core.limits import estimate_tokens
from router.core.ports import DecisionSink
from router.core.records import DecisionRecord
from router.core.tiers import Caller
from router.core.types import Prices, Reason, Routed, Worker
from router.errors import UpstreamFailed
from router.protocol import Prompt

__all__ = ["Recorder", "Trace", "answer_usage", "usage_of"]


@dataclass(frozen=True, slots=True)
class Recorder:
    sink: DecisionSink | None
    large_prices: Prices  # what the always-large baseline costs
    store_prompts: bool = False


class Trace:
    """What the service learns about one request as it goes, turned into a DecisionRecord at the end."""

    def __init__(self, recorder: Recorder, caller: Caller, prompt: Prompt, request_id: str) -> None:
        self.recorder = recorder
        self.caller = caller
        self.prompt = prompt
        self.request = prompt.request
        self.request_id = request_id
        self.started = time.time()
        self._t0 = time.perf_counter()
        self.routed: Routed | None = None
        self.reason: Reason | None = None
        self.usage: tuple[int, int] | None = None  # prompt, completion
        self.ttft_ms: float | None = None
        self.cache_hit = False
        self.escalated = False
        self.baseline = True  # False for a cascade's escalated draft: the answer's record carries the baseline
        self._done = False

    def first_chunk(self) -> None:
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - self._t0) * 1000

    def finish(self, status: int, *, reason: Reason | None = None, estimated_completion: int | None = None) -> None:
        sink = self.recorder.sink
        if self._done or sink is None:
            return
        self._done = True
        latency = (time.perf_counter() - self._t0) * 1000
        rec, routed = self.recorder, self.routed
        usage = self.usage
        if usage is None and estimated_completion is not None:
            usage = (estimate_tokens(self.prompt.tokens, 0), estimated_completion)
        prompt_tokens, completion_tokens = usage if usage else (None, None)
        cost = cost_large = 0.0
        if usage and routed is not None:
            cost = 0.0 if self.cache_hit else costs.cost(routed.worker.prices, *usage)
            cost_large = costs.cost(rec.large_prices, *usage) if self.baseline else 0.0
        d = routed.decision if routed else None
        sink.emit(
            DecisionRecord(
                ts=self.started,
                request_id=self.request_id,
                tier=self.caller.tier.name,
                caller=_caller_hash(self.caller.identity),
                model_requested=self.request.model,
                model=routed.worker.model if routed else "",
                worker=routed.worker.name if routed else "",
                role=routed.worker.role.value if routed else "",
                score=d.score if d else None,
                threshold=d.threshold if d else None,
                reason=str(reason or (d.reason if d else "")),
                escalated=self.escalated,
                cache_hit=self.cache_hit,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                ttft_ms=self.ttft_ms if self.ttft_ms is not None else latency,
                latency_ms=latency,
                status=status,
                cost=cost,
                cost_large=cost_large,
                prompt=self.prompt.text if rec.store_prompts else None,
            )
        )


@functools.lru_cache(maxsize=4096)
def _caller_hash(identity: str) -> str:
    """What the ledger keeps of a caller: a short hash of its identity (itself a key hash or an HMAC), cached
    because the same callers come back request after request."""
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def usage_of(body: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens from an OpenAI `usage` object."""
    try:
        return _usage(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


def answer_usage(worker: Worker, body: bytes) -> tuple[int, int] | None:
    """The usage of a worker's 200 answer, which must be a JSON object: anything else is the worker failing
    (a 502 for the caller, never cached), not an answer to pass on."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise UpstreamFailed(
            f"worker {worker.name!r} answered 200 with a body that is not a JSON object: {body[:100]!r}",
            worker=worker.name,
        )
    return _usage(doc)


def _usage(doc: object) -> tuple[int, int] | None:
    usage = doc.get("usage") if isinstance(doc, dict) else None
    if not isinstance(usage, dict):
        return None
    try:
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    except (TypeError, ValueError, OverflowError):
        return None
