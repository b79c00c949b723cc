"""The shadow flow: after a sampled routed request has its answer, the other model answers the same request in
the background. The caller waits for none of it and its limits never see it. The shadow call is metered and
recorded (reason `shadow`, its own cost, no always-large baseline), and both answers go to the pairs store,
for `triage label` to turn into outcomes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from router.core.ports import PairSink, UpstreamReply
from router.core.shadow import ShadowGate, ShadowPair
from router.core.types import Decision, Reason, Role, Routed
from router.errors import TriageError
from router.protocol import read_draft
from router.service.context import Outcome, RequestContext
from router.service.dispatch import Dispatcher
from router.service.recording import Recorder, Trace

__all__ = ["Shadow"]

log = logging.getLogger("triage.shadow")


class Shadow:
    def __init__(
        self, dispatcher: Dispatcher, gate: ShadowGate, pairs: PairSink, recorder: Recorder, busy: Callable[[], bool]
    ) -> None:
        self._dispatch = dispatcher
        self.gate = gate
        self._pairs = pairs
        self._recorder = recorder
        self._busy = busy
        self._tasks: set[asyncio.Task[None]] = set()

    def after(self, ctx: RequestContext, outcome: Outcome) -> None:
        """Maybe start a shadow call for a request the routing decided and a worker answered with 200."""
        reply, decision = outcome.reply, outcome.routed.decision
        if not isinstance(reply, UpstreamReply) or reply.status != 200:
            return
        if decision.reason not in (Reason.BELOW_THRESHOLD, Reason.AT_OR_ABOVE_THRESHOLD, Reason.TIER_POLICY):
            return
        if not self.gate.admit(ctx.caller.tier.name, self._busy()):
            return
        task = asyncio.get_running_loop().create_task(self._run(ctx, outcome.routed, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, ctx: RequestContext, routed: Routed, reply: UpstreamReply) -> None:
        try:
            other = Role.LARGE if routed.worker.role is Role.SMALL else Role.SMALL
            d = routed.decision
            shadow = Routed(
                self._dispatch.pick(self._dispatch.by_role[other], ctx.prompt),
                Decision(other, Reason.SHADOW, d.score, d.threshold),
            )
            trace = Trace(self._recorder, ctx.caller, ctx.prompt, ctx.trace.request_id)
            trace.baseline = False  # the request's own record carries the always-large baseline
            # Only choice 0 is compared: the caller's `n` would pay for n - 1 answers nobody reads.
            payload = {k: v for k, v in ctx.payload.items() if k != "n"}
            request = ctx.request.model_copy(update={"n": None}) if ctx.request.n is not None else ctx.request
            shadow_ctx = RequestContext(ctx.caller, ctx.endpoint, payload, request, ctx.prompt, trace)
            try:
                answer = await self._dispatch.serve(shadow_ctx, shadow, named=True)
            except TriageError as exc:
                trace.finish(exc.status, reason=Reason.SHADOW)
                return
            except asyncio.CancelledError:  # stopped at shutdown: the worker may have spent tokens, say so
                trace.finish(499, reason=Reason.SHADOW)
                raise
            shadow_reply = answer.reply
            status = shadow_reply.status if isinstance(shadow_reply, UpstreamReply) else 502
            trace.finish(status, reason=Reason.SHADOW)
            if not isinstance(shadow_reply, UpstreamReply) or status != 200:
                return
            mine, theirs = read_draft(reply.body), read_draft(shadow_reply.body)
            if mine is None or theirs is None:
                return
            by_role = {routed.worker.role: (routed.worker, mine[0]), other: (answer.routed.worker, theirs[0])}
            self._pairs.emit(
                ShadowPair(
                    ts=time.time(),
                    request_id=ctx.trace.request_id,
                    tier=ctx.caller.tier.name,
                    prompt=ctx.prompt.text,
                    routed=routed.worker.role.value,
                    score=d.score,
                    small_model=by_role[Role.SMALL][0].model,
                    large_model=by_role[Role.LARGE][0].model,
                    small_answer=by_role[Role.SMALL][1],
                    large_answer=by_role[Role.LARGE][1],
                )
            )
        except Exception:  # a defect must not take the gateway down from a background task
            log.exception("shadow call failed")
        finally:
            self.gate.done()

    async def close(self, grace: float | None = None) -> None:
        """Wait for shadow calls under way (at shutdown, before the ledger drains), at most `grace` seconds:
        then those still waiting on a worker are cancelled (recorded with status 499). Nobody waits for a
        shadow answer, so it must not hold a shutdown past the graceful timeout the operator set."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        if pending:
            log.warning("shutdown: %d shadow calls still waiting on a worker were cancelled", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
