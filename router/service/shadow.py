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
from router.protocol import prompt_text, read_draft
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
                self._dispatch.pick(self._dispatch.by_role[other], ctx.request),
                Decision(other, Reason.SHADOW, d.score, d.threshold),
            )
            trace = Trace(self._recorder, ctx.caller, ctx.request, ctx.trace.request_id, ctx.trace.route)
            trace.baseline = False  # the request's own record carries the always-large baseline
            payload = dict(ctx.payload)
            shadow_ctx = RequestContext(ctx.caller, ctx.endpoint, payload, ctx.request, trace)
            try:
                answer = await self._dispatch.serve(shadow_ctx, shadow, named=True)
            except TriageError as exc:
                trace.finish(exc.status, reason=Reason.SHADOW)
                return
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
                    prompt=prompt_text(ctx.request),
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

    async def close(self) -> None:
        """Wait for shadow calls under way (at shutdown, before the ledger drains)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
