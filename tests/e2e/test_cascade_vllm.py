"""The cascade against real vLLM CPU workers: the draft's token logprobs come from vLLM itself. (This file
sorts before test_vllm.py, whose last test kills the small worker.)"""

from __future__ import annotations

import httpx
import pytest

from router.api.app import create_app
from router.settings import CascadeSettings, LedgerSettings, Settings, TierSettings, WorkerSettings
from tests.e2e.conftest import VllmStack
from tests.servers import serving

pytestmark = pytest.mark.vllm

ASK = {"model": "auto", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6}


def _settings(stack: VllmStack, min_confidence: float) -> Settings:
    return Settings(
        workers=[
            WorkerSettings(name="small", role="small", base_url=stack.small.url + "/v1", model="triage-small"),
            WorkerSettings(name="large", role="large", base_url=stack.large.url + "/v1", model="triage-large"),
        ],
        tiers={"anonymous": TierSettings(mode="cascade")},
        # Random weights rarely stop before max_tokens: judge the draft by its logprobs, not its length.
        cascade=CascadeSettings(min_confidence=min_confidence, escalate_on_length=False),
        ledger=LedgerSettings(enabled=False),
    )


def test_random_weights_are_unsure_of_their_draft_and_escalate(vllm_stack: VllmStack) -> None:
    with serving(create_app(_settings(vllm_stack, min_confidence=0.5))) as gw:
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=ASK, timeout=60)
    assert r.status_code == 200, r.text
    # A 2k-token vocabulary with random weights gives each sampled token a probability near 1/2000.
    assert r.headers["x-triage-escalation"] == "low_confidence"
    assert r.headers["x-triage-model"] == "triage-large" and r.json()["model"] == "triage-large"


def test_a_kept_draft_comes_back_without_vllms_logprobs(vllm_stack: VllmStack) -> None:
    with serving(create_app(_settings(vllm_stack, min_confidence=0.0))) as gw:
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=ASK, timeout=60)
        asked = httpx.post(f"{gw.url}/v1/chat/completions", json={**ASK, "logprobs": True}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["x-triage-reason"] == "cascade_accepted" and r.json()["model"] == "triage-small"
    assert r.json()["choices"][0]["logprobs"] is None
    tokens = asked.json()["choices"][0]["logprobs"]["content"]
    assert len(tokens) == 6 and all(t["logprob"] < 0 for t in tokens)  # the caller asked: vLLM's own
