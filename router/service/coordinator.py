"""RoutingService: the coordinator of one request's steps, in order:

    check the model name against the tier -> admit (rate limits) -> the response cache -> route by score, or
    run the cascade -> call a worker, failing over (router.service.dispatch) -> settle and record

Each flow lives in its own module of this package (dispatch, cascade, recording, ...) and a request's context
travels as one object (context.RequestContext). This module sees only ports (router.core.ports): no
HTTP framework, Redis or classifier here."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from router.core.balance import Balancer
from router.core.caching import cache_key
from router.core.limits import headers
from router.core.policy import decide
from router.core.ports import Backend, ConversationMemory, PairSink, ResponseCache, UpstreamReply
from router.core.shadow import ShadowGate
from router.core.share import ShareTargets
from router.core.tiers import Caller, Tier, allowed_role
from router.core.types import Decision, Reason, Role, Routed, Worker
from router.errors import BudgetExceeded, InvalidRequest, ModelNotFound, PermissionDenied, RateLimited, TriageError
from router.protocol import GenerationRequest, Prompt, choices
from router.service.admission import AdmissionControl, Admitted
from router.service.cascade import Cascade
from router.service.context import Endpoint, Outcome, RequestContext, RequestOptions, RoutingPolicy
from router.service.conversation import Conversations, Turn
from router.service.dispatch import Dispatcher
from router.service.recording import Recorder, Trace, usage_of
from router.service.shadow import Shadow
from router.service.spending import Reach

__all__ = ["Endpoint", "Health", "Outcome", "Ports", "RequestOptions", "Routed", "RoutingPolicy", "RoutingService"]

NO_OPTIONS = RequestOptions()
_PINNED = Decision(Role.SMALL, Reason.BUDGET_CAP)
MAX_CACHED_BYTES = 1 << 20  # larger answers are not cached: one entry must not crowd out thousands


@dataclass(frozen=True, slots=True)
class Health:
    """What /ready and the metrics read, in one snapshot: each worker's breaker and the limiter's failures."""

    breakers: dict[str, str]  # worker name -> closed | open | half_open
    limiter_errors: int  # the rate-limit store did not answer, or answered with an error, since start
    shed: int = 0  # requests refused with 503 `overloaded` since start (server.max_pending_admissions)
    shadow_sent: int = 0  # shadow calls made since start (routing.shadow)
    shadow_dropped: int = 0  # sampled for a shadow call but dropped: budget spent, too many in flight, or busy


@dataclass(frozen=True, slots=True)
class Ports:
    """The service's I/O, chosen by the composition root."""

    backend: Backend
    admission: AdmissionControl
    balancer: Balancer | None = None  # default: least outstanding over the workers, no affinity settings
    cache: ResponseCache | None = None
    cache_ttl: float = 300.0
    pairs: PairSink | None = None  # where shadow pairs go; shadowing is off without one
    shadow: ShadowGate | None = None  # which routed requests get a shadow call (routing.shadow)
    conversations: ConversationMemory | None = None  # where conversations' routing is remembered
    conversation_ttl: float = 3600.0
    shares: ShareTargets | None = None  # thresholds for share targets (routing.target_large_share)


class RoutingService:
    def __init__(self, workers: Sequence[Worker], policy: RoutingPolicy, ports: Ports, recorder: Recorder) -> None:
        self.workers = tuple(workers)
        self.alias = policy.alias
        self._policy = policy
        self._admission = ports.admission
        self._cache = ports.cache
        self._cache_ttl = ports.cache_ttl
        self._recorder = recorder
        self._dispatch = Dispatcher(
            self.workers, ports.backend, ports.balancer or Balancer(self.workers), ports.admission
        )
        self._cascade = Cascade(self._dispatch, ports.admission, policy, recorder)
        self._shadow: Shadow | None = None
        if ports.pairs is not None and ports.shadow is not None and ports.shadow.policy.enabled:
            self._shadow = Shadow(self._dispatch, ports.shadow, ports.pairs, recorder, self._admission.busy)
        self._conversations = (
            Conversations(ports.conversations, ports.conversation_ttl) if ports.conversations is not None else None
        )
        self._by_name = {w.name: w for w in self.workers}
        self._shares = ports.shares

    def use_policy(self, policy: RoutingPolicy) -> None:
        """Route by `policy` from the next request on (a reload of the classifier files); requests under way
        finish under the policy they started with."""
        if policy.alias != self.alias:
            raise ValueError(f"a reload cannot rename the routed alias ({self.alias!r} -> {policy.alias!r})")
        self._policy = policy
        self._cascade = Cascade(self._dispatch, self._admission, policy, self._recorder)

    def health(self) -> Health:
        balancer = self._dispatch.balancer
        breakers = {w.name: str(balancer.state(w)) for w in self.workers}
        gate = self._shadow.gate if self._shadow else None
        shadow = (gate.sent, gate.dropped) if gate else (0, 0)
        return Health(breakers, self._admission.health.errors, self._admission.shed, *shadow)

    async def close(self, grace: float | None = None) -> None:
        """Let background shadow calls finish (shutdown, before the ledger drains), for at most `grace` s."""
        if self._shadow is not None:
            await self._shadow.close(grace)

    def model_ids(self) -> list[str]:
        """What GET /v1/models lists: the routed alias first, then each served model once."""
        return [self.alias, *dict.fromkeys(w.model for w in self.workers)]

    # -- choosing a worker -----------------------------------------------------------------------------

    def _named(self, request: GenerationRequest, tier: Tier) -> tuple[Worker, ...] | None:
        """Workers a concrete model name refers to (None for the alias); refuses what the tier may not use."""
        if not request.SCORED:
            return self._embedders(request)
        if request.model == self.alias:
            return None
        candidates = tuple(w for w in self._dispatch.by_model.get(request.model, ()) if w.role is not Role.EMBEDDINGS)
        if not candidates:
            raise ModelNotFound(
                f"The model `{request.model}` does not exist. Available: {', '.join(self.model_ids())}.",
                param="model",
            )
        allowed = tuple(w for w in candidates if w.role in tier.roles)
        if not allowed:
            raise PermissionDenied(f"Your tier ({tier.name}) may not use the model `{request.model}`.", param="model")
        return allowed

    def _embedders(self, request: GenerationRequest) -> tuple[Worker, ...]:
        """The workers with role embeddings that serve the model asked for (the alias: the first one's model).
        Any tier may use them: model sizes are about generation."""
        pool = self._dispatch.by_role[Role.EMBEDDINGS]
        if not pool:
            raise ModelNotFound(
                "No worker serves embeddings on this gateway: add one to `workers` with `role: embeddings`.",
                param="model",
            )
        wanted = pool[0].model if request.model == self.alias else request.model
        chosen = tuple(w for w in pool if wanted in (w.model, w.name))
        if not chosen:
            served = ", ".join(dict.fromkeys(w.model for w in pool))
            raise ModelNotFound(
                f"The model `{request.model}` does not serve embeddings. Available: {self.alias}, {served}.",
                param="model",
            )
        return chosen

    def route(self, prompt: Prompt, tier: Tier, named: tuple[Worker, ...] | None) -> Routed:
        if named is not None and not prompt.request.SCORED:
            worker = self._dispatch.pick(named, prompt)
            return Routed(worker, Decision(worker.role, Reason.EMBEDDINGS))
        if named is not None:
            worker = self._dispatch.pick(named, prompt)
            return Routed(worker, Decision(worker.role, Reason.REQUESTED))
        score = self._policy.scorer.score(prompt.text)
        threshold, shares = self._policy.threshold_for(tier), self._shares
        target = self._policy.target_for(tier) if shares is not None else None
        if shares is None or target is None:
            decision = decide(score, threshold)
        else:  # the threshold in force moves with the traffic; the record carries it
            decision = shares.decide(target, score, threshold)
        role = allowed_role(tier, decision.role)
        if role is not None and role is not decision.role:
            decision = Decision(role, Reason.TIER_POLICY, decision.score, decision.threshold)
        return Routed(self._dispatch.pick(self._dispatch.by_role[decision.role], prompt), decision)

    # -- one request -----------------------------------------------------------------------------------

    async def handle(
        self,
        caller: Caller,
        endpoint: Endpoint,
        payload: dict[str, Any],
        request: GenerationRequest,
        options: RequestOptions = NO_OPTIONS,
    ) -> Outcome:
        prompt = Prompt(request)
        trace = Trace(self._recorder, caller, prompt, options.request_id, endpoint.value)
        ctx = RequestContext(caller, endpoint, payload, request, prompt, trace)
        try:
            outcome = await self._handle(ctx, options.cache_bypass)
        except TriageError as exc:
            trace.finish(exc.status, reason=trace.reason or Reason.of_error(exc.code))
            raise
        except asyncio.CancelledError as exc:
            # The edge cancels a request whose client left with CLIENT_GONE as the message; the other cancel is
            # the server's, when the graceful shutdown's time ran out (the caller is answered 503 by the edge).
            if exc.args[:1] == (Reason.CLIENT_GONE,):
                trace.finish(499, reason=trace.reason or Reason.CLIENT_GONE)
            else:
                trace.finish(503, reason=Reason.SHUTTING_DOWN)
            raise
        except Exception:  # a defect: the caller gets a 500 from the edge, and the ledger still gets its record
            trace.finish(500, reason=Reason.INTERNAL_ERROR)
            raise
        if isinstance(outcome.reply, UpstreamReply):
            trace.finish(outcome.reply.status)
        return outcome

    async def _handle(self, ctx: RequestContext, cache_bypass: bool) -> Outcome:
        caller, request = ctx.caller, ctx.request
        named = self._named(request, caller.tier)
        _refuse_unheld_state(request, named)
        cascade = self._cascades(ctx, named)
        # Asked for before admission: a later turn's lookup leaves with the admission (one round trip in Redis).
        turn = self._recall(ctx) if named is None and not cascade else None
        try:
            return await self._admitted(ctx, cache_bypass, named, cascade, turn)
        finally:
            if turn is not None:
                turn.cancel()  # a no-op once it has answered

    async def _admitted(
        self,
        ctx: RequestContext,
        cache_bypass: bool,
        named: tuple[Worker, ...] | None,
        cascade: bool,
        turn: Turn | None,
    ) -> Outcome:
        caller, request = ctx.caller, ctx.request
        cacheable = self._cache is not None and caller.tier.cache
        key = cache_key(caller.tier.name, ctx.endpoint.value, ctx.payload) if cacheable else None
        # Asked for before admission, as a later turn's memory is: in Redis both leave in the admission's write.
        lookup = asyncio.ensure_future(self._cache.get(key)) if self._cache and key and not cache_bypass else None
        admitted = await self._admit(ctx, named, lookup)
        ctx.admission = admitted.admission
        limit_headers = headers(ctx.admission) if ctx.admission else {}
        settled = False
        try:
            if lookup is not None:
                cached = await self._cached(ctx.trace, lookup)
                if cached is not None:
                    await self._admission.settle(caller, ctx.admission, 0, 0)  # nothing was generated
                    settled = True
                    return Outcome(cached.routed, cached.reply, limit_headers, "hit")
            if admitted.pinned:  # the small model only: no escalation, no fallback to the large one
                small = Routed(self._dispatch.pick(self._dispatch.by_role[Role.SMALL], ctx.prompt), _PINNED)
                outcome = await self._dispatch.serve(ctx, small, named=True)
                settled = True  # by the attempt, or by the stream when it ends
            elif cascade:
                outcome = await self._cascade.run(ctx)
                settled = True  # by the cascade
            else:
                routed = self.route(ctx.prompt, caller.tier, named)
                if turn is not None and self._conversations is not None:
                    routed = await self._conversations.steer(ctx, routed, turn, self._picker(ctx.prompt))
                outcome = await self._dispatch.serve(ctx, routed)
                settled = True  # by the attempt, or by the stream when it ends
                if turn is not None and self._conversations is not None:
                    await _closing_on_error(outcome, self._conversations.remember(turn, outcome.routed.worker.role))
                if self._shadow is not None and not request.stream and request.CASCADES:  # pairs read `choices`
                    self._shadow.after(ctx, outcome)
            if key is not None:
                await self._store(key, outcome)
            cache = "" if key is None else "bypass" if cache_bypass else "miss"
            return Outcome(outcome.routed, outcome.reply, limit_headers, cache, outcome.escalation)
        finally:
            if not settled:  # failed or cancelled: the reservation stands, the slot is freed
                await self._admission.settle(caller, ctx.admission, None)

    async def _admit(
        self, ctx: RequestContext, named: tuple[Worker, ...] | None, lookup: asyncio.Future[bytes | None] | None
    ) -> Admitted:
        try:
            return await self._admission.admit(ctx.caller, ctx.prompt, ctx.payload, self._reach(ctx, named))
        except BaseException as exc:
            if lookup is not None:
                lookup.cancel()  # refused or gone: the cache's answer is not wanted
            if isinstance(exc, RateLimited):
                ctx.trace.reason = Reason.BUDGET_EXCEEDED if isinstance(exc, BudgetExceeded) else Reason.RATE_LIMITED
            raise

    def _cascades(self, ctx: RequestContext, named: tuple[Worker, ...] | None) -> bool:
        request = ctx.request
        return (
            ctx.caller.tier.cascade
            and named is None
            and not request.stream
            and choices(request) == 1
            and request.CASCADES  # pairs read `choices`
        )

    def _reach(self, ctx: RequestContext, named: tuple[Worker, ...] | None) -> Reach | None:
        """The workers a budgeted caller's request may reach (a routed one may escalate or fall back); None for
        a caller without a budget, who pays nothing for this."""
        if not ctx.caller.budgeted:
            return None
        if named is not None:
            return Reach(named)
        roles = ctx.caller.tier.roles
        workers = tuple(w for w in self.workers if w.role in roles)
        small = self._dispatch.by_role[Role.SMALL] if {Role.SMALL, Role.LARGE} <= roles else ()
        return Reach(workers, small, cascade=self._cascades(ctx, named))

    def _recall(self, ctx: RequestContext) -> Turn | None:
        """A routed turn under its tier's conversation policy (None without a conversation memory)."""
        if self._conversations is None:
            return None
        return self._conversations.recall(ctx, self._policy.conversation_for(ctx.caller.tier))

    def _picker(self, prompt: Prompt) -> Callable[[Role], Worker]:
        by_role = self._dispatch.by_role
        return lambda role: self._dispatch.pick(by_role[role], prompt)

    # -- the response cache ----------------------------------------------------------------------------

    async def _cached(self, trace: Trace, lookup: Awaitable[bytes | None]) -> Outcome | None:
        """A stored answer as an outcome, or None on a miss (or when the worker that answered is gone)."""
        value = await lookup
        if value is None:
            return None
        name, _, body = value.partition(b"\n")
        worker = self._by_name.get(name.decode("utf-8", "replace"))
        if worker is None:
            return None
        routed = Routed(worker, Decision(worker.role, Reason.CACHED))
        trace.routed, trace.cache_hit = routed, True
        trace.note(usage_of(body))
        return Outcome(routed, UpstreamReply(200, body, "application/json"), {})

    async def _store(self, key: str, outcome: Outcome) -> None:
        reply = outcome.reply
        if self._cache is None or not isinstance(reply, UpstreamReply) or reply.status != 200:
            return
        if len(reply.body) <= MAX_CACHED_BYTES:
            await self._cache.put(key, outcome.routed.worker.name.encode() + b"\n" + reply.body, self._cache_ttl)


def _refuse_unheld_state(request: GenerationRequest, named: tuple[Worker, ...] | None) -> None:
    """A request that refers to state one worker holds (a stored response) may go only where that state can be:
    to a model served by a single worker. The gateway does not record which worker made a response, so a routed
    request, or a model with replicas, could land elsewhere and get a 404: it is refused instead."""
    state = request.worker_state()
    if state is None or (named is not None and len(named) == 1):
        return
    field, value = state
    where = "`model: auto` is routed" if named is None else f"the model `{request.model}` has {len(named)} workers"
    raise InvalidRequest(
        f"{field}: {value[:80]!r} is held by the one worker that made it, and {where}, so this request could reach "
        "another worker. Send the conversation itself (its input items), or name a model served by one worker.",
        param=field,
    )


async def _closing_on_error(outcome: Outcome, step: Awaitable[None]) -> None:
    """A step after a stream was opened: if it fails or is cancelled (the client left, a shutdown), the stream
    nobody will read is closed, which drops the worker's connection, settles, ends the attempt and records."""
    try:
        await step
    except BaseException:
        if not isinstance(outcome.reply, UpstreamReply):
            await outcome.reply.aclose()
        raise
