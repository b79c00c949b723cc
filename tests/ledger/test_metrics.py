"""GET /metrics after real traffic: scraped, parsed, and checked against what was sent."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from router.api.app import create_app
from router.settings import LedgerSettings, TierSettings
from tests.api.conftest import settings_for
from tests.servers import serving
from tests.upstream import make_upstream

LINE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def parse(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value}; every non-comment line must parse."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"unparseable metrics line: {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


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
    tier = 'tier="anonymous"'
    assert m[f'triage_requests_total{{{tier},model="tiny-small",reason="below_threshold",status="200"}}'] == 2
    assert m[f'triage_requests_total{{{tier},model="tiny-large",reason="at_or_above_threshold",status="200"}}'] == 1
    assert m[f'triage_requests_total{{{tier},model="tiny-large",reason="requested",status="200"}}'] == 1
    assert m[f'triage_requests_total{{{tier},model="none",reason="rate_limited",status="429"}}'] == 1
    assert m['triage_tokens_total{model="tiny-small",kind="completion"}'] == 6
    assert m['triage_tokens_total{model="tiny-large",kind="completion"}'] == 8
    assert m['triage_latency_seconds_count{model="tiny-small"}'] == 2
    assert m['triage_latency_seconds_bucket{model="tiny-large",le="+Inf"}'] == 2
    # small: 7 prompt + 3 completion at $0.1/$0.2 per M, twice
    assert m['triage_cost_usd_total{model="tiny-small",basis="paid"}'] == pytest.approx(2 * (7 * 0.1 + 3 * 0.2) / 1e6)
    assert m['triage_cost_usd_total{model="tiny-small",basis="always_large"}'] == pytest.approx(
        2 * (7 * 5 + 3 * 15) / 1e6
    )
    assert m["triage_ledger_dropped_total"] == 0
    assert m["triage_limiter_errors_total"] == 0
    assert "triage_ledger_queue_depth" in m
