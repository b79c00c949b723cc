"""The cascade flow at the service's ports: what is kept, what escalates, what falls back, and that the caller's
reservation is settled once for both calls."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from router.core.cascade import EscalationRule
from router.core.ports import UpstreamReply
from router.core.types import Reason
from router.errors import UpstreamUnavailable
from router.protocol import CompletionRequest, decode_body
from router.service.context import Endpoint, RequestOptions
from tests.service.fakes import Stack, answer, ask, caller, stack

CONFIDENT = UpstreamReply(200, answer("four", usage=(10, 2), logprob=-0.01), "application/json")
UNSURE = UpstreamReply(200, answer("maybe five", usage=(10, 3), logprob=-3.0), "application/json")
DOWN = UpstreamUnavailable("connection refused", worker="x")
RULE = EscalationRule(min_confidence=0.5)


async def test_a_confident_draft_is_kept_and_its_logprobs_removed() -> None:
    s = stack(score=0.9, rule=RULE)  # the score says large; a cascade does not route by it
    s.backend.on("small-0", CONFIDENT)
    s.backend.on("small-1", CONFIDENT)
    out = await ask(s, caller(cascade=True))
    assert out.routed.decision.reason == "cascade_accepted" and out.escalation == ""
    assert len(s.backend.calls) == 1
    assert s.backend.calls[0][1]["logprobs"] is True  # asked for on the caller's behalf...
    assert isinstance(out.reply, UpstreamReply)
    assert orjson.loads(out.reply.body)["choices"][0]["logprobs"] is None  # ...and removed again
    (record,) = s.sink.records
    assert (record.reason, record.escalated, record.score) == ("cascade_accepted", False, 0.9)
    assert s.limiter.settled == [12]


async def test_an_unsure_draft_escalates_two_records_one_settlement() -> None:
    s = stack(rule=RULE)
    s.backend.on("small-0", UNSURE)
    s.backend.on("small-1", UNSURE)
    s.backend.on("large-0", UpstreamReply(200, answer("4", usage=(10, 1)), "application/json"))
    out = await ask(s, caller(cascade=True))
    assert (out.routed.worker.name, out.escalation) == ("large-0", "low_confidence")
    assert "logprobs" not in s.backend.calls[1][1]  # the large model gets the caller's body
    draft, final = s.sink.records
    assert (draft.reason, draft.escalated, draft.cost_large) == ("draft:low_confidence", True, 0.0)
    assert draft.cost > 0  # the draft was paid for
    assert (final.reason, final.escalated, final.worker) == ("escalated", True, "large-0")
    assert final.cost_large > 0  # the baseline is counted once, on the answer
    assert s.limiter.settled == [13 + 11]  # both calls' tokens, in one settlement


async def test_when_the_large_model_fails_the_unsure_draft_is_the_answer() -> None:
    s = stack(rule=RULE)
    s.backend.on("small-0", UNSURE)
    s.backend.on("small-1", UNSURE)
    s.backend.on("large-0", DOWN)
    out = await ask(s, caller(cascade=True))
    assert out.routed.worker.role.value == "small"
    assert out.routed.decision.reason == "fallback"
    assert isinstance(out.reply, UpstreamReply) and b"maybe five" in out.reply.body
    (record,) = s.sink.records
    assert (record.reason, record.status, record.completion_tokens) == ("fallback", 200, 3)
    assert s.limiter.settled == [13]


async def test_no_draft_and_no_large_model_is_an_error_with_the_reservation_kept() -> None:
    s = stack(rule=RULE)
    s.backend.on("small-0", DOWN)
    s.backend.on("small-1", DOWN)
    s.backend.on("large-0", DOWN)
    who = caller(cascade=True)
    with pytest.raises(UpstreamUnavailable):
        await ask(s, who)
    assert [r.reason for r in s.sink.records] == ["upstream_unavailable"]  # no draft record: nothing generated
    (kept,) = s.limiter.settled
    assert kept > 100  # the whole reservation (prompt estimate + 512 completion tokens) stands
    assert (await s.limiter.admit(who, 1)).admitted  # but the concurrency slot is free


async def test_a_draft_refused_by_the_small_worker_escalates_with_its_status() -> None:
    s = stack(rule=RULE)
    refused = UpstreamReply(400, b'{"error": {"message": "context too long"}}', "application/json")
    s.backend.on("small-0", refused)
    s.backend.on("small-1", refused)
    out = await ask(s, caller(cascade=True))
    assert out.escalation == "draft_status_400"
    assert s.sink.reasons == ["draft:draft_status_4xx", "escalated"]


def _drafting_forever() -> Stack:
    """A cascade stack whose small workers never answer: a request waits in its draft."""
    s = stack(rule=RULE)
    release = asyncio.Event()

    async def hang() -> UpstreamReply:
        await release.wait()
        return CONFIDENT

    s.backend.on("small-0", hang)
    s.backend.on("small-1", hang)
    return s


async def test_a_request_the_shutdown_cuts_is_recorded_as_such_not_as_a_client_gone() -> None:
    """Regression: when the graceful shutdown's time ran out, the server's cancel was recorded as the client's
    (499 client_gone) while the caller was answered 503 shutting_down by the edge: the ledger blamed callers."""
    s = _drafting_forever()
    task = asyncio.create_task(ask(s, caller(cascade=True)))
    await s.backend.entered.wait()
    task.cancel("Task cancelled, timeout graceful shutdown exceeded")  # what uvicorn sends
    with pytest.raises(asyncio.CancelledError):
        await task
    (record,) = s.sink.records
    assert (record.status, record.reason) == (503, "shutting_down")


async def test_a_client_leaving_during_the_draft_is_recorded_against_the_small_worker() -> None:
    s = _drafting_forever()
    who = caller(cascade=True)
    task = asyncio.create_task(ask(s, who))
    await s.backend.entered.wait()
    task.cancel(Reason.CLIENT_GONE)  # as the edge cancels a request whose client left
    with pytest.raises(asyncio.CancelledError):
        await task
    (record,) = s.sink.records
    assert (record.status, record.reason, record.role) == (499, "client_gone", "small")
    assert s.backend.workers_called[0] == record.worker
    # No verdict on the worker (the client left, the worker did not fail), nothing in flight, the slot free.
    health = s.service.health()
    assert set(health.breakers.values()) == {"closed"}
    assert all(s.balancer.outstanding(w) == 0 for w in s.service.workers)
    assert len(s.limiter.settled) == 1
    assert (await s.limiter.admit(who, 1)).admitted


async def test_streams_and_named_models_skip_the_cascade() -> None:
    s = stack(score=0.9, rule=RULE)
    out = await ask(s, caller(cascade=True), {"model": "small-model"})
    assert out.routed.decision.reason == "requested"
    out = await ask(s, caller(cascade=True), {"n": 2})
    assert out.routed.decision.reason == "at_or_above_threshold"
    # A completions prompt list is a choice per prompt: the draft's first choice cannot vouch for the others.
    payload, request = decode_body(b'{"model": "auto", "prompt": ["2+2=", "3+3="]}', CompletionRequest)
    out = await s.service.handle(caller(cascade=True), Endpoint.COMPLETIONS, payload, request, RequestOptions())
    assert out.routed.decision.reason == "at_or_above_threshold"
    assert all("logprobs" not in body for _, body in s.backend.calls)
