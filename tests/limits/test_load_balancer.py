"""Replicas behind a real load balancer: HAProxy in front of three `triage serve` processes sharing Redis (limits
and the ledger stream), two fake workers behind them, sustained load through it. Mid-run one gateway gets SIGTERM
and another SIGKILL. What must hold:
- no client sees a failure from the SIGTERM'd replica (it drains; HAProxy's health check takes it out);
- failures only for requests in flight on the SIGKILL'd one, and none once HAProxy has marked it down;
- the anonymous tier's limit stays exact across the survivors;
- every answered request is in the shared ledger exactly once, except those whose records were still queued in
  the SIGKILL'd process (its queue dies with it: counted, and only ever for that replica)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import httpx
import pytest
import redis

from router.adapters.ledger_redis import read_stream_records
from router.api.auth import hash_key
from tests.limits.conftest import REDIS_URL, require_redis
from tests.limits.gateways import Gateway
from tests.servers import free_port, serving, wait_until
from tests.upstream import Journal, make_upstream

KEY = "sk-load-balancer-test"
TOTAL, CONCURRENCY = 3000, 32
ANONYMOUS_LIMIT = 10


def _haproxy() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if found is None:
        pytest.fail("HAProxy is missing (Debian's haproxy package; `./dev test` installs it)")
    return found


def _haproxy_config(port: int, stats: int, gateways: list[Gateway]) -> str:
    servers = "\n".join(
        f"    server gw{i} 127.0.0.1:{g.port} check inter 200ms fall 2 rise 2" for i, g in enumerate(gateways)
    )
    return f"""global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
listen stats
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /stats
frontend front
    bind 127.0.0.1:{port}
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk GET /ready
    http-response set-header x-served-by %s
{servers}
"""


def _states(stats: int) -> dict[str, tuple[str, str]]:
    """HAProxy's view of each gateway: (status, last check), e.g. ("UP", "L7OK"), from its CSV stats page."""
    try:
        page = httpx.get(f"http://127.0.0.1:{stats}/stats;csv", timeout=2).text
    except httpx.HTTPError:
        return {}  # not listening yet
    rows = csv.DictReader(io.StringIO(page.removeprefix("# ")))
    return {r["svname"]: (r["status"], r["check_status"]) for r in rows if r["svname"].startswith("gw")}


async def _load(url: str, events: dict[str, float], gateways: list[Gateway]) -> list[tuple[float, int, str, str]]:
    """(time, status or 0 for a broken connection, served by, request id) per request; SIGTERM and SIGKILL on
    two replicas a third and two thirds of the way through."""
    done: list[tuple[float, int, str, str]] = []
    gate = asyncio.Semaphore(CONCURRENCY)
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEY}"}

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        async with gate:
            if i == TOTAL // 3 and "term" not in events:
                events["term"] = time.monotonic()
                gateways[0].proc.send_signal(signal.SIGTERM)
            if i == 2 * TOTAL // 3 and "kill" not in events:
                events["kill"] = time.monotonic()
                gateways[1].kill(signal.SIGKILL)
            try:
                async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as r:
                    await r.read()
                    done.append(
                        (
                            time.monotonic(),
                            r.status,
                            r.headers.get("x-served-by", ""),
                            r.headers.get("x-request-id", ""),
                        )
                    )
            except aiohttp.ClientError:
                done.append((time.monotonic(), 0, "", ""))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(one(i, session) for i in range(TOTAL)))
    return done


def test_three_replicas_behind_haproxy_survive_sigterm_and_sigkill(tmp_path: Path) -> None:
    require_redis()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    stream = f"{prefix}:decisions"
    small_journal, large_journal = Journal(), Journal()
    small_journal.always = large_journal.always = {"sleep": 0.005}  # requests are in flight when the kills land
    with (
        serving(make_upstream("tiny-small", small_journal)) as small,
        serving(make_upstream("tiny-large", large_journal)) as large,
    ):
        cfg = tmp_path / "gateway.json"
        cfg.write_text(
            json.dumps(
                {
                    "server": {"log_level": "warning", "graceful_shutdown_timeout": 10},
                    "routing": {"scorer": "length"},
                    "workers": [
                        {"name": "small", "role": "small", "base_url": f"{small.url}/v1", "model": "tiny-small"},
                        {"name": "large", "role": "large", "base_url": f"{large.url}/v1", "model": "tiny-large"},
                    ],
                    "tiers": {"anonymous": {"requests_per_minute": ANONYMOUS_LIMIT}, "paid": {}},
                    "auth": {"keys": [{"sha256": hash_key(KEY), "tier": "paid"}]},
                    "limits": {"redis_url": REDIS_URL, "key_prefix": prefix, "redis_timeout": 1.0},
                    "ledger": {"backend": "redis", "stream": stream},
                }
            )
        )
        haproxy = _haproxy()  # before any gateway starts: a missing HAProxy must not leave three of them running
        gateways = [Gateway(cfg, tmp_path / f"gw{i}.log") for i in range(3)]
        port, stats = free_port(), free_port()
        (tmp_path / "haproxy.cfg").write_text(_haproxy_config(port, stats, gateways))
        with (tmp_path / "haproxy.log").open("wb") as log:
            lb = subprocess.Popen([haproxy, "-db", "-f", str(tmp_path / "haproxy.cfg")], stdout=log, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}"
            every = {f"gw{i}": ("UP", "L7OK") for i in range(3)}
            wait_until(lambda: _states(stats) == every, 10, "every gateway's first health check to pass")
            events: dict[str, float] = {}
            done = asyncio.run(_load(url, events, gateways))
            gateways[0].proc.wait(timeout=30)
            wait_until(
                lambda: {k: v[0] for k, v in _states(stats).items()} == {"gw0": "DOWN", "gw1": "DOWN", "gw2": "UP"},
                10,
                "HAProxy to mark the stopped and the killed gateways down",
            )
            # The anonymous tier's limit, exact across the survivors (round robin spreads the burst over both).
            anonymous = [
                httpx.post(
                    url + "/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "x"}]}
                ).status_code
                for _ in range(3 * ANONYMOUS_LIMIT)
            ]
            kept = {d[3] for d in done if d[1] == 200 and d[2] != "gw1"}  # the SIGKILL'd one's queue may be lost
            wait_until(
                lambda: kept <= {r.request_id for r in read_stream_records(REDIS_URL, stream)},
                10,
                "the records of every request the other replicas answered in the ledger stream",
            )
        finally:
            lb.terminate()
            lb.wait(timeout=10)
            for g in gateways:
                g.kill(signal.SIGTERM)
    failures = [d for d in done if d[1] != 200]
    term, kill = events["term"], events["kill"]
    markdown = 1.5  # HAProxy: 2 failed checks 200 ms apart, plus the requests already sent to it
    assert len(done) == TOTAL
    assert not [d for d in failures if d[0] < kill], (
        "a failure before the SIGKILL: the SIGTERM'd replica dropped requests"
    )
    assert not [d for d in failures if d[0] > kill + markdown], "failures after HAProxy marked the killed replica down"
    assert len(failures) <= CONCURRENCY  # at most the requests in flight when it died
    assert not [d for d in done if d[2] == "gw0" and d[0] > term + markdown], "the SIGTERM'd replica kept serving"
    served = Counter(d[2] for d in done if d[1] == 200)
    assert served["gw0"] > 0 and served["gw1"] > 0 and served["gw2"] > TOTAL // 3
    assert Counter(anonymous) == {200: ANONYMOUS_LIMIT, 429: 2 * ANONYMOUS_LIMIT}
    records = [r for r in read_stream_records(REDIS_URL, stream) if r.tier == "paid"]
    ids = Counter(r.request_id for r in records)
    assert max(ids.values()) == 1, "a request recorded twice"
    answered = {d[3]: d[2] for d in done if d[1] == 200}
    missing = {rid: by for rid, by in answered.items() if rid not in ids}
    assert set(missing.values()) <= {"gw1"}, (
        f"records missing from replicas that were not killed: {Counter(missing.values())}"
    )
    print(
        f"\n{TOTAL} requests at concurrency {CONCURRENCY}: {len(failures)} failed (all within {markdown} s of the "
        f"SIGKILL); served {dict(served)}; ledger missing {len(missing)} records, all of the SIGKILL'd replica"
    )
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
    finally:
        client.close()
