"""Cascade tiers through the gateway: the small model drafts, unreliable drafts go to the large model, and both
calls are recorded. The upstreams are told what draft to give (content, finish reason, token logprobs)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.adapters.ledger_sqlite import read_records
from router.analytics.report import summarize
from router.api.app import create_app
from router.settings import CascadeSettings, LedgerSettings, Settings, TierSettings
from tests.api.conftest import settings_for
from tests.servers import serving, wait_until
from tests.upstream import Journal, make_upstream

GOOD = {"content": "The answer is 4.", "finish_reason": "stop", "logprob": -0.05}
ASK = {"model": "auto", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 16}


@dataclass
class Cascade:
    url: str
    small: Journal
    large: Journal
    ledger: Path

    def ask(self, **extra: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/chat/completions", json={**ASK, **extra}, timeout=10)


def _settings(small_url: str, large_url: str, ledger: Path, **cascade: Any) -> Settings:
    return settings_for(small_url, large_url).model_copy(
        update={
            "tiers": {"anonymous": TierSettings(mode="cascade")},
            "ledger": LedgerSettings(path=ledger),
            "cascade": CascadeSettings.model_validate(cascade),
        }
    )


@pytest.fixture
def cascade(tmp_path: Path) -> Iterator[Cascade]:
    small_journal, large_journal = Journal(), Journal()
    small_journal.always = dict(GOOD)
    ledger = tmp_path / "ledger.sqlite"
    with (
        serving(make_upstream("tiny-small", small_journal)) as small,
        serving(make_upstream("tiny-large", large_journal)) as large,
        serving(create_app(_settings(f"{small.url}/v1", f"{large.url}/v1", ledger))) as gw,
    ):
        yield Cascade(gw.url, small_journal, large_journal, ledger)


def test_a_confident_draft_is_kept_without_the_logprobs_the_gateway_asked_for(cascade: Cascade) -> None:
    r = cascade.ask()
    assert r.status_code == 200
    assert r.headers["x-triage-model"] == "tiny-small"
    assert r.headers["x-triage-reason"] == "cascade_accepted"
    assert "x-triage-escalation" not in r.headers
    assert r.json()["choices"][0]["message"]["content"] == "The answer is 4."
    assert r.json()["choices"][0]["logprobs"] is None  # asked for on the caller's behalf, then removed
    assert cascade.small.bodies[-1]["logprobs"] is True
    assert not cascade.large.bodies
    asked = cascade.ask(logprobs=True)
    assert asked.json()["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.05  # the caller's own


@pytest.mark.parametrize(
    ("draft", "why"),
    [
        ({"logprob": -2.0}, "low_confidence"),  # exp(-2) = 0.14 < 0.5
        ({"content": "   "}, "empty"),
        ({"content": "I'm sorry, but I cannot help with that."}, "refused"),
        ({"finish_reason": "length"}, "truncated"),
        ({"status": 400, "body": '{"error": {"message": "prompt too long"}}'}, "draft_status_400"),
    ],
)
def test_unreliable_drafts_escalate(cascade: Cascade, draft: dict[str, Any], why: str) -> None:
    cascade.small.always = {**GOOD, **draft}
    r = cascade.ask()
    assert r.status_code == 200
    assert (r.headers["x-triage-model"], r.headers["x-triage-reason"]) == ("tiny-large", "escalated")
    assert r.headers["x-triage-escalation"] == why
    assert len(cascade.small.bodies) == 1 and len(cascade.large.bodies) == 1
    assert "logprobs" not in cascade.large.bodies[0]  # the large model gets the caller's request as sent


@pytest.mark.parametrize("logprob", ["null", '"abc"', "true"])
def test_a_draft_with_logprobs_that_are_not_numbers_is_judged_without_them(cascade: Cascade, logprob: str) -> None:
    """Regression: a logprob of null or a string raised in the draft's reader (a 500), and `true` counted as 1.0."""
    body = (
        '{"id": "x", "object": "chat.completion", "created": 0, "model": "tiny-small", "choices": [{"index": 0, '
        '"message": {"role": "assistant", "content": "The answer is 4."}, "finish_reason": "stop", '
        f'"logprobs": {{"content": [{{"token": "The", "logprob": {logprob}, "top_logprobs": []}}, '
        '{"token": " answer", "logprob": -2.0, "top_logprobs": []}]}}]}'
    )
    cascade.small.always = {"status": 200, "body": body}
    r = cascade.ask()
    assert r.status_code == 200, r.text
    # The one number left (-2.0: confidence 0.14) decides.
    assert (r.headers["x-triage-reason"], r.headers["x-triage-escalation"]) == ("escalated", "low_confidence")


def test_streams_and_named_models_are_not_cascaded(cascade: Cascade) -> None:
    cascade.small.always = {**GOOD, "logprob": -3.0}
    streamed = cascade.ask(stream=True)
    assert streamed.status_code == 200 and streamed.headers["x-triage-reason"] == "below_threshold"
    named = cascade.ask(model="tiny-small")
    assert named.headers["x-triage-reason"] == "requested"
    assert not cascade.large.bodies


def test_both_calls_are_recorded_and_counted_once(cascade: Cascade) -> None:
    kept = cascade.ask()
    cascade.small.always = {**GOOD, "logprob": -2.0}
    escalated = cascade.ask()
    assert kept.status_code == escalated.status_code == 200
    httpx.post(f"{cascade.url}/v1/chat/completions", json=ASK)  # flush: the ledger writes in the background
    records = _wait_for_records(cascade.ledger, 4)
    by_reason = {r.reason: r for r in records[:3]}
    assert set(by_reason) == {"cascade_accepted", "draft:low_confidence", "escalated"}
    draft, answer = by_reason["draft:low_confidence"], by_reason["escalated"]
    assert draft.request_id == answer.request_id == escalated.headers["x-request-id"]
    assert (draft.role, answer.role) == ("small", "large")
    assert draft.escalated and answer.escalated and not by_reason["cascade_accepted"].escalated
    assert draft.cost > 0 and draft.cost_large == 0  # paid, but the baseline is counted once, on the answer
    assert answer.cost == answer.cost_large > 0
    summary = summarize(records[:3])
    assert summary.requests == 2 and summary.escalations == 1
    assert summary.cost == pytest.approx(sum(r.cost for r in records[:3]))


def _wait_for_records(path: Path, n: int) -> list[Any]:
    wait_until(lambda: path.exists() and len(list(read_records(path))) >= n, 5, f"{n} records in {path}")
    return list(read_records(path))


def test_small_down_escalates_and_large_down_keeps_the_draft(tmp_path: Path, dead_url: str) -> None:
    small_journal = Journal()
    small_journal.always = {**GOOD, "logprob": -2.0}
    with (
        serving(make_upstream("tiny-large")) as large,
        serving(create_app(_settings(dead_url, f"{large.url}/v1", tmp_path / "a.sqlite"))) as gw,
    ):
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=ASK)
        assert r.status_code == 200 and r.headers["x-triage-escalation"] == "draft_failed"
        assert r.headers["x-triage-model"] == "tiny-large"
    with (
        serving(make_upstream("tiny-small", small_journal)) as small,
        serving(create_app(_settings(f"{small.url}/v1", dead_url, tmp_path / "b.sqlite"))) as gw,
    ):
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=ASK)
        assert r.status_code == 200  # an unreliable answer beats none when the large model is down
        assert (r.headers["x-triage-model"], r.headers["x-triage-reason"]) == ("tiny-small", "fallback")


def test_the_answer_scorer_escalates_by_its_threshold(tmp_path: Path) -> None:
    journal = Journal()
    journal.always = dict(GOOD)
    with serving(make_upstream("tiny-small", journal)) as small, serving(make_upstream("tiny-large")) as large:
        for threshold, model in ((0.0, "tiny-large"), (1.0, "tiny-small")):
            settings = _settings(
                f"{small.url}/v1",
                f"{large.url}/v1",
                tmp_path / f"{threshold}.sqlite",
                answer_scorer="default",
                answer_threshold=threshold,
            )
            with serving(create_app(settings)) as gw:
                r = httpx.post(f"{gw.url}/v1/chat/completions", json=ASK)
                assert r.headers["x-triage-model"] == model
                if model == "tiny-large":
                    assert r.headers["x-triage-escalation"] == "answer_scorer"
