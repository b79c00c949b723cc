"""Costs by part (pure): cached prompt tokens at their own price, reasoning tokens as output, time on the
worker, and micro-units that never under-count."""

from __future__ import annotations

from decimal import Decimal

import orjson

from router.core.costs import priced
from router.core.tiers import Caller, Tier
from router.core.types import Decision, Prices, Reason, Role, Routed, Worker
from router.protocol import ChatCompletionRequest, Prompt, decode_body
from router.service.recording import Recorder, Trace, Usage, usage_of

PRICES = Prices(input=1.0, output=2.0, cached_input=0.25, per_second=0.001)


def test_cached_tokens_cost_their_own_price_and_default_to_the_input_price() -> None:
    p = priced(PRICES, 1000, 5, cached=800)
    assert (p.input, p.cached, p.output) == (Decimal(200), Decimal(200), Decimal(10))
    assert priced(Prices(1.0, 2.0), 1000, 5, cached=800).micros == 1010  # no cached price: the input price
    assert priced(PRICES, 10, 0, cached=50).cached == Decimal("2.5")  # never more cached than the prompt


def test_time_on_the_worker_is_priced_per_second() -> None:
    p = priced(Prices(per_second=0.001), 0, 0, seconds=2.5)
    assert p.seconds == Decimal(2500) and p.micros == 2500  # 0.001 USD/s x 2.5 s = 2,500 micro-USD


def test_fractions_of_a_micro_unit_round_up_and_never_drift() -> None:
    p = priced(Prices(0.1, 0.1), 3, 0)  # 0.3 micro-USD
    assert p.total == Decimal("0.3") and p.micros == 1
    assert sum(priced(Prices(0.1, 0.2), 7, 3).micros for _ in range(10_000)) == 10_000 * 2  # 1.3 -> 2, exactly


def _usage(**usage: object) -> bytes:
    return orjson.dumps({"usage": usage})


def test_reasoning_tokens_are_output_whether_or_not_completion_tokens_include_them() -> None:
    inside = usage_of(
        _usage(
            prompt_tokens=10, completion_tokens=50, total_tokens=60, completion_tokens_details={"reasoning_tokens": 40}
        )
    )
    assert inside is not None and (inside.completion, inside.reasoning) == (50, 40)  # OpenAI, vLLM: inside
    apart = usage_of(
        _usage(
            prompt_tokens=10, completion_tokens=10, total_tokens=60, completion_tokens_details={"reasoning_tokens": 40}
        )
    )
    assert apart is not None and apart.completion == 50  # a provider counting them apart: added
    cached = usage_of(_usage(prompt_tokens=10, completion_tokens=1, prompt_tokens_details={"cached_tokens": 8}))
    assert cached is not None and cached.cached == 8
    odd = usage_of(_usage(prompt_tokens=10, completion_tokens=1, prompt_tokens_details={"cached_tokens": "x"}))
    assert odd is not None and odd.cached == 0  # a detail that is not a number is ignored, not an error


def test_a_trace_priced_again_after_its_usage_or_time_changed_gets_the_new_cost() -> None:
    """The settlement and the record share one pricing of a request: what changed in between is not missed."""
    worker = Worker("w", Role.SMALL, "http://w/v1", "m", Prices(input=1.0, output=2.0, per_second=0.001), 1.0, 1.0)
    request = decode_body(b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}]}', ChatCompletionRequest)
    trace = Trace(Recorder(None, Prices()), Caller(Tier("t"), "ip:x"), Prompt(request[1]), "r")
    trace.routed = Routed(worker, Decision(Role.SMALL, Reason.REQUESTED))
    assert trace.cost_micros() is None  # nothing known yet
    estimated = trace.cost_micros(10)
    assert estimated is not None and trace.cost_micros(11) == estimated + 2  # another estimate, another price
    trace.note(Usage(100, 5))
    assert trace.cost_micros() == 110
    trace.worker_seconds = 2.0
    assert trace.cost_micros() == 110 + 2000
    trace.note(Usage(100, 6, cached=0))
    assert trace.cost_micros() == 112 + 2000
