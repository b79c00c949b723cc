"""The shapes the service needs from the outside world (implemented in router.adapters and classifiers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from router.core.limits import Admission
from router.core.records import DecisionRecord
from router.core.shadow import ShadowPair
from router.core.tiers import Caller
from router.core.types import Role, Worker

__all__ = [
    "AnswerScorer",
    "Backend",
    "ConversationMemory",
    "DecisionSink",
    "PairSink",
    "RateLimiter",
    "ResponseCache",
    "Scorer",
    "UpstreamReply",
    "UpstreamStream",
]


class Scorer(Protocol):
    """Scores a prompt's difficulty; higher means the large model is needed."""

    def score(self, text: str) -> float: ...


class AnswerScorer(Protocol):
    """Scores a (prompt, answer) pair; higher means the answer is less likely to be right."""

    def score_answer(self, prompt: str, answer: str) -> float: ...


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """A whole (non-streamed) answer from a worker, body untouched."""

    status: int
    body: bytes
    content_type: str


class UpstreamStream(Protocol):
    """An open streamed answer; `status` is known before the first chunk is read."""

    @property
    def status(self) -> int: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def read_all(self) -> bytes: ...

    async def aclose(self) -> None: ...


class Backend(Protocol):
    """Talks HTTP to OpenAI-compatible workers."""

    async def post(self, worker: Worker, path: str, body: bytes) -> UpstreamReply: ...

    async def open_stream(self, worker: Worker, path: str, body: bytes) -> UpstreamStream: ...

    async def reachable(self, worker: Worker) -> bool: ...


class RateLimiter(Protocol):
    """Admits or refuses a request under its caller's tier limits; one call per admission."""

    async def admit(self, caller: Caller, estimate: int) -> Admission: ...

    async def settle(self, caller: Caller, admission: Admission, actual_tokens: int) -> None:
        """Replace the admission's token reservation by the real usage and free its concurrency slot."""
        ...


class ResponseCache(Protocol):
    """Whole answers by key, with a time to live. A store that fails is a miss, never an error."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl: float) -> None: ...


class DecisionSink(Protocol):
    """Takes decision records off the request path: emit() never blocks and never raises."""

    def emit(self, record: DecisionRecord) -> None: ...


class PairSink(Protocol):
    """Takes shadow pairs off the request path, like DecisionSink: emit() never blocks and never raises."""

    def emit(self, pair: ShadowPair) -> None: ...


class ConversationMemory(Protocol):
    """Which model a conversation's earlier turns got, by conversation key, with a time to live. A store that
    fails answers None (an unknown conversation), never an error."""

    async def get(self, key: str) -> Role | None: ...

    async def put(self, key: str, role: Role, ttl: float) -> None: ...
