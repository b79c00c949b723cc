"""A metered stream reads the worker's usage and counts its events however the stream is cut into reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import pytest

from router.service.metering import MeteredStream
from router.service.recording import Trace, Usage

EVENTS = (
    b'data: {"choices": [{"index": 0, "delta": {"content": "w0 "}}]}\n\n'
    b'data: {"choices": [{"index": 0, "delta": {"content": "w1 "}}]}\n\n'
    b'data: {"choices": [], "usage": {"prompt_tokens": 17, "completion_tokens": 2, "total_tokens": 19}}\n\n'
    b"data: [DONE]\n\n"
)


class _Trace:
    usage: tuple[int, int] | None = None

    def first_chunk(self) -> None:
        pass

    def note(self, usage: Usage | None) -> None:
        if usage is not None:
            self.usage = (usage.prompt, usage.completion)


class _Reads:
    """A worker's stream delivered in the given pieces."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces

    @property
    def status(self) -> int:
        return 200

    async def chunks(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            yield piece

    async def read_all(self) -> bytes:
        return b"".join(self._pieces)

    async def aclose(self) -> None:
        pass


def _metered(pieces: list[bytes], *, hide_usage: bool = False) -> tuple[tuple[int, int] | None, int, bytes]:
    trace = _Trace()
    ended: list[int] = []

    async def on_end(failed: bool, events: int) -> None:
        ended.append(events)

    async def run() -> bytes:
        stream = MeteredStream(_Reads(pieces), cast(Trace, trace), on_end, hide_usage=hide_usage)
        passed = b"".join([chunk async for chunk in stream.chunks()])
        await stream.aclose()
        return passed

    passed = asyncio.run(run())
    return trace.usage, ended[0], passed


# The same events as SSE also allows them: no space after the colon, lines ended by CRLF (sse-starlette's way).
CRLF = EVENTS.replace(b"data: ", b"data:").replace(b"\n", b"\r\n")


@pytest.mark.parametrize("events", [EVENTS, CRLF], ids=["lf", "crlf"])
def test_usage_and_events_survive_every_cut_of_the_stream(events: bytes) -> None:
    """Regression: a usage event cut across two reads was missed (the record fell back to an estimate), a
    `data: ` cut in two was not counted, and `data:` without its space was never read."""
    assert _metered([events]) == ((17, 2), 4, events)
    for cut in range(1, len(events)):
        assert _metered([events[:cut], events[cut:]]) == ((17, 2), 4, events), cut
    assert _metered([events[i : i + 1] for i in range(len(events))]) == ((17, 2), 4, events)  # a byte per read


@pytest.mark.parametrize("events", [EVENTS, CRLF], ids=["lf", "crlf"])
def test_usage_the_caller_did_not_ask_for_is_read_then_taken_out_however_the_stream_is_cut(events: bytes) -> None:
    """The gateway asks every worker for usage; a caller who did not ask never sees it, even when the usage
    event arrives cut across reads, and the stream is still settled from it."""
    end = b"\r\n\r\n" if events is CRLF else b"\n\n"
    hidden = b"".join(e + end for e in events.split(end) if e and b"usage" not in e)
    assert b"usage" not in hidden and hidden.endswith(b"[DONE]" + end)
    assert _metered([events], hide_usage=True) == ((17, 2), 4, hidden)
    for cut in range(1, len(events)):
        assert _metered([events[:cut], events[cut:]], hide_usage=True) == ((17, 2), 4, hidden), cut
    assert _metered([events[i : i + 1] for i in range(len(events))], hide_usage=True) == ((17, 2), 4, hidden)


def test_a_last_event_without_its_blank_line_is_still_passed_on_without_usage() -> None:
    tail = b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'
    first = b'data: {"choices": [{"index": 0, "delta": {"content": "w0 "}}]}\n\n'
    assert _metered([first, tail], hide_usage=True) == ((1, 1), 2, first)  # its usage read, and counted
    assert _metered([first, b"data: [DONE]"], hide_usage=True)[2] == first + b"data: [DONE]"
