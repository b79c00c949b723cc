"""A gateway under uvicorn in front of two scriptable upstream workers, all real HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from router.api.app import create_app
from router.settings import LedgerSettings, RoutingSettings, ServerSettings, Settings, WorkerSettings
from tests.servers import ThreadedServer, free_port
from tests.upstream import Journal, make_upstream

WORKER_TIMEOUT = 1.5


@dataclass
class Stack:
    gateway: ThreadedServer
    small: ThreadedServer
    large: ThreadedServer
    small_journal: Journal
    large_journal: Journal
    client: httpx.Client


def settings_for(small_url: str, large_url: str, **server: object) -> Settings:
    return Settings(
        server=ServerSettings.model_validate({"max_body_bytes": 64_000, **server}),
        routing=RoutingSettings(scorer="length", threshold=0.5, length_midpoint=100),
        ledger=LedgerSettings(enabled=False),  # the ledger's own tests turn it on, in a temporary folder
        workers=[
            WorkerSettings(
                name="small",
                role="small",
                base_url=small_url,
                model="tiny-small",
                timeout=WORKER_TIMEOUT,
                price_input=0.1,
                price_output=0.2,
            ),
            WorkerSettings(
                name="large",
                role="large",
                base_url=large_url,
                model="tiny-large",
                timeout=WORKER_TIMEOUT,
                price_input=5,
                price_output=15,
            ),
        ],
    )


@pytest.fixture
def stack() -> Iterator[Stack]:
    small_journal, large_journal = Journal(), Journal()
    small = ThreadedServer(make_upstream("tiny-small", small_journal)).start()
    large = ThreadedServer(make_upstream("tiny-large", large_journal)).start()
    gateway = ThreadedServer(create_app(settings_for(f"{small.url}/v1", f"{large.url}/v1"))).start()
    client = httpx.Client(base_url=gateway.url, timeout=10)
    try:
        yield Stack(gateway, small, large, small_journal, large_journal, client)
    finally:
        client.close()
        gateway.stop()
        small.stop()
        large.stop()


@pytest.fixture
def dead_url() -> str:
    """A loopback port nobody listens on."""
    return f"http://127.0.0.1:{free_port()}/v1"
