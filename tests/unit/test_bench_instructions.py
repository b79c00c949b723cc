"""bench/instructions.py: a server that dies at start fails the count at once, naming it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_the_count_fails_at_once_when_the_server_exits_before_answering(tmp_path: Path) -> None:
    """Regression (hostile review): a server that exited at start (a bad config, a port taken) was polled until
    the 180 s deadline, which then raised a bare ConnectionRefusedError."""
    script = f"""
import pathlib, sys
sys.path.insert(0, {str(ROOT / "bench")!r})
import instructions
from gateway_overhead import free_port
server = instructions.Server([sys.executable, "-c", "raise SystemExit('bad config')"], free_port())
try:
    instructions.count(server, {{"model": "auto"}}, 1, pathlib.Path({str(tmp_path)!r}) / "cg.out")
except RuntimeError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert "the server exited with 1 before answering" in out.stdout
