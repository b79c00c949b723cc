"""Shadow calls in a real `triage serve` process: what the shadow call sends, and that a slow shadow worker never
holds the shutdown past the graceful timeout."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from tests.limits.gateways import Gateway
from tests.servers import serving, wait_until
from tests.upstream import Journal, make_upstream


def _config(tmp: Path, small: str, large: str, grace: int = 1) -> Path:
    cfg = tmp / "gateway.json"
    cfg.write_text(
        json.dumps(
            {
                "server": {"log_level": "warning", "graceful_shutdown_timeout": grace},
                "routing": {"scorer": "length", "shadow": {"rate": 1.0, "max_per_minute": 100, "max_in_flight": 4}},
                "workers": [
                    {"name": "small", "role": "small", "base_url": f"{small}/v1", "model": "tiny-small"},
                    {"name": "large", "role": "large", "base_url": f"{large}/v1", "model": "tiny-large"},
                ],
                "ledger": {"path": str(tmp / "ledger.sqlite"), "store_prompts": True},
            }
        )
    )
    return cfg


def test_a_slow_shadow_call_neither_copies_n_nor_holds_the_shutdown(tmp_path: Path) -> None:
    small_journal, large_journal = Journal(), Journal()
    large_journal.always = {"sleep": 60}  # the shadow's worker answers long after any graceful timeout
    with (
        serving(make_upstream("tiny-small", small_journal)) as small,
        serving(make_upstream("tiny-large", large_journal)) as large,
    ):
        gw = Gateway(_config(tmp_path, small.url, large.url), tmp_path / "gateway.log")
        try:
            body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "n": 3}
            r = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10)
            assert r.status_code == 200 and r.headers["x-triage-model"] == "tiny-small"
            assert small_journal.bodies[0]["n"] == 3  # the caller's own request keeps its n
            wait_until(lambda: len(large_journal.bodies) == 1, 30, "the shadow call to reach the large worker")
            assert "n" not in large_journal.bodies[0]  # only choice 0 is compared: one answer is enough
            gw.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            wait_until(lambda: gw.proc.poll() is not None, 90, "the gateway to exit")
            took = time.monotonic() - started
        finally:
            gw.kill()
    # A bound about correctness, not speed: graceful_shutdown_timeout is 1 s, the shadow's worker takes 60 s.
    assert took < 8, f"the shutdown took {took:.1f} s"
    assert gw.proc.returncode in (0, -signal.SIGTERM), (tmp_path / "gateway.log").read_text()[-2000:]
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    try:
        rows = db.execute("SELECT reason, status FROM decisions ORDER BY reason").fetchall()
    finally:
        db.close()
    assert rows == [("below_threshold", 200), ("shadow", 499)]  # the cancelled shadow call is still on record


def test_requests_in_flight_and_shadow_calls_share_one_graceful_timeout(tmp_path: Path) -> None:
    small_journal, large_journal = Journal(), Journal()
    large_journal.always = {"sleep": 60}
    with (
        serving(make_upstream("tiny-small", small_journal)) as small,
        serving(make_upstream("tiny-large", large_journal)) as large,
    ):
        gw = Gateway(_config(tmp_path, small.url, large.url, grace=4), tmp_path / "gateway.log")
        try:
            body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            assert httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
            wait_until(lambda: len(large_journal.bodies) == 1, 30, "the shadow call to reach the large worker")
            # A caller's request the small worker holds past the graceful timeout: in flight at the SIGTERM.
            stuck = {**body, "x_test": {"sleep": 60}}
            pending = threading.Thread(
                target=lambda: httpx.post(gw.url + "/v1/chat/completions", json=stuck, timeout=30), daemon=True
            )
            pending.start()
            wait_until(lambda: len(small_journal.bodies) == 2, 30, "the stuck request to reach the small worker")
            gw.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            wait_until(lambda: gw.proc.poll() is not None, 90, "the gateway to exit")
            took = time.monotonic() - started
        finally:
            gw.kill()
    # One 4 s timeout for both waits, not 4 s for the request and 4 s more for the shadow call (about 8.2 s).
    # The margin is wide on purpose: the bound is about correctness, on a noisy machine.
    assert took < 6.5, f"the shutdown took {took:.1f} s"
