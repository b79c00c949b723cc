"""Fixtures shared across test folders."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from classifiers.lab.data import data_folder
from tests.servers import ThreadedServer, serving
from tests.upstream import Journal, make_upstream


@pytest.fixture(autouse=True)
def _collected() -> Iterator[None]:
    """A socket or file a test leaves open is reported in that test: collected as it ends, not whenever the
    garbage collector next runs, in a later test that then fails under another's name. What survives is then
    set aside (gc.freeze): the next collection walks only what the next test makes (5-50 ms less each)."""
    yield
    gc.collect()
    gc.freeze()


@pytest.fixture
def upstreams() -> Iterator[tuple[ThreadedServer, ThreadedServer, Journal]]:
    journal = Journal()
    with serving(make_upstream("tiny-small", journal)) as small, serving(make_upstream("tiny-large")) as large:
        yield small, large, journal


@pytest.fixture(scope="session")
def routing_data() -> Path:
    """The recorded outcomes (TRIAGE_DATA, ../shared/data or `triage data fetch`'s folder). Missing, a test
    that needs them fails in CI, where a skip would hide that nothing was measured, and skips elsewhere."""
    folder = data_folder()
    if all((folder / source / "PROVENANCE.md").is_file() for source in ("routellm", "llmrouter")):
        return folder
    message = f"no routing data in {folder}: run `triage data fetch` (or set TRIAGE_DATA)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
