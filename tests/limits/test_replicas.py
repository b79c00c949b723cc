"""Several gateway processes sharing one real Redis: exact limits, leases of a killed gateway, Redis
restarted mid-run."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.limits.conftest import REDIS_URL, require_redis
from tests.limits.gateways import SHORT, Gateway, config, flood
from tests.servers import ThreadedServer, free_port, wait_until
from tests.upstream import Journal


def test_four_replicas_admit_exactly_the_limit(tmp_path: Path, upstreams: tuple[ThreadedServer, ...]) -> None:
    require_redis()
    small, large = upstreams[0], upstreams[1]
    # A generous store timeout: this test is about atomicity across replicas. With a tight one, event-loop lag
    # under this flood makes some admissions time out, and a fail-open tier then admits them (by design).
    cfg = config(
        tmp_path,
        f"{small.url}/v1",
        f"{large.url}/v1",
        REDIS_URL,
        {"anonymous": {"requests_per_minute": 100}},
        redis_timeout=1.0,
    )
    gateways = [Gateway(cfg, tmp_path / f"gw{i}.log") for i in range(4)]
    try:
        codes = asyncio.run(flood([g.url for g in gateways], total=2000, in_flight=400))
    finally:
        for g in gateways:
            g.kill(signal.SIGTERM)
    assert codes == {200: 100, 429: 1900}


def test_leases_of_a_killed_gateway_expire(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, Journal]
) -> None:
    require_redis()
    small, large, journal = upstreams
    cfg = config(
        tmp_path,
        f"{small.url}/v1",
        f"{large.url}/v1",
        REDIS_URL,
        {"anonymous": {"max_concurrent": 1, "lease_ttl": 1.5}},
    )
    doomed, survivor = Gateway(cfg, tmp_path / "a.log"), Gateway(cfg, tmp_path / "b.log")
    try:

        def hold() -> None:
            with contextlib.suppress(httpx.HTTPError):  # its gateway is killed under it
                httpx.post(
                    doomed.url + "/v1/chat/completions",
                    timeout=30,
                    json={"model": "auto", "messages": SHORT, "x_test": {"sleep": 20}},
                )

        threading.Thread(target=hold, daemon=True).start()
        wait_until(lambda: journal.bodies, 10, "the held request to reach the worker")
        doomed.kill()
        busy = httpx.post(survivor.url + "/v1/chat/completions", json={"model": "auto", "messages": SHORT})
        assert busy.status_code == 429
        assert "concurrency" in busy.json()["error"]["message"]

        def freed() -> bool:  # 429 until the dead gateway's lease (lease_ttl 1.5 s) expires in Redis
            answer = httpx.post(survivor.url + "/v1/chat/completions", json={"model": "auto", "messages": SHORT})
            assert answer.status_code in (200, 429), answer.text
            return answer.status_code == 200

        wait_until(freed, 10, "the dead gateway's lease to expire")
    finally:
        doomed.kill()
        survivor.kill(signal.SIGTERM)


def _redis_server(port: int, log: Path, *options: str) -> subprocess.Popen[bytes]:
    """A redis-server of the test's own on `port`, answering; `options` come last (they win over the defaults)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is needed to restart Redis mid-test")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *options],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    import redis

    def up() -> bool:
        client = redis.Redis(port=port, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    try:
        wait_until(up, 10, "redis-server to start", log.read_text)
    except AssertionError:  # not left running behind a failed test
        proc.kill()
        proc.wait(timeout=10)
        raise
    return proc


def test_redis_restarted_mid_run(tmp_path: Path, upstreams: tuple[ThreadedServer, ...]) -> None:
    """Fail-closed tiers refuse with 503 while Redis is gone, fail-open tiers are served, and both recover
    without a gateway restart."""
    from router.api.auth import hash_key

    small, large = upstreams[0], upstreams[1]
    port = free_port()
    store = _redis_server(port, tmp_path / "redis.log")
    cfg = config(
        tmp_path,
        f"{small.url}/v1",
        f"{large.url}/v1",
        f"redis://127.0.0.1:{port}/0",
        {
            "anonymous": {"requests_per_minute": 1000, "on_limiter_error": "closed"},
            "paid": {"requests_per_minute": 1000, "on_limiter_error": "open"},
        },
        keys=[{"sha256": hash_key("sk-paid"), "tier": "paid"}],
    )
    gw = Gateway(cfg, tmp_path / "gw.log")

    def send(key: str | None = None) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.post(
            gw.url + "/v1/chat/completions", json={"model": "auto", "messages": SHORT}, headers=headers, timeout=10
        )

    try:
        assert send().status_code == 200
        store.terminate()
        store.wait(timeout=10)
        down = send()
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "rate_limiter_unavailable"
        assert send("sk-paid").status_code == 200  # fail-open tier
        assert httpx.get(gw.url + "/ready").json()["limiter_errors"] >= 2
        store = _redis_server(port, tmp_path / "redis.log")
        wait_until(lambda: send().status_code == 200, 10, "the gateway to recover when Redis came back")
        ok = send()
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "1000"
    finally:
        gw.kill(signal.SIGTERM)
        store.terminate()
        store.wait(timeout=10)
