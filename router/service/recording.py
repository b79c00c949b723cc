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

__all__ = ["Recorder", "Trace", "Usage", "answer_usage", "usage_of"]


@dataclass(frozen=True, slots=True)
class Usage:
    """A worker's `usage`: prompt and output tokens (reasoning included), and the parts priced apart."""

    prompt: int
    completion: int
    cached: int = 0  # prompt_tokens_details.cached_tokens (vLLM's prefix cache, a provider's prompt cache)
    reasoning: int = 0  # completion_tokens_details.reasoning_tokens (already part of `completion`)


@dataclass(frozen=True, slots=True)
class Recorder:
    sink: DecisionSink | None
    large_prices: Prices  # what the always-large baseline costs
    store_prompts: bool = False


class Trace:
    """What the service learns about one request as it goes, turned into a DecisionRecord at the end."""

    def __init__(self, recorder: Recorder, caller: Caller, prompt: Prompt, request_id: str, route: str = "") -> None:
        self.recorder = recorder
        self.route = route  # the API's path below /v1, for the ledger
        self.caller = caller
        self.prompt = prompt
        self.request = prompt.request
        self.request_id = request_id
        self.started = time.time()
        self._t0 = time.perf_counter()
        self.routed: Routed | None = None
        self.reason: Reason | None = None
        self.usage: tuple[int, int] | None = None  # prompt, completion
        self.cached_tokens = 0  # of the prompt's, served from the worker's prefix cache
        self.reasoning_tokens = 0  # of the completion's
        self.worker_seconds = 0.0  # wall time of this request's calls on workers (price_per_second)
        self.ttft_ms: float | None = None
        self.cache_hit = False
        self.escalated = False
        self.baseline = True  # False for a cascade's escalated draft: the answer's record carries the baseline
        self._done = False
        self._priced: tuple[tuple[object, ...], costs.Priced] | None = None

    def note(self, usage: Usage | None) -> None:
        """A worker's usage (nothing when it reported none). Anthropic's message_delta carries only output tokens:
        the prompt's, from its message_start, are kept."""
        if usage is not None:
            prompt = self.usage[0] if usage.prompt == 0 and self.usage is not None else usage.prompt
            self.usage = (prompt, usage.completion)
            self.cached_tokens, self.reasoning_tokens = usage.cached, usage.reasoning

    def take_usage(self, other: Trace) -> None:
        self.usage, self.cached_tokens, self.reasoning_tokens = other.usage, other.cached_tokens, other.reasoning_tokens
        self.worker_seconds = other.worker_seconds

    def priced(self, estimated_completion: int | None = None) -> costs.Priced | None:
        """What this request cost at the serving worker's prices: its usage, or without one the prompt's
        estimate and `estimated_completion` (a stream's events); None when nothing is known."""
        usage = self.usage
        if usage is None and estimated_completion is not None:
            usage = (estimate_tokens(self.prompt.tokens, 0), estimated_completion)
        if usage is None or self.routed is None:
            return None
        # The settlement and the record price the same request: once.
        key = (usage, self.routed.worker.prices, self.cached_tokens, self.worker_seconds, self.cache_hit)
        if self._priced is not None and self._priced[0] == key:
            return self._priced[1]
        if self.cache_hit:
            parts = costs.priced(self.routed.worker.prices, 0, 0)
        else:
            parts = costs.priced(key[1], *usage, cached=self.cached_tokens, seconds=self.worker_seconds)
        self._priced = (key, parts)
        return parts

    def cost_micros(self, estimated_completion: int | None = None) -> int | None:
        p = self.priced(estimated_completion)
        return None if p is None else p.micros

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
        cost = cost_large = cost_cached = cost_seconds = 0.0
        parts = self.priced(estimated_completion)
        if usage and parts is not None:
            cost, cost_cached, cost_seconds = parts.usd(parts.total), parts.usd(parts.cached), parts.usd(parts.seconds)
            large = costs.priced(rec.large_prices, *usage, cached=self.cached_tokens)
            cost_large = large.usd(large.total) if self.baseline else 0.0
            if routed is not None and routed.decision.reason is Reason.EMBEDDINGS:
                cost_large = cost  # paid whatever the routing: the always-large baseline pays it too
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
                route=self.route,
                cached_tokens=self.cached_tokens if usage else None,
                reasoning_tokens=self.reasoning_tokens if usage else None,
                cost_cached=cost_cached,
                cost_seconds=cost_seconds,
            )
        )


@functools.lru_cache(maxsize=4096)
def _caller_hash(identity: str) -> str:
    """What the ledger keeps of a caller: a short hash of its identity (itself a key hash or an HMAC), cached
    because the same callers come back request after request."""
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def usage_of(body: bytes) -> Usage | None:
    """The tokens of an OpenAI `usage` object."""
    try:
        return _usage(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


def answer_usage(worker: Worker, body: bytes) -> Usage | None:
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


# More tokens than any request uses (2^24 per choice, 128 choices, a prompt far past any context): a count
# above it is not believed. At 2^63 SQLite refuses the row, and with it the ledger's whole batch of records.
MAX_USAGE = 1 << 40


def _usage(doc: object) -> Usage | None:
    """OpenAI's chat and completions usage (`prompt_tokens`, `completion_tokens`), or the Responses and Messages
    APIs' (`input_tokens`, `output_tokens`), at the top or on the event's `response` (Responses' completed event)
    or `message` (Messages' message_start). Both counts must be JSON integers, neither negative nor past
    MAX_USAGE; anything else says nothing of what was used (None: the reservation, or the stream's estimate, is
    settled). Read leniently, a usage of {} or of a total only settled at 0 tokens, and a negative count was
    credited to the caller and broke the metrics."""
    if not isinstance(doc, dict):
        return None
    usage = doc.get("usage")
    for wrapper in ("response", "message"):
        if not isinstance(usage, dict) and isinstance(inner := doc.get(wrapper), dict):
            usage = inner.get("usage")
    if not isinstance(usage, dict):
        return None
    names = ("input_tokens", "output_tokens") if "input_tokens" in usage or "output_tokens" in usage else None
    if "prompt_tokens" in usage or names is None:
        names = ("prompt_tokens", "completion_tokens")
    prompt, completion = usage.get(names[0]), usage.get(names[1])
    if names[0] == "input_tokens" and "input_tokens" not in usage:
        prompt = 0  # Anthropic's message_delta carries output tokens alone (Trace.note keeps message_start's)
    elif "completion_tokens" not in usage and type(prompt) is int and usage.get("total_tokens") == prompt:
        completion = 0  # embeddings: input tokens only
    if type(prompt) is not int or type(completion) is not int:
        return None
    if prompt < 0 or completion < 0 or prompt + completion > MAX_USAGE:
        return None
    cached = _detail(usage, "prompt_tokens_details", "cached_tokens")
    reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens")
    total = usage.get("total_tokens")
    # OpenAI and vLLM count reasoning inside completion_tokens; a provider whose total adds it on top reports
    # it apart, and it is output all the same.
    if reasoning and type(total) is int and total == prompt + completion + reasoning:
        completion += reasoning
    return Usage(prompt, completion, min(cached, prompt), reasoning)


def _detail(usage: dict[str, object], group: str, name: str) -> int:
    """A part of a count (`prompt_tokens_details.cached_tokens`, say): a whole number from 0 to MAX_USAGE, else 0."""
    details = usage.get(group)
    value = details.get(name) if isinstance(details, dict) else None
    return value if type(value) is int and 0 <= value <= MAX_USAGE else 0
