"""A worker that is down or failing: the next replica, then (routed requests, where the tier allows) the
other model. Nothing is retried after a stream has started."""

from __future__ import annotations

import httpx

from router.api.app import create_app
from router.settings import RoutingSettings, Settings, TierSettings, WorkerSettings
from tests.api.conftest import settings_for
from tests.servers import serving
from tests.upstream import Journal, make_upstream

SHORT = [{"role": "user", "content": "hi"}]


def test_down_small_model_falls_back_to_large(dead_url: str) -> None:
    with (
        serving(make_upstream("tiny-large")) as large,
        serving(create_app(settings_for(dead_url, f"{large.url}/v1"))) as gw,
    ):
        r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": SHORT})
        assert r.status_code == 200
        assert r.headers["x-triage-model"] == "tiny-large"
        assert r.headers["x-triage-reason"] == "fallback"
        assert float(r.headers["x-triage-score"]) < 0.5  # the score chose small
        with httpx.stream(
            "POST",
            f"{gw.url}/v1/chat/completions",
            json={"model": "auto", "messages": SHORT, "stream": True, "max_tokens": 2},
        ) as s:
            assert s.status_code == 200
            assert s.headers["x-triage-reason"] == "fallback"
            assert s.read().decode().rstrip().endswith("data: [DONE]")


def test_no_fallback_to_a_model_the_tier_may_not_use(dead_url: str) -> None:
    with serving(make_upstream("tiny-large")) as large:
        base = settings_for(dead_url, f"{large.url}/v1")
        settings = base.model_copy(update={"tiers": {"anonymous": TierSettings(models=["small"])}})
        with serving(create_app(settings)) as gw:
            r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": SHORT})
            assert r.status_code == 503


def test_named_model_fails_over_to_its_other_replica_only(dead_url: str) -> None:
    journal = Journal()
    with serving(make_upstream("tiny-small", journal)) as alive, serving(make_upstream("tiny-large")) as large:
        base = settings_for(dead_url, f"{large.url}/v1")
        workers = [
            WorkerSettings(name="small-a", role="small", base_url=dead_url, model="tiny-small", timeout=2),
            WorkerSettings(name="small-b", role="small", base_url=f"{alive.url}/v1", model="tiny-small", timeout=2),
            base.workers[1],
        ]
        settings = Settings(
            server=base.server,
            workers=workers,
            ledger=base.ledger,
            routing=RoutingSettings(scorer="length", threshold=0.5, length_midpoint=100),
        )
        with serving(create_app(settings)) as gw:
            for _ in range(4):  # round-robin starts on either replica; every call must land on the live one
                r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "tiny-small", "messages": SHORT})
                assert r.status_code == 200
                assert r.headers["x-triage-model"] == "tiny-small"
                assert r.headers["x-triage-reason"] == "requested"
    assert len(journal.bodies) == 4


def test_a_worker_5xx_is_retried_on_the_other_model_and_4xx_is_not(dead_url: str) -> None:
    small_journal, large_journal = Journal(), Journal()
    with (
        serving(make_upstream("tiny-small", small_journal)) as small,
        serving(make_upstream("tiny-large", large_journal)) as large,
        serving(create_app(settings_for(f"{small.url}/v1", f"{large.url}/v1"))) as gw,
    ):
        failing = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "auto", "messages": SHORT, "x_test": {"status": 500, "body": "x"}},
        )
        # the same x_test reaches the large worker too, which fails alike: both tried, 502 at the end
        assert failing.status_code == 502
        assert (len(small_journal.bodies), len(large_journal.bodies)) == (1, 1)
        refused = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "auto", "messages": SHORT, "x_test": {"status": 400, "body": "{}"}},
        )
        assert refused.status_code == 400
        assert (len(small_journal.bodies), len(large_journal.bodies)) == (2, 1)  # a 4xx is the caller's: no retry
