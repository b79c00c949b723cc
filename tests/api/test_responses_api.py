"""POST /v1/responses through a real gateway to scriptable workers, with the official openai SDK: routed by the
text of `input`, limited by `max_output_tokens`, settled and recorded from the answer's usage, and each failure in
the Responses API's own shapes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import ResponseInputParam

from router.adapters.ledger_sqlite import read_records
from router.api.app import create_app
from router.settings import LedgerSettings, TierSettings
from tests.api.conftest import Stack, settings_for
from tests.servers import serving
from tests.upstream import Journal, make_upstream

LONG = "explain " * 40  # the length scorer sends it to the large model


@pytest.fixture
def client_for() -> Iterator[Callable[..., openai.OpenAI]]:
    """SDK clients for a gateway's URL, closed after the test."""
    made: list[openai.OpenAI] = []

    def make(url: str, key: str = "unused") -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_plain_and_streamed_answers_are_routed_by_their_input(
    stack: Stack, client_for: Callable[..., openai.OpenAI]
) -> None:
    client = client_for(stack.gateway.url)
    short = client.responses.with_raw_response.create(model="auto", input="hi", max_output_tokens=3)
    assert (short.headers["x-triage-model"], short.headers["x-triage-reason"]) == ("tiny-small", "below_threshold")
    answer = short.parse()
    assert answer.output_text == "word " * 3
    assert answer.usage is not None and (answer.usage.input_tokens, answer.usage.output_tokens) == (7, 3)
    items: ResponseInputParam = [{"role": "user", "content": [{"type": "input_text", "text": LONG}]}]
    with client.responses.stream(model="auto", input=items, instructions="be brief", max_output_tokens=4) as s:
        kinds = [event.type for event in s]
        final = s.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.usage is not None and final.usage.output_tokens == 4
    sent = stack.large_journal.bodies[-1]
    assert sent["instructions"] == "be brief" and sent["model"] == "tiny-large"
    assert "stream_options" not in sent  # the Responses stream reports its usage unasked


def test_unknown_fields_pass_through_and_a_named_model_goes_straight_to_its_worker(
    stack: Stack, client_for: Callable[..., openai.OpenAI]
) -> None:
    client = client_for(stack.gateway.url)
    raw = client.responses.with_raw_response.create(
        model="tiny-large", input="hi", max_output_tokens=2, extra_body={"store": False, "reasoning": {"x": 1}}
    )
    assert raw.headers["x-triage-reason"] == "requested"
    sent = stack.large_journal.bodies[-1]
    assert (sent["store"], sent["reasoning"]) == (False, {"x": 1})


def test_failover_before_the_first_byte(dead_url: str, client_for: Callable[..., openai.OpenAI]) -> None:
    journal = Journal()
    with (
        serving(make_upstream("tiny-large", journal)) as large,
        serving(create_app(settings_for(dead_url, f"{large.url}/v1"))) as gw,
    ):
        client = client_for(gw.url)
        raw = client.responses.with_raw_response.create(model="auto", input="hi", max_output_tokens=2)
        assert (raw.headers["x-triage-model"], raw.headers["x-triage-reason"]) == ("tiny-large", "fallback")
        with client.responses.stream(model="auto", input="hi", max_output_tokens=2) as s:
            assert s.get_final_response().status == "completed"
    assert len(journal.bodies) == 2


def test_a_stream_broken_mid_way_ends_with_a_responses_error_event(
    stack: Stack, client_for: Callable[..., openai.OpenAI]
) -> None:
    client = client_for(stack.gateway.url)
    events = list(
        client.responses.create(
            model="auto", input="hi", max_output_tokens=5, stream=True, extra_body={"x_test": {"die_after": 3}}
        )
    )
    assert [e.type for e in events[:2]] == ["response.created", "response.output_item.added"]
    last = events[-1]
    assert last.type == "error"
    assert last.code == "upstream_error" and "'small'" in last.message  # names the worker


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (
            400,
            '{"error": {"message": "bad input", "type": "BadRequestError", "param": "input", "code": 400}}',
            "bad input",
        ),
        (422, "not json at all", "not json at all"),  # wrapped in OpenAI's envelope
    ],
)
def test_a_worker_4xx_passes_through_in_openais_envelope(
    stack: Stack, status: int, body: str, error: str, client_for: Callable[..., openai.OpenAI]
) -> None:
    client = client_for(stack.gateway.url)
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(model="auto", input="hi", extra_body={"x_test": {"status": status, "body": body}})
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict) and caught.value.body["message"] == error
    assert len(stack.small_journal.bodies) == 1  # a 4xx is the caller's: no failover


def test_bad_requests_are_400s_naming_the_field(stack: Stack) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "auto"}, "input"),
        ({"model": "auto", "input": 3}, "input"),
        ({"model": "auto", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "auto", "input": "x", "max_output_tokens": "9"}, "max_output_tokens"),
    ]
    for body, param in cases:
        r = stack.client.post("/v1/responses", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"]["param"].startswith(param)  # a union names its branch: input.str


def test_previous_response_id_never_reaches_a_worker_that_may_not_hold_it(
    stack: Stack, client_for: Callable[..., openai.OpenAI]
) -> None:
    client = client_for(stack.gateway.url)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="auto", input="and then?", previous_response_id="resp_1")
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "previous_response_id"
    assert stack.small_journal.bodies == stack.large_journal.bodies == []
    # a model served by one worker: that worker is the only one that can hold it
    client.responses.create(model="tiny-small", input="and then?", previous_response_id="resp_1")
    assert stack.small_journal.bodies[-1]["previous_response_id"] == "resp_1"


def test_limits_reserve_max_output_tokens_and_settle_from_usage_and_the_ledger_records_it(
    tmp_path: Path, client_for: Callable[..., openai.OpenAI]
) -> None:
    path = tmp_path / "ledger.sqlite"
    small_journal = Journal()
    with serving(make_upstream("tiny-small", small_journal)) as small, serving(make_upstream("tiny-large")) as large:
        base = settings_for(f"{small.url}/v1", f"{large.url}/v1")
        tier = TierSettings(tokens_per_minute=1000, max_tokens=6)
        settings = base.model_copy(update={"ledger": LedgerSettings(path=path), "tiers": {"anonymous": tier}})
        with serving(create_app(settings)) as gw:
            client = client_for(gw.url)
            plain = client.responses.with_raw_response.create(model="auto", input="hi", max_output_tokens=50)
            assert small_journal.bodies[-1]["max_output_tokens"] == 6  # the tier's cap, in the API's own field
            remaining = int(plain.headers["x-ratelimit-remaining-tokens"])
            with client.responses.stream(model="auto", input="hi") as s:
                s.get_final_response()
            assert small_journal.bodies[-1]["max_output_tokens"] == 6  # set when the caller sent none
            after = httpx.post(f"{gw.url}/v1/responses", json={"model": "auto", "input": "hi", "max_output_tokens": 1})
            # both earlier requests were settled at their usage: 7 + 6 tokens each
            assert int(after.headers["x-ratelimit-remaining-tokens"]) <= remaining - 13
    records = list(read_records(path))
    assert [(r.model, r.status, r.prompt_tokens, r.completion_tokens) for r in records] == [
        ("tiny-small", 200, 7, 6),
        ("tiny-small", 200, 7, 6),
        ("tiny-small", 200, 7, 1),
    ]
    assert records[0].cost == pytest.approx((7 * 0.1 + 6 * 0.2) / 1e6)
