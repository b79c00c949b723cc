"""Spend at the service's ports: what is reserved for the workers a request may reach, and what is settled
(time on the worker, a cache hit, a failure nobody can price)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import pytest

from router.core.budgets import Budget
from router.core.limits import TierLimits
from router.core.ports import UpstreamReply
from router.core.types import Prices, Role, Worker
from router.errors import UpstreamUnavailable
from router.protocol import ChatCompletionRequest, prompt_tokens
from tests.service.fakes import answer, ask, caller, stack, worker

DAY = Budget(per_day=10_000_000)  # 10 USD: never the limit here


PROMPT = prompt_tokens(
    ChatCompletionRequest.model_validate({"model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}]})
)


def _hour_priced() -> list[Worker]:
    """A small worker priced by the token, and a large one by the second only (1 USD a second)."""
    return [worker("small-0", Role.SMALL), replace(worker("large-0", Role.LARGE), prices=Prices(per_second=1.0))]


async def test_a_routed_request_reserves_the_large_model_s_worst_case_and_a_cascade_both() -> None:
    s = stack(score=0.1)  # routed small, but it could fall back to the large model
    await ask(s, caller(budget=DAY), {"max_tokens": 100})
    large = (PROMPT + 1) * 3 + 100 * 6  # the prompt's estimate and its token of slack at 3.0, 100 out at 6.0
    assert s.limiter.held == [large]
    await ask(s, caller(budget=DAY, cascade=True), {"max_tokens": 100})
    small = math.ceil((PROMPT + 1) * 0.1 + 100 * 0.2)
    assert s.limiter.held == [large, large + small]  # a cascade pays the small draft as well


async def test_time_on_the_worker_is_settled_at_price_per_second() -> None:
    s = stack(workers=_hour_priced(), score=0.9)

    async def slow() -> UpstreamReply:
        await asyncio.sleep(0.05)
        return UpstreamReply(200, answer(), "application/json")

    s.backend.on("large-0", slow)
    await ask(s, caller(budget=DAY), {"max_tokens": 10})
    (cost,) = s.limiter.costs
    assert cost is not None and cost >= 50_000  # at least 0.05 s at 1 USD a second
    (record,) = s.sink.records
    assert record.cost_seconds * 1_000_000 == pytest.approx(cost, abs=1) and record.cost == record.cost_seconds


async def test_a_cache_hit_costs_nothing_and_a_failure_keeps_its_reservation() -> None:
    s = stack(score=0.1, cache=True)
    body = {"max_tokens": 10, "temperature": 0}
    await ask(s, caller(budget=DAY), body)
    await ask(s, caller(budget=DAY), body)
    assert s.limiter.costs[1] == 0
    for name in ("small-0", "small-1", "large-0"):
        s.backend.on(name, UpstreamUnavailable("down", worker=name))
    with pytest.raises(UpstreamUnavailable):
        await ask(s, caller(budget=DAY), {"max_tokens": 10})
    assert s.limiter.costs[-1] is None  # nobody knows what was generated: the reservation is the spend


async def test_a_caller_without_a_budget_reserves_no_money() -> None:
    s = stack(score=0.1)
    await ask(s, caller(limits=TierLimits(max_concurrent=4)), {"max_tokens": 10})
    assert s.limiter.held == []


async def test_a_request_without_a_bound_reserves_what_the_worker_s_context_leaves() -> None:
    """No max_tokens, no tier cap: the large worker's context of 4,096 tokens bounds the completion (a worker
    that does not say is reserved 512 a choice, as the token limits are)."""
    workers = [worker("small-0", Role.SMALL), replace(worker("large-0", Role.LARGE), context_length=4096)]
    s = stack(workers=workers, score=0.1)
    await ask(s, caller(budget=DAY), {"n": 2})
    prompt = PROMPT + 1
    assert s.limiter.held == [prompt * 3 + 2 * (4096 - prompt) * 6]
    s = stack(score=0.1)
    await ask(s, caller(budget=DAY), {"n": 2})
    assert s.limiter.held == [prompt * 3 + 2 * 512 * 6]
