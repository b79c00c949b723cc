"""The Responses and Messages APIs with the official openai and anthropic SDKs, unmodified, through `triage serve`
to two real vLLM CPU workers (which serve both APIs themselves): routed by score, limited, and recorded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
import yaml
from anthropic.types import MessageParam

from router.adapters.ledger_sqlite import read_records
from router.api.auth import hash_key
from tests.e2e.conftest import Proc, VllmStack, start_gateway
from tests.e2e.test_vllm import LONG, SHORT_TEXT
from tests.servers import wait_until

pytestmark = pytest.mark.vllm

HARD = str(LONG[0]["content"])  # scored above the shipped threshold: the large model
KEY = "sk-e2e-paid"
TOKENS_PER_MINUTE = 5000


@pytest.fixture
def gateway(vllm_stack: VllmStack, tmp_path: Path) -> Iterator[tuple[Proc, Path]]:
    ledger = tmp_path / "ledger.sqlite"
    config = {
        "workers": [
            {"name": "small", "role": "small", "base_url": vllm_stack.small.url + "/v1", "model": "triage-small"},
            {"name": "large", "role": "large", "base_url": vllm_stack.large.url + "/v1", "model": "triage-large"},
        ],
        "tiers": {"anonymous": {}, "paid": {"tokens_per_minute": TOKENS_PER_MINUTE, "max_tokens": 8}},
        "auth": {"keys": [{"sha256": hash_key(KEY), "tier": "paid"}]},
        "ledger": {"path": str(ledger)},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = start_gateway(path, tmp_path)
    try:
        yield proc, ledger
    finally:
        proc.stop()


def _settled(ledger: Path, records: int) -> None:
    """A stream is settled when it ends, a moment after the client has its last event: its record follows the
    settlement, so once the ledger holds it the next admission sees the stream's real usage."""
    wait_until(lambda: ledger.exists() and len(list(read_records(ledger))) >= records, 30, f"{records} ledger records")


def test_responses_plain_and_streamed(gateway: tuple[Proc, Path]) -> None:
    proc, ledger = gateway
    with openai.OpenAI(base_url=proc.url + "/v1", api_key=KEY, max_retries=0, timeout=60) as client:
        short = client.responses.with_raw_response.create(model="auto", input=SHORT_TEXT, max_output_tokens=50)
        assert (short.headers["x-triage-model"], short.headers["x-triage-reason"]) == (
            "triage-small",
            "below_threshold",
        )
        answer = short.parse()
        assert answer.model == "triage-small" and answer.usage is not None
        assert answer.usage.output_tokens <= 8  # the paid tier's max_tokens capped max_output_tokens
        remaining = int(short.headers["x-ratelimit-remaining-tokens"])
        with client.responses.stream(
            model="auto", input=HARD, instructions="Answer briefly.", max_output_tokens=4
        ) as s:
            deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
            final = s.get_final_response()
        assert final.model == "triage-large" and deltas
        assert final.usage is not None and final.usage.output_tokens == 4 and final.usage.input_tokens > 50
        streamed_total = final.usage.input_tokens + final.usage.output_tokens
        _settled(ledger, 2)
        after = client.responses.with_raw_response.create(model="auto", input=SHORT_TEXT, max_output_tokens=1)
        assert int(after.headers["x-ratelimit-remaining-tokens"]) <= remaining - streamed_total
    proc.stop()  # the ledger is drained on shutdown
    records = list(read_records(ledger))
    assert [(r.tier, r.model, r.status) for r in records] == [
        ("paid", "triage-small", 200),
        ("paid", "triage-large", 200),
        ("paid", "triage-small", 200),
    ]
    assert (records[1].prompt_tokens, records[1].completion_tokens) == (final.usage.input_tokens, 4)


def test_messages_plain_and_streamed(gateway: tuple[Proc, Path]) -> None:
    proc, ledger = gateway
    short: list[MessageParam] = [{"role": "user", "content": SHORT_TEXT}]
    hard: list[MessageParam] = [{"role": "user", "content": [{"type": "text", "text": HARD}]}]
    with anthropic.Anthropic(base_url=proc.url, api_key=KEY, max_retries=0, timeout=60) as client:
        raw = client.messages.with_raw_response.create(model="auto", max_tokens=5, messages=short)
        assert (raw.headers["x-triage-model"], raw.headers["x-triage-reason"]) == ("triage-small", "below_threshold")
        message = raw.parse()
        assert message.model == "triage-small" and message.usage.output_tokens <= 5
        remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
        with client.messages.stream(model="auto", max_tokens=4, system="Answer briefly.", messages=hard) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        assert final.model == "triage-large" and text
        assert final.usage.output_tokens == 4 and final.usage.input_tokens > 50
        _settled(ledger, 2)
        after = client.messages.with_raw_response.create(model="auto", max_tokens=1, messages=short)
        spent = final.usage.input_tokens + final.usage.output_tokens
        assert int(after.headers["x-ratelimit-remaining-tokens"]) <= remaining - spent
        with pytest.raises(anthropic.NotFoundError) as caught:
            client.messages.create(model="no-such-model", max_tokens=1, messages=short)
        assert isinstance(caught.value.body, dict) and caught.value.body["error"]["type"] == "not_found_error"
        with pytest.raises(anthropic.BadRequestError) as too_long:  # vLLM's own 400, in Anthropic's envelope
            client.messages.create(
                model="triage-small", max_tokens=8, messages=[{"role": "user", "content": "x " * 2000}]
            )
        assert isinstance(too_long.value.body, dict) and too_long.value.body["error"]["type"] == "invalid_request_error"
    proc.stop()
    records = list(read_records(ledger))
    assert [(r.model, r.status) for r in records][:3] == [
        ("triage-small", 200),
        ("triage-large", 200),
        ("triage-small", 200),
    ]
    assert (records[1].prompt_tokens, records[1].completion_tokens) == (final.usage.input_tokens, 4)
