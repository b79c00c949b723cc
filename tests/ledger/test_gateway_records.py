"""Records written by a real gateway, and none lost when it is stopped under load."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import httpx
import pytest

from router.adapters.ledger_sqlite import read_records
from router.api.app import create_app
from router.settings import LedgerSettings, TierSettings
from tests.api.conftest import settings_for
from tests.servers import free_port, serving, wait_until
from tests.upstream import make_upstream

SHORT = [{"role": "user", "content": "hi"}]
LONG = [{"role": "user", "content": "explain " * 100}]


def test_every_request_is_recorded_with_its_costs(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with serving(make_upstream("tiny-small")) as small, serving(make_upstream("tiny-large")) as large:
        base = settings_for(f"{small.url}/v1", f"{large.url}/v1")
        settings = base.model_copy(
            update={
                "ledger": LedgerSettings(path=path, store_prompts=False),
                "tiers": {"anonymous": TierSettings(requests_per_minute=3)},
            }
        )
        with serving(create_app(settings)) as gw:
            url = f"{gw.url}/v1/chat/completions"
            plain = httpx.post(url, json={"model": "auto", "messages": SHORT, "max_tokens": 4})
            long = httpx.post(url, json={"model": "auto", "messages": LONG, "max_tokens": 6})
            with httpx.stream(
                "POST",
                url,
                json={
                    "model": "auto",
                    "messages": SHORT,
                    "max_tokens": 3,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                },
            ) as r:
                r.read()
            limited = httpx.post(url, json={"model": "auto", "messages": SHORT})
            assert [plain.status_code, long.status_code, limited.status_code] == [200, 200, 429]
        # the gateway has shut down: its queue is drained
    records = list(read_records(path))
    assert [(r.model, r.status, r.reason) for r in records] == [
        ("tiny-small", 200, "below_threshold"),
        ("tiny-large", 200, "at_or_above_threshold"),
        ("tiny-small", 200, "below_threshold"),
        ("", 429, "rate_limited"),
    ]
    first, second, streamed, rejected = records
    assert first.request_id == plain.headers["x-request-id"]
    assert (first.prompt_tokens, first.completion_tokens) == (7, 4)
    # small: $0.1/M in, $0.2/M out; large: $5/M in, $15/M out
    assert first.cost == pytest.approx((7 * 0.1 + 4 * 0.2) / 1e6)
    assert first.cost_large == pytest.approx((7 * 5 + 4 * 15) / 1e6)
    assert second.cost == second.cost_large == pytest.approx((7 * 5 + 6 * 15) / 1e6)
    assert (streamed.prompt_tokens, streamed.completion_tokens) == (7, 3)
    assert streamed.ttft_ms is not None
    assert streamed.ttft_ms <= streamed.latency_ms
    assert rejected.tier == "anonymous"
    assert rejected.cost == 0
    assert all(r.prompt is None for r in records)  # prompts are off by default
    assert all("127.0.0.1" not in r.caller for r in records)  # a hash, never the address
    assert len({r.caller for r in records}) == 1


def test_sigterm_under_load_loses_no_record(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with serving(make_upstream("tiny-small")) as small, serving(make_upstream("tiny-large")) as large:
        config = tmp_path / "gw.json"
        config.write_text(
            json.dumps(
                {
                    "server": {"log_level": "warning"},
                    "routing": {"scorer": "length"},
                    "workers": [
                        {"name": "s", "role": "small", "base_url": f"{small.url}/v1", "model": "tiny-small"},
                        {"name": "l", "role": "large", "base_url": f"{large.url}/v1", "model": "tiny-large"},
                    ],
                    "ledger": {"path": str(path)},
                }
            )
        )
        port = free_port()
        with (tmp_path / "gw.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:

            def up() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(up, 30, "the gateway to start", (tmp_path / "gw.log").read_text, interval=0.1)
            answered = asyncio.run(_load_then_sigterm(port, proc.pid))
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert answered >= 50, "the load did not overlap the shutdown"
    records = list(read_records(path))
    assert len(records) == answered
    assert {r.status for r in records} == {200}


async def _load_then_sigterm(port: int, pid: int) -> int:
    """300 requests, each held 0.3 s by the worker; SIGTERM once 50 have answered. Counts answers."""
    answered = 0
    fifty = asyncio.Event()
    body = {"model": "auto", "messages": SHORT, "max_tokens": 2, "x_test": {"sleep": 0.3}}

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal answered
        try:
            async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
                await r.read()
                if r.status == 200:
                    answered += 1
                    if answered >= 50:
                        fifty.set()
        except aiohttp.ClientError:
            pass  # refused once the gateway stopped accepting

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(300)]
        await fifty.wait()
        os.killpg(pid, signal.SIGTERM)
        await asyncio.gather(*tasks)
    return answered
