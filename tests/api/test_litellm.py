"""A worker that is a hosted API, reached through litellm: here a local OpenAI-compatible server stands in for
the provider (litellm's `openai/` route with api_base pointed at it), so the real litellm code runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from router.api.app import create_app
from router.api.wiring import resolve_workers
from router.settings import Settings, WorkerSettings
from tests.api.conftest import settings_for
from tests.servers import serving
from tests.upstream import Journal, make_upstream

SHORT = [{"role": "user", "content": "hi"}]
LONG = [{"role": "user", "content": "explain " * 100}]


def _hosted(small_url: str, large_url: str, **large: Any) -> Settings:
    base = settings_for(small_url, large_url)
    hosted = WorkerSettings.model_validate(
        {
            "name": "large",
            "role": "large",
            "provider": "litellm",
            "provider_model": "openai/tiny-large",
            "base_url": large_url,
            "model": "hosted-large",
            "api_key_env": "TRIAGE_TEST_HOSTED_KEY",
            "timeout": 1.5,
            "price_input": 5,
            "price_output": 15,
            **large,
        }
    )
    return base.model_copy(update={"workers": [base.workers[0], hosted]})


def test_hosted_worker_serves_plain_streamed_and_completions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGE_TEST_HOSTED_KEY", "sk-hosted")
    journal = Journal()
    with (
        serving(make_upstream("tiny-small")) as small,
        serving(make_upstream("tiny-large", journal)) as large,
        serving(create_app(_hosted(f"{small.url}/v1", f"{large.url}/v1"))) as gw,
    ):
        client = httpx.Client(base_url=gw.url, timeout=10)
        r = client.post("/v1/chat/completions", json={"model": "auto", "messages": LONG, "max_tokens": 3})
        assert r.status_code == 200, r.text
        assert r.headers["x-triage-model"] == "hosted-large"
        body = r.json()
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == 3
        assert body["choices"][0]["message"]["content"].split() == ["word"] * 3
        sent = journal.bodies[-1]
        assert sent["model"] == "tiny-large" and sent["max_tokens"] == 3  # litellm's model string, unprefixed
        with client.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "hosted-large",
                "messages": SHORT,
                "max_tokens": 4,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ) as s:
            assert s.status_code == 200
            events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
        assert text.split() == ["w0", "w1", "w2", "w3"]
        assert any((c.get("usage") or {}).get("completion_tokens") == 4 for c in chunks)
        completion = client.post("/v1/completions", json={"model": "hosted-large", "prompt": "x", "max_tokens": 2})
        assert completion.status_code == 200, completion.text
        assert completion.json()["choices"][0]["text"].split() == ["word", "word"]
        client.close()


@pytest.fixture
def hosted_gateway() -> Iterator[str]:
    with (
        serving(make_upstream("tiny-small")) as small,
        serving(make_upstream("tiny-large")) as large,
        serving(create_app(_hosted(f"{small.url}/v1", f"{large.url}/v1"))) as gw,
    ):
        yield f"{gw.url}/v1/chat/completions"


ASK: dict[str, Any] = {"model": "hosted-large", "messages": SHORT}


def test_a_providers_4xx_passes_through_and_its_5xx_is_502(hosted_gateway: str) -> None:
    bad = httpx.post(hosted_gateway, json={**ASK, "x_test": {"status": 400, "body": '{"error": {"message": "nope"}}'}})
    assert bad.status_code == 400 and "nope" in bad.json()["error"]["message"], bad.text
    down = httpx.post(hosted_gateway, json={**ASK, "x_test": {"status": 503, "body": "overloaded"}}, timeout=10)
    assert down.status_code == 502  # the provider's 5xx, and no other worker serves this model


def test_a_hung_provider_is_504(hosted_gateway: str) -> None:
    hung = httpx.post(hosted_gateway, json={**ASK, "x_test": {"sleep": 5}}, timeout=10)
    assert hung.status_code == 504


def test_a_routed_request_falls_back_when_the_hosted_model_is_down(dead_url: str) -> None:
    with (
        serving(make_upstream("tiny-small")) as small,
        serving(create_app(_hosted(f"{small.url}/v1", dead_url))) as gw,
    ):
        r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": LONG}, timeout=10)
        assert r.status_code == 200
        assert (r.headers["x-triage-model"], r.headers["x-triage-reason"]) == ("tiny-small", "fallback")


def test_prices_come_from_litellms_table_when_the_config_gives_none() -> None:
    settings = _hosted(
        "http://127.0.0.1:1/v1",
        "http://127.0.0.1:1/v1",
        provider_model="openai/gpt-4o-mini",
        price_input=None,
        price_output=None,
    )
    small = settings.workers[0].model_copy(update={"model": "tiny-small"})
    settings = settings.model_copy(update={"workers": [small, settings.workers[1]]})
    hosted = resolve_workers(settings)[1]
    assert hosted.prices.input > 0 and hosted.prices.output > hosted.prices.input  # as litellm lists it
    assert hosted.provider == "litellm" and hosted.model == "hosted-large"
    priced = resolve_workers(_hosted("http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1"))
    assert (priced[1].prices.input, priced[1].prices.output) == (5, 15)  # the config's prices win


def test_litellm_worker_needs_a_provider_model() -> None:
    with pytest.raises(ValueError, match="provider_model is required"):
        WorkerSettings.model_validate({"name": "x", "role": "large", "provider": "litellm"})
    with pytest.raises(ValueError, match="base_url is required"):
        WorkerSettings.model_validate({"name": "x", "role": "large"})
