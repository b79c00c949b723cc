"""Instructions a server process executes per request, counted by valgrind's callgrind: user space, every thread,
over a fixed number of sequential requests after a warm-up. Unlike CPU time, the count hardly moves between
runs (about 0.1% on the same code), so a change of a few µs per request shows; it leaves out the kernel's
time (system calls, the network stack) and says nothing of cache misses or waits: a companion to the timed
bench, not a replacement.

Used by `./dev bench production --instructions N`.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gateway_overhead import stop

WARM = 200  # requests before counting: imports, caches and the first connections settle


@dataclass(frozen=True)
class Server:
    cmd: list[str]
    port: int  # where it listens on 127.0.0.1
    cwd: Path | None = None


def ensure_valgrind() -> None:
    if shutil.which("valgrind") and shutil.which("callgrind_control"):
        return
    print("installing valgrind (Debian package)", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True, env=env)


def _post(conn: http.client.HTTPConnection, path: str, body: bytes) -> None:
    conn.request("POST", path, body=body, headers={"content-type": "application/json"})
    reply = conn.getresponse()
    reply.read()
    if reply.status != 200:
        raise RuntimeError(f"{path} answered {reply.status}")


def _wait(proc: subprocess.Popen[bytes], port: int, path: str, body: bytes, timeout: float) -> None:
    """Until the server answers; a server that exits first fails at once, not at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before answering (see its .log)")
        try:
            _post(http.client.HTTPConnection("127.0.0.1", port, timeout=30), path, body)
            return
        except (OSError, RuntimeError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def count(server: Server, body: dict[str, object], n: int, out: Path) -> float:
    """Instructions per request of `server` over `n` sequential POSTs of `body` to /v1/chat/completions, one
    keep-alive connection; callgrind's files go to `out` and beside it."""
    cmd, port, path, data = server.cmd, server.port, "/v1/chat/completions", json.dumps(body).encode()
    for old in out.parent.glob(out.name + "*"):
        old.unlink()
    with (out.parent / f"{out.name}.log").open("wb") as log:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *cmd],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=server.cwd,
            start_new_session=True,
        )
    try:
        _wait(proc, port, path, data, 180)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(WARM):
            _post(conn, path, data)
        _control(proc.pid, "-i", "on")
        for _ in range(n):
            _post(conn, path, data)
        _control(proc.pid, "-d")
        _control(proc.pid, "-i", "off")
        conn.close()
    finally:
        stop(proc)
    # The dump asked for above is part 1 (out.1); the one written at exit covers nothing counted.
    dump = out.with_name(out.name + ".1")
    match = re.search(r"^summary: (\d+)$", dump.read_text(errors="replace") if dump.exists() else "", re.M)
    if match is None or not int(match.group(1)):
        raise RuntimeError(f"callgrind counted nothing for {cmd}")
    return int(match.group(1)) / n
