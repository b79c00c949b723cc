"""Gateway processes (`triage serve`) for limit tests: a config writer, a process handle, a request flood."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import httpx

from tests.servers import free_port, wait_until

SHORT = [{"role": "user", "content": "hi"}]


def config(
    tmp: Path,
    small: str,
    large: str,
    redis_url: str,
    tiers: dict[str, object],
    keys: list[dict[str, str]] | None = None,
    redis_timeout: float = 0.2,
    routing: dict[str, object] | None = None,
    ledger: dict[str, object] | None = None,
    prices: dict[str, float] | None = None,
) -> Path:
    """`prices`: worker settings (price_input, ...) given to both workers."""
    path = tmp / f"gateway-{uuid.uuid4().hex[:6]}.json"
    path.write_text(
        json.dumps(
            {
                "server": {"log_level": "warning"},
                "routing": {"scorer": "length", **(routing or {})},
                "workers": [
                    {"name": "small", "role": "small", "base_url": small, "model": "tiny-small", **(prices or {})},
                    {"name": "large", "role": "large", "base_url": large, "model": "tiny-large", **(prices or {})},
                ],
                "tiers": tiers,
                "auth": {"keys": keys or []},
                "ledger": ledger or {"enabled": False},
                "limits": {
                    "redis_url": redis_url,
                    "key_prefix": f"test-{uuid.uuid4().hex[:8]}",
                    "redis_timeout": redis_timeout,
                },
            }
        )
    )
    return path


class Gateway:
    def __init__(self, cfg: Path, log: Path, env: dict[str, str] | None = None) -> None:
        """`env`: the process's environment (default: this one's)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self.log = log
        try:  # a refused config exits at once; one client for every poll (a new one each costs 20 ms of CPU)
            with httpx.Client(timeout=1) as client:
                wait_until(
                    lambda: self.proc.poll() is not None or self._health(client),
                    30,
                    "the gateway to start",
                    self._tail,
                )
        except AssertionError:
            self.kill()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"gateway did not start:\n{self._tail()}")

    def _tail(self) -> str:
        return self.log.read_text()[-2000:]

    def _health(self, client: httpx.Client) -> bool:
        try:
            return client.get(self.url + "/health").status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=20)


async def flood(
    urls: list[str], total: int, in_flight: int, request: dict[str, object] | None = None
) -> dict[int, int]:
    """Status codes of `total` requests (`request`, default a short routed one), `in_flight` at a time, spread
    over the gateways."""
    codes: dict[int, int] = {}
    gate = asyncio.Semaphore(in_flight)
    body = json.dumps(request or {"model": "auto", "messages": SHORT, "max_tokens": 2}).encode()

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        async with (
            gate,
            session.post(
                urls[i % len(urls)] + "/v1/chat/completions", data=body, headers={"content-type": "application/json"}
            ) as r,
        ):
            await r.read()
            codes[r.status] = codes.get(r.status, 0) + 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(one(i, session) for i in range(total)))
    return codes
