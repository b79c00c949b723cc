"""A Redis of the test's own under real gateway processes: stopped (SIGSTOP) with admissions in its socket,
killed and restarted with its data, silent at SIGTERM. Admissions and settlements the gateway gave up on must not
hold concurrency slots, keys held in Redis must not be told they are wrong, and shutdown must stay bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from router.adapters.limiter_redis import RedisLimiter
from router.core.limits import TierLimits
from router.core.tiers import Caller, Tier
from router.errors import LimiterUnavailable
from tests.limits.gateways import SHORT, Gateway, config, flood
from tests.limits.test_replicas import _redis_server
from tests.servers import ThreadedServer, free_port, wait_until
from tests.upstream import Journal

BODY = {"model": "auto", "messages": SHORT}
PERSIST = ("--appendonly", "yes", "--appendfsync", "always")


@contextlib.contextmanager
def _own_redis(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    store = _redis_server(port, tmp_path / "redis.log")
    try:
        yield port, store
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(store.pid, signal.SIGCONT)
        store.kill()
        store.wait(timeout=10)


def _persistent_redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """A Redis that keeps its data across a restart (an append-only file, synced on every write)."""
    return _redis_server(port, folder / "redis.log", "--dir", str(folder), *PERSIST)


@contextlib.contextmanager
def _stopped(store: subprocess.Popen[bytes]) -> Iterator[None]:
    os.kill(store.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: _state(store.pid) == "T", 10, "redis-server to stop")
        yield
    finally:
        os.kill(store.pid, signal.SIGCONT)


def _state(pid: int) -> str:
    """A process's state letter from /proc (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _leases(port: int) -> int:
    client = redis.Redis(port=port, socket_timeout=5)
    try:
        return sum(int(client.zcard(k)) for k in client.scan_iter("*:cc"))
    finally:
        client.close()


async def _concurrently(url: str, count: int, hang_up_after: float) -> list[httpx.Response | str]:
    async def one(client: httpx.AsyncClient) -> httpx.Response | str:
        try:
            return await client.post(url + "/v1/chat/completions", json=BODY)
        except httpx.HTTPError as exc:  # the client gave up: the gateway sees a disconnect
            return type(exc).__name__

    async with httpx.AsyncClient(timeout=hang_up_after) as client:
        return await asyncio.gather(*(one(client) for _ in range(count)))


def _gateway(tmp_path: Path, upstreams: tuple[ThreadedServer, ...], port: int, redis_timeout: float) -> Gateway:
    small, large = upstreams[0], upstreams[1]
    cfg = config(
        tmp_path,
        f"{small.url}/v1",
        f"{large.url}/v1",
        f"redis://127.0.0.1:{port}/0",
        {"anonymous": {"max_concurrent": 2, "on_limiter_error": "closed"}},  # lease_ttl: the default 600 s
        redis_timeout=redis_timeout,
    )
    return Gateway(cfg, tmp_path / "gw.log")


def test_admissions_timed_out_on_a_stopped_redis_hold_no_slot_after_it_resumes(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ...]
) -> None:
    """The gateway answers 503 when Redis is silent, and drops the connection; the admissions it wrote are
    still in Redis' socket and run when Redis resumes. Before the fix their leases held the tier's slots for
    lease_ttl (10 minutes): every request was a 429 `concurrency` afterwards."""
    with _own_redis(tmp_path) as (port, store):
        gw = _gateway(tmp_path, upstreams, port, redis_timeout=0.3)
        try:
            assert httpx.post(gw.url + "/v1/chat/completions", json=BODY, timeout=20).status_code == 200
            with _stopped(store):
                answers = asyncio.run(_concurrently(gw.url, 5, hang_up_after=20))
            assert all(isinstance(a, httpx.Response) and a.status_code == 503 for a in answers), answers
            assert all(
                isinstance(a, httpx.Response) and a.json()["error"]["code"] == "rate_limiter_unavailable"
                for a in answers
            )
            wait_until(lambda: _leases(port) == 0, 10, "the given-up admissions' leases to be released")
            after = [httpx.post(gw.url + "/v1/chat/completions", json=BODY, timeout=20) for _ in range(3)]
            assert [a.status_code for a in after] == [200, 200, 200], [a.text for a in after]
        finally:
            gw.kill(signal.SIGTERM)


def test_admissions_of_clients_that_left_hold_no_slot(tmp_path: Path, upstreams: tuple[ThreadedServer, ...]) -> None:
    """Clients that hang up while their admission is out (Redis slow to answer: stopped, within the generous
    redis_timeout) cancel it; Redis runs it anyway. Its lease must be given back, not held for lease_ttl."""
    with _own_redis(tmp_path) as (port, store):
        gw = _gateway(tmp_path, upstreams, port, redis_timeout=10.0)
        try:
            assert httpx.post(gw.url + "/v1/chat/completions", json=BODY, timeout=20).status_code == 200
            with _stopped(store):
                gone = asyncio.run(_concurrently(gw.url, 2, hang_up_after=0.5))  # both hang up after 0.5 s
                assert all(isinstance(g, str) for g in gone), gone
                wait_until(lambda: _client_gone(gw) == 2, 10, "the gateway to see both clients go")
            wait_until(lambda: _leases(port) == 0, 10, "the leases of admissions whose clients left to be freed")
            after = [httpx.post(gw.url + "/v1/chat/completions", json=BODY, timeout=20) for _ in range(3)]
            assert [a.status_code for a in after] == [200, 200, 200], [a.text for a in after]
        finally:
            gw.kill(signal.SIGTERM)


def _client_gone(gw: Gateway) -> float:
    """Requests the gateway recorded as ended by their client (status 499), from /metrics."""
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("triage_requests_total{") and 'status="499"' in line
    )


async def test_admissions_that_never_left_are_not_kept_to_release() -> None:
    """Redis down (connection refused): the admissions never left, so there is no lease to release; keeping
    them would have every request of a long outage packed again for release once a second."""
    limiter = RedisLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2, prefix="test-never-left")
    who = Caller(Tier("t", TierLimits(max_concurrent=2)), "ip:203.0.113.9")
    try:
        for _ in range(5):
            with pytest.raises(LimiterUnavailable):
                await limiter.admit(who, 10)
        assert not limiter._given_up
    finally:
        await limiter.close()


def test_a_key_held_in_a_silent_redis_is_not_told_it_is_wrong(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ...]
) -> None:
    """A key managed in Redis (HSET <prefix>:keys) while Redis is silent: 503 in OpenAI's envelope, never 401
    `Incorrect API key provided` (a client takes that for a revoked key and stops)."""
    from router.api.auth import hash_key

    with _own_redis(tmp_path) as (port, store):
        gw = _gateway(tmp_path, upstreams, port, redis_timeout=0.3)
        prefix = json.loads(next(tmp_path.glob("gateway-*.json")).read_text())["limits"]["key_prefix"]
        client = redis.Redis(port=port, socket_timeout=5)
        client.hset(f"{prefix}:keys", hash_key("sk-held-in-redis"), "anonymous")
        client.close()

        def send() -> httpx.Response:
            headers = {"authorization": "Bearer sk-held-in-redis"}
            return httpx.post(gw.url + "/v1/chat/completions", json=BODY, headers=headers, timeout=20)

        try:
            assert send().status_code == 200
            with _stopped(store):
                silent = send()
            assert silent.status_code == 503, silent.text
            assert silent.json()["error"]["code"] == "rate_limiter_unavailable"
            wait_until(lambda: send().status_code == 200, 10, "the key to be served again")
        finally:
            gw.kill(signal.SIGTERM)


def test_a_give_back_lost_while_redis_was_down_frees_its_slot_after_a_restart(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, Journal]
) -> None:
    """A request ends while its Redis (with persistence) is down: its give-back cannot be sent. Redis comes back
    with the request's lease from its append-only file. Before the fix the slot stayed held for lease_ttl (10
    minutes): with max_concurrent 1, every request was a 429 `concurrency`."""
    small, large, journal = upstreams
    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    store = _persistent_redis(port, folder)
    cfg = config(
        tmp_path,
        f"{small.url}/v1",
        f"{large.url}/v1",
        f"redis://127.0.0.1:{port}/0",
        {"anonymous": {"max_concurrent": 1, "on_limiter_error": "closed"}},
        redis_timeout=0.5,
    )
    gw: Gateway | None = None
    try:
        gw = Gateway(cfg, tmp_path / "gw.log")
        held: list[int] = []
        slow = {**BODY, "x_test": {"sleep": 1.5}}
        url = gw.url
        worker = threading.Thread(
            target=lambda: held.append(httpx.post(url + "/v1/chat/completions", json=slow, timeout=30).status_code)
        )
        worker.start()
        wait_until(lambda: journal.bodies, 10, "the held request to reach the worker")
        assert _leases(port) == 1
        store.kill()  # the lease is in the append-only file
        store.wait(timeout=10)
        worker.join(timeout=30)
        assert held == [200]  # answered; its give-back found no Redis
        store = _persistent_redis(port, folder)
        assert _leases(port) == 1  # back from the file

        def served() -> bool:
            status = httpx.post(url + "/v1/chat/completions", json=BODY, timeout=20).status_code
            assert status in (200, 429), status
            return status == 200

        wait_until(served, 10, "the slot of the request whose give-back was lost to be freed")
    finally:
        if gw is not None:
            gw.kill(signal.SIGTERM)
        store.kill()
        store.wait(timeout=10)


def test_sigterm_with_redis_stalled_does_not_wait_out_every_ledger_batch(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ...]
) -> None:
    """SIGTERM while Redis is silent, with ~1000 decision records queued for the stream: the ledger's drain
    waited its 2 s timeout for each batch of 32 (over a minute here); it now drops the rest, counted, after
    the first failure, and the gateway exits within its other bounds (the limiter's drain backstop)."""
    small, large = upstreams[0], upstreams[1]
    with _own_redis(tmp_path) as (port, store):
        cfg = config(
            tmp_path,
            f"{small.url}/v1",
            f"{large.url}/v1",
            f"redis://127.0.0.1:{port}/0",
            {"anonymous": {"requests_per_minute": 100_000, "on_limiter_error": "open"}},
            redis_timeout=0.3,
            ledger={"enabled": True, "backend": "redis", "stream": "decisions"},
        )
        gw = Gateway(cfg, tmp_path / "gw.log")
        try:
            with _stopped(store):
                codes = asyncio.run(flood([gw.url], total=1000, in_flight=100))
                assert codes == {200: 1000}  # fail-open: served while Redis is silent
                gw.proc.send_signal(signal.SIGTERM)
                try:
                    gw.proc.wait(timeout=30)  # was over 60 s
                except subprocess.TimeoutExpired:
                    raise AssertionError("the gateway did not exit within 30 s of SIGTERM") from None
            assert "records dropped" in gw.log.read_text()
        finally:
            gw.kill()
