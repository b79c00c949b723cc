"""`triage serve --workers N`: N gateway processes on one port, with SO_REUSEPORT (the kernel spreads new
connections over them), under a small supervisor that forwards SIGTERM, SIGINT and SIGHUP and restarts a process
that dies. Each process is a whole gateway: what must be shared between them (limits, the ledger, the cache,
conversation memory) goes through Redis, so N > 1 requires it; breakers and in-flight counts are per process.

Signals: the supervisor's handlers only note a signal; its loop acts on it, so a signal that lands while a
process is being started is still forwarded to that process, and no process is started once stopping began.
The processes run in a process group of their own, so a Ctrl-C at the terminal reaches them once, through the
supervisor (twice would be uvicorn's force quit). Each process watches the supervisor and stops (SIGTERM:
gracefully) when it is gone, killed or not, instead of serving the port on its own. SIGHUP would end a process
that has not taken it over yet: the processes start with it ignored, and hold it (SighupLatch) until the app
answers it with a reload.

/metrics sums the processes: the supervisor gives them a private folder for prometheus_client's multiprocess
files (PROMETHEUS_MULTIPROC_DIR), marks a process that ended as dead there, and removes the folder at exit."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType

from router.errors import ConfigError

__all__ = [
    "CHILD_ENV",
    "SighupLatch",
    "Supervisor",
    "holding_sighup",
    "reuse_port_socket",
    "supervise",
    "watch_parent",
]

CHILD_ENV = "TRIAGE_SERVE_CHILD"  # set in the processes the supervisor starts, to the supervisor's pid
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's: where each process writes its metrics
REFUSED = 2  # `triage`'s exit status for a configuration it refuses: starting it again would fail again
RESTART_DELAY = 1.0
_STOPS = (signal.SIGTERM, signal.SIGINT)
_CLEAN = (0, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGINT)  # 130: `triage` after a Ctrl-C
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


class SighupLatch:
    """A SIGHUP handler for the time a gateway process starts: it notes the signal instead of ending the process
    (the default action). The app, once it takes SIGHUP over, answers a noted one with a reload."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received = True


@contextlib.contextmanager
def holding_sighup() -> Iterator[None]:
    """For the life of `triage serve`: SIGHUP is noted in a SighupLatch, not fatal, until the app takes it over
    (and again after it gives it back, while shutting down). Only the main thread can set a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGHUP, SighupLatch())
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL if previous is None else previous)


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
        return Supervisor(count, [sys.executable, "-m", "router", *argv], metrics_dir=metrics_dir).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


class Supervisor:
    def __init__(
        self, count: int, command: list[str], restart_delay: float = RESTART_DELAY, metrics_dir: str | None = None
    ) -> None:
        self._command = command
        self._delay = restart_delay
        self._env = {**os.environ, CHILD_ENV: str(os.getpid())}
        self._metrics_dir = metrics_dir
        if metrics_dir is not None:
            self._env[METRICS_ENV] = metrics_dir
        self._marked: set[int] = set()
        self._children: list[subprocess.Popen[bytes] | None] = [None] * count
        self._due = dict.fromkeys(range(count), 0.0)  # slot -> when (monotonic) to start its process
        self._noted: list[int] = []  # signals received, not yet acted on
        self._stop: int | None = None  # the signal that stops everything, once one came
        self._refused = False

    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        watched = (*_STOPS, signal.SIGHUP, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, self._note) for sig in watched}
        previous_fd = signal.set_wakeup_fd(wake_w.fileno())  # a signal interrupts the wait at once
        try:
            return self._loop(wake_r)
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()

    def _note(self, signum: int, _: FrameType | None) -> None:
        self._noted.append(signum)

    def _loop(self, wake: socket.socket) -> int:
        while True:
            self._act_on_signals()
            if self._stop is None:
                self._reap()
                self._start_due()
            elif not self._alive():
                return self._status()
            timeout = 0.5 if self._stop is not None or not self._due else min(self._due.values()) - time.monotonic()
            select.select([wake], [], [], max(0.0, min(timeout, 0.5)))
            with contextlib.suppress(BlockingIOError):
                while wake.recv(256):
                    pass

    def _act_on_signals(self) -> None:
        while self._noted:
            signum = self._noted.pop(0)
            if signum == signal.SIGCHLD:
                continue  # only wakes the loop: _reap looks
            if signum in _STOPS and self._stop is None:
                self._stop = signum
                self._due.clear()  # no process starts once stopping began
            self._send(signum)  # a second SIGINT too: uvicorn's force quit, as Ctrl-C twice means

    def _send(self, signum: int) -> None:
        for child in self._children:
            if child is not None and child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)

    def _reap(self) -> None:
        for slot, child in enumerate(self._children):
            if child is None:
                continue
            code = child.poll()
            if code is None:
                continue
            self._mark_dead(child.pid)
            if code == REFUSED:  # the configuration or a model file was refused: say so once, not every second
                log.error("gateway process %d refused to start (exit status 2); stopping", child.pid)
                self._refused = True
                self._stop = signal.SIGTERM
                self._due.clear()
                self._send(signal.SIGTERM)
                return
            log.error("gateway process %d exited with %s; starting another", child.pid, code)
            self._children[slot] = None  # reported: its status says nothing about how the stop went
            self._due[slot] = time.monotonic() + self._delay

    def _start_due(self) -> None:
        now = time.monotonic()
        for slot, when in list(self._due.items()):
            if when <= now:
                del self._due[slot]
                self._children[slot] = subprocess.Popen(
                    self._command, env=self._env, process_group=0, preexec_fn=_ignore_sighup
                )
                log.info("started gateway process %d", self._children[slot].pid)  # type: ignore[union-attr]

    def _mark_dead(self, pid: int) -> None:
        """A process that ended: its levels (queue depth) leave the metrics' sums; its totals stay in them."""
        if self._metrics_dir is None or pid in self._marked:
            return
        from prometheus_client.multiprocess import mark_process_dead  # only the supervisor needs it

        mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]  # untyped upstream
        self._marked.add(pid)

    def _alive(self) -> bool:
        return any(c is not None and c.poll() is None for c in self._children)

    def _status(self) -> int:
        if self._refused:
            return REFUSED
        if not all(c is None or c.returncode in _CLEAN for c in self._children):
            return 1
        return 128 + signal.SIGINT if self._stop == signal.SIGINT else 0


def _ignore_sighup() -> None:
    """Runs in the new process before it executes Python: an ignored signal stays ignored across exec, so a
    SIGHUP forwarded while it starts does not end it (`triage serve` then holds SIGHUP in a SighupLatch)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def watch_parent(parent: int) -> None:
    """In a process the supervisor started: SIGTERM this process (a graceful stop) when the supervisor `parent`
    is gone. The kernel's parent-death signal on Linux; elsewhere, a thread that polls getppid()."""
    if not _parent_death_signal(signal.SIGTERM):
        threading.Thread(target=_poll_parent, args=(parent,), name="watch-supervisor", daemon=True).start()
    if os.getppid() != parent:  # it was gone before the watch began
        os.kill(os.getpid(), signal.SIGTERM)


def _parent_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(pr_set_pdeathsig, signum, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _poll_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
