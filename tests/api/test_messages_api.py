"""POST /v1/messages through a real gateway to scriptable workers, with the official anthropic SDK: routed by the
text blocks, limited by `max_tokens`, settled and recorded from the answer's usage, the caller's key taken from
x-api-key, and every error in Anthropic's envelope with Anthropic's status codes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
from anthropic.types import MessageParam

from router.adapters.ledger_sqlite import read_records
from router.api.app import create_app
from router.api.auth import hash_key
from router.settings import AuthSettings, KeySettings, LedgerSettings, TierSettings
from tests.api.conftest import Stack, settings_for
from tests.servers import serving
from tests.upstream import Journal, make_upstream

LONG = "explain " * 40
HI: list[MessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def client_for() -> Iterator[Callable[..., anthropic.Anthropic]]:
    """SDK clients for a gateway's URL, closed after the test."""
    made: list[anthropic.Anthropic] = []

    def make(url: str, key: str = "unused") -> anthropic.Anthropic:
        made.append(anthropic.Anthropic(base_url=url, api_key=key, max_retries=0))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_plain_and_streamed_answers_are_routed_by_their_text_blocks(
    stack: Stack, client_for: Callable[..., anthropic.Anthropic]
) -> None:
    client = client_for(stack.gateway.url)
    raw = client.messages.with_raw_response.create(model="auto", max_tokens=3, messages=HI)
    assert (raw.headers["x-triage-model"], raw.headers["x-triage-reason"]) == ("tiny-small", "below_threshold")
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == "word " * 3
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 3)
    blocks: list[MessageParam] = [{"role": "user", "content": [{"type": "text", "text": LONG}]}]
    with client.messages.stream(model="auto", max_tokens=4, system="be brief", messages=blocks) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "word " * 4
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 4)
    sent = stack.large_journal.bodies[-1]
    assert (sent["model"], sent["system"]) == ("tiny-large", "be brief")
    assert "stream_options" not in sent


@pytest.mark.parametrize(
    ("kwargs", "status", "kind"),
    [
        ({"model": "nope"}, 404, "not_found_error"),
        ({"extra_body": {"max_tokens": 0}}, 400, "invalid_request_error"),
        ({"extra_body": {"messages": []}}, 400, "invalid_request_error"),
    ],
)
def test_gateway_errors_come_in_anthropics_envelope(
    stack: Stack, kwargs: dict[str, object], status: int, kind: str, client_for: Callable[..., anthropic.Anthropic]
) -> None:
    args: dict[str, object] = {"model": "auto", "max_tokens": 3, "messages": HI, **kwargs}
    with pytest.raises(anthropic.APIStatusError) as caught:
        client_for(stack.gateway.url).messages.create(**args)  # type: ignore[call-overload]
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == kind
    assert isinstance(body["error"]["message"], str)


def test_missing_max_tokens_is_a_400_in_anthropics_envelope(stack: Stack) -> None:
    r = stack.client.post("/v1/messages", json={"model": "auto", "messages": HI})
    assert r.status_code == 400
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"type": "error", "error": {"type": "BadRequestError", "message": "too long"}}', "too long"),  # vLLM's
        ('{"error": {"message": "bad", "type": "BadRequestError", "code": 400}}', "bad"),  # OpenAI's envelope
        ("plain words", "plain words"),
    ],
)
def test_a_worker_4xx_passes_through_in_anthropics_envelope(
    stack: Stack, body: str, message: str, client_for: Callable[..., anthropic.Anthropic]
) -> None:
    extra = {"x_test": {"status": 400, "body": body}}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client_for(stack.gateway.url).messages.create(model="auto", max_tokens=3, messages=HI, extra_body=extra)
    assert caught.value.body == {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    assert len(stack.small_journal.bodies) == 1  # no failover on the caller's mistake


def test_a_stream_broken_mid_way_ends_with_an_anthropic_error_event(
    stack: Stack, client_for: Callable[..., anthropic.Anthropic]
) -> None:
    client = client_for(stack.gateway.url)
    extra = {"x_test": {"die_after": 4}}
    with client.messages.stream(model="auto", max_tokens=5, messages=HI, extra_body=extra) as s:
        events = iter(s)
        assert next(events).type == "message_start"
        with pytest.raises(anthropic.APIStatusError) as caught:
            list(events)
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "api_error"


def test_failover_before_the_first_byte(dead_url: str, client_for: Callable[..., anthropic.Anthropic]) -> None:
    with (
        serving(make_upstream("tiny-large")) as large,
        serving(create_app(settings_for(dead_url, f"{large.url}/v1"))) as gw,
    ):
        client = client_for(gw.url)
        raw = client.messages.with_raw_response.create(model="auto", max_tokens=2, messages=HI)
        assert (raw.headers["x-triage-model"], raw.headers["x-triage-reason"]) == ("tiny-large", "fallback")
        with client.messages.stream(model="auto", max_tokens=2, messages=HI) as s:
            assert s.get_final_message().usage.output_tokens == 2


def test_x_api_key_picks_the_tier_and_limits_settle_from_usage_into_the_ledger(
    tmp_path: Path, client_for: Callable[..., anthropic.Anthropic]
) -> None:
    path = tmp_path / "ledger.sqlite"
    journal = Journal()
    with serving(make_upstream("tiny-small", journal)) as small, serving(make_upstream("tiny-large")) as large:
        base = settings_for(f"{small.url}/v1", f"{large.url}/v1")
        settings = base.model_copy(
            update={
                "ledger": LedgerSettings(path=path),
                "tiers": {
                    "anonymous": TierSettings(requests_per_minute=1),
                    "paid": TierSettings(tokens_per_minute=200, max_tokens=6),
                },
                "auth": AuthSettings(keys=[KeySettings(sha256=hash_key("sk-paid"), tier="paid")]),
            }
        )
        with serving(create_app(settings)) as gw:
            paid = client_for(gw.url, "sk-paid")
            raw = paid.messages.with_raw_response.create(model="auto", max_tokens=50, messages=HI)
            assert journal.bodies[-1]["max_tokens"] == 6  # the paid tier's cap
            remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
            extra = {"x_test": {"delta_output_only": True}}  # Anthropic's message_delta: output tokens only
            with paid.messages.stream(model="auto", max_tokens=5, messages=HI, extra_body=extra) as s:
                s.get_final_message()
            after = paid.messages.with_raw_response.create(model="auto", max_tokens=1, messages=HI)
            assert int(after.headers["x-ratelimit-remaining-tokens"]) <= remaining - (7 + 5)
            with pytest.raises(anthropic.AuthenticationError) as caught:
                client_for(gw.url, "sk-wrong").messages.create(model="auto", max_tokens=1, messages=HI)
            assert caught.value.body == {
                "type": "error",
                "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
            }
            body = {"model": "auto", "max_tokens": 1, "messages": HI}
            assert httpx.post(f"{gw.url}/v1/messages", json=body).status_code == 200  # no key: anonymous tier
            limited = httpx.post(f"{gw.url}/v1/messages", json=body)
            assert limited.status_code == 429 and "retry-after" in limited.headers
            assert limited.json()["error"]["type"] == "rate_limit_error"
    records = list(read_records(path))
    assert [(r.tier, r.status, r.prompt_tokens, r.completion_tokens) for r in records] == [
        ("paid", 200, 7, 6),
        ("paid", 200, 7, 5),
        ("paid", 200, 7, 1),
        ("anonymous", 200, 7, 1),
        ("anonymous", 429, None, None),
    ]
