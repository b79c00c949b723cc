"""Routing and failover through the service, at its ports: which workers are tried, in what order, and what the
record and the breakers say afterwards. The breakers run on the injected clock: no test waits for a cooldown."""

from __future__ import annotations

import pytest

from router.core.ports import UpstreamReply
from router.core.types import Role
from router.errors import ModelNotFound, PermissionDenied, UpstreamFailed, UpstreamTimeout, UpstreamUnavailable
from tests.service.fakes import answer, ask, caller, stack

DOWN = UpstreamUnavailable("connection refused", worker="x")


async def test_a_routed_request_fails_over_to_the_other_replica_then_to_the_other_model() -> None:
    s = stack(score=0.1)  # below the threshold: small
    s.backend.on("small-0", DOWN)
    s.backend.on("small-1", UpstreamReply(502, b"bad gateway", "text/plain"))
    s.backend.on("large-0", UpstreamReply(200, answer(usage=(7, 3)), "application/json"))
    out = await ask(s, caller())
    assert out.routed.worker.name == "large-0"
    assert out.routed.decision.reason == "fallback"
    assert sorted(s.backend.workers_called[:2]) == ["small-0", "small-1"]
    assert s.backend.workers_called[2] == "large-0"
    assert [c["model"] for _, c in s.backend.calls] == ["small-model", "small-model", "large-model"]
    (record,) = s.sink.records
    assert (record.worker, record.reason, record.status) == ("large-0", "fallback", 200)
    assert (record.prompt_tokens, record.completion_tokens) == (7, 3)
    assert s.limiter.settled == [10]  # once, with the answer's usage


async def test_a_named_model_never_fails_over_to_the_other_model() -> None:
    s = stack()
    s.backend.on("small-0", UpstreamTimeout("timed out", worker="small-0"))
    s.backend.on("small-1", UpstreamTimeout("timed out", worker="small-1"))
    who = caller()
    with pytest.raises(UpstreamTimeout):
        await ask(s, who, {"model": "small-model"})
    assert sorted(s.backend.workers_called) == ["small-0", "small-1"]
    (record,) = s.sink.records
    assert (record.status, record.reason, record.model_requested) == (504, "upstream_timeout", "small-model")
    # Nothing was generated that anyone knows of: the reservation stands (settled to itself), the slot is free.
    (admitted,) = s.limiter.settled
    assert admitted > 0
    assert (await s.limiter.admit(who, 1)).admitted


async def test_a_tier_that_may_not_use_the_large_model_gets_no_fallback_to_it() -> None:
    s = stack(score=0.1)
    s.backend.on("small-0", DOWN)
    s.backend.on("small-1", DOWN)
    with pytest.raises(UpstreamUnavailable):
        await ask(s, caller(roles=frozenset({Role.SMALL})))
    assert "large-0" not in s.backend.workers_called


async def test_an_open_breaker_puts_its_worker_last_until_the_cooldown_passes() -> None:
    s = stack(score=0.1, breaker_failures=1)
    s.backend.on("small-0", DOWN)
    s.backend.on("small-1", DOWN)
    s.backend.on("large-0", DOWN)
    with pytest.raises(UpstreamUnavailable):
        await ask(s, caller())
    assert s.service.health().breakers == {"small-0": "open", "small-1": "open", "large-0": "open"}
    s.clock.advance(4.9)
    assert set(s.service.health().breakers.values()) == {"open"}
    s.clock.advance(0.2)  # past the 5 s cooldown: each lets one probe through
    assert set(s.service.health().breakers.values()) == {"half_open"}
    s.backend.calls.clear()
    out = await ask(s, caller())
    assert out.reply.status == 200
    assert s.service.health().breakers[out.routed.worker.name] == "closed"


async def test_a_replica_whose_breaker_is_open_is_tried_only_after_every_healthy_worker() -> None:
    s = stack(score=0.1, breaker_failures=1)
    s.backend.on("small-0", DOWN)
    s.backend.on("small-1", UpstreamReply(200, answer(), "application/json"))
    await ask(s, caller(), {"model": "small-0"})  # opens small-0's breaker (named: no failover)
    s.backend.calls.clear()
    s.backend.on("small-1", DOWN)
    out = await ask(s, caller())
    # small-1 (healthy) first, then the large model, and small-0 (open) never: large-0 answered.
    assert s.backend.workers_called == ["small-1", "large-0"]
    assert out.routed.worker.name == "large-0"


async def test_a_worker_s_4xx_passes_through_without_failover_or_breaker_verdict() -> None:
    s = stack(score=0.9)
    s.backend.on("large-0", UpstreamReply(400, b'{"error": {"message": "too long"}}', "application/json"))
    out = await ask(s, caller())
    assert isinstance(out.reply, UpstreamReply) and out.reply.status == 400
    assert s.backend.workers_called == ["large-0"]
    assert s.service.health().breakers["large-0"] == "closed"
    assert s.sink.records[0].status == 400


async def test_a_200_that_is_not_json_is_a_failure_and_fails_over() -> None:
    s = stack(score=0.9)
    s.backend.on("large-0", UpstreamReply(200, b"<html>proxy error</html>", "text/html"))
    out = await ask(s, caller())
    assert out.routed.worker.role is Role.SMALL and out.routed.decision.reason == "fallback"


async def test_unknown_and_forbidden_models_are_refused_and_recorded_before_admission() -> None:
    s = stack()
    with pytest.raises(ModelNotFound):
        await ask(s, caller(), {"model": "gpt-17"})
    with pytest.raises(PermissionDenied):
        await ask(s, caller(roles=frozenset({Role.SMALL})), {"model": "large-model"})
    assert s.sink.reasons == ["model_not_found", "model_not_allowed"]
    assert s.limiter.settled == [] and s.backend.calls == []


async def test_every_upstream_failure_class_fails_over() -> None:
    for failure in (DOWN, UpstreamTimeout("t", worker="x"), UpstreamFailed("f", worker="x")):
        s = stack(score=0.9)
        s.backend.on("large-0", failure)
        out = await ask(s, caller())
        assert out.routed.worker.role is Role.SMALL, failure
