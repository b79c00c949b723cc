"""A share target across two gateway processes (`triage serve`) on one real Redis: a replay whose prompts change
kind halfway (short chat, then long multiple choice) keeps the large model's share of routed requests at the
target in each half, and `triage analytics share` reads it back from the shared ledger."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import redis

from tests.limits.conftest import REDIS_URL, require_redis
from tests.limits.gateways import Gateway, config
from tests.servers import ThreadedServer

WORDS = ("the", "a", "of", "model", "answer", "which", "value", "river", "city", "light", "paper", "energy")
HALF = 450
LAST = 150
TARGET = 0.3
ANALYTICS = [sys.executable, "-m", "router", "analytics", "share", "--format", "json"]


def chat(rng: random.Random) -> list[dict[str, str]]:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 40)))
    return [{"role": "user", "content": text.capitalize() + "?"}]


def multiple_choice(rng: random.Random) -> list[dict[str, str]]:
    stem = " ".join(rng.choice(WORDS) for _ in range(rng.randint(80, 500)))
    options = "\n".join(f"{k}) " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for k in "ABCD")
    return [{"role": "user", "content": f"Question: {stem}?\n{options}\nAnswer with one letter."}]


def replay(seed: int) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    return [chat(rng) for _ in range(HALF)] + [multiple_choice(rng) for _ in range(HALF)]


async def send(urls: list[str], prompts: list[list[dict[str, str]]], in_flight: int) -> list[tuple[float, bool]]:
    """Each prompt to the gateways in turn (a few at a time, in order): its score and whether it went large."""
    results: list[tuple[float, bool]] = [(0.0, False)] * len(prompts)
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        body = {"model": "auto", "messages": prompts[i], "max_tokens": 2}
        async with gate, session.post(urls[i % len(urls)] + "/v1/chat/completions", json=body) as r:
            await r.read()
            assert r.status == 200, await r.text()
            assert r.headers["x-triage-reason"] in ("below_threshold", "at_or_above_threshold")
            results[i] = (float(r.headers["x-triage-score"]), r.headers["x-triage-model"] == "tiny-large")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(i, session) for i in range(len(prompts))))
    return results


def test_two_gateways_hold_the_share_when_the_traffic_changes_kind(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ...]
) -> None:
    require_redis()
    small, large = upstreams[0], upstreams[1]
    stream = f"test-{uuid.uuid4().hex[:8]}:decisions"
    cfg = config(
        tmp_path,
        f"{small.url}/v1",
        f"{large.url}/v1",
        REDIS_URL,
        {"anonymous": {}},
        redis_timeout=1.0,
        routing={"target_large_share": TARGET, "target_window": 200, "target_min_scores": 50, "target_refresh": 0.05},
        ledger={"backend": "redis", "stream": stream},
    )
    prefix = json.loads(cfg.read_text())["limits"]["key_prefix"]
    store = redis.Redis.from_url(REDIS_URL)
    gateways = [Gateway(cfg, tmp_path / f"gw{i}.log") for i in range(2)]
    try:
        results = asyncio.run(send([g.url for g in gateways], replay(25), in_flight=4))
    finally:
        for g in gateways:
            g.kill(signal.SIGTERM)  # drains the ledger
    try:
        scores = [s for s, _ in results]
        assert max(scores[:HALF]) < 0.5 < min(scores[HALF:])  # a fixed threshold would send 0%, then 100%
        for end in (HALF, 2 * HALF):
            last = results[end - LAST : end]
            share = sum(big for _, big in last) / LAST
            assert abs(share - TARGET) <= 0.07, f"share {share:.3f} over requests {end - LAST}..{end}"
            went, stayed = [s for s, big in last if big], [s for s, big in last if not big]
            assert sum(went) / len(went) > sum(stayed) / len(stayed)  # the classifier picks which go large
        assert store.llen(f"{prefix}:share:routing") == 200  # one window, shared by both replicas
        out = subprocess.run(
            [*ANALYTICS, "--ledger", REDIS_URL, "--stream", stream, "--target", str(TARGET), "--step", "1d"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows = json.loads(out)
        assert sum(r["routed"] for r in rows) == 2 * HALF
        assert {r["target"] for r in rows} == {TARGET}
        large_calls = sum(r["large"] for r in rows)
        assert large_calls == sum(big for _, big in results)
    finally:
        store.delete(stream, f"{prefix}:share:routing")
        store.close()
