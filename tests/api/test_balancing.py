"""Replicas of one model behind the gateway: breakers around hung and killed workers, affinity under load."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from router.api.app import create_app
from router.settings import BalancingSettings, RoutingSettings, Settings, WorkerSettings
from tests.api.conftest import settings_for
from tests.servers import ThreadedServer, serving, wait_until
from tests.upstream import Journal, make_upstream


def _replicas(urls: list[str], large_url: str, *, timeout: float = 0.5, **balancing: Any) -> Settings:
    base = settings_for(urls[0], large_url)
    small = [
        WorkerSettings(name=f"small-{i}", role="small", base_url=url, model="tiny-small", timeout=timeout)
        for i, url in enumerate(urls)
    ]
    return Settings(
        server=base.server,
        ledger=base.ledger,
        routing=RoutingSettings(scorer="length", threshold=0.5, length_midpoint=100),
        balancing=BalancingSettings.model_validate(balancing),
        workers=[*small, base.workers[1]],
    )


def _chat(client: httpx.Client, content: str = "hi", **extra: Any) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": "tiny-small", "messages": [{"role": "user", "content": content}], "max_tokens": 2, **extra},
    )


def test_hung_replica_opens_its_breaker_and_a_probe_closes_it_when_it_recovers() -> None:
    hung, healthy = Journal(), Journal()
    hung.always = {"sleep": 30}
    with (
        serving(make_upstream("tiny-small", hung)) as a,
        serving(make_upstream("tiny-small", healthy)) as b,
        serving(make_upstream("tiny-large")) as large,
    ):
        settings = _replicas(
            [f"{a.url}/v1", f"{b.url}/v1"], f"{large.url}/v1", breaker_failures=2, breaker_cooldown=1.0
        )
        with serving(create_app(settings)) as gw, httpx.Client(base_url=gw.url, timeout=10) as client:
            # Every request is answered: the hung replica times out and the other one serves.
            assert all(_chat(client).status_code == 200 for _ in range(8))
            assert len(hung.bodies) == 2  # two timeouts opened the breaker; nothing was sent after that
            ready = client.get("/ready").json()
            assert ready["breakers"]["small-0"] == "open" and ready["workers"]["small-0"] == "down"
            assert ready["ready"] is True
            hung.always = {}  # the worker recovers
            wait_until(
                lambda: client.get("/ready").json()["breakers"]["small-0"] == "half_open", 10, "the breaker's cooldown"
            )
            for _ in range(4):
                assert _chat(client).status_code == 200
            assert len(hung.bodies) >= 3  # the probe went out and succeeded
            assert client.get("/ready").json()["breakers"]["small-0"] == "closed"


def test_a_failed_probe_keeps_the_breaker_open() -> None:
    broken, healthy = Journal(), Journal()
    broken.always = {"status": 500, "body": "boom"}
    with (
        serving(make_upstream("tiny-small", broken)) as a,
        serving(make_upstream("tiny-small", healthy)) as b,
        serving(make_upstream("tiny-large")) as large,
    ):
        settings = _replicas(
            [f"{a.url}/v1", f"{b.url}/v1"], f"{large.url}/v1", breaker_failures=1, breaker_cooldown=0.5
        )
        with serving(create_app(settings)) as gw, httpx.Client(base_url=gw.url, timeout=10) as client:
            assert all(_chat(client).status_code == 200 for _ in range(6))
            assert len(broken.bodies) == 1
            wait_until(
                lambda: client.get("/ready").json()["breakers"]["small-0"] == "half_open", 10, "the breaker's cooldown"
            )
            assert all(_chat(client).status_code == 200 for _ in range(6))
            assert len(broken.bodies) == 2  # one probe, which failed: open again
            assert client.get("/ready").json()["breakers"]["small-0"] == "open"


def test_killing_a_replica_under_load_loses_no_request() -> None:
    a_journal, b_journal = Journal(), Journal()
    a_journal.always = b_journal.always = {"sleep": 0.02}
    a = ThreadedServer(make_upstream("tiny-small", a_journal)).start()
    with serving(make_upstream("tiny-small", b_journal)) as b, serving(make_upstream("tiny-large")) as large:
        settings = _replicas([f"{a.url}/v1", f"{b.url}/v1"], f"{large.url}/v1", timeout=2)
        with serving(create_app(settings)) as gw, httpx.Client(base_url=gw.url, timeout=10) as client:
            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(_chat, client, f"q{i}") for i in range(200)]
                wait_until(lambda: len(a_journal.bodies) > 10, 10, "the replica to be serving its share of the load")
                pending = sum(not f.done() for f in futures)
                a.stop()  # in-flight requests on it finish (graceful stop); new ones are refused
                statuses = Counter(f.result().status_code for f in futures)
            assert pending > 100  # the replica died under load
            assert statuses == {200: 200}
            assert len(b_journal.bodies) > 100


def _stickiness(policy: str, affinity: bool, load_factor: float = 1.25) -> tuple[float, Counter[str]]:
    """Share of turns served by their conversation's usual replica, 16 conversations in parallel."""
    journals = [Journal() for _ in range(3)]
    for j in journals:
        j.always = {"sleep": 0.01}
    servers = [ThreadedServer(make_upstream("tiny-small", j)).start() for j in journals]
    try:
        with serving(make_upstream("tiny-large")) as large:
            settings = _replicas(
                [f"{s.url}/v1" for s in servers],
                f"{large.url}/v1",
                policy=policy,
                prefix_affinity=affinity,
                affinity_load_factor=load_factor,
            )
            with (
                serving(create_app(settings)) as gw,
                httpx.Client(base_url=gw.url, timeout=10) as client,
                ThreadPoolExecutor(16) as pool,
            ):
                runs = list(pool.map(lambda i: _served_by(client, journals, i), range(16)))
    finally:
        for s in servers:
            s.stop()
    usual = sum(Counter(run).most_common(1)[0][1] for run in runs)
    load = Counter(name for run in runs for name in run)
    return usual / sum(len(run) for run in runs), load


def _served_by(client: httpx.Client, journals: list[Journal], i: int) -> list[str]:
    """Which replica served each of a conversation's 5 turns (found in the replicas' journals)."""
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are terse."}]
    for t in range(5):
        messages.append({"role": "user", "content": f"conversation {i}, turn {t}"})
        r = client.post("/v1/chat/completions", json={"model": "tiny-small", "messages": messages, "max_tokens": 3})
        assert r.status_code == 200
        messages.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]})
    first = f"conversation {i}, turn 0"
    return [
        f"r{k}"
        for t in range(5)
        for k, j in enumerate(journals)
        for body in j.bodies
        if body["messages"][1]["content"] == first and len(body["messages"]) == 2 + 2 * t
    ]


def test_prefix_affinity_keeps_conversations_on_one_replica_under_load() -> None:
    unbounded, _ = _stickiness("least_outstanding", affinity=True, load_factor=100)
    sticky, load = _stickiness("least_outstanding", affinity=True)
    baseline, _ = _stickiness("round_robin", affinity=False)
    assert unbounded == 1.0  # affinity alone: every turn on its conversation's replica
    # Bounded at 1.25x the mean load, a busy replica hands some turns to another (measured 0.85-0.89 here).
    assert sticky >= 0.75, sticky
    assert baseline <= 0.7 and sticky - baseline >= 0.15, (sticky, baseline)  # round robin scatters turns
    assert len(load) == 3 and min(load.values()) >= 10  # and affinity still uses every replica
