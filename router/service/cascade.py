"""A cascade tier's flow: the small model drafts; the draft is kept unless the escalation rule finds it
unreliable, and then the large model answers. An escalated request leaves two records: the draft's (reason
`draft:<why>`, its own cost, no baseline) and the answer's. If the large model cannot answer, a usable draft is
the answer. The caller's reservation is settled once, for both calls."""

from __future__ import annotations

import logging

from router.core.cascade import Draft, judge
from router.core.ports import UpstreamReply, UpstreamStream
from router.core.types import Decision, Reason, Role, Routed
from router.errors import UpstreamError
from router.protocol import (
    ChatCompletionRequest,
    Prompt,
    draft_logprobs_request,
    read_draft,
    strip_logprobs,
)
from router.service.admission import AdmissionControl
from router.service.context import Outcome, RequestContext, RoutingPolicy
from router.service.dispatch import Dispatcher
from router.service.recording import Recorder, Trace

__all__ = ["Cascade"]

log = logging.getLogger("triage.service")


class Cascade:
    def __init__(
        self, dispatcher: Dispatcher, admission: AdmissionControl, policy: RoutingPolicy, recorder: Recorder
    ) -> None:
        self._dispatch = dispatcher
        self._admission = admission
        self._policy = policy
        self._recorder = recorder

    async def run(self, ctx: RequestContext) -> Outcome:
        score = self._policy.scorer.score(ctx.prompt.text)  # recorded; the cascade does not route by it
        threshold = self._policy.threshold_for(ctx.caller.tier)
        draft_payload, added = draft_logprobs_request(ctx.payload, isinstance(ctx.request, ChatCompletionRequest))
        draft_trace = Trace(self._recorder, ctx.caller, ctx.prompt, ctx.trace.request_id)
        draft_ctx = RequestContext(ctx.caller, ctx.endpoint, draft_payload, ctx.request, ctx.prompt, draft_trace)
        kept = Decision(Role.SMALL, Reason.CASCADE_ACCEPTED, score, threshold)
        draft: Outcome | None = None
        try:
            small = Routed(self._dispatch.pick(self._dispatch.by_role[Role.SMALL], ctx.prompt), kept)
            ctx.trace.routed = small  # if the client leaves during the draft, the request's record names it
            draft = await self._dispatch.serve(draft_ctx, small, named=True)
            why = self._judge(draft.reply, ctx.prompt)
        except UpstreamError:
            why = "draft_failed"
        if why is None and draft is not None and isinstance(draft.reply, UpstreamReply):
            return await self._keep(ctx, draft, draft_trace, added, kept)
        escalated = Decision(Role.LARGE, Reason.ESCALATED, score, threshold)
        large = Routed(self._dispatch.pick(self._dispatch.by_role[Role.LARGE], ctx.prompt), escalated)
        try:
            answer_ctx = RequestContext(ctx.caller, ctx.endpoint, ctx.payload, ctx.request, ctx.prompt, ctx.trace)
            answer = await self._dispatch.serve(answer_ctx, large, named=True)
        except UpstreamError:
            if draft is None or not isinstance(draft.reply, UpstreamReply) or draft.reply.status != 200:
                _record_draft(draft, draft_trace, why)
                raise
            log.warning("large model unavailable; the cascade answers with the %s draft", why)
            return await self._keep(
                ctx, draft, draft_trace, added, Decision(Role.SMALL, Reason.FALLBACK, score, threshold)
            )
        ctx.trace.escalated = True
        _record_draft(draft, draft_trace, why)
        used = [u for u in (draft_trace.usage, ctx.trace.usage) if u]
        await self._admission.settle(ctx.caller, ctx.admission, sum(map(sum, used)) if used else None)
        return Outcome(answer.routed, answer.reply, {}, escalation=why or "")

    async def _keep(
        self, ctx: RequestContext, draft: Outcome, draft_trace: Trace, added: bool, decision: Decision
    ) -> Outcome:
        """The draft is the answer: the request's own record describes it."""
        assert isinstance(draft.reply, UpstreamReply)
        routed = Routed(draft.routed.worker, decision)
        ctx.trace.routed, ctx.trace.usage = routed, draft_trace.usage
        usage = ctx.trace.usage
        await self._admission.settle(ctx.caller, ctx.admission, sum(usage) if usage else None)
        reply = draft.reply
        body = strip_logprobs(reply.body) if added else reply.body
        return Outcome(routed, UpstreamReply(reply.status, body, reply.content_type), {})

    def _judge(self, reply: UpstreamReply | UpstreamStream, prompt: Prompt) -> str | None:
        if not isinstance(reply, UpstreamReply):
            return "unreadable"
        if reply.status != 200:
            return f"draft_status_{reply.status}"  # e.g. the small model's context is too short
        parsed = read_draft(reply.body)
        draft = Draft(*parsed) if parsed else None
        scorer = self._policy.answer_scorer
        risk = None
        if scorer is not None and draft is not None:
            text = draft.text
            risk = lambda: scorer.score_answer(prompt.text, text)  # noqa: E731
        return judge(draft, self._policy.rule, risk)


def _record_draft(draft: Outcome | None, trace: Trace, why: str | None) -> None:
    """An escalated draft's own record: its cost, but not the always-large baseline (the answer carries it)."""
    if draft is None:
        return  # no small worker answered: nothing was generated
    trace.escalated, trace.baseline = True, False
    trace.finish(draft.reply.status, reason=Reason.of_draft(why or "draft_failed"))
