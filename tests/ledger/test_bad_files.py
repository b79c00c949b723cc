"""A path that is not a ledger gets one line naming the file and exit 2, from `triage analytics` and from
`triage serve`; never a traceback, and nothing is written to it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers import free_port


def _truncated(path: Path) -> Path:
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 7)
    return path


def _foreign(path: Path) -> Path:
    path.write_text("name,amount\nrent,1200\n")
    return path


def _database(sql: str) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        db = sqlite3.connect(path)
        db.execute(sql)
        db.commit()
        db.close()
        return path

    return make


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


MAKERS: dict[str, Callable[[Path], Path]] = {
    "truncated": _truncated,
    "foreign": _foreign,
    "wrong_schema": _database("CREATE TABLE invoices (id INTEGER, total REAL)"),
    "old_decisions": _database("CREATE TABLE decisions (ts REAL, model TEXT)"),
    "directory": _directory,
}


def _fingerprint(path: Path) -> str:
    return "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router", *args], capture_output=True, text=True, timeout=60, check=False
    )


def _assert_refused(result: subprocess.CompletedProcess[str], path: Path) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_analytics_refuse_a_file_that_is_not_a_ledger(tmp_path: Path, kind: str) -> None:
    path = MAKERS[kind](tmp_path / "ledger.sqlite")
    before = _fingerprint(path)
    _assert_refused(_run("analytics", "summary", "--ledger", str(path)), path)
    assert _fingerprint(path) == before
    assert not (tmp_path / "ledger.sqlite-wal").exists()


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_serve_refuses_to_write_to_a_file_that_is_not_a_ledger(tmp_path: Path, kind: str) -> None:
    path = MAKERS[kind](tmp_path / "ledger.sqlite")
    before = _fingerprint(path)
    cfg = tmp_path / "gateway.json"
    cfg.write_text(
        json.dumps(
            {
                "workers": [
                    {"name": "s", "role": "small", "base_url": "http://127.0.0.1:9/v1", "model": "a"},
                    {"name": "l", "role": "large", "base_url": "http://127.0.0.1:9/v1", "model": "b"},
                ],
                "routing": {"scorer": "length"},
                "ledger": {"path": str(path)},
                "auth": {"identity_secret": "a-test-secret-of-some-length"},
            }
        )
    )
    _assert_refused(_run("serve", "--config", str(cfg), "--port", str(free_port())), path)
    assert _fingerprint(path) == before
