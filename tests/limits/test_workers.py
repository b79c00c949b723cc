"""`triage serve --workers N`: N gateway processes on one port under a supervisor, sharing limits through
Redis; refused without Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.limits.conftest import REDIS_URL, require_redis
from tests.servers import ThreadedServer, free_port, listeners, wait_until


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _config(tmp: Path, small: str, large: str, redis_url: str | None) -> Path:
    path = tmp / "gateway.json"
    limits = {"redis_url": redis_url, "key_prefix": f"test-{uuid.uuid4().hex[:8]}", "redis_timeout": 1.0}
    path.write_text(
        json.dumps(
            {
                "server": {"log_level": "warning"},
                "routing": {"scorer": "length"},
                "workers": [
                    {"name": "small", "role": "small", "base_url": f"{small}/v1", "model": "tiny-small"},
                    {"name": "large", "role": "large", "base_url": f"{large}/v1", "model": "tiny-large"},
                ],
                "tiers": {"anonymous": {"requests_per_minute": 10}},
                "ledger": {"enabled": False},
                **({"limits": limits} if redis_url else {}),
            }
        )
    )
    return path


def test_two_processes_share_the_port_and_the_limits(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, object]
) -> None:
    require_redis()
    cfg = _config(tmp_path, upstreams[0].url, upstreams[1].url, REDIS_URL)
    port = free_port()
    with (tmp_path / "serve.log").open("wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--port", str(port), "--workers", "2"],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"

    def tail() -> str:
        return (tmp_path / "serve.log").read_text()[-2000:]

    try:
        wait_until(lambda: len(_children(supervisor.pid)) >= 2 and _up(url), 30, "two processes serving", tail)
        wait_until(lambda: listeners(port) == 2, 30, "both processes listening")
        codes = Counter(_ask(url) for _ in range(30))  # a new connection each: the kernel spreads them
        assert codes == {200: 10, 429: 20}  # the limit is exact across the two processes
        first = _children(supervisor.pid)
        os.kill(first[0], signal.SIGKILL)  # one process dies: the supervisor starts another
        wait_until(
            lambda: first[0] not in _children(supervisor.pid) and len(_children(supervisor.pid)) >= 2,
            30,
            "the supervisor to replace the killed process",
            tail,
        )
        wait_until(lambda: listeners(port) == 2, 30, "the new process listening")
        assert {_ask(url) for _ in range(10)} == {429}  # still limited: the count lives in Redis
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0


def test_more_than_one_process_without_redis_is_refused(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, object]
) -> None:
    cfg = _config(tmp_path, upstreams[0].url, upstreams[1].url, None)
    env = {k: v for k, v in os.environ.items() if k != "TRIAGE_REDIS_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--workers", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--workers > 1 needs Redis" in done.stderr and "Traceback" not in done.stderr


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _ask(url: str) -> int:
    with httpx.Client(base_url=url, timeout=10) as client:  # a fresh connection per request
        return client.post(
            "/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
        ).status_code


def test_the_processes_run_the_command_as_given_not_the_interpreter_s_argv(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the supervisor started its processes from sys.argv, which is not the command when `main()` is
    called with arguments (an embedding program, a test)."""
    import router.cli

    seen: list[list[str]] = []

    def supervise(count: int, argv: list[str]) -> int:
        seen.append(list(argv))
        return 0

    monkeypatch.setattr(router.cli, "supervise", supervise)
    cfg = _config(tmp_path, upstreams[0].url, upstreams[1].url, REDIS_URL)
    argv = ["serve", "--config", str(cfg), "--workers", "2"]
    assert router.cli.main(argv) == 0
    assert seen == [argv]
