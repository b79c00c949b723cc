"""Soak: a gateway under a steady mix of traffic for a long while, checked for growth. The mix: JSON and SSE
answers, streams the client abandons after the first event, requests to a worker that is down (failover, then
503), malformed bodies (400) and rate-limited callers (429), at moderate concurrency against an instant upstream.

    ./dev bench soak [--seconds 600] [--concurrency 16]

Reports the gateway's RSS and open file descriptors after a warm-up and at the end (targets: growth under 10%,
no descriptor leak), the status counts, and any request that failed in a way its kind does not explain.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import free_port, rss_mb, start, stop, wait_http

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "user", "content": "What is 2+2?"}]
# kind -> (share of the traffic, the statuses it may end in)
MIX: dict[str, tuple[float, set[int]]] = {
    "json": (0.45, {200}),
    "sse": (0.20, {200}),
    "sse_abandoned": (0.10, {200}),
    "worker_down": (0.10, {503}),
    "malformed": (0.05, {400}),
    "limited": (0.10, {200, 429}),
}


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def config(tmp: Path, upstream: str, dead: str, key: str) -> Path:
    path = tmp / "gateway.json"
    path.write_text(
        json.dumps(
            {
                "server": {"log_level": "warning"},
                "routing": {"scorer": "classifier"},
                "workers": [
                    {"name": "small", "role": "small", "base_url": upstream, "model": "bench-model"},
                    {"name": "large", "role": "large", "base_url": upstream, "model": "bench-model"},
                    {"name": "down", "role": "large", "base_url": dead, "model": "down-model", "timeout": 2},
                ],
                "tiers": {
                    "anonymous": {"requests_per_minute": 10_000_000},
                    "limited": {"requests_per_minute": 30},
                },
                "auth": {
                    "keys": [{"sha256": hashlib.sha256(key.encode()).hexdigest(), "tier": "limited"}],
                    "identity_secret": "soak-" * 4,
                },
                "ledger": {"path": str(tmp / "ledger.sqlite")},
            }
        )
    )
    return path


async def one(session: aiohttp.ClientSession, url: str, kind: str, key: str) -> int:
    body: dict[str, object] = {"model": "auto", "messages": MESSAGES, "max_tokens": 16}
    headers = {"content-type": "application/json"}
    if kind in ("sse", "sse_abandoned"):
        body["stream"] = True
    if kind == "worker_down":
        body["model"] = "down-model"
    if kind == "limited":
        headers["authorization"] = f"Bearer {key}"
    data = b'{"model": "auto", "messages": [' if kind == "malformed" else json.dumps(body).encode()
    async with session.post(url, data=data, headers=headers) as r:
        if kind == "sse_abandoned":
            await r.content.readline()
            r.close()  # the client leaves mid-stream
        else:
            await r.read()
        return r.status


async def drive(url: str, seconds: float, concurrency: int, key: str, seed: int) -> tuple[Counter[str], list[str]]:
    rng = random.Random(seed)
    kinds, weights = zip(*[(k, share) for k, (share, _) in MIX.items()], strict=True)
    counts: Counter[str] = Counter()
    odd: list[str] = []
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            try:
                status = await one(session, url, kind, key)
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, detail = 0, f"{kind}: {type(exc).__name__}"
                odd.append(detail)
            counts[f"{kind} {status}"] += 1
            if status not in MIX[kind][1] and status:
                odd.append(f"{kind}: status {status}")

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return counts, odd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600.0, help="length of the soak (default 600)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--warmup", type=float, default=0.0, help="seconds before the first reading (default 10%%)")
    args = ap.parse_args()
    warmup = args.warmup or max(5.0, args.seconds * 0.1)
    with tempfile.TemporaryDirectory(prefix="triage-soak-") as tmp_name:
        tmp = Path(tmp_name)
        up_port, gw_port = free_port(), free_port()
        upstream = start([sys.executable, str(ROOT / "bench" / "instant_upstream.py"), str(up_port)], 1, tmp / "u.log")
        gw = None
        try:
            wait_http(f"http://127.0.0.1:{up_port}/v1/models", 20)
            key = "soak-limited-key"
            cfg = config(tmp, f"http://127.0.0.1:{up_port}/v1", f"http://127.0.0.1:{free_port()}/v1", key)
            triage = [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--port", str(gw_port)]
            gw = start(triage, 0, tmp / "gw.log")
            wait_http(f"http://127.0.0.1:{gw_port}/health", 60)
            url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
            asyncio.run(drive(url, warmup, args.concurrency, key, 1))
            time.sleep(1)
            rss0, fd0 = rss_mb(gw.pid), fds(gw.pid)
            t0 = time.monotonic()
            counts, odd = asyncio.run(drive(url, args.seconds, args.concurrency, key, 2))
            took = time.monotonic() - t0
            time.sleep(1)  # abandoned streams and keep-alive connections settle
            rss1, fd1 = rss_mb(gw.pid), fds(gw.pid)
        finally:
            if gw is not None:
                stop(gw)
            stop(upstream)
        total = sum(counts.values())
        print(f"soak: {total} requests in {took:.0f} s ({total / took:.0f}/s), concurrency {args.concurrency}")
        for name, n in sorted(counts.items()):
            print(f"  {name:<22} {n}")
        growth = (rss1 - rss0) / rss0
        print(f"gateway RSS: {rss0:.1f} MB after warm-up, {rss1:.1f} MB at the end ({growth:+.1%}; target < +10%)")
        print(f"open file descriptors: {fd0} after warm-up, {fd1} at the end (target: no growth)")
        print(f"unexplained failures: {len(odd)}" + (f" (first: {odd[:5]})" if odd else ""))
        ok = growth < 0.10 and fd1 <= fd0 + 2 and not odd
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
