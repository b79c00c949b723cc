"""GET /metrics after real traffic: scraped, parsed, and checked against what was sent."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from router.api.app import create_app
from router.settings import LedgerSettings, TierSettings
from tests.api.conftest import settings_for
from tests.prometheus import parse
from tests.servers import serving
from tests.upstream import make_upstream


def test_metrics_count_what_was_served(tmp_path: Path) -> None:
    with serving(make_upstream("tiny-small")) as small, serving(make_upstream("tiny-large")) as large:
        base = settings_for(f"{small.url}/v1", f"{large.url}/v1")
        settings = base.model_copy(
            update={
                "ledger": LedgerSettings(path=tmp_path / "l.sqlite"),
                "tiers": {"anonymous": TierSettings(requests_per_minute=4)},
            }
        )
        with serving(create_app(settings)) as gw:
            url = f"{gw.url}/v1/chat/completions"
            for content in ("hi", "hello", "explain " * 100):
                assert (
                    httpx.post(
                        url, json={"model": "auto", "max_tokens": 3, "messages": [{"role": "user", "content": content}]}
                    ).status_code
                    == 200
                )
            assert (
                httpx.post(
                    url, json={"model": "tiny-large", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
                ).status_code
                == 200
            )
            assert (
                httpx.post(url, json={"model": "auto", "messages": [{"role": "user", "content": "x"}]}).status_code
                == 429
            )
            scrape = httpx.get(f"{gw.url}/metrics")
    assert scrape.headers["content-type"].startswith("text/plain")
    m = parse(scrape.text)
    requests = "triage_requests_total"
    assert m.get(requests, tier="anonymous", model="tiny-small", reason="below_threshold", status="200") == 2
    assert m.get(requests, tier="anonymous", model="tiny-large", reason="at_or_above_threshold", status="200") == 1
    assert m.get(requests, tier="anonymous", model="tiny-large", reason="requested", status="200") == 1
    assert m.get(requests, tier="anonymous", model="none", reason="rate_limited", status="429") == 1
    assert m.get("triage_tokens_total", model="tiny-small", kind="completion") == 6
    assert m.get("triage_tokens_total", model="tiny-large", kind="completion") == 8
    assert m.get("triage_latency_seconds_count", model="tiny-small") == 2
    assert m.get("triage_latency_seconds_bucket", model="tiny-large", le="+Inf") == 2
    # small: 7 prompt + 3 completion at $0.1/$0.2 per M, twice
    assert m.get("triage_cost_usd_total", model="tiny-small", basis="paid") == pytest.approx(
        2 * (7 * 0.1 + 3 * 0.2) / 1e6
    )
    assert m.get("triage_cost_usd_total", model="tiny-small", basis="always_large") == pytest.approx(
        2 * (7 * 5 + 3 * 15) / 1e6
    )
    assert m.get("triage_ledger_dropped_total") == 0
    assert m.get("triage_limiter_errors_total") == 0
    assert m.get("triage_ledger_queue_depth") >= 0
    # Running totals are counters (rate() and increase() are meant for them); levels are gauges.
    for name in (requests, "triage_tokens_total", "triage_cost_usd_total", "triage_ledger_dropped_total"):
        assert m.types[name] == "counter", name
    for name in ("triage_limiter_errors_total", "triage_limiter_unsettled_total", "triage_overloaded_total"):
        assert m.types[name] == "counter", name
    for name in ("triage_shadow_calls_total", "triage_shadow_dropped_total"):
        assert m.types[name] == "counter", name
    assert m.types["triage_ledger_queue_depth"] == "gauge"
    assert m.types["triage_latency_seconds_bucket"] == "histogram"


def test_a_model_name_with_cr_lf_breaks_neither_the_answers_nor_the_metrics() -> None:
    """Regression: a worker that reports (GET /v1/models) a name holding CR/LF had every answer from it dropped
    (the name went raw into x-triage-model, and uvicorn refuses such a header), and its LF split a /metrics line."""
    name = 'evil\r\nx-injected: 1\\"é'
    with serving(make_upstream(name)) as small, serving(make_upstream("tiny-large")) as large:
        base = settings_for(f"{small.url}/v1", f"{large.url}/v1")
        discovered = base.workers[0].model_copy(update={"model": None})  # asked from the worker
        settings = base.model_copy(update={"workers": [discovered, base.workers[1]]})
        with serving(create_app(settings)) as gw, httpx.Client(base_url=gw.url, timeout=10) as client:
            for stream in (False, True):
                body = {
                    "model": "auto",
                    "max_tokens": 3,
                    "stream": stream,
                    "messages": [{"role": "user", "content": "hi"}],
                }
                r = client.post("/v1/chat/completions", json=body)
                assert r.status_code == 200
                assert "word" in r.text or "w0" in r.text
                assert r.headers["x-triage-model"] == 'evil%0D%0Ax-injected: 1\\"%C3%A9'
                assert "x-injected" not in r.headers
            scrape = client.get("/metrics")
    assert scrape.status_code == 200
    m = parse(scrape.text)
    assert m.total("triage_requests_total", model=name) == 2
    assert m.get("triage_latency_seconds_count", model=name) == 2
