"""What the gateway costs, against peers measured in the same run: req/s and latency direct to an instant
upstream, through a bare Starlette + aiohttp pass-through (bench/bare_proxy.py: the ceiling for a gateway built
on the same stack), through llm-triage (every `auto` request scored and routed, the ledger on, and off; and a
model named, so not scored; and routed through the Responses and Messages APIs, against the bare pass-through
relaying those routes), through the Portkey gateway (Node.js, installed with npm into the cache folder on
first use; skipped where npm is missing) and through the LiteLLM proxy (its own venv, on first use). One server
process each, JSON and SSE, concurrency 1, 16 and 64; every cell repeated (--repeats) with the arms
interleaved, so that drift falls on all.

    ./dev bench gateway_overhead [--duration 5] [--repeats 3] [--skip-litellm] [--skip-portkey]

Load comes from wrk (installed from Debian's packages if missing) pinned to CPU 1 with the upstream; the
proxy under test gets CPU 0. Prints medians with the spread of the repeats, llm-triage as a fraction of the
ceiling, the ratios, and each server's CPU time per request; writes bench/results/gateway_overhead.json.
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
PORTKEY_DIR = CACHE / "portkey"
PORTKEY_VERSION = "1.15.2"
CONCURRENCY = (1, 16, 64)
MODES = ("json", "sse")
BODY = {"model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 16}
# The same question through the Responses and Messages APIs (arms named "... responses" / "... messages").
BODIES: dict[str, dict[str, object]] = {
    "/v1/chat/completions": BODY,
    "/v1/responses": {"model": "auto", "input": "What is 2+2?", "max_output_tokens": 16},
    "/v1/messages": {"model": "auto", "messages": BODY["messages"], "max_tokens": 16},
}


@dataclass
class Cell:
    target: str
    mode: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    repeat: int = 0
    cpu_us: float | None = None  # the server process's CPU time per request served (None: not ours to read)


@dataclass(frozen=True)
class Arm:
    target: str
    url: str
    pid: int | None
    model: str
    headers: tuple[tuple[str, str], ...] = ()
    modes: tuple[str, ...] = MODES

    @property
    def body(self) -> dict[str, object]:
        return next((body for path, body in BODIES.items() if self.url.endswith(path)), BODY)


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


def start_upstream_and_bare(
    tmp: Path, procs: list[subprocess.Popen[bytes]]
) -> tuple[str, subprocess.Popen[bytes], str]:
    """The instant upstream (CPU 1) and the bare pass-through in front of it (CPU 0), both added to `procs`:
    (the upstream's /v1 URL, the pass-through's process, its root URL)."""
    up_port = free_port()
    procs.append(
        start([sys.executable, str(ROOT / "bench" / "instant_upstream.py"), str(up_port)], 1, tmp / "upstream.log")
    )
    upstream = f"http://127.0.0.1:{up_port}/v1"
    wait_http(f"{upstream}/models", 10)
    bare_port = free_port()
    bare = start([sys.executable, str(ROOT / "bench" / "bare_proxy.py"), str(bare_port), upstream], 0, tmp / "bare.log")
    procs.append(bare)
    return upstream, bare, f"http://127.0.0.1:{bare_port}"


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


def wrk_script(tmp: Path, body: dict[str, object], auth: str | None, headers: tuple[tuple[str, str], ...] = ()) -> Path:
    lines = [
        'wrk.method = "POST"',
        'wrk.headers["Content-Type"] = "application/json"',
        f"wrk.body = {json.dumps(json.dumps(body))}",
    ]
    if auth:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {auth}"')
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers]
    path = tmp / f"wrk-{abs(hash((json.dumps(body), auth, headers)))}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), in seconds: /proc/PID/stat utime + stime."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    wrk: str, url: str, script: Path, concurrency: int, duration: float
) -> tuple[float, float, float, int, int]:
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
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return rps, p50, p99, errors, done


def measure(
    arms: list[Arm],
    wrk: str,
    tmp: Path,
    duration: float,
    repeats: int,
    rss: dict[str, float],
    body: dict[str, object] = BODY,
) -> list[Cell]:
    """Every mode and concurrency for each arm, `repeats` times, the arms taking turns within each repeat of
    each cell, so that drift over the run falls on all of them alike."""
    cells = []
    for mode in MODES:
        live = [a for a in arms if mode in a.modes]
        scripts = {
            a.target: wrk_script(
                tmp,
                {**(a.body if body is BODY else body), "model": a.model, **({"stream": True} if mode == "sse" else {})},
                None,
                a.headers,
            )
            for a in live
        }
        for a in live:
            run_wrk(wrk, a.url, scripts[a.target], 16, min(2.0, duration))  # warm-up: connections, caches
        for c in CONCURRENCY:
            for r in range(repeats):
                for a in live:
                    cpu0 = cpu_seconds(a.pid) if a.pid is not None else 0.0
                    rps, p50, p99, errors, done = run_wrk(wrk, a.url, scripts[a.target], c, duration)
                    cpu = (cpu_seconds(a.pid) - cpu0) / done * 1e6 if a.pid is not None and done else None
                    cells.append(Cell(a.target, mode, c, rps, p50, p99, errors, r, cpu))
                    print(
                        f"  {a.target:<20} {mode:<4} c={c:<3} #{r} {rps:9.0f} req/s  p50 {p50:7.2f} ms"
                        f"  p99 {p99:7.2f} ms" + (f"  ERRORS {errors}" if errors else ""),
                        file=sys.stderr,
                        flush=True,
                    )
                    if a.pid is not None:
                        rss[a.target] = max(rss.get(a.target, 0.0), rss_mb(a.pid))
    return cells


def ensure_portkey() -> Path | None:
    """The Portkey gateway's start script, installed with npm on first use; None where npm is missing."""
    script = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if script.exists():
        return script
    if not shutil.which("npm") or not shutil.which("node"):
        print("npm or node missing: the Portkey arm is skipped", file=sys.stderr)
        return None
    print(f"installing @portkey-ai/gateway {PORTKEY_VERSION} into {PORTKEY_DIR} with npm", file=sys.stderr)
    PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["npm", "install", "--silent", "--no-audit", "--no-fund", f"@portkey-ai/gateway@{PORTKEY_VERSION}"],
        cwd=PORTKEY_DIR,
        check=False,
    )
    return script if done.returncode == 0 and script.exists() else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per cell and repeat (default 5)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of every cell, arms interleaved (default 3)")
    ap.add_argument("--skip-litellm", action="store_true", help="leave the LiteLLM proxy out")
    ap.add_argument("--skip-portkey", action="store_true", help="leave the Portkey gateway out")
    ap.add_argument("--skip-ledger-off", action="store_true", help="skip llm-triage with the decision ledger off")
    args = ap.parse_args()
    wrk = ensure_wrk()
    litellm = None if args.skip_litellm else ensure_litellm()
    portkey = None if args.skip_portkey else ensure_portkey()
    tmp = Path(tempfile.mkdtemp(prefix="triage-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    rss: dict[str, float] = {}
    arms: list[Arm] = []
    try:
        upstream, bare, bare_url = start_upstream_and_bare(tmp, procs)
        arms.append(Arm("direct", f"{upstream}/chat/completions", None, "bench-model"))
        arms.append(Arm("bare pass-through", f"{bare_url}/v1/chat/completions", bare.pid, "bench-model"))
        for api in ("responses", "messages"):  # the same pass-through, relaying the other APIs' routes
            arms.append(Arm(f"bare {api}", f"{bare_url}/v1/{api}", bare.pid, "bench-model"))
        for target, ledger, model in (
            ("llm-triage", True, "auto"),
            ("llm-triage no-ledger", False, "auto"),
            ("llm-triage model named", True, "bench-model"),  # no scoring: what routing itself costs
        ):
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
            arms.append(Arm(target, f"http://127.0.0.1:{gw_port}/v1/chat/completions", gw.pid, model))
            if target == "llm-triage":  # routed (`auto`) through the Responses and Messages APIs too
                for api in ("responses", "messages"):
                    arms.append(Arm(f"llm-triage {api}", f"http://127.0.0.1:{gw_port}/v1/{api}", gw.pid, model))
        if portkey is not None:
            pk_port = free_port()
            pk = start(["node", str(portkey), f"--port={pk_port}", "--headless"], 0, tmp / "portkey.log")
            procs.append(pk)
            time.sleep(3)
            headers = (
                ("x-portkey-provider", "openai"),
                ("x-portkey-custom-host", upstream),
                ("Authorization", "Bearer x"),
            )
            # Portkey 1.15.2 answers every streamed request against this upstream with a 500 ("TypeError:
            # immutable" in its log): it is measured on JSON only.
            arms.append(
                Arm(
                    "portkey",
                    f"http://127.0.0.1:{pk_port}/v1/chat/completions",
                    pk.pid,
                    "bench-model",
                    headers,
                    ("json",),
                )
            )
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
            arms.append(
                Arm(
                    "litellm",
                    f"http://127.0.0.1:{ll_port}/v1/chat/completions",
                    ll.pid,
                    "bench",
                    (("Authorization", "Bearer sk-bench"),),
                )
            )
        for a in arms:
            if a.pid is not None:
                rss[a.target] = rss_mb(a.pid)
        print(
            f"arms: {', '.join(a.target for a in arms)}; {args.repeats} x {args.duration:.0f} s per cell",
            file=sys.stderr,
        )
        cells = measure(arms, wrk, tmp, args.duration, args.repeats, rss)
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
                "portkey": None if portkey is None else PORTKEY_VERSION,
            },
            indent=2,
        )
    )
    return 0


def _median(cells: list[Cell], target: str, mode: str, c: int, field: str = "rps") -> float | None:
    values = [getattr(x, field) for x in cells if (x.target, x.mode, x.concurrency) == (target, mode, c)]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _table_head(columns: list[tuple[str, int]]) -> None:
    print("| | " + " | ".join(f"{m.upper()} c={c}" for m, c in columns) + " |")
    print("|---|" + "---:|" * len(columns))


def _table_row(label: str, row: list[str]) -> None:
    if any(v != "-" for v in row):
        print(f"| {label} | " + " | ".join(row) + " |")


def _spread(cells: list[Cell], target: str, mode: str, c: int) -> str:
    values = [x.rps for x in cells if (x.target, x.mode, x.concurrency) == (target, mode, c)]
    if len(values) < 2:
        return ""
    mid = statistics.median(values)
    return f" ±{(max(values) - min(values)) / 2 / mid:.0%}" if mid else ""


def report(cells: list[Cell], rss: dict[str, float]) -> None:
    targets = list(dict.fromkeys(c.target for c in cells))
    columns = [(m, c) for m in MODES for c in CONCURRENCY]
    print("\nreq/s, median of the repeats (± half their range, relative)\n")
    _table_head(columns)
    for t in targets:
        rps = [(_median(cells, t, m, c), _spread(cells, t, m, c)) for m, c in columns]
        _table_row(t, ["-" if v is None else f"{v:,.0f}{spread}" for v, spread in rps])
    for label, num, den in (
        ("llm-triage / bare pass-through", "llm-triage", "bare pass-through"),
        ("responses: llm-triage / bare", "llm-triage responses", "bare responses"),
        ("messages: llm-triage / bare", "llm-triage messages", "bare messages"),
        ("llm-triage / portkey", "llm-triage", "portkey"),
        ("llm-triage / litellm", "llm-triage", "litellm"),
        ("ledger on / off", "llm-triage", "llm-triage no-ledger"),
    ):
        pairs = [(_median(cells, num, m, c), _median(cells, den, m, c)) for m, c in columns]
        _table_row(label, ["-" if not a or not b else f"{a / b:.2f}" for a, b in pairs])
    print("\nserver CPU time per request served (µs), median of the repeats: less noisy than req/s where the")
    print("server is CPU-bound (c=16 and 64); at c=1 it also counts the idle loop's wake-ups\n")
    _table_head(columns)
    for t in targets:
        cpu = [_median(cells, t, m, c, "cpu_us") for m, c in columns]
        _table_row(t, ["-" if v is None else f"{v:.0f}" for v in cpu])
    errors = {t: sum(x.errors for x in cells if x.target == t) for t in targets}
    print("\nerrors per arm: " + ", ".join(f"{t} {n}" for t, n in errors.items()))
    for mode in MODES:
        for t in ("llm-triage", "bare pass-through"):
            p50, direct = _median(cells, t, mode, 1, "p50_ms"), _median(cells, "direct", mode, 1, "p50_ms")
            if p50 is not None and direct is not None:
                print(f"  {mode} p50 added at c=1, {t}: {p50 - direct:.2f} ms (median of the repeats)")
    for target in targets:
        if target in rss:
            print(f"  RSS {target}: {rss[target]:.0f} MB (peak sampled under load)")


if __name__ == "__main__":
    raise SystemExit(main())
