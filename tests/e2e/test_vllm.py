"""The official OpenAI client, through the gateway, to two real vLLM CPU workers. Order matters: the last
test kills the small worker."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

import classifiers
from tests.e2e.conftest import VllmStack

pytestmark = pytest.mark.vllm

SHORT_TEXT = "hello"
SHORT: list[ChatCompletionMessageParam] = [{"role": "user", "content": SHORT_TEXT}]
# The prompt `./dev run` sends as its hard example: an arithmetic word problem, the kind of request where the large
# model gains most, which the shipped prior scores above its suggested threshold (0.25 against 0.18; short chat
# and multiple-choice questions, where it gains less, sit at 0.12-0.17).
LONG = [
    {
        "role": "user",
        "content": "A train leaves a station at 3 pm at 60 km/h; a second train leaves the same station at 4 pm at "
        "90 km/h on the same track. How many kilometres from the station does the second train catch the first, and "
        "at what time?",
    }
]


def test_prompts_fall_on_either_side_of_the_shipped_threshold() -> None:
    """The gateway runs with its defaults: the shipped classifier and its suggested threshold."""
    model = classifiers.load()
    threshold = float(model.meta["suggested_threshold"])
    assert model.score(SHORT_TEXT) < threshold <= model.score(LONG[0]["content"])


@pytest.fixture
def client(vllm_stack: VllmStack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=vllm_stack.gateway.url + "/v1", api_key="none", max_retries=0, timeout=60) as c:
        yield c


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["auto", "triage-small", "triage-large"]


def test_auto_reaches_each_worker(client: openai.OpenAI) -> None:
    short = client.chat.completions.with_raw_response.create(model="auto", messages=SHORT, max_tokens=5)
    long = client.chat.completions.with_raw_response.create(model="auto", messages=LONG, max_tokens=5)  # type: ignore[arg-type]
    assert short.headers["x-triage-model"] == "triage-small"
    assert long.headers["x-triage-model"] == "triage-large"
    assert short.parse().model == "triage-small"
    assert long.parse().model == "triage-large"
    usage = long.parse().usage
    assert usage is not None and usage.completion_tokens == 5 and usage.prompt_tokens > 50


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="auto",
        messages=SHORT,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert {c.model for c in chunks} == {"triage-small"}


def test_completions(client: openai.OpenAI) -> None:
    done = client.completions.create(model="triage-large", prompt="the answer is", max_tokens=4)
    assert done.model == "triage-large"
    assert done.usage is not None and done.usage.completion_tokens == 4
    streamed = list(client.completions.create(model="auto", prompt="hi", max_tokens=3, stream=True))
    assert streamed and all(c.model == "triage-small" for c in streamed)


def test_unknown_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-5", messages=SHORT)
    assert info.value.status_code == 404


def test_prompt_over_the_context_limit_is_400_from_the_worker(client: openai.OpenAI) -> None:
    huge = [{"role": "user", "content": "word " * 2000}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="auto", messages=huge, max_tokens=5)  # type: ignore[arg-type]
    assert "context" in str(info.value).lower() or "max_model_len" in str(info.value)


def test_killed_worker_is_503_and_the_gateway_serves_the_other(vllm_stack: VllmStack, client: openai.OpenAI) -> None:
    vllm_stack.small.kill()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="triage-small", messages=SHORT, max_tokens=3)
    assert info.value.status_code == 503
    # routed requests fail over to the other model, which the default tier may use
    rerouted = client.chat.completions.with_raw_response.create(model="auto", messages=SHORT, max_tokens=3)
    assert rerouted.headers["x-triage-model"] == "triage-large"
    assert rerouted.headers["x-triage-reason"] == "fallback"
    survivor = client.chat.completions.create(model="auto", messages=LONG, max_tokens=3)  # type: ignore[arg-type]
    assert survivor.model == "triage-large"
    ready = httpx.get(vllm_stack.gateway.url + "/ready").json()
    assert ready["ready"] is True and ready["workers"] == {"small": "down", "large": "up"}
    assert ready["breakers"]["large"] == "closed"  # small's two failures are under the default of three
    assert httpx.get(vllm_stack.gateway.url + "/health").status_code == 200
