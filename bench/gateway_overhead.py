"""What the gateway costs: req/s and latency direct to an instant upstream, through llm-triage, and through
the LiteLLM proxy, all in the same run, one server process each, JSON and SSE, concurrency 1, 16 and 64.

    ./dev bench gateway_overhead [--duration 8] [--skip-litellm] [--record]

Load comes from wrk (installed from Debian's packages if missing) pinned to CPU 1 with the upstream; the
proxy under test gets CPU 0. LiteLLM is installed into its own venv under the cache folder on first use.
Prints the table and the ratios; writes bench/results/gateway_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("TRIAGE_CACHE", Path.home() / ".cache" / "llm-triage"))
LITELLM_VENV = CACHE / "litellm-venv"
CONCURRENCY = (1, 16, 64)
MODES = ("json", "sse")
BODY = {"model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 16}


@dataclass
class Cell:
    target: str
    mode: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


def start(cmd: list[str], cpu: int, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["taskset", "-c", str(cpu), *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env or dict(os.environ),
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB."""
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-g", str(os.getpgid(pid))], capture_output=True, text=True).stdout
        pids = [int(p) for p in children.split()] or pids
    except (OSError, ProcessLookupError):
        pass
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def ensure_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    print("installing wrk (Debian package)", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return shutil.which("wrk") or "wrk"


def ensure_litellm() -> Path:
    litellm = LITELLM_VENV / "bin" / "litellm"
    if not litellm.exists():
        print(f"installing litellm[proxy] into {LITELLM_VENV} (about a minute)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        # httptools so that its uvicorn uses the same fast HTTP parser ours does
        subprocess.run([*pip, "litellm[proxy]", "httptools", "uvloop"], check=True)
    return litellm


def litellm_version() -> str:
    out = subprocess.run(
        [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "show", "litellm"], capture_output=True, text=True
    ).stdout
    match = re.search(r"^Version: (.+)$", out, re.M)
    return match.group(1) if match else "?"


def wrk_script(tmp: Path, body: dict[str, object], auth: str | None) -> Path:
    lines = [
        'wrk.method = "POST"',
        'wrk.headers["Content-Type"] = "application/json"',
        f"wrk.body = {json.dumps(json.dumps(body))}",
    ]
    if auth:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {auth}"')
    path = tmp / f"wrk-{abs(hash((json.dumps(body), auth)))}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(wrk: str, url: str, script: Path, concurrency: int, duration: float) -> tuple[float, float, float, int]:
    cmd = [
        "taskset",
        "-c",
        "1",
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(int(g) for g in errs.groups()) if errs else 0)
    return rps, p50, p99, errors


def measure(
    arms: list[tuple[str, str, int | None]],
    wrk: str,
    tmp: Path,
    model: str,
    duration: float,
    rss: dict[str, float],
    auth: str | None = None,
) -> list[Cell]:
    """Every mode and concurrency for each arm (target, url, server pid or None); with several arms, each
    cell is measured for all of them in turn, so that drift over the run falls on all alike."""
    cells = []
    for mode in MODES:
        body = {**BODY, "model": model, **({"stream": True} if mode == "sse" else {})}
        script = wrk_script(tmp, body, auth)
        for _, url, _ in arms:
            run_wrk(wrk, url, script, 16, min(2.0, duration))  # warm-up: connections, caches
        for c in CONCURRENCY:
            for target, url, pid in arms:
                rps, p50, p99, errors = run_wrk(wrk, url, script, c, duration)
                cells.append(Cell(target, mode, c, rps, p50, p99, errors))
                print(
                    f"  {target:<11} {mode:<4} c={c:<3} {rps:9.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms"
                    + (f"  ERRORS {errors}" if errors else ""),
                    file=sys.stderr,
                    flush=True,
                )
                if pid is not None:
                    rss[target] = max(rss.get(target, 0.0), rss_mb(pid))
    return cells


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per cell (default 8)")
    ap.add_argument("--skip-litellm", action="store_true", help="measure direct and llm-triage only")
    ap.add_argument("--skip-ledger-off", action="store_true", help="skip llm-triage with the decision ledger off")
    args = ap.parse_args()
    wrk = ensure_wrk()
    litellm = None if args.skip_litellm else ensure_litellm()
    tmp = Path(tempfile.mkdtemp(prefix="triage-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    cells: list[Cell] = []
    rss: dict[str, float] = {}
    try:
        up_port = free_port()
        procs.append(
            start(
                [sys.executable, str(ROOT / "bench" / "instant_upstream.py"), str(up_port)],
                1,
                tmp / "upstream.log",
            )
        )
        upstream = f"http://127.0.0.1:{up_port}/v1"
        wait_http(f"{upstream}/models", 10)
        print("direct to the upstream", file=sys.stderr)
        cells += measure(
            [("direct", f"{upstream}/chat/completions", None)], wrk, tmp, "bench-model", args.duration, rss
        )

        # Both llm-triage gateways run at once (idle while the other is measured) and are measured cell by
        # cell in turn, so that machine noise over the run falls on both alike: that is the ledger's cost.
        arms: list[tuple[str, str, int | None]] = []
        for target, ledger in (("llm-triage", True), ("llm-triage no-ledger", False)):
            if ledger is False and args.skip_ledger_off:
                continue
            gw_port = free_port()
            config = tmp / f"gateway-{gw_port}.yaml"
            config.write_text(
                json.dumps(
                    {
                        "server": {"port": gw_port, "log_level": "warning"},
                        "routing": {"alias": "auto"},  # the shipped classifier scores every request
                        "workers": [
                            {"name": "small", "role": "small", "base_url": upstream, "model": "bench-model"},
                            {"name": "large", "role": "large", "base_url": upstream, "model": "bench-model"},
                        ],
                        "ledger": {"enabled": ledger, "path": str(tmp / f"ledger-{gw_port}.sqlite")},
                    }
                )
            )
            gw = start([sys.executable, "-m", "router", "serve", "--config", str(config)], 0, tmp / f"{target}.log")
            procs.append(gw)
            wait_http(f"http://127.0.0.1:{gw_port}/health", 30)
            rss[target] = rss_mb(gw.pid)
            arms.append((target, f"http://127.0.0.1:{gw_port}/v1/chat/completions", gw.pid))
        print(
            "through llm-triage (model auto: scored by the classifier and routed), ledger on and off in turn",
            file=sys.stderr,
        )
        cells += measure(arms, wrk, tmp, "auto", args.duration, rss)
        for gw in procs[1:]:
            stop(gw)

        if litellm is not None:
            ll_port = free_port()
            ll_config = tmp / "litellm.yaml"
            ll_config.write_text(
                json.dumps(
                    {
                        "model_list": [
                            {
                                "model_name": "bench",
                                "litellm_params": {
                                    "model": "hosted_vllm/bench-model",
                                    "api_base": upstream,
                                    "api_key": "none",
                                },
                            }
                        ],
                        "litellm_settings": {"set_verbose": False},
                    }
                )
            )
            env = {
                **os.environ,
                "LITELLM_MASTER_KEY": "sk-bench",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
            }
            ll = start(
                [str(litellm), "--config", str(ll_config), "--port", str(ll_port), "--num_workers", "1"],
                0,
                tmp / "litellm.log",
                env,
            )
            procs.append(ll)
            wait_http(f"http://127.0.0.1:{ll_port}/health/liveliness", 180)
            rss["litellm"] = rss_mb(ll.pid)
            print(f"through the LiteLLM proxy {litellm_version()}", file=sys.stderr)
            arm = ("litellm", f"http://127.0.0.1:{ll_port}/v1/chat/completions", ll.pid)
            cells += measure([arm], wrk, tmp, "bench", args.duration, rss, auth="sk-bench")
    finally:
        for proc in procs:
            stop(proc)
    report(cells, rss)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "gateway_overhead.json").write_text(
        json.dumps(
            {
                "cells": [asdict(c) for c in cells],
                "rss_mb": rss,
                "litellm": None if litellm is None else litellm_version(),
            },
            indent=2,
        )
    )
    return 0


def report(cells: list[Cell], rss: dict[str, float]) -> None:
    by = {(c.target, c.mode, c.concurrency): c for c in cells}
    targets = list(dict.fromkeys(c.target for c in cells))
    print("\n| target | mode | c | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---:|---:|---:|---:|")
    for c in cells:
        row = (c.target, c.mode, c.concurrency, f"{c.rps:,.0f}", f"{c.p50_ms:.2f}", f"{c.p99_ms:.2f}")
        print("| " + " | ".join(str(v) for v in row) + f" | {c.errors} |")
    print("\nratios (same run):")
    for mode in MODES:
        for conc in CONCURRENCY:
            tri = by.get(("llm-triage", mode, conc))
            parts = []
            if tri and ("litellm", mode, conc) in by:
                parts.append(f"llm-triage/litellm req/s = {tri.rps / by[('litellm', mode, conc)].rps:.1f}x")
            if tri and ("direct", mode, conc) in by:
                parts.append(f"llm-triage/direct = {tri.rps / by[('direct', mode, conc)].rps:.2f}")
            if parts:
                print(f"  {mode} c={conc}: " + ", ".join(parts))
    for mode in MODES:
        for conc in CONCURRENCY:
            on, off = by.get(("llm-triage", mode, conc)), by.get(("llm-triage no-ledger", mode, conc))
            if on and off:
                print(f"  {mode} c={conc}: ledger on / off req/s = {on.rps / off.rps:.3f}")
    for mode in MODES:
        tri, direct = by.get(("llm-triage", mode, 1)), by.get(("direct", mode, 1))
        if tri and direct:
            print(f"  {mode} p50 added at c=1: {tri.p50_ms - direct.p50_ms:.2f} ms")
    for target in targets:
        if target in rss:
            print(f"  RSS {target}: {rss[target]:.0f} MB (peak sampled under load)")
    geo = {
        mode: statistics.geometric_mean(
            [by[("llm-triage", mode, c)].rps / by[("litellm", mode, c)].rps for c in CONCURRENCY]
        )
        for mode in MODES
        if all(("litellm", mode, c) in by and ("llm-triage", mode, c) in by for c in CONCURRENCY)
    }
    for mode, g in geo.items():
        print(f"  {mode}: llm-triage/litellm geometric mean over c = {g:.1f}x")


if __name__ == "__main__":
    raise SystemExit(main())
