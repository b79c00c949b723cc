"""/metrics under `triage serve --workers 2`: whichever process answers a scrape, it counts every process's
requests (prometheus_client's multiprocess mode, in a folder the supervisor makes, marks and removes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.prometheus import Scrape, parse
from tests.servers import ThreadedServer, free_port, wait_until

REQUESTS = "triage_requests_total"


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _metrics_dir(pid: int) -> Path:
    """The folder the supervisor handed a process (read from the process's environment)."""
    env = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
    return Path(env[b"PROMETHEUS_MULTIPROC_DIR"].decode())


def _config(tmp: Path, small: str, large: str, redis_url: str) -> Path:
    path = tmp / "gateway.json"
    path.write_text(
        json.dumps(
            {
                "server": {"log_level": "warning", "metrics_refresh": 0.1},
                "routing": {"scorer": "length"},
                "workers": [
                    {"name": "small", "role": "small", "base_url": f"{small}/v1", "model": "tiny-small"},
                    {"name": "large", "role": "large", "base_url": f"{large}/v1", "model": "tiny-large"},
                ],
                "tiers": {"anonymous": {"requests_per_minute": 1000}},
                "ledger": {"enabled": False},
                "limits": {"redis_url": redis_url, "key_prefix": f"test-{uuid.uuid4().hex[:8]}", "redis_timeout": 0.2},
            }
        )
    )
    return path


@contextmanager
def _supervisor(tmp: Path, cfg: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    log_path = tmp / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--port", str(port), "--workers", "2"],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _until(lambda: len(_children(proc.pid)) == 2 and _both_up(url), lambda: log_path.read_text()[-2000:])
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()[-2000:]


def _until(condition: Callable[[], bool], why: Callable[[], str], seconds: float = 30) -> None:
    wait_until(condition, seconds, "a condition", why)


def _both_up(url: str) -> bool:
    """Enough fresh connections answered for both processes to have taken some (the kernel spreads them)."""
    try:
        return all(httpx.get(url + "/health", timeout=1).status_code == 200 for _ in range(8))
    except httpx.HTTPError:
        return False


def _ask(url: str, count: int) -> None:
    for _ in range(count):
        with httpx.Client(base_url=url, timeout=10) as client:  # a fresh connection each: both processes serve
            r = client.post(
                "/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
            )
            assert r.status_code == 200, r.text


def _scrape(url: str) -> Scrape:
    with httpx.Client(base_url=url, timeout=10) as client:  # a fresh connection: either process may answer
        r = client.get("/metrics")
    assert r.status_code == 200
    return parse(r.text)


def test_one_metrics_sums_every_process(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, object]
) -> None:
    """Regression: each process served its own counts, so successive scrapes alternated between them.

    The Redis configured is one nobody listens on: every request is admitted all the same (the tier fails
    open) with one limiter error, a total each process keeps itself and copies in every server.metrics_refresh."""
    cfg = _config(tmp_path, upstreams[0].url, upstreams[1].url, f"redis://127.0.0.1:{free_port()}/0")
    errors = "triage_limiter_errors_total"
    with _supervisor(tmp_path, cfg) as (supervisor, url):
        first = _children(supervisor.pid)
        folder = _metrics_dir(first[0])
        assert folder == _metrics_dir(first[1]) and folder.is_dir()
        assert oct(folder.stat().st_mode & 0o777) == "0o700"  # private to this user
        sent = 0
        for batch in (20, 20):
            _ask(url, batch)
            sent += batch
            for _ in range(12):  # fresh connections: both processes answer scrapes
                m = _scrape(url)
                assert m.total(REQUESTS) == sent
                assert m.types[REQUESTS] == "counter"
        assert {f"counter_{pid}.db" for pid in first} <= {p.name for p in folder.iterdir()}  # both counted some
        # Read at scrape time, so another process's share may be up to metrics_refresh old; then exact.
        _until(lambda: _scrape(url).get(errors) == sent, lambda: f"{_scrape(url).get(errors)} limiter errors")
        for _ in range(12):
            m = _scrape(url)
            assert m.get(errors) == sent
            assert m.types[errors] == "counter"

        os.kill(first[0], signal.SIGKILL)  # a process dies: what it counted stays in the sums, its levels leave
        _until(
            lambda: first[0] not in _children(supervisor.pid) and len(_children(supervisor.pid)) == 2,
            lambda: "no new process",
        )
        assert not (folder / f"gauge_livesum_{first[0]}.db").exists()
        assert (folder / f"counter_{first[0]}.db").exists()
        _until(lambda: _both_up(url), lambda: "the new process does not answer")
        _ask(url, 10)
        sent += 10
        for _ in range(12):
            m = _scrape(url)
            assert m.total(REQUESTS) == sent
            assert m.get("triage_ledger_queue_depth") == 0
        _until(lambda: _scrape(url).get(errors) == sent, lambda: f"{_scrape(url).get(errors)} limiter errors")
    assert not folder.exists()  # removed when the supervisor stopped


def test_a_metrics_folder_that_is_not_one_stops_the_start(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, object]
) -> None:
    """PROMETHEUS_MULTIPROC_DIR set by hand to a missing folder: a message naming it, not a traceback."""
    cfg = _config(tmp_path, upstreams[0].url, upstreams[1].url, f"redis://127.0.0.1:{free_port()}/0")
    missing = tmp_path / "nowhere"
    done = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--port", str(free_port())],
        capture_output=True,
        text=True,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(missing)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"PROMETHEUS_MULTIPROC_DIR={missing}: not a folder" in done.stderr and "Traceback" not in done.stderr


def test_no_writable_temporary_folder_stops_the_supervisor_with_a_message(
    tmp_path: Path,
    upstreams: tuple[ThreadedServer, ThreadedServer, object],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The supervisor's metrics folder cannot be made (a read-only root file system): a message, exit 2, and no
    process started."""
    from router.cli import main

    def refuse(prefix: str) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("router.processes.tempfile.mkdtemp", refuse)
    started: list[object] = []
    monkeypatch.setattr("router.processes.subprocess.Popen", lambda *a, **k: started.append(a))
    cfg = _config(tmp_path, upstreams[0].url, upstreams[1].url, f"redis://127.0.0.1:{free_port()}/0")
    assert main(["serve", "--config", str(cfg), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "--workers 2: no folder for the processes' metrics in" in err and "Permission denied" in err
    assert started == []
