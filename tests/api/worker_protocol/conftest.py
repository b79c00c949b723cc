"""The worker client's protocol tests run on both event loops the gateway serves on: uvloop (`triage serve`)
and asyncio (the tests' uvicorn), since transports differ in how they report a closed or reset peer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
