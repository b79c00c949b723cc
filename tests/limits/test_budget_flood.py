"""A tier's spend budget under a flood over two gateway processes (`triage serve`) on one real Redis, with
every core of the machine kept busy: the spend admitted never passes the budget."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.limits.conftest import REDIS_URL, forget, require_redis
from tests.limits.gateways import SHORT, Gateway, config, flood
from tests.servers import ThreadedServer
from tests.upstream import Journal

BUDGET = 0.1  # USD a day for the whole tier: 100,000 micro-USD
# Per million tokens, so micro-USD per token: a request of 1 prompt token (the worker's count, and the
# gateway's estimate of "hi" with its token of slack) and 2 completion tokens costs 100 + 2 x 200 = 500,
# reserved and spent alike: the budget holds exactly 200 of them.
PRICES = {"price_input": 100.0, "price_output": 200.0}
REQUEST = {"model": "tiny-large", "messages": SHORT, "max_tokens": 2, "x_test": {"prompt_tokens": 1}}
COST = 500
BUSY_FOR = 60  # seconds a busy loop runs at most, should the test die before it stops them


@contextmanager
def busy_cores() -> Iterator[None]:
    """A busy loop per core, bounded in time, stopped when the block ends."""
    code = f"import time\nend = time.monotonic() + {BUSY_FOR}\nwhile time.monotonic() < end:\n    pass\n"
    loops = [subprocess.Popen([sys.executable, "-c", code], start_new_session=True) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for p in loops:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def _spend(prefix: str) -> tuple[int, int]:
    """(settled, held) micro-USD in the tier's day window, once nothing is held any more (or at a deadline)."""
    store = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + 15
    while True:
        keys = list(store.scan_iter(f"{prefix}:spend:{{tier:anonymous}}:d:*"))
        assert len(keys) == 1, keys
        settled, held = (int(v or 0) for v in store.hmget(keys[0], "s", "h"))
        if held == 0 or time.monotonic() > deadline:
            return settled, held
        time.sleep(0.05)


def test_two_replicas_never_admit_past_a_spend_budget_with_the_cores_busy(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, Journal]
) -> None:
    require_redis()
    small, large, _ = upstreams
    cfg = config(
        tmp_path,
        f"{small.url}/v1",
        f"{large.url}/v1",
        REDIS_URL,
        # Fail closed: with every core busy Redis itself can be starved past any timeout, and a fail-open tier
        # then admits uncounted, by design. This test is about atomicity across replicas.
        {"anonymous": {"spend_per_day": BUDGET, "on_limiter_error": "closed"}},
        redis_timeout=2.0,
        prices=PRICES,
    )
    prefix = json.loads(cfg.read_text())["limits"]["key_prefix"]
    gateways = [Gateway(cfg, tmp_path / f"gw{i}.log") for i in range(2)]
    try:
        with busy_cores():
            started = time.monotonic()
            codes = asyncio.run(flood([g.url for g in gateways], total=2000, in_flight=400, request=REQUEST))
            took = time.monotonic() - started
    finally:
        for g in gateways:
            g.kill(signal.SIGTERM)
    try:
        settled, held = _spend(prefix)
    finally:
        forget(prefix)
    budget = int(BUDGET * 1_000_000)
    print(
        f"\nbudget {budget} micro-USD; spend admitted {settled} ({codes.get(200, 0)} requests x {COST}); "
        f"held after {held}; codes {codes}; {took:.1f} s over 2 gateways, {os.cpu_count()} busy loops"
    )
    # Every admitted request settled at its real cost, or (a settlement the store did not answer in time) still
    # holds its reservation, the same 500.
    assert settled + held == codes.get(200, 0) * COST
    assert settled + held <= budget  # never past the budget ...
    assert settled + held > budget - COST  # ... and the budget was used, not refused early
    assert set(codes) <= {200, 429, 503} and codes[200] == budget // COST
