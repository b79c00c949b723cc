"""The gateway's resources open and close as one: a step of the start that fails closes everything opened before
it (Redis clients and pools, the worker clients), and a clean stop closes them all. Real Redis, real clients."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis.asyncio

from router.adapters.redis_batch import ScriptBatch
from router.api.wiring import ShutdownClock, Wiring, running, wire
from router.settings import (
    AuthSettings,
    CacheSettings,
    LedgerSettings,
    LimitsSettings,
    RoutingSettings,
    Settings,
    TierSettings,
    WorkerSettings,
)
from tests.limits.conftest import REDIS_URL, require_redis


def _workers() -> list[WorkerSettings]:
    return [WorkerSettings(name=n, role=n, base_url="http://127.0.0.1:9/v1", model=n) for n in ("small", "large")]


def _settings(ledger: Path) -> Settings:
    """Every Redis-backed part on (limits, cache, conversations, the share window) and a SQLite ledger."""
    return Settings(
        workers=_workers(),
        tiers={"anonymous": TierSettings(requests_per_minute=100)},
        routing=RoutingSettings(scorer="length", conversation="sticky", target_large_share=0.3),
        limits=LimitsSettings(redis_url=REDIS_URL, key_prefix=f"wiring-{uuid.uuid4().hex[:8]}"),
        cache=CacheSettings(backend="auto"),
        ledger=LedgerSettings(backend="sqlite", path=ledger),
        auth=AuthSettings(identity_secret="x" * 32),
    )


Client = redis.asyncio.Redis | ScriptBatch  # redis-py's, or the hot path's own pipelined connection


def _redis_clients(w: Wiring) -> list[Client]:
    limiter = w.stores.redis_limiter
    assert limiter is not None
    for part in (w.stores.conversations, w.stores.cache):  # their lookups ride with admissions
        assert getattr(part, "_batch", None) is limiter.batch
    clients = [limiter.batch, getattr(w.stores.scores, "_redis", None)]
    assert all(isinstance(c, Client) for c in clients), clients  # every Redis part is on
    return [c for c in clients if isinstance(c, Client)]


async def _use(clients: list[Client]) -> None:
    for client in clients:  # each opens a connection, so there is something to close
        await (client.command("PING") if isinstance(client, ScriptBatch) else client.ping())


def _in_use(client: Client) -> int:
    if isinstance(client, ScriptBatch):
        return int(client.connected)
    pool = client.connection_pool
    return sum(1 for c in [*pool._available_connections, *pool._in_use_connections] if c.is_connected)


async def test_a_ledger_that_fails_to_start_closes_everything_opened_before_it(tmp_path: Path) -> None:
    require_redis()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the ledger's folder should be")
    settings = _settings(blocker / "ledger.sqlite")
    w = wire(settings, [ws.to_worker(ws.model) for ws in settings.workers])
    clients = _redis_clients(w)
    await _use(clients)
    assert all(_in_use(c) for c in clients)
    with pytest.raises(FileExistsError):  # the ledger makes its folder, and a file stands there
        async with running(w, ShutdownClock()):
            pytest.fail("the gateway started with a ledger it cannot open")
    assert [_in_use(c) for c in clients] == [0] * len(clients)
    assert w.direct._tls._session is None or w.direct._tls._session.closed


async def test_a_clean_stop_closes_every_client(tmp_path: Path) -> None:
    require_redis()
    settings = _settings(tmp_path / "ledger.sqlite")
    w = wire(settings, [ws.to_worker(ws.model) for ws in settings.workers])
    clients = _redis_clients(w)
    async with running(w, ShutdownClock()):
        await _use(clients)
        assert all(_in_use(c) for c in clients)
        assert w.stores.ledger is not None and (tmp_path / "ledger.sqlite").exists()
    assert [_in_use(c) for c in clients] == [0] * len(clients)
    assert w.direct._tls._session is None or w.direct._tls._session.closed
