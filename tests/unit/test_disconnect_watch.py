"""until_disconnect: a client leaving cancels the work, whether it leaves before or after the watcher starts;
work that ends before the watcher would start never waits on the connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from router.api.streaming import ClientGone, until_disconnect
from tests.raw_worker import eventually


class Connection:
    """An ASGI receive: the body was read; `leave()` makes the next receive a disconnect."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.receives = 0

    def leave(self) -> None:
        self.gone.set()

    async def receive(self) -> dict[str, Any]:
        self.receives += 1
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def _work(seconds: float, done: list[str]) -> str:
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        done.append("cancelled")
        raise
    done.append("finished")
    return "answer"


def test_quick_work_never_waits_on_the_connection() -> None:
    async def run() -> tuple[str, int]:
        conn, done = Connection(), list[str]()
        got = await until_disconnect(_work(0.001, done), conn.receive, watch_after=0.05)
        await asyncio.sleep(0.1)  # past the watch window: the timer was cancelled with the work
        return got, conn.receives

    assert asyncio.run(run()) == ("answer", 0)


@pytest.mark.parametrize("leave_at", [0.01, 0.2])
def test_a_client_leaving_cancels_the_work(leave_at: float) -> None:
    """Leaving inside the watch window is noticed when the watcher starts; later, at once."""

    async def run() -> tuple[list[str], float]:
        conn, done = Connection(), list[str]()
        loop = asyncio.get_running_loop()
        loop.call_later(leave_at, conn.leave)
        start = loop.time()
        with pytest.raises(ClientGone):
            await until_disconnect(_work(5.0, done), conn.receive, watch_after=0.05)
        return done, loop.time() - start

    done, took = asyncio.run(run())
    assert done == ["cancelled"]
    assert max(leave_at, 0.05) <= took < max(leave_at, 0.05) + 0.5


def test_a_cancel_from_elsewhere_is_not_a_client_leaving() -> None:
    async def run() -> None:
        conn, done = Connection(), list[str]()
        task = asyncio.ensure_future(until_disconnect(_work(5.0, done), conn.receive, watch_after=0.01))
        assert await eventually(lambda: conn.receives == 1)  # the cancel comes while the connection is watched
        task.cancel()  # shutdown, say: passed on as a cancellation, not turned into ClientGone
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
