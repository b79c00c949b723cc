"""Fixtures shared across test folders."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import ThreadedServer, serving
from tests.upstream import Journal, make_upstream


@pytest.fixture
def upstreams() -> Iterator[tuple[ThreadedServer, ThreadedServer, Journal]]:
    journal = Journal()
    with serving(make_upstream("tiny-small", journal)) as small, serving(make_upstream("tiny-large")) as large:
        yield small, large, journal
