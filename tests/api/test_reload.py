"""SIGHUP reloads the classifier files of a running `triage serve`: a good file is verified and takes over, a bad
one is refused with a log line while the old one keeps serving, and no request fails meanwhile."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

import classifiers
from classifiers.model import Classifier
from tests.limits.gateways import Gateway
from tests.servers import ThreadedServer

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def leaning(path: Path, shift: float) -> str:
    """The shipped classifier with every raw score moved by `shift`: far below (everything small) or above the
    0.5 threshold (everything large). A real file: checksum and probes written for it."""
    base = classifiers.load()
    Classifier(base.spec, base.coef, base.intercept + shift, base.platt, dict(base.meta)).save(path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ready(gw: Gateway) -> dict[str, object]:
    body: dict[str, object] = httpx.get(gw.url + "/ready", timeout=5).json()
    return body


def _wait_for(gw: Gateway, key: str, value: object) -> dict[str, object]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        info = _ready(gw)["classifier"]
        assert isinstance(info, dict)
        if info[key] == value:
            return info
        time.sleep(0.05)
    raise AssertionError(f"/ready never showed {key}={value!r}: {_ready(gw)}")


def _wait_len(answers: list[str], n: int) -> None:
    """Until the load threads have had `n` answers (a count, not a time: the machine is shared)."""
    deadline = time.monotonic() + 30
    while len(answers) < n:
        assert time.monotonic() < deadline, f"only {len(answers)} answers"
        time.sleep(0.02)


def test_sighup_swaps_the_classifier_under_load_and_refuses_a_bad_file(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, object]
) -> None:
    small, large = upstreams[0], upstreams[1]
    active = tmp_path / "classifier.json"
    easy_sha = leaning(active, -50.0)
    hard_file = tmp_path / "hard.json"
    hard_sha = leaning(hard_file, +50.0)
    cfg = tmp_path / "gateway.json"
    cfg.write_text(
        json.dumps(
            {
                "server": {"log_level": "info"},
                "routing": {"scorer": "classifier", "classifier_path": str(active), "threshold": 0.5},
                "workers": [
                    {"name": "small", "role": "small", "base_url": f"{small.url}/v1", "model": "tiny-small"},
                    {"name": "large", "role": "large", "base_url": f"{large.url}/v1", "model": "tiny-large"},
                ],
                "ledger": {"enabled": False},
            }
        )
    )
    gw = Gateway(cfg, tmp_path / "gateway.log")
    statuses: Counter[int] = Counter()
    models: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=gw.url, timeout=10) as client:
            while not stop.is_set():
                r = client.post("/v1/chat/completions", json={"model": "auto", "messages": PROMPT})
                statuses[r.status_code] += 1
                models.append(r.headers.get("x-triage-model", ""))

    threads = [threading.Thread(target=load) for _ in range(4)]
    try:
        info = _ready(gw)["classifier"]
        assert isinstance(info, dict)
        assert (info["path"], info["sha256"], info["reloads"]) == (str(active), easy_sha, 0)
        for t in threads:
            t.start()
        _wait_len(models, 8)
        assert set(models) == {"tiny-small"}
        # The operator's way: write the new file beside it, move it into place, SIGHUP.
        os.replace(hard_file, active)
        os.kill(gw.proc.pid, signal.SIGHUP)
        _wait_for(gw, "sha256", hard_sha)
        # Requests under way keep the policy they started with: at most one per load thread was routed before
        # the swap and answers after it.
        seen = len(models) + len(threads)
        _wait_len(models, seen + 8)
        assert set(models[seen:]) == {"tiny-large"}
        # A torn or altered file: refused, the hard classifier keeps serving.
        active.write_bytes(active.read_bytes()[:5000])
        os.kill(gw.proc.pid, signal.SIGHUP)
        info = _wait_for(gw, "failed_reloads", 1)
        assert (info["sha256"], info["reloads"]) == (hard_sha, 1)
        seen = len(models)
        _wait_len(models, seen + 8)
        assert set(models[seen:]) == {"tiny-large"}
        # Many reloads in a row, under load: still nothing fails.
        leaning(active, -50.0)
        for _ in range(5):
            os.kill(gw.proc.pid, signal.SIGHUP)
            time.sleep(0.05)
        info = _wait_for(gw, "sha256", _sha(active))
        assert isinstance(info["reloads"], int) and info["reloads"] >= 2
        _wait_len(models, len(models) + 8)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        gw.kill(signal.SIGTERM)
    assert set(statuses) == {200}, statuses
    assert statuses[200] > 50
    assert models[-1] == "tiny-small"
    log = (tmp_path / "gateway.log").read_text()
    assert "reload refused, the policy in use keeps serving" in log
    # SIGHUP never killed it; SIGTERM stopped it cleanly (uvicorn re-raises the signal once it has shut down).
    assert gw.proc.returncode == -signal.SIGTERM
    assert "Finished server process" in log
