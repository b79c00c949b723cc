"""Sending one request to a worker: pick a replica, make the attempt, and when a worker cannot answer, fail
over (the model's other replicas, then, for a routed request the tier allows, the other model). An attempt that
answers settles the caller's reservation; a stream settles when it ends."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from router.core.balance import Balancer
from router.core.limits import estimate_tokens
from router.core.ports import Backend, UpstreamReply
from router.core.tiers import Tier
from router.core.types import Decision, Reason, Role, Routed, Worker
from router.errors import UpstreamError, UpstreamFailed
from router.protocol import Prompt, asking_usage, encode, wants_usage
from router.service.admission import AdmissionControl
from router.service.context import Outcome, RequestContext
from router.service.metering import MeteredStream, StreamEnd
from router.service.recording import answer_usage

__all__ = ["Dispatcher"]

log = logging.getLogger("triage.service")


class Dispatcher:
    def __init__(
        self, workers: Sequence[Worker], backend: Backend, balancer: Balancer, admission: AdmissionControl
    ) -> None:
        self.workers = tuple(workers)
        self.balancer = balancer
        self._backend = backend
        self._admission = admission
        self.by_role: dict[Role, tuple[Worker, ...]] = {
            role: tuple(w for w in self.workers if w.role is role) for role in Role
        }
        # A caller may name a worker by its served model name or by its configured name.
        self.by_model: dict[str, tuple[Worker, ...]] = {}
        for w in self.workers:
            for key in {w.model, w.name}:
                self.by_model[key] = (*self.by_model.get(key, ()), w)

    def pick(self, candidates: tuple[Worker, ...], prompt: Prompt) -> Worker:
        if len(candidates) == 1:
            return candidates[0]  # one replica: no key to hash, no load to compare
        key = prompt.affinity if self.balancer.affinity else None
        return self.balancer.pick(candidates, key)

    async def serve(self, ctx: RequestContext, routed: Routed, *, named: bool | None = None) -> Outcome:
        """The routed worker, then, if it fails, the failover chain (built only then)."""
        named = routed.decision.reason is Reason.REQUESTED if named is None else named
        chain: list[Routed] | None = None
        attempt = 0
        while True:
            ctx.trace.routed = routed
            ctx.payload["model"] = routed.worker.model
            try:
                return await self.call(ctx, routed)
            except UpstreamError as exc:
                chain = chain or self.chain(routed, ctx.caller.tier, named)
                attempt += 1
                if attempt >= len(chain):
                    raise
                log.warning("%s; failing over to worker %r", exc.message, chain[attempt].worker.name)
                routed = chain[attempt]

    def chain(self, routed: Routed, tier: Tier, named: bool) -> list[Routed]:
        """The routed worker, then the other replicas of its model, then (for a routed request, where the
        tier may use it) the other model's workers, marked as a fallback. Workers whose breaker is open come
        last of all: tried only when nothing healthier is left."""
        same = [w for w in self.by_model.get(routed.worker.model, ()) if w is not routed.worker]
        steps = [Routed(w, routed.decision) for w in self.balancer.order(same)]
        if not named:
            for role in Role:
                if role is not routed.worker.role and role in tier.roles:
                    d = routed.decision
                    fallback = Decision(role, Reason.FALLBACK, d.score, d.threshold)
                    steps += [Routed(w, fallback) for w in self.balancer.order(self.by_role[role])]
        usable = [r for r in steps if self.balancer.usable(r.worker)]
        return [routed, *usable, *(r for r in steps if r not in usable)]

    async def call(self, ctx: RequestContext, routed: Routed) -> Outcome:
        """One attempt on one worker; raises UpstreamError when it cannot answer (refused, down, 5xx, timeout)."""
        worker = routed.worker
        self.balancer.begin(worker)
        ended = False
        failed: bool | None = None  # stays None when the client leaves: no verdict on the worker
        try:
            if ctx.request.stream:
                # The worker's usage chunk is asked for always: without it a stream is settled from an estimate.
                body = encode(asking_usage(ctx.payload))
                stream = await self._backend.open_stream(worker, ctx.endpoint.value, body)
                if stream.status == 200:  # the stream settles, records and ends its attempt when it closes
                    ended = True
                    hide = not wants_usage(ctx.request)
                    metered = MeteredStream(stream, ctx.trace, self._stream_end(ctx, worker), hide_usage=hide)
                    return Outcome(routed, metered, {})
                try:
                    error = await stream.read_all()
                finally:
                    await stream.aclose()
                reply = UpstreamReply(stream.status, error, "application/json")
            else:
                reply = await self._backend.post(worker, ctx.endpoint.value, encode(ctx.payload))
            failed = not _passes_on(reply.status)
            _raise_unless_passed_on(worker, reply)
            if reply.status == 200:
                ctx.trace.usage = answer_usage(worker, reply.body)
        except UpstreamError:
            failed = True
            raise
        finally:
            if not ended:
                self.balancer.end(worker, failed=failed)
        usage = ctx.trace.usage
        await self._admission.settle(ctx.caller, ctx.admission, sum(usage) if usage else None)
        return Outcome(routed, reply, {})

    def _stream_end(self, ctx: RequestContext, worker: Worker) -> StreamEnd:
        async def ended(failed: bool, events: int) -> None:
            self.balancer.end(worker, failed=failed)
            usage = ctx.trace.usage
            # No usage chunk (the stream was cut before it, or the worker does not send one): what arrived is
            # counted, at vLLM's one token per event, on top of the prompt's estimate.
            completion = usage[1] if usage else max(0, events - 2)
            tokens = sum(usage) if usage else estimate_tokens(ctx.prompt.tokens, completion)
            await self._admission.settle(ctx.caller, ctx.admission, tokens)
            broken = Reason.UPSTREAM_ERROR if failed else None
            ctx.trace.finish(200, reason=broken, estimated_completion=completion)

        return ended


def _passes_on(status: int) -> bool:
    """A worker's 200 is the answer and its 4xx the caller's mistake: both pass through. Anything else (a 5xx, a
    redirect, another 2xx or 1xx) is the worker failing to answer: the gateway's problem."""
    return status == 200 or 400 <= status < 500


def _raise_unless_passed_on(worker: Worker, reply: UpstreamReply) -> None:
    if _passes_on(reply.status):
        return
    if 300 <= reply.status < 400:  # a base_url that moved (http to https, a missing /v1): the client can't follow it
        raise UpstreamFailed(
            f"worker {worker.name!r} answered with a redirect ({reply.status}): set its base_url to where it points",
            worker=worker.name,
        )
    raise UpstreamFailed(
        f"worker {worker.name!r} failed with status {reply.status}: {reply.body[:300].decode('utf-8', 'replace')}",
        worker=worker.name,
    )
