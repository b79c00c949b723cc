"""RoutingService: one request's steps, in order: choose a worker (score -> decide) -> call it.

Rate limiting, recording and escalation join here as their ports land; this module never touches HTTP
frameworks, Redis or the classifier directly, only the ports in router.core.ports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from router.core.policy import decide
from router.core.ports import Backend, Scorer, UpstreamReply, UpstreamStream
from router.core.types import Decision, Reason, Role, Worker
from router.errors import ModelNotFound, UpstreamFailed
from router.protocol import GenerationRequest, encode, prompt_text

__all__ = ["Endpoint", "Routed", "RoutingService"]


class Endpoint(StrEnum):
    CHAT = "/chat/completions"
    COMPLETIONS = "/completions"


@dataclass(frozen=True, slots=True)
class Routed:
    worker: Worker
    decision: Decision


class RoutingService:
    def __init__(
        self, workers: Sequence[Worker], *, alias: str, threshold: float, scorer: Scorer, backend: Backend
    ) -> None:
        self.workers = tuple(workers)
        self.alias = alias
        self._threshold = threshold
        self._scorer = scorer
        self._backend = backend
        self._by_role: dict[Role, tuple[Worker, ...]] = {
            role: tuple(w for w in self.workers if w.role is role) for role in Role
        }
        # A caller may name a worker by its served model name or by its configured name.
        self._by_model: dict[str, tuple[Worker, ...]] = {}
        for w in self.workers:
            for key in {w.model, w.name}:
                self._by_model[key] = (*self._by_model.get(key, ()), w)
        self._turn = 0

    def model_ids(self) -> list[str]:
        """What GET /v1/models lists: the routed alias first, then each served model once."""
        return [self.alias, *dict.fromkeys(w.model for w in self.workers)]

    def route(self, request: GenerationRequest) -> Routed:
        if request.model == self.alias:
            score = self._scorer.score(prompt_text(request))
            decision = decide(score, self._threshold)
            return Routed(self._pick(self._by_role[decision.role]), decision)
        candidates = self._by_model.get(request.model)
        if not candidates:
            raise ModelNotFound(
                f"The model `{request.model}` does not exist. Available: {', '.join(self.model_ids())}.",
                param="model",
            )
        worker = self._pick(candidates)
        return Routed(worker, Decision(worker.role, Reason.REQUESTED))

    def _pick(self, candidates: tuple[Worker, ...]) -> Worker:
        if len(candidates) == 1:
            return candidates[0]
        self._turn += 1
        return candidates[self._turn % len(candidates)]

    async def complete(
        self, endpoint: Endpoint, payload: dict[str, Any], request: GenerationRequest
    ) -> tuple[Routed, UpstreamReply]:
        routed = self.route(request)
        reply = await self._backend.post(routed.worker, endpoint.value, self._body(payload, routed.worker))
        _raise_for_server_error(routed.worker, reply)
        return routed, reply

    async def stream(
        self, endpoint: Endpoint, payload: dict[str, Any], request: GenerationRequest
    ) -> tuple[Routed, UpstreamStream | UpstreamReply]:
        """An open stream, or the worker's error reply when it refused before streaming."""
        routed = self.route(request)
        stream = await self._backend.open_stream(routed.worker, endpoint.value, self._body(payload, routed.worker))
        if stream.status == 200:
            return routed, stream
        try:
            body = await stream.read_all()
        finally:
            await stream.aclose()
        reply = UpstreamReply(stream.status, body, "application/json")
        _raise_for_server_error(routed.worker, reply)
        return routed, reply

    @staticmethod
    def _body(payload: dict[str, Any], worker: Worker) -> bytes:
        payload["model"] = worker.model
        return encode(payload)


def _raise_for_server_error(worker: Worker, reply: UpstreamReply) -> None:
    """A worker's 4xx is the caller's mistake and passes through; its 5xx is the gateway's problem."""
    if reply.status >= 500:
        raise UpstreamFailed(
            f"worker {worker.name!r} failed with status {reply.status}: {reply.body[:300].decode('utf-8', 'replace')}",
            worker=worker.name,
        )
