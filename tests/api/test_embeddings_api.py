"""POST /v1/embeddings with the official openai SDK: not scored, sent to the worker with role embeddings, limited
by its input tokens, recorded with its own reason; a gateway without one answers 404 naming the setting."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from router.adapters.ledger_sqlite import read_records
from router.api.app import create_app
from router.settings import LedgerSettings, TierSettings, WorkerSettings
from tests.api.conftest import settings_for
from tests.servers import serving
from tests.upstream import Journal, make_upstream


def test_embeddings_go_to_their_worker_limited_by_input_tokens_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    journal, small_journal = Journal(), Journal()
    with (
        serving(make_upstream("tiny-small", small_journal)) as small,
        serving(make_upstream("tiny-large")) as large,
        serving(make_upstream("tiny-embed", journal)) as embed,
    ):
        base = settings_for(f"{small.url}/v1", f"{large.url}/v1")
        worker = WorkerSettings(name="embed", role="embeddings", base_url=f"{embed.url}/v1", model="tiny-embed",
                                price_input=0.02)  # fmt: skip
        settings = base.model_copy(
            update={
                "workers": [*base.workers, worker],
                "ledger": LedgerSettings(path=path),
                "tiers": {"anonymous": TierSettings(tokens_per_minute=1000, max_tokens=4)},
            }
        )
        with (
            serving(create_app(settings)) as gw,
            openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0) as client,
        ):
            raw = client.embeddings.with_raw_response.create(model="auto", input=["one two three", "four"])
            assert (raw.headers["x-triage-model"], raw.headers["x-triage-reason"]) == ("tiny-embed", "embeddings")
            assert raw.headers["x-triage-score"] == "-"
            answer = raw.parse()
            assert [d.embedding for d in answer.data] == [[0.5, -0.5]] * 2
            assert answer.usage.prompt_tokens == 4
            assert "max_tokens" not in journal.bodies[-1]  # a tier's cap is about generation
            remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
            named = client.embeddings.with_raw_response.create(model="embed", input=[[1, 2, 3, 4, 5]])
            assert named.headers["x-triage-model"] == "tiny-embed"
            assert int(named.headers["x-ratelimit-remaining-tokens"]) <= remaining - 5  # settled at the usage
            with pytest.raises(openai.NotFoundError) as caught:  # a chat model does not serve embeddings
                client.embeddings.create(model="tiny-small", input="x")
            assert isinstance(caught.value.body, dict) and "does not serve embeddings" in caught.value.body["message"]
            chat = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": "hi"}]
            )
            assert chat.headers["x-triage-model"] == "tiny-small"  # embeddings workers are never routed to
            with pytest.raises(openai.NotFoundError):  # nor reached by naming them on a generation route
                client.chat.completions.create(model="tiny-embed", messages=[{"role": "user", "content": "hi"}])
            bad = httpx.post(f"{gw.url}/v1/embeddings", json={"model": "auto", "input": "x", "stream": True})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "stream"
        assert len(small_journal.bodies) == 1
    records = list(read_records(path))
    assert [(r.model, r.role, r.reason, r.status, r.prompt_tokens, r.completion_tokens) for r in records[:2]] == [
        ("tiny-embed", "embeddings", "embeddings", 200, 4, 0),
        ("tiny-embed", "embeddings", "embeddings", 200, 5, 0),
    ]
    assert records[0].cost == records[0].cost_large == pytest.approx(4 * 0.02 / 1e6)  # paid whatever the routing
    assert records[0].route == "/embeddings" and records[0].score is None


def test_no_embeddings_worker_is_a_404_naming_the_setting(dead_url: str) -> None:
    with serving(create_app(settings_for(dead_url, dead_url))) as gw:
        r = httpx.post(f"{gw.url}/v1/embeddings", json={"model": "auto", "input": "x"})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found" and "role: embeddings" in r.json()["error"]["message"]


def test_a_tier_cannot_list_embeddings_as_a_model_size(dead_url: str) -> None:
    with pytest.raises(ValueError, match="embeddings are not routed"):
        settings_for(dead_url, dead_url).model_validate(
            {**settings_for(dead_url, dead_url).model_dump(), "tiers": {"anonymous": {"models": ["embeddings"]}}}
        )
