"""Signals and `triage serve` processes, for real: the supervisor of `--workers N` and the single process. A
SIGTERM while a process is being restarted stops everything; a SIGKILLed supervisor takes its processes with it;
SIGHUP during start-up ends nothing; a Ctrl-C at the terminal is one graceful stop; a refused configuration stops
the supervisor instead of a restart loop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.limits.conftest import REDIS_URL, require_redis
from tests.limits.test_workers import _children, _config, _up
from tests.servers import ThreadedServer, free_port, wait_until


def _wait(what: str, ok: Callable[[], bool], log: Path | None = None, seconds: float = 30) -> None:
    wait_until(ok, seconds, what, lambda: log.read_text()[-3000:] if log and log.exists() else "")


def _session(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`: the supervisor and every process it started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


@contextlib.contextmanager
def _triage(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`triage serve ...` in a session of its own; whatever of it is left is killed at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", *args], stdout=out, stderr=out, start_new_session=True, env=env
        )
    try:
        yield proc
    finally:
        for pid in _session(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _serving(port: int, count: int, log: Path) -> Callable[[subprocess.Popen[bytes]], list[int]]:
    url = f"http://127.0.0.1:{port}"

    def wait(supervisor: subprocess.Popen[bytes]) -> list[int]:
        _wait(f"{count} processes serving", lambda: len(_children(supervisor.pid)) == count and _up(url), log)
        return _children(supervisor.pid)

    return wait


def test_sigterm_while_a_process_is_restarted_stops_every_process(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, object]
) -> None:
    """Regression: the supervisor slept 1 s before restarting a dead process; a SIGTERM in that second stopped the
    other process, then the restart started a new one that nobody stopped: the supervisor waited on it forever."""
    require_redis()
    cfg = _config(tmp_path, upstreams[0].url, upstreams[1].url, REDIS_URL)
    port, log = free_port(), tmp_path / "serve.log"
    with _triage(["--config", str(cfg), "--port", str(port), "--workers", "2"], log) as supervisor:
        first = _serving(port, 2, log)(supervisor)
        os.kill(first[0], signal.SIGKILL)
        _wait("the supervisor saw the death", lambda: f"gateway process {first[0]} exited" in log.read_text(), log)
        supervisor.send_signal(signal.SIGTERM)  # within the restart delay
        try:
            code = supervisor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the supervisor did not stop; its session: {_session(supervisor.pid)}")
        assert code == 0
        _wait("every process gone", lambda: not _session(supervisor.pid), log)
        assert not _up(f"http://127.0.0.1:{port}")


def test_a_killed_supervisor_takes_its_processes_with_it(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, object]
) -> None:
    """Regression: SIGKILL of the supervisor left its processes serving the port, unsupervised (and sharing it,
    through SO_REUSEPORT, with the next supervisor's). Each now stops gracefully when its parent is gone."""
    require_redis()
    cfg = _config(tmp_path, upstreams[0].url, upstreams[1].url, REDIS_URL)
    port, log = free_port(), tmp_path / "serve.log"
    with _triage(["--config", str(cfg), "--port", str(port), "--workers", "2"], log) as supervisor:
        children = _serving(port, 2, log)(supervisor)
        supervisor.kill()
        supervisor.wait(timeout=30)
        _wait("the processes stopped", lambda: not any(_alive(pid) for pid in children), log)
        assert not _up(f"http://127.0.0.1:{port}")


class _SlowModels:
    """A worker whose GET /v1/models answers only once released: `triage serve` without model names is held in
    its start-up (discovery) for as long as the test needs."""

    def __init__(self) -> None:
        self.asked = 0
        self.release = threading.Event()

    def app(self) -> Starlette:
        async def models(_: Request) -> Response:
            import asyncio

            self.asked += 1
            await asyncio.to_thread(self.release.wait, 60)
            return JSONResponse({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

        return Starlette(routes=[Route("/v1/models", models)])


@pytest.fixture
def slow_models() -> Iterator[tuple[_SlowModels, ThreadedServer]]:
    worker = _SlowModels()
    server = ThreadedServer(worker.app()).start()
    try:
        yield worker, server
    finally:
        worker.release.set()
        server.stop()


def test_sighup_during_start_up_ends_neither_the_process_nor_the_supervisor_s_processes(
    tmp_path: Path, slow_models: tuple[_SlowModels, ThreadedServer]
) -> None:
    """Regression: SIGHUP before the app had taken it over (its default action) ended a starting gateway; under
    --workers the supervisor forwarded it and its starting processes died and were restarted. Now it is held, and
    answered with a reload once the gateway runs (the files may have changed after start-up read them)."""
    require_redis()
    worker, server = slow_models
    urls = ["--small", f"{server.url}/v1", "--large", f"{server.url}/v1"]
    port, log = free_port(), tmp_path / "single.log"
    with _triage([*urls, "--port", str(port), "--log-level", "info"], log) as single:
        _wait("the gateway asked for its model", lambda: worker.asked >= 1, log)
        for _ in range(3):
            single.send_signal(signal.SIGHUP)
        worker.release.set()
        _wait("the gateway serving", lambda: _up(f"http://127.0.0.1:{port}") or single.poll() is not None, log)
        assert single.poll() is None, log.read_text()[-2000:]
        ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).json()
        _wait(
            "the held SIGHUP's reload",
            lambda: httpx.get(f"http://127.0.0.1:{port}/ready").json()["classifier"]["reloads"] == 1,
            log,
        )
        assert ready["classifier"]["failed_reloads"] == 0
        single.send_signal(signal.SIGTERM)
        assert single.wait(timeout=30) == -signal.SIGTERM

    worker.release.clear()
    asked = worker.asked
    port, log = free_port(), tmp_path / "workers.log"
    with _triage([*urls, "--port", str(port), "--redis", REDIS_URL, "--workers", "2"], log) as supervisor:
        _wait("two processes", lambda: len(_children(supervisor.pid)) == 2, log)
        starting = _children(supervisor.pid)
        _wait("both asked for their model", lambda: worker.asked >= asked + 2, log)
        for _ in range(3):
            supervisor.send_signal(signal.SIGHUP)
            for pid in starting:
                os.kill(pid, signal.SIGHUP)
        worker.release.set()
        _serving(port, 2, log)(supervisor)
        assert _children(supervisor.pid) == starting  # none died, none was restarted
        assert "exited" not in log.read_text()
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0


def test_ctrl_c_at_the_terminal_is_one_graceful_stop(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, object]
) -> None:
    """Regression: the processes shared the terminal's process group, so a Ctrl-C reached each twice (from the
    terminal and forwarded by the supervisor): uvicorn's force quit, which skips the app's shutdown (the ledger's
    last records). The supervisor now exits 130 after a Ctrl-C, as the single process does."""
    require_redis()
    cfg = _config(tmp_path, upstreams[0].url, upstreams[1].url, REDIS_URL)
    cfg.write_text(cfg.read_text().replace('"log_level": "warning"', '"log_level": "info"'))
    port, log = free_port(), tmp_path / "serve.log"
    with _triage(["--config", str(cfg), "--port", str(port), "--workers", "2"], log) as supervisor:
        _serving(port, 2, log)(supervisor)
        _wait("both started", lambda: log.read_text().count("Application startup complete.") == 2, log)
        os.killpg(supervisor.pid, signal.SIGINT)  # what the terminal does: the whole foreground group
        assert supervisor.wait(timeout=30) == 130
        assert log.read_text().count("Application shutdown complete.") == 2, log.read_text()[-3000:]


def test_a_refused_configuration_stops_the_supervisor_instead_of_restarting_forever(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, object]
) -> None:
    """Regression: a process that refused its configuration (exit 2: here a classifier file with NaN weights) was
    restarted every second, forever. The supervisor now stops with that status; the message names the file."""
    require_redis()
    bad = tmp_path / "nan.json"
    bad.write_text('{"format": "llm-triage-classifier", "format_version": 1, "spec": NaN}')
    cfg = _config(tmp_path, upstreams[0].url, upstreams[1].url, REDIS_URL)
    cfg.write_text(cfg.read_text().replace('"scorer": "length"', f'"scorer": "classifier", "classifier_path": "{bad}"'))
    port, log = free_port(), tmp_path / "serve.log"
    with _triage(["--config", str(cfg), "--port", str(port), "--workers", "2"], log) as supervisor:
        try:
            code = supervisor.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the supervisor kept restarting:\n" + log.read_text()[-2000:])
        assert code == 2
        text = log.read_text()
        assert f"routing.classifier_path: {bad}: not a classifier file" in text
        assert "Traceback" not in text
