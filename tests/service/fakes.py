"""Fakes at the service's ports, for fast tests of the flows without HTTP: a scripted backend, a limiter that
records what it was asked (a real MemoryLimiter on an injected clock underneath), and a list as the sink."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.adapters.cache_memory import MemoryCache
from router.adapters.conversations import MemoryConversations
from router.adapters.limiter_memory import MemoryLimiter
from router.core.balance import Balancer
from router.core.budgets import Cap
from router.core.cascade import EscalationRule
from router.core.conversation import ConversationPolicy
from router.core.limits import Admission, TierLimits
from router.core.ports import ConversationMemory, DecisionSink, UpstreamReply, UpstreamStream
from router.core.records import DecisionRecord
from router.core.shadow import ShadowGate, ShadowPair, ShadowPolicy
from router.core.share import ShareTargets
from router.core.tiers import Caller, Tier
from router.core.types import Prices, Role, Worker
from router.errors import LimiterUnavailable, UpstreamUnavailable
from router.protocol import ChatCompletionRequest, decode_body
from router.service.admission import AdmissionControl
from router.service.context import Endpoint, Outcome, RequestOptions, RoutingPolicy
from router.service.coordinator import Ports, RoutingService
from router.service.recording import Recorder

__all__ = [
    "Clock",
    "FakeBackend",
    "FakeStream",
    "FixedScorer",
    "ListPairs",
    "ListSink",
    "SpyLimiter",
    "Stack",
    "answer",
    "ask",
    "caller",
    "stack",
    "worker",
]

SMALL_PRICES = Prices(0.1, 0.2)
LARGE_PRICES = Prices(3.0, 6.0)


def worker(name: str, role: Role, model: str | None = None) -> Worker:
    prices = SMALL_PRICES if role is Role.SMALL else LARGE_PRICES
    return Worker(name, role, f"http://{name}.invalid/v1", model or f"{role.value}-model", prices, 5.0, 1.0)


def answer(text: str = "4", *, usage: tuple[int, int] | None = (10, 5), logprob: float = -0.01, **extra: Any) -> bytes:
    """A chat completion body as a worker sends it (with token logprobs, as a cascade's draft asks)."""
    doc: dict[str, Any] = {
        "id": "cmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": {"content": [{"token": t, "logprob": logprob} for t in text.split() or [""]]},
            }
        ],
        **extra,
    }
    if usage is not None:
        doc["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    return orjson.dumps(doc)


class Clock:
    """Time that moves only when a test says so (seconds; `ms` for the limiter)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def ms(self) -> int:
        return int(self.now * 1000)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeStream:
    def __init__(self, status: int, chunks: list[bytes], *, fail_after: int | None = None) -> None:
        self._status = status
        self._chunks = chunks
        self._fail_after = fail_after
        self.closed = False

    @property
    def status(self) -> int:
        return self._status

    async def chunks(self) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self._chunks):
            if self._fail_after is not None and i >= self._fail_after:
                raise UpstreamUnavailable("the worker broke the stream off", worker="fake")
            yield chunk

    async def read_all(self) -> bytes:
        return b"".join(self._chunks)

    async def aclose(self) -> None:
        self.closed = True


# What a worker does with one call: answer (status, body), raise, or wait for an event first.
Behaviour = UpstreamReply | Exception | FakeStream | Callable[[], Any]


@dataclass
class FakeBackend:
    """Answers per worker name from a script; a worker without one answers `answer()`. Records every call."""

    script: dict[str, list[Behaviour]] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    gate: asyncio.Event | None = None  # when set on a call's behaviour list as `wait`, the call blocks on it
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    def on(self, name: str, *behaviours: Behaviour) -> None:
        self.script.setdefault(name, []).extend(behaviours)

    async def _next(self, w: Worker, body: bytes) -> Behaviour:
        self.calls.append((w.name, orjson.loads(body)))
        self.entered.set()
        queue = self.script.get(w.name)
        step: Behaviour = queue.pop(0) if queue else UpstreamReply(200, answer(), "application/json")
        if callable(step) and not isinstance(step, Exception):
            step = await step()
        if isinstance(step, Exception):
            raise step
        return step

    async def post(self, worker: Worker, path: str, body: bytes) -> UpstreamReply:
        step = await self._next(worker, body)
        assert isinstance(step, UpstreamReply), step
        return step

    async def open_stream(self, worker: Worker, path: str, body: bytes) -> UpstreamStream:
        step = await self._next(worker, body)
        assert isinstance(step, FakeStream), step
        return step

    async def reachable(self, worker: Worker) -> bool:
        return True

    @property
    def workers_called(self) -> list[str]:
        return [name for name, _ in self.calls]


class SpyLimiter(MemoryLimiter):
    """The in-memory limiter on an injected clock, remembering every settle; `fail_settle` makes settle fail as
    an unreachable store does."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock.ms)
        self.settled: list[int] = []
        self.costs: list[int | None] = []  # the money settled, micro-units (None: the reservation stays)
        self.held: list[int] = []  # the money each budgeted admission reserved, micro-units
        self.fail_settle = False

    async def admit(self, caller: Caller, estimate: int, caps: tuple[Cap, ...] = (), reserve: int = 0) -> Admission:
        if caps:
            self.held.append(reserve)
        return await super().admit(caller, estimate, caps, reserve)

    async def settle(
        self, caller: Caller, admission: Admission, actual_tokens: int, actual_cost: int | None = None
    ) -> None:
        self.settled.append(actual_tokens)
        self.costs.append(actual_cost)
        if self.fail_settle:
            raise LimiterUnavailable("the rate-limit store did not answer")
        await super().settle(caller, admission, actual_tokens, actual_cost)


class ListSink:
    def __init__(self) -> None:
        self.records: list[DecisionRecord] = []

    def emit(self, record: DecisionRecord) -> None:
        self.records.append(record)

    @property
    def reasons(self) -> list[str]:
        return [r.reason for r in self.records]


class ListPairs:
    def __init__(self) -> None:
        self.pairs: list[ShadowPair] = []

    def emit(self, pair: ShadowPair) -> None:
        self.pairs.append(pair)


class FixedScorer:
    def __init__(self, score: float) -> None:
        self.value = score

    def score(self, text: str) -> float:
        return self.value


@dataclass
class Stack:
    service: RoutingService
    backend: FakeBackend
    limiter: SpyLimiter
    admission: AdmissionControl
    balancer: Balancer
    sink: ListSink
    clock: Clock
    cache: MemoryCache | None
    scorer: FixedScorer
    pairs: ListPairs
    gate: ShadowGate | None


def stack(
    workers: list[Worker] | None = None,
    *,
    score: float = 0.1,
    rule: EscalationRule | None = None,
    cache: bool = False,
    breaker_failures: int = 3,
    ledger: DecisionSink | None = None,
    shadow: ShadowPolicy | None = None,
    conversation: ConversationPolicy = ConversationPolicy.PER_TURN,
    memory: ConversationMemory | None = None,
    shares: ShareTargets | None = None,
    target: float | None = None,
) -> Stack:
    """A service over fake ports: two small replicas and one large worker unless told otherwise, the routing
    threshold at 0.5, and one clock for the limiter, the breakers and the cache. Records go to `sink` (a list)
    unless a `ledger` is given."""
    clock = Clock()
    workers = workers or [worker("small-0", Role.SMALL), worker("small-1", Role.SMALL), worker("large-0", Role.LARGE)]
    backend, limiter, sink, scorer = FakeBackend(), SpyLimiter(clock), ListSink(), FixedScorer(score)
    admission = AdmissionControl(limiter)
    balancer = Balancer(workers, affinity=False, failures_to_open=breaker_failures, cooldown=5.0, clock=clock)
    response_cache = MemoryCache(clock=clock) if cache else None
    policy = RoutingPolicy(
        scorer, 0.5, rule=rule or EscalationRule(), conversation=conversation, target_large_share=target
    )
    memory = memory or MemoryConversations(clock=clock)
    pairs = ListPairs()
    gate = ShadowGate(shadow, sample=lambda: 0.0, clock=clock) if shadow else None
    ports = Ports(
        backend, admission, balancer, response_cache, pairs=pairs, shadow=gate, conversations=memory, shares=shares
    )
    service = RoutingService(workers, policy, ports, Recorder(ledger or sink, LARGE_PRICES))
    return Stack(service, backend, limiter, admission, balancer, sink, clock, response_cache, scorer, pairs, gate)


def caller(**tier: Any) -> Caller:
    """A caller of a tier with a concurrency limit by default, so that every request is admitted and settled."""
    limits = tier.pop("limits", TierLimits(max_concurrent=4, tokens_per_minute=1_000_000))
    return Caller(Tier("free", limits=limits, **tier), "client:1")


async def ask(
    s: Stack, who: Caller, body: dict[str, Any] | None = None, *, options: RequestOptions | None = None
) -> Outcome:
    payload = {"model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}], **(body or {})}
    payload, request = decode_body(orjson.dumps(payload), ChatCompletionRequest)
    return await s.service.handle(who, Endpoint.CHAT, payload, request, options or RequestOptions())
