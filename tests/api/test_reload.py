"""SIGHUP reloads the classifier files of a running `triage serve`: a good file is verified and takes over, a bad
one is refused with a log line while the old one keeps serving, and no request fails meanwhile."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

import classifiers
from classifiers.model import Classifier
from router.api.app import create_app
from router.api.policy_files import PolicyFiles
from router.api.wiring import _on_sighup
from router.processes import SighupLatch
from router.settings import LedgerSettings, RoutingSettings, Settings, WorkerSettings
from tests.limits.gateways import Gateway
from tests.raw_worker import eventually
from tests.servers import ThreadedServer, wait_until

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
    seen: list[dict[str, object]] = []

    def shows() -> bool:
        info = _ready(gw)["classifier"]
        assert isinstance(info, dict)
        seen.append(info)
        return bool(info[key] == value)

    wait_until(shows, 20, f"/ready to show {key}={value!r}", lambda: str(seen[-1:]))
    return seen[-1]  # the answer that showed it, not a later one


def _wait_len(answers: list[str], n: int) -> None:
    """Until the load threads have had `n` answers (a count, not a time: the machine is shared)."""
    wait_until(lambda: len(answers) >= n, 30, f"{n} answers", lambda: f"only {len(answers)}")


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


def _doc_file(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """The shipped classifier's file, changed; written beside `path` and moved into place, as an operator does."""
    doc = json.loads(classifiers.default_path().read_text())
    change(doc)
    beside = path.with_name(path.name + ".new")
    beside.write_text(json.dumps(doc))
    _into_place(beside, path)


def _into_place(new: Path, path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    os.replace(new, path)


def _nan_weights(doc: dict[str, Any]) -> None:
    """NaN weights, with their checksum, and the file's own probe scores: the old loader's probe check compared
    NaN and passed, and every score was NaN (below any threshold: all traffic to the small model)."""
    raw = bytes.fromhex("0000c07f") * int(doc["coef"]["length"])  # float32 NaN, little-endian
    doc["coef"]["zlib_base64"] = base64.b64encode(zlib.compress(raw)).decode()
    doc["coef"]["sha256"] = hashlib.sha256(raw).hexdigest()


def _hostile(kind: str, path: Path, tmp: Path) -> None:
    if kind == "nan-weights":
        _doc_file(path, _nan_weights)
    elif kind == "threshold-abc":
        _doc_file(path, lambda d: d["meta"].update(suggested_threshold="abc"))
    elif kind == "threshold-1.5":
        _doc_file(path, lambda d: d["meta"].update(suggested_threshold=1.5))
    elif kind == "wrong-shape":
        _doc_file(path, lambda d: d["spec"].update(word_bits=17))
    elif kind == "answer-scorer":
        shutil.copy(classifiers.default_answer_path(), tmp / "answers.json")
        _into_place(tmp / "answers.json", path)
    elif kind == "fifo":
        os.mkfifo(tmp / "fifo")
        _into_place(tmp / "fifo", path)
    elif kind == "dev-zero":
        (tmp / "zero").symlink_to("/dev/zero")
        _into_place(tmp / "zero", path)
    elif kind == "too-large":
        with (tmp / "large").open("wb") as f:
            f.truncate(64 << 20)  # sparse
        _into_place(tmp / "large", path)
    else:
        path.unlink()
        path.mkdir()


HOSTILE = [
    "nan-weights",
    "threshold-abc",
    "threshold-1.5",
    "wrong-shape",
    "answer-scorer",
    "fifo",
    "dev-zero",
    "too-large",
    "directory",
]


def test_a_reload_refuses_hostile_files_counts_them_and_keeps_serving(
    tmp_path: Path, upstreams: tuple[ThreadedServer, ThreadedServer, object]
) -> None:
    """Regression: NaN weights were taken (everything went to the small model), a threshold of "abc" raised an
    unhandled ValueError in the reload task (not counted), 1.5 was taken (nothing reaches it), a FIFO wedged
    reloading for good and a symlink to /dev/zero read until memory was gone. Each is now refused, counted in
    /ready's failed_reloads, and the policy in use keeps serving; a good file after them is taken; SIGTERM right
    after a SIGHUP stops the gateway cleanly."""
    small, large = upstreams[0], upstreams[1]
    active = tmp_path / "classifier.json"
    easy_sha = leaning(active, -50.0)
    cfg = tmp_path / "gateway.json"
    cfg.write_text(
        json.dumps(
            {
                "server": {"log_level": "info"},
                "routing": {"scorer": "classifier", "classifier_path": str(active)},  # the file's own threshold
                "workers": [
                    {"name": "small", "role": "small", "base_url": f"{small.url}/v1", "model": "tiny-small"},
                    {"name": "large", "role": "large", "base_url": f"{large.url}/v1", "model": "tiny-large"},
                ],
                "ledger": {"enabled": False},
            }
        )
    )
    gw = Gateway(cfg, tmp_path / "gateway.log")
    with httpx.Client(base_url=gw.url, timeout=10) as client:

        def routed() -> str:
            r = client.post("/v1/chat/completions", json={"model": "auto", "messages": PROMPT})
            assert r.status_code == 200, r.text
            return r.headers["x-triage-model"]

        try:
            assert routed() == "tiny-small"
            for failed, kind in enumerate(HOSTILE, start=1):
                (tmp_path / kind).mkdir()
                _hostile(kind, active, tmp_path / kind)
                os.kill(gw.proc.pid, signal.SIGHUP)
                info = _wait_for(gw, "failed_reloads", failed)
                assert (info["sha256"], info["reloads"]) == (easy_sha, 0), kind
                assert routed() == "tiny-small", kind
            if active.is_dir():
                active.rmdir()
            hard_sha = leaning(active, +50.0)
            os.kill(gw.proc.pid, signal.SIGHUP)
            assert _wait_for(gw, "sha256", hard_sha)["reloads"] == 1
            assert routed() == "tiny-large"
            os.kill(gw.proc.pid, signal.SIGHUP)  # a reload under way when SIGTERM comes
            os.kill(gw.proc.pid, signal.SIGTERM)
            gw.proc.wait(timeout=30)
        finally:
            gw.kill()
    log = (tmp_path / "gateway.log").read_text()
    assert gw.proc.returncode == -signal.SIGTERM, log[-3000:]
    assert "Finished server process" in log
    assert "Traceback" not in log
    for reason in (
        "weights include NaN or infinite values",
        "meta.suggested_threshold is 'abc', not a number",
        "meta.suggested_threshold is 1.5, outside [0.0, 1.0]",
        "weights have shape",
        "is an answer scorer",
        "not a regular file (a FIFO)",
        "not a regular file (a character device)",
        "more than the",
        "not a regular file (a directory)",
    ):
        assert reason in log, reason


def _policy_files(tmp_path: Path) -> PolicyFiles:
    """The PolicyFiles of an app built (not run) on a classifier file of its own."""
    active = tmp_path / "classifier.json"
    leaning(active, -50.0)
    settings = Settings(
        routing=RoutingSettings(scorer="classifier", classifier_path=active),
        ledger=LedgerSettings(enabled=False),
        workers=[
            WorkerSettings(name=n, role=n, base_url="http://127.0.0.1:9/v1", model=f"tiny-{n}")
            for n in ("small", "large")
        ],
    )
    files = create_app(settings).state.triage.policy_files
    assert isinstance(files, PolicyFiles)
    return files


def test_a_storm_of_reloads_costs_two_loads(tmp_path: Path) -> None:
    """Regression: every SIGHUP queued a load of its own, one after the other (a hundred SIGHUPs, a hundred loads
    of the files in a thread beside the requests). Calls that come while a load is under way now share the one
    load queued after it; each still reports the outcome of a load that began after it was asked for."""
    files = _policy_files(tmp_path)

    async def storm() -> list[bool]:
        first = asyncio.ensure_future(files.reload())
        await asyncio.sleep(0)  # the first load is under way
        return [await first, *await asyncio.gather(*(files.reload() for _ in range(100)))]

    assert asyncio.run(storm()) == [True] * 101
    assert files.source.reloads == 2


def test_the_app_answers_a_sighup_held_at_start_up_and_gives_the_signal_back(tmp_path: Path) -> None:
    """Regression: a SIGHUP that `triage serve` held while starting was dropped (the files may have changed after
    start-up read them), and the app's shutdown left SIGHUP at its default action, which ends the process before
    the ledger is drained. Now the held one is answered with a reload, and the holder gets the signal back."""
    files = _policy_files(tmp_path)
    latch = SighupLatch()
    latch.received = True
    before = signal.signal(signal.SIGHUP, latch)

    async def start_and_stop() -> object:
        give_back = _on_sighup(files)
        assert await eventually(lambda: files.source.reloads > 0, 30), "the held SIGHUP was not answered"
        give_back()
        return signal.getsignal(signal.SIGHUP)

    try:
        assert asyncio.run(start_and_stop()) is latch
        assert not latch.received
    finally:
        signal.signal(signal.SIGHUP, before)
