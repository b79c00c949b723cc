"""Shadow pairs at the service's ports: which requests get a shadow call, that the caller's limits never see
it, what it records and stores, and the bounds (in flight, per minute, busy) on the injected clock."""

from __future__ import annotations

import asyncio

import orjson

from router.core.ports import UpstreamReply
from router.core.shadow import ShadowPolicy
from router.core.types import Role
from router.errors import UpstreamUnavailable
from router.protocol import CompletionRequest, decode_body
from router.service.context import Endpoint, RequestOptions
from tests.service.fakes import Stack, answer, ask, caller, stack

ON = ShadowPolicy(rate=1.0, max_per_minute=5, max_in_flight=2)


async def settle_background(s: Stack) -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    await s.service.close()


async def test_a_routed_answer_gets_the_other_model_s_answer_beside_it() -> None:
    s = stack(score=0.1, shadow=ON)
    s.backend.on("small-0", UpstreamReply(200, answer("small says 4", usage=(10, 3)), "application/json"))
    s.backend.on("small-1", UpstreamReply(200, answer("small says 4", usage=(10, 3)), "application/json"))
    s.backend.on("large-0", UpstreamReply(200, answer("large says 4", usage=(10, 4)), "application/json"))
    out = await ask(s, caller(), {"temperature": 0.7})
    assert out.routed.worker.role is Role.SMALL
    await settle_background(s)
    assert [name for name, _ in s.backend.calls][1] == "large-0"
    shadow_body = s.backend.calls[1][1]
    assert shadow_body["model"] == "large-model" and shadow_body["temperature"] == 0.7  # the caller's request
    request, shadow = s.sink.records
    assert (request.reason, shadow.reason) == ("below_threshold", "shadow")
    assert request.request_id == shadow.request_id
    assert shadow.cost > 0 and shadow.cost_large == 0.0 and shadow.worker == "large-0"
    assert s.limiter.settled == [13]  # the caller's answer only: the shadow never touches the caller's limits
    (pair,) = s.pairs.pairs
    assert (pair.routed, pair.small_answer, pair.large_answer) == ("small", "small says 4", "large says 4")
    assert (pair.prompt, pair.tier, pair.score) == ("What is 2+2?", "free", 0.1)
    assert s.service.health().shadow_sent == 1


async def test_only_routed_non_streamed_answered_requests_are_shadowed() -> None:
    s = stack(score=0.9, shadow=ON)
    await ask(s, caller(), {"model": "small-model"})  # named
    await ask(s, caller(cascade=True))  # a cascade has both answers already when it escalates
    s.backend.on("large-0", UpstreamReply(400, b'{"error": {"message": "no"}}', "application/json"))
    await ask(s, caller())  # refused by the worker
    await settle_background(s)
    assert s.pairs.pairs == [] and "shadow" not in s.sink.reasons
    assert s.gate is not None and s.gate.sent == 0


async def test_tiers_budget_in_flight_and_busy_bound_the_shadow_calls() -> None:
    s = stack(score=0.1, shadow=ShadowPolicy(rate=1.0, tiers=frozenset({"paid"}), max_per_minute=3, max_in_flight=2))
    await ask(s, caller())  # tier free: not shadowed
    assert s.gate is not None and s.gate.sent == 0
    paid = caller()
    paid = type(paid)(type(paid.tier)("paid", paid.tier.limits), "client:2")
    release = asyncio.Event()

    async def slow() -> UpstreamReply:
        await release.wait()
        return UpstreamReply(200, answer(), "application/json")

    s.backend.on("large-0", slow, slow)
    for _ in range(3):
        await ask(s, paid)
    await asyncio.sleep(0)
    assert (s.gate.sent, s.gate.in_flight, s.gate.dropped) == (2, 2, 1)  # two in flight: the third is dropped
    release.set()
    await settle_background(s)
    assert s.gate.in_flight == 0
    await ask(s, paid)
    await ask(s, paid)  # the minute's budget (3) is spent
    await settle_background(s)
    assert (s.gate.sent, s.gate.dropped) == (3, 2)
    s.clock.advance(60)
    await ask(s, paid)
    await settle_background(s)
    assert s.gate.sent == 4 and len(s.pairs.pairs) == 4
    s.admission.pending = 64  # the admission queue an eighth full: optional work waits
    await ask(s, paid)
    assert s.gate.dropped == 3


async def test_a_failed_shadow_call_is_recorded_and_stores_no_pair() -> None:
    s = stack(score=0.1, shadow=ON)
    s.backend.on("large-0", UpstreamUnavailable("down", worker="large-0"))
    out = await ask(s, caller())
    assert isinstance(out.reply, UpstreamReply) and out.reply.status == 200
    await settle_background(s)
    assert s.sink.reasons == ["below_threshold", "shadow"]
    assert s.sink.records[1].status == 503 and s.pairs.pairs == []
    assert s.gate is not None and s.gate.in_flight == 0


async def test_a_completions_prompt_list_is_shadowed_by_its_first_prompt_alone() -> None:
    """Regression: the shadow copied every prompt of a completions prompt list (up to the tier's max_n of them,
    each generating on the other model, often the large one, outside the caller's limits) while only choice 0 is
    compared. A single list of token ids is one prompt and is sent whole."""
    s = stack(score=0.1, shadow=ON)
    s.backend.on("small-0", UpstreamReply(200, answer("small"), "application/json"))
    s.backend.on("small-1", UpstreamReply(200, answer("small"), "application/json"))
    s.backend.on("large-0", UpstreamReply(200, answer("large"), "application/json"))
    prompts: list[object] = [["first", "second", "third"], [[1, 2], [3, 4], [5]], [1, 2, 3], "one"]
    for prompt in prompts:
        body = orjson.dumps({"model": "auto", "prompt": prompt, "n": 2, "max_tokens": 3})
        payload, request = decode_body(body, CompletionRequest)
        await s.service.handle(caller(max_n=16), Endpoint.COMPLETIONS, payload, request, RequestOptions())
        await settle_background(s)
    sent = [body for name, body in s.backend.calls if name == "large-0"]
    assert [body["prompt"] for body in sent] == ["first", [1, 2], [1, 2, 3], "one"]
    assert all("n" not in body and body["max_tokens"] == 3 for body in sent)
    callers = [body for name, body in s.backend.calls if name != "large-0"]
    assert [body["prompt"] for body in callers] == prompts  # the caller's own requests are whole
