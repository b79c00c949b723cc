"""RoutingService: one request's steps, in order:

    check the model name against the tier -> admit (rate limits) -> score -> decide -> call the worker
    -> settle the token reservation with the real usage (streams: when they end)

This module sees only ports (router.core.ports): no HTTP framework, Redis or classifier here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from router.admission import AdmissionControl
from router.core.balance import Balancer
from router.core.caching import cache_key
from router.core.cascade import Draft, EscalationRule, judge
from router.core.limits import Admission, headers
from router.core.policy import decide
from router.core.ports import (
    AnswerScorer,
    Backend,
    DecisionSink,
    ResponseCache,
    Scorer,
    UpstreamReply,
    UpstreamStream,
)
from router.core.tiers import Caller, Tier, allowed_role
from router.core.types import Decision, Prices, Reason, Role, Worker
from router.errors import (
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    TriageError,
    UpstreamError,
    UpstreamFailed,
)
from router.protocol import (
    ChatCompletionRequest,
    GenerationRequest,
    affinity_key,
    draft_logprobs_request,
    encode,
    prompt_text,
    read_draft,
    strip_logprobs,
)
from router.tracing import MeteredStream, Trace, answer_usage, usage_of

__all__ = ["Endpoint", "Health", "Outcome", "Routed", "RoutingService"]

log = logging.getLogger("triage.service")
MAX_CACHED_BYTES = 1 << 20  # larger answers are not cached: one entry must not crowd out thousands


class Endpoint(StrEnum):
    CHAT = "/chat/completions"
    COMPLETIONS = "/completions"


@dataclass(frozen=True, slots=True)
class Routed:
    worker: Worker
    decision: Decision


@dataclass(frozen=True, slots=True)
class Outcome:
    routed: Routed
    reply: UpstreamReply | UpstreamStream  # a stream only when one was asked for and the worker accepted
    limit_headers: dict[str, str]
    cache: str = ""  # hit | miss | bypass for a cacheable request, else empty
    escalation: str = ""  # cascade: why the small model's draft was escalated


@dataclass(frozen=True, slots=True)
class Health:
    """What /ready and the metrics read, in one snapshot: each worker's breaker and the limiter's failures."""

    breakers: dict[str, str]  # worker name -> closed | open | half_open
    limiter_errors: int  # the rate-limit store did not answer, or answered with an error, since start


class RoutingService:
    def __init__(
        self,
        workers: Sequence[Worker],
        *,
        alias: str,
        threshold: float,
        scorer: Scorer,
        backend: Backend,
        admission: AdmissionControl,
        sink: DecisionSink | None = None,
        store_prompts: bool = False,
        balancer: Balancer | None = None,
        cache: ResponseCache | None = None,
        cache_ttl: float = 300.0,
        rule: EscalationRule | None = None,
        answer_scorer: AnswerScorer | None = None,
    ) -> None:
        self.workers = tuple(workers)
        self.sink = sink
        self.store_prompts = store_prompts
        large = [w for w in workers if w.role is Role.LARGE]
        self.large_prices = large[0].prices if large else Prices()
        self.alias = alias
        self._threshold = threshold
        self._scorer = scorer
        self._backend = backend
        self.admission = admission
        self._by_role: dict[Role, tuple[Worker, ...]] = {
            role: tuple(w for w in self.workers if w.role is role) for role in Role
        }
        # A caller may name a worker by its served model name or by its configured name.
        self._by_model: dict[str, tuple[Worker, ...]] = {}
        for w in self.workers:
            for key in {w.model, w.name}:
                self._by_model[key] = (*self._by_model.get(key, ()), w)
        self.balancer = balancer or Balancer(self.workers)
        self._cache = cache
        self._cache_ttl = cache_ttl
        self._rule = rule or EscalationRule()
        self._answer_scorer = answer_scorer
        self._by_name = {w.name: w for w in self.workers}

    def health(self) -> Health:
        return Health({w.name: str(self.balancer.state(w)) for w in self.workers}, self.admission.health.errors)

    def model_ids(self) -> list[str]:
        """What GET /v1/models lists: the routed alias first, then each served model once."""
        return [self.alias, *dict.fromkeys(w.model for w in self.workers)]

    # -- choosing a worker -----------------------------------------------------------------------------

    def _named(self, request: GenerationRequest, tier: Tier) -> tuple[Worker, ...] | None:
        """Workers a concrete model name refers to (None for the alias); refuses what the tier may not use."""
        if request.model == self.alias:
            return None
        candidates = self._by_model.get(request.model)
        if not candidates:
            raise ModelNotFound(
                f"The model `{request.model}` does not exist. Available: {', '.join(self.model_ids())}.",
                param="model",
            )
        allowed = tuple(w for w in candidates if w.role in tier.roles)
        if not allowed:
            raise PermissionDenied(f"Your tier ({tier.name}) may not use the model `{request.model}`.", param="model")
        return allowed

    def route(self, request: GenerationRequest, tier: Tier, named: tuple[Worker, ...] | None) -> Routed:
        if named is not None:
            worker = self._pick(named, request)
            return Routed(worker, Decision(worker.role, Reason.REQUESTED))
        threshold = self._threshold if tier.threshold is None else tier.threshold
        decision = decide(self._scorer.score(prompt_text(request)), threshold)
        role = allowed_role(tier, decision.role)
        if role is not None and role is not decision.role:
            decision = Decision(role, Reason.TIER_POLICY, decision.score, decision.threshold)
        return Routed(self._pick(self._by_role[decision.role], request), decision)

    def _pick(self, candidates: tuple[Worker, ...], request: GenerationRequest) -> Worker:
        if len(candidates) == 1:
            return candidates[0]  # one replica: no key to hash, no load to compare
        key = affinity_key(request) if self.balancer.affinity else None
        return self.balancer.pick(candidates, key)

    # -- limits ----------------------------------------------------------------------------------------

    async def settle(self, caller: Caller, admission: Admission | None, tokens: int | None) -> None:
        await self.admission.settle(caller, admission, tokens)

    # -- one request -----------------------------------------------------------------------------------

    async def handle(
        self,
        caller: Caller,
        endpoint: Endpoint,
        payload: dict[str, Any],
        request: GenerationRequest,
        request_id: str = "",
        *,
        cache_bypass: bool = False,
    ) -> Outcome:
        trace = Trace(self, caller, request, request_id)
        try:
            outcome = await self._handle(caller, endpoint, payload, request, trace, cache_bypass)
        except TriageError as exc:
            trace.finish(exc.status, reason=trace.reason or Reason.of_error(exc.code))
            raise
        except asyncio.CancelledError:
            trace.finish(499, reason=trace.reason or Reason.CLIENT_GONE)
            raise
        except Exception:  # a defect: the caller gets a 500 from the edge, and the ledger still gets its record
            trace.finish(500, reason=Reason.INTERNAL_ERROR)
            raise
        if isinstance(outcome.reply, UpstreamReply):
            trace.finish(outcome.reply.status)
        return outcome

    async def _handle(
        self,
        caller: Caller,
        endpoint: Endpoint,
        payload: dict[str, Any],
        request: GenerationRequest,
        trace: Trace,
        cache_bypass: bool,
    ) -> Outcome:
        named = self._named(request, caller.tier)
        try:
            admission = await self.admission.admit(caller, request, payload)
        except RateLimited:
            trace.reason = Reason.RATE_LIMITED
            raise
        limit_headers = headers(admission) if admission else {}
        settled = False
        try:
            cacheable = self._cache is not None and caller.tier.cache
            key = cache_key(caller.tier.name, endpoint.value, payload) if cacheable else None
            if key is not None and not cache_bypass:
                cached = await self._cached(key, trace)
                if cached is not None:
                    await self.settle(caller, admission, 0)  # nothing was generated
                    settled = True
                    return Outcome(cached.routed, cached.reply, limit_headers, "hit")
            if caller.tier.cascade and named is None and not request.stream and (request.n or 1) == 1:
                outcome = await self._cascade(endpoint, payload, request, caller, admission, trace)
            else:
                routed = self.route(request, caller.tier, named)
                outcome = await self._serve(endpoint, payload, request, routed, caller, admission, trace)
            settled = True  # by _call or _cascade, or by the stream when it ends
            if key is not None:
                await self._store(key, outcome)
            cache = "" if key is None else "bypass" if cache_bypass else "miss"
            return Outcome(outcome.routed, outcome.reply, limit_headers, cache, outcome.escalation)
        finally:
            if not settled:  # failed or cancelled: the reservation stands, the slot is freed
                await self.settle(caller, admission, None)

    async def _serve(
        self,
        endpoint: Endpoint,
        payload: dict[str, Any],
        request: GenerationRequest,
        routed: Routed,
        caller: Caller,
        admission: Admission | None,
        trace: Trace,
        *,
        named: bool | None = None,
    ) -> Outcome:
        """The routed worker, then, if it fails, the failover chain (built only then)."""
        named = routed.decision.reason is Reason.REQUESTED if named is None else named
        chain: list[Routed] | None = None
        attempt = 0
        while True:
            trace.routed = routed
            payload["model"] = routed.worker.model
            try:
                return await self._call(endpoint, payload, request, routed, caller, admission, trace)
            except UpstreamError as exc:
                chain = chain or self._failover(routed, caller.tier, named)
                attempt += 1
                if attempt >= len(chain):
                    raise
                log.warning("%s; failing over to worker %r", exc.message, chain[attempt].worker.name)
                routed = chain[attempt]

    async def _cascade(
        self,
        endpoint: Endpoint,
        payload: dict[str, Any],
        request: GenerationRequest,
        caller: Caller,
        admission: Admission | None,
        trace: Trace,
    ) -> Outcome:
        """The small model drafts; the draft is kept unless the rule finds it unreliable, and then the large
        model answers. An escalated request leaves two records: the draft's (reason `draft:<why>`, no baseline
        cost) and the answer's. If the large model cannot answer, a usable draft is the answer."""
        tier = caller.tier
        threshold = self._threshold if tier.threshold is None else tier.threshold
        score = self._scorer.score(prompt_text(request))  # recorded for analysis; the cascade does not route by it
        draft_payload, added = draft_logprobs_request(payload, isinstance(request, ChatCompletionRequest))
        draft_trace = Trace(self, caller, request, trace.request_id)
        kept = Decision(Role.SMALL, Reason.CASCADE_ACCEPTED, score, threshold)
        draft: Outcome | None = None
        try:
            small = Routed(self._pick(self._by_role[Role.SMALL], request), kept)
            trace.routed = small  # if the client leaves during the draft, the request's record names it
            draft = await self._serve(endpoint, draft_payload, request, small, caller, None, draft_trace, named=True)
            why = self._judge(draft.reply, request)
        except UpstreamError:
            why = "draft_failed"
        if why is None and draft is not None and isinstance(draft.reply, UpstreamReply):
            return await self._keep(draft.routed, draft.reply, draft_trace, added, trace, caller, admission, kept)
        escalated = Decision(Role.LARGE, Reason.ESCALATED, score, threshold)
        large = Routed(self._pick(self._by_role[Role.LARGE], request), escalated)
        try:
            answer = await self._serve(endpoint, payload, request, large, caller, None, trace, named=True)
        except UpstreamError:
            if draft is None or not isinstance(draft.reply, UpstreamReply) or draft.reply.status != 200:
                _record_draft(draft, draft_trace, why)
                raise
            log.warning("large model unavailable; the cascade answers with the %s draft", why)
            fallback = Decision(Role.SMALL, Reason.FALLBACK, score, threshold)
            return await self._keep(draft.routed, draft.reply, draft_trace, added, trace, caller, admission, fallback)
        trace.escalated = True
        _record_draft(draft, draft_trace, why)
        used = [u for u in (draft_trace.usage, trace.usage) if u]
        await self.settle(caller, admission, sum(map(sum, used)) if used else None)
        return Outcome(answer.routed, answer.reply, {}, escalation=why or "")

    async def _keep(
        self,
        drafted: Routed,
        reply: UpstreamReply,
        draft_trace: Trace,
        added: bool,
        trace: Trace,
        caller: Caller,
        admission: Admission | None,
        decision: Decision,
    ) -> Outcome:
        """The draft is the answer: the request's own record describes it."""
        routed = Routed(drafted.worker, decision)
        trace.routed, trace.usage = routed, draft_trace.usage
        await self.settle(caller, admission, sum(trace.usage) if trace.usage else None)
        body = strip_logprobs(reply.body) if added else reply.body
        return Outcome(routed, UpstreamReply(reply.status, body, reply.content_type), {})

    def _judge(self, reply: UpstreamReply | UpstreamStream, request: GenerationRequest) -> str | None:
        if not isinstance(reply, UpstreamReply):
            return "unreadable"
        if reply.status != 200:
            return f"draft_status_{reply.status}"  # e.g. the small model's context is too short
        parsed = read_draft(reply.body)
        draft = Draft(*parsed) if parsed else None
        scorer = self._answer_scorer
        risk = None
        if scorer is not None and draft is not None:
            text = draft.text
            risk = lambda: scorer.score_answer(prompt_text(request), text)  # noqa: E731
        return judge(draft, self._rule, risk)

    async def _cached(self, key: str, trace: Trace) -> Outcome | None:
        """A stored answer as an outcome, or None on a miss (or when the worker that answered is gone)."""
        value = await self._cache.get(key) if self._cache is not None else None
        if value is None:
            return None
        name, _, body = value.partition(b"\n")
        worker = self._by_name.get(name.decode("utf-8", "replace"))
        if worker is None:
            return None
        routed = Routed(worker, Decision(worker.role, Reason.CACHED))
        trace.routed, trace.cache_hit, trace.usage = routed, True, usage_of(body)
        return Outcome(routed, UpstreamReply(200, body, "application/json"), {})

    async def _store(self, key: str, outcome: Outcome) -> None:
        reply = outcome.reply
        if self._cache is None or not isinstance(reply, UpstreamReply) or reply.status != 200:
            return
        if len(reply.body) <= MAX_CACHED_BYTES:
            await self._cache.put(key, outcome.routed.worker.name.encode() + b"\n" + reply.body, self._cache_ttl)

    def _failover(self, routed: Routed, tier: Tier, named: bool) -> list[Routed]:
        """The routed worker, then the other replicas of its model, then (for a routed request, where the
        tier may use it) the other model's workers, marked as a fallback. Workers whose breaker is open come
        last of all: tried only when nothing healthier is left."""
        same = [w for w in self._by_model.get(routed.worker.model, ()) if w is not routed.worker]
        steps = [Routed(w, routed.decision) for w in self.balancer.order(same)]
        if not named:
            for role in Role:
                if role is not routed.worker.role and role in tier.roles:
                    d = routed.decision
                    fallback = Decision(role, Reason.FALLBACK, d.score, d.threshold)
                    steps += [Routed(w, fallback) for w in self.balancer.order(self._by_role[role])]
        usable = [r for r in steps if self.balancer.usable(r.worker)]
        return [routed, *usable, *(r for r in steps if r not in usable)]

    async def _call(
        self,
        endpoint: Endpoint,
        payload: dict[str, Any],
        request: GenerationRequest,
        routed: Routed,
        caller: Caller,
        admission: Admission | None,
        trace: Trace,
    ) -> Outcome:
        """One attempt on one worker; raises UpstreamError when it cannot answer (refused, down, 5xx, timeout)."""
        body = encode(payload)
        worker = routed.worker
        self.balancer.begin(worker)
        ended = False
        failed: bool | None = None  # stays None when the client leaves: no verdict on the worker
        try:
            if request.stream:
                stream = await self._backend.open_stream(worker, endpoint.value, body)
                if stream.status == 200:  # the stream settles, records and ends its attempt when it closes
                    ended = True
                    return Outcome(routed, MeteredStream(stream, self, caller, admission, trace, worker), {})
                try:
                    error = await stream.read_all()
                finally:
                    await stream.aclose()
                reply = UpstreamReply(stream.status, error, "application/json")
            else:
                reply = await self._backend.post(worker, endpoint.value, body)
            failed = reply.status >= 500
            _raise_for_server_error(worker, reply)
            if reply.status == 200:
                trace.usage = answer_usage(worker, reply.body)
        except UpstreamError:
            failed = True
            raise
        finally:
            if not ended:
                self.balancer.end(worker, failed=failed)
        await self.settle(caller, admission, sum(trace.usage) if trace.usage else None)
        return Outcome(routed, reply, {})


def _record_draft(draft: Outcome | None, trace: Trace, why: str | None) -> None:
    """An escalated draft's own record: its cost, but not the always-large baseline (the answer carries it)."""
    if draft is None:
        return  # no small worker answered: nothing was generated
    trace.escalated, trace.baseline = True, False
    trace.finish(draft.reply.status, reason=Reason.of_draft(why or "draft_failed"))


def _raise_for_server_error(worker: Worker, reply: UpstreamReply) -> None:
    """A worker's 4xx is the caller's mistake and passes through; its 5xx is the gateway's problem."""
    if reply.status >= 500:
        raise UpstreamFailed(
            f"worker {worker.name!r} failed with status {reply.status}: {reply.body[:300].decode('utf-8', 'replace')}",
            worker=worker.name,
        )
