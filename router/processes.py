"""`triage serve --workers N`: N gateway processes on one port, with SO_REUSEPORT (the kernel spreads new
connections over them), under a small supervisor that forwards SIGTERM, SIGINT and SIGHUP and restarts a process
that dies. Each process is a whole gateway: what must be shared between them (limits, the ledger, the cache,
conversation memory) goes through Redis, so N > 1 requires it; breakers and in-flight counts are per process.
/metrics sums the processes: the supervisor gives them a private folder for prometheus_client's multiprocess
files (PROMETHEUS_MULTIPROC_DIR), marks a process that ended as dead there, and removes the folder at exit."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType

from router.errors import ConfigError

__all__ = ["CHILD_ENV", "reuse_port_socket", "supervise"]

CHILD_ENV = "TRIAGE_SERVE_CHILD"  # set in the processes the supervisor starts
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's: where each process writes its metrics
log = logging.getLogger("triage.processes")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def supervise(count: int, argv: Sequence[str]) -> int:
    """Run `count` copies of this command as gateway processes until a signal stops them."""
    try:
        metrics_dir = tempfile.mkdtemp(prefix="triage-metrics-")  # 0700: this user's processes only
    except OSError as exc:  # a read-only root file system, say
        raise ConfigError(
            f"--workers {count}: no folder for the processes' metrics in {tempfile.gettempdir()} ({exc.strerror}); "
            "point TMPDIR at a writable folder"
        ) from None
    try:
        return _run(count, argv, {**os.environ, CHILD_ENV: "1", METRICS_ENV: metrics_dir}, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _run(count: int, argv: Sequence[str], env: dict[str, str], metrics_dir: str) -> int:
    from prometheus_client.multiprocess import mark_process_dead  # only the supervisor needs it

    command = [sys.executable, "-m", "router", *argv]
    children = [subprocess.Popen(command, env=env) for _ in range(count)]
    stopping = False

    def forward(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    log.info("started %d gateway processes: %s", count, ", ".join(str(c.pid) for c in children))
    dead: set[int] = set()
    while True:
        alive = False
        for i, child in enumerate(children):
            code = child.poll()
            if code is None:
                alive = True
                continue
            if child.pid not in dead:  # its levels (queue depth) leave the sums; its totals stay in them
                mark_process_dead(child.pid, metrics_dir)  # type: ignore[no-untyped-call]  # untyped upstream
                dead.add(child.pid)
            if not stopping:
                log.error("gateway process %d exited with %s; starting another", child.pid, code)
                time.sleep(1.0)
                children[i] = subprocess.Popen(command, env=env)
                alive = True
        if not alive:  # a process stopped by the forwarded signal ends with it (uvicorn re-raises it)
            clean = (0, -signal.SIGTERM, -signal.SIGINT)
            return 0 if all(c.returncode in clean for c in children) else 1
        time.sleep(0.2)
