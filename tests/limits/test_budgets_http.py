"""Spend budgets through a real gateway (budgets in real Redis) in front of real HTTP workers: the per-request
cap refuses before any worker is called (or pins a routed request to the small model), cached prompt tokens
are priced apart, a stream cut mid-way is settled from its events, and a key's cap below its tier's holds."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from router.adapters.ledger_sqlite import read_records
from router.api.app import create_app
from router.api.auth import hash_key
from router.cli import main
from router.settings import (
    AuthSettings,
    KeySettings,
    LedgerSettings,
    LimitsSettings,
    Settings,
    TierSettings,
    WorkerSettings,
)
from tests.api.conftest import WORKER_TIMEOUT, settings_for
from tests.limits.conftest import REDIS_URL, forget, require_redis
from tests.servers import serving
from tests.upstream import Journal, make_upstream

SHORT = [{"role": "user", "content": "hi"}]  # a prompt estimated at 0 tokens (+1 of slack)
CAPPED_KEY = "sk-capped-0123456789"  # tier `capped`: max_cost_per_request 0.001
LOW_KEY = "sk-low-0123456789"  # tier `team` (1.00 a day), its own spend_per_day 0.0005
OTHER_KEY = "sk-other-0123456789"  # tier `team`, no budget of its own
# Prices (USD per million tokens = micro-USD per token): small 1 in / 0.25 cached / 2 out, large 10 / 30.
SMALL = {"price_input": 1, "price_cached_input": 0.25, "price_output": 2}
LARGE = {"price_input": 10, "price_output": 30}


@dataclass
class Gateway:
    small: Journal
    large: Journal
    client: httpx.Client
    prefix: str
    ledger: Path
    settings: Settings

    def spend(self, scope: str) -> tuple[int, int]:
        """(settled, held) micro-units in `scope`'s budget window of today (the only one it has)."""
        store = redis.Redis.from_url(REDIS_URL)
        keys = [k for k in store.scan_iter(f"{self.prefix}:spend:{{{scope}}}:d:*")]
        assert len(keys) == 1, keys
        settled, held = store.hmget(keys[0], "s", "h")
        return int(settled or 0), int(held or 0)

    def settled(self, scope: str, expected: int) -> int:
        """The settled spend once it reads `expected` (a stream settles a moment after its last byte)."""
        deadline = time.monotonic() + 10
        while True:
            settled, held = self.spend(scope)
            if (settled, held) == (expected, 0) or time.monotonic() > deadline:
                return settled
            time.sleep(0.02)


def _settings(small: str, large: str, prefix: str, ledger: Path) -> Settings:
    base = settings_for(small, large)
    workers = [
        WorkerSettings(name="small", role="small", base_url=small, model="tiny-small", timeout=WORKER_TIMEOUT, **SMALL),
        WorkerSettings(name="large", role="large", base_url=large, model="tiny-large", timeout=WORKER_TIMEOUT, **LARGE),
    ]
    tiers = {
        "metered": TierSettings(spend_per_day=100),
        "capped": TierSettings(max_cost_per_request=0.001),
        "team": TierSettings(spend_per_day=1.0),
    }
    keys = [
        KeySettings(sha256=hash_key(CAPPED_KEY), tier="capped"),
        KeySettings(sha256=hash_key(LOW_KEY), tier="team", name="low", spend_per_day=0.0005),
        KeySettings(sha256=hash_key(OTHER_KEY), tier="team", name="other"),
    ]
    return base.model_copy(
        update={
            "workers": workers,
            "tiers": tiers,
            "auth": AuthSettings(keys=keys, anonymous_tier="metered"),
            "limits": LimitsSettings(redis_url=REDIS_URL, key_prefix=prefix, redis_timeout=1.0),
            "ledger": LedgerSettings(backend="sqlite", path=ledger),
        }
    )


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    require_redis()
    js, jl = Journal(), Journal()
    prefix, ledger = f"test-{uuid.uuid4().hex[:8]}", tmp_path / "ledger.sqlite"
    with serving(make_upstream("tiny-small", js)) as small, serving(make_upstream("tiny-large", jl)) as large:
        settings = _settings(f"{small.url}/v1", f"{large.url}/v1", prefix, ledger)
        try:
            with serving(create_app(settings)) as gw, httpx.Client(base_url=gw.url, timeout=30) as client:
                yield Gateway(js, jl, client, prefix, ledger, settings)
        finally:
            forget(prefix)


def _post(gw: Gateway, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return gw.client.post("/v1/chat/completions", json=body, headers=headers)


def _records(gw: Gateway, count: int) -> list[Any]:
    deadline = time.monotonic() + 10
    while True:
        records = list(read_records(gw.ledger)) if gw.ledger.exists() else []
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_a_request_whose_worst_case_passes_the_per_request_cap_never_reaches_a_worker(gateway: Gateway) -> None:
    """The large model's worst case for 100 tokens is 1 x 10 + 100 x 30 = 3,010 micro-USD, over the cap of
    1,000: a request naming it is a 400 naming the cap, and the workers' request counts stay at zero."""
    r = _post(gateway, {"model": "tiny-large", "messages": SHORT, "max_tokens": 100}, CAPPED_KEY)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "cost_exceeds_limit" and error["param"] == "max_tokens"
    assert "0.003010" in error["message"] and "max_cost_per_request of 0.001000" in error["message"]
    # Routed, it could only be kept under the cap on the small model if 1 + 1,000 x 2 fitted: it does not.
    r = _post(gateway, {"model": "auto", "messages": SHORT, "max_tokens": 1000}, CAPPED_KEY)
    assert r.status_code == 400, r.text
    assert (len(gateway.small.bodies), len(gateway.large.bodies)) == (0, 0)


def test_a_routed_request_the_small_model_keeps_under_the_cap_is_pinned_there(gateway: Gateway) -> None:
    """A long prompt scores for the large model (3,010 micro-USD worst case there); on the small one it is
    1 x (prompt + 1) + 100 x 2, under the cap: it is served small, never escalated, and says why."""
    long = [{"role": "user", "content": "word " * 60}]  # 300 characters: the length scorer sends it large
    r = _post(gateway, {"model": "auto", "messages": long, "max_tokens": 100}, CAPPED_KEY)
    assert r.status_code == 200, r.text
    assert r.headers["x-triage-reason"] == "budget_cap"
    assert r.headers["x-triage-model"] == "tiny-small"
    assert (len(gateway.small.bodies), len(gateway.large.bodies)) == (1, 0)
    # The same request without a per-request cap goes large: the cap is what pinned it.
    r = _post(gateway, {"model": "auto", "messages": long, "max_tokens": 100})
    assert r.headers["x-triage-model"] == "tiny-large"


def test_cached_prompt_tokens_are_priced_apart_and_the_ledger_keeps_the_part(gateway: Gateway) -> None:
    """1,000 prompt tokens of which 800 cached, 5 out: 200 x 1 + 800 x 0.25 + 5 x 2 = 410 micro-USD (1,010
    without the cached price)."""
    body = {"model": "tiny-small", "messages": SHORT, "max_tokens": 5}
    r = _post(gateway, {**body, "x_test": {"prompt_tokens": 1000, "cached_tokens": 800}})
    assert r.status_code == 200, r.text
    assert gateway.settled("tier:metered", 410) == 410
    (record,) = _records(gateway, 1)
    assert (record.prompt_tokens, record.cached_tokens, record.completion_tokens) == (1000, 800, 5)
    assert record.cost == pytest.approx(410e-6) and record.cost_cached == pytest.approx(200e-6)


def test_a_stream_cut_mid_way_is_settled_from_its_events(gateway: Gateway) -> None:
    """No usage ever arrives: what is spent is the prompt's estimate (1 token) and the events that arrived (10
    content events, counted as 8 tokens after vLLM's role and finish events), on the large model: 1 x 10 + 8
    x 30 = 250 micro-USD, not the 50-token reservation of 1,510."""
    body = {"model": "tiny-large", "messages": SHORT, "max_tokens": 50, "stream": True, "x_test": {"die_after": 10}}
    with gateway.client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        held = int(float(r.headers["x-triage-budget-remaining"]) * 1_000_000)
        r.read()
    assert held == 100_000_000 - 1_510  # the worst case was reserved while the stream ran
    assert gateway.settled("tier:metered", 250) == 250


def test_a_key_s_cap_below_its_tier_s_holds_and_says_which_budget_and_when_it_resets(gateway: Gateway) -> None:
    """The key `low` may spend 500 micro-USD a day in a tier of 1,000,000: each request reserves 1 + 20 x 2 =
    41 and spends as much (the worker counts 1 prompt token), so the key is refused once what it spent and
    holds leaves less than 41; another key of the tier is not."""
    body = {"model": "tiny-small", "messages": SHORT, "max_tokens": 20, "x_test": {"prompt_tokens": 1}}
    remaining = []
    for _ in range(20):
        r = _post(gateway, body, LOW_KEY)
        if r.status_code != 200:
            break
        remaining.append(r.headers["x-triage-budget-remaining"])
    assert r.status_code == 429, r.text
    spent = 41 * len(remaining)
    assert spent <= 500 < spent + 41  # admitted while the worst case fitted, and not once more
    assert remaining[0] == "0.000459"  # the key's budget is the tighter: 500 - 41 reserved
    error = r.json()["error"]
    assert error["type"] == "insufficient_quota" and error["code"] == "budget_exceeded"
    assert "key low" in error["message"] and "spend_per_day of 0.000500" in error["message"]
    assert "resets at" in error["message"] and "(UTC)" in error["message"]
    retry = int(r.headers["retry-after"])
    assert 0 < retry <= 86_400 and r.headers["x-triage-budget-remaining"] == f"0.{500 - spent:06d}"
    assert _post(gateway, body, OTHER_KEY).status_code == 200  # the tier still has money
    (record,) = [x for x in _records(gateway, len(remaining) + 2) if x.status == 429]
    assert record.reason == "budget_exceeded"


def test_spend_is_reported_by_analytics_by_triage_keys_and_in_metrics(
    gateway: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three requests of the key `low` at 41 micro-USD: the ledger, the live counters and the gauges agree."""
    body = {"model": "tiny-small", "messages": SHORT, "max_tokens": 20, "x_test": {"prompt_tokens": 1}}
    for _ in range(3):
        assert _post(gateway, body, LOW_KEY).status_code == 200
    _records(gateway, 3)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(json.dumps(gateway.settings.model_dump(mode="json")))  # JSON is YAML
    assert main(["analytics", "spend", "--ledger", str(gateway.ledger), "--by", "key", "--config", str(cfg)]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("low "))
    assert "0.000123 of 0.000500 (25%)" in row, table  # today against the key's spend_per_day
    assert main(["keys", "spend", "low", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "key low per day" in out and "tier team per day" in out
    key_row = next(line for line in out.splitlines() if line.startswith("key low per day"))
    assert key_row.split()[4:8] == ["0.000123", "0.000000", "0.000500", "0.000377"], out
    deadline = time.monotonic() + 15  # the gauges are refreshed in the background every 5 s
    while 'triage_budget_spend_usd{tier="team",window="day"} 0.000123' not in (
        text := gateway.client.get("/metrics").text
    ):
        assert time.monotonic() < deadline, text[-800:]
        time.sleep(0.2)
    assert 'triage_budget_remaining_usd{tier="team",window="day"} 0.999877' in text


def test_a_request_costing_more_than_a_whole_budget_is_a_400_not_a_429_to_retry(gateway: Gateway) -> None:
    """1 + 1,000 x 2 = 2,001 micro-USD could never fit the key's 500 a day: retrying would never help. A bound
    of 2^24 tokens (the most a request may ask for) is refused the same way."""
    for bound in (1000, 1 << 24):
        r = _post(gateway, {"model": "tiny-small", "messages": SHORT, "max_tokens": bound}, LOW_KEY)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "cost_exceeds_limit" and "key low's whole spend_per_day of 0.000500" in error["message"]
    assert not gateway.small.bodies
    assert _post(gateway, {"model": "tiny-small", "messages": SHORT, "max_tokens": 20}, LOW_KEY).status_code == 200
