"""Prefix-cache hit rate of two vLLM CPU replicas of one model behind the gateway, on a multi-turn chat workload:
prefix affinity against round robin and plain least-outstanding, measured in the same run.

    ./dev bench prefix_affinity [--conversations 24] [--turns 4] [--concurrency 8] [--block-size 32]

Starts two vLLM CPU workers serving the tiny local model (prefix caching on), then, for each policy, the gateway
(`triage serve` with a config naming both replicas) and the workload. Every policy gets conversations of its own
(their own system prompts), so no policy profits from another's cache. The hit rate is the change in
vllm:prefix_cache_hits_total over the change in vllm:prefix_cache_queries_total (both in tokens), summed over
both workers' /metrics. Writes bench/results/prefix_affinity.json."""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
POLICIES: tuple[tuple[str, dict[str, object]], ...] = (
    ("round robin", {"policy": "round_robin", "prefix_affinity": False}),
    ("least outstanding", {"policy": "least_outstanding", "prefix_affinity": False}),
    ("prefix affinity", {"policy": "least_outstanding", "prefix_affinity": True}),
    ("affinity, load x2", {"policy": "least_outstanding", "prefix_affinity": True, "affinity_load_factor": 2.0}),
    ("one replica (ceiling)", {"replicas": 1}),  # every turn where its prefix is: the most there is to hit
)
TEXT = (
    "river stone garden market window candle thunder orchard harbor lantern meadow copper violin glacier pepper "
    "canyon silver falcon ribbon marble cotton desert ember forest island jungle kettle ladder needle ocean planet "
    "quartz saddle timber valley walnut yellow zebra anchor bridge castle dragon engine feather"
)
WORDS = TEXT.split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, seconds: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the process behind {url} exited ({proc.returncode}); see its log")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not come up in {seconds:.0f} s")


def counters(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for name in ("prefix_cache_hits_total", "prefix_cache_queries_total", "request_success_total"):
        values = re.findall(rf"^vllm:{name}{{[^}}]*}} ([0-9.e+]+)$", text, re.M)
        out[name] = sum(float(v) for v in values)
    return out


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            data: dict[str, object] = json.loads(r.read())
            return data
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{url}: {exc.code} {exc.read()[:300]!r}") from None


def conversation(gateway: str, rng: random.Random, turns: int) -> None:
    system = "You are a helpful assistant. Context: " + " ".join(rng.choice(WORDS) for _ in range(30))
    messages: list[dict[str, str]] = [{"role": "system", "content": system}]
    for t in range(turns):
        messages.append({"role": "user", "content": f"Turn {t}: " + " ".join(rng.choice(WORDS) for _ in range(4))})
        answer = post(
            gateway + "/v1/chat/completions",
            {"model": "triage-large", "messages": messages, "max_tokens": 8, "temperature": 0.7},
        )
        content = answer["choices"][0]["message"]["content"]  # type: ignore[index]
        messages.append({"role": "assistant", "content": str(content)})


def start_worker(served: str, index: int, block_size: int, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """One vLLM CPU worker serving the tiny model `served` (from TRIAGE_MODELS) with prefix caching, bound to its
    own core (two on one core would make one of them the slow one by chance), logging into TRIAGE_RUN_DIR;
    (process, base URL without /v1)."""
    port = free_port()
    model_dir = f"{env['TRIAGE_MODELS']}/{served}"
    cmd = [
        "bash",
        str(ROOT / "deploy/cpu/start_worker.sh"),
        model_dir,
        served,
        str(port),
        "--enable-prefix-caching",
        "--block-size",
        str(block_size),
    ]
    bound = {**env, "VLLM_CPU_OMP_THREADS_BIND": str(index % (os.cpu_count() or 1))}
    with (Path(env["TRIAGE_RUN_DIR"]) / f"worker-{index}.log").open("wb") as log:
        proc = subprocess.Popen(cmd, env=bound, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def start_gateway(
    workers: list[str], balancing: dict[str, object], scratch: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    replicas = int(str(balancing.get("replicas", len(workers))))
    config = {
        "server": {"port": port, "log_level": "warning"},
        "routing": {"scorer": "length"},
        "balancing": {k: v for k, v in balancing.items() if k != "replicas"},  # "replicas": how many to use
        "ledger": {"enabled": False},
        "cache": {"enabled": False},
        "workers": [
            # Requests name the large model; the small worker is required by the config and never called.
            {"name": "small", "role": "small", "base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "unused"},
            *(
                {"name": f"replica-{i}", "role": "large", "base_url": url + "/v1", "model": "triage-large"}
                for i, url in enumerate(workers[:replicas])
            ),
        ],
    }
    return serve_config(config, port, scratch)


def serve_config(config: dict[str, Any], port: int, scratch: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`triage serve` with this config (its server.port is `port`), once it answers /health; (process, URL)."""
    path = scratch / f"gateway-{port}.json"  # JSON is YAML
    path.write_text(json.dumps(config))
    with (scratch / f"gateway-{port}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "--config", str(path)], stdout=subprocess.DEVNULL, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", 60, proc)
    return proc, url


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=24)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument(
        "--block-size", type=int, default=32, help="vLLM KV block size: a multiple of 32 on CPU (default 128)"
    )
    args = ap.parse_args()
    python = os.environ.get("TRIAGE_VLLM_PYTHON")
    models = os.environ.get("TRIAGE_MODELS")
    if not python or not models:
        raise SystemExit("run through ./dev bench prefix_affinity (it sets TRIAGE_VLLM_PYTHON and TRIAGE_MODELS)")
    scratch = Path(tempfile.mkdtemp(prefix="prefix-affinity-"))
    env = {**os.environ, "VLLM_PYTHON": python, "TRIAGE_RUN_DIR": str(scratch)}
    procs: list[subprocess.Popen[bytes]] = []
    workers = []
    try:
        for i in range(2):
            proc, url = start_worker("triage-large", i, args.block_size, env)
            procs.append(proc)
            workers.append(url)
        for url, proc in zip(workers, procs, strict=True):
            wait_http(url + "/health", 300, proc)
        print(f"two vLLM replicas up; {args.conversations} conversations x {args.turns} turns per policy")
        results: list[dict[str, Any]] = []
        for label, balancing in POLICIES:
            gateway, url = start_gateway(workers, balancing, scratch)
            try:
                before = [counters(w) for w in workers]
                rng = random.Random(label)
                seeds = [rng.random() for _ in range(args.conversations)]
                started = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    jobs = [pool.submit(conversation, url, random.Random(s), args.turns) for s in seeds]
                    for job in jobs:
                        job.result()
                elapsed = time.perf_counter() - started
                after = [counters(w) for w in workers]
            finally:
                gateway.send_signal(signal.SIGTERM)
                gateway.wait(timeout=30)
            hits = sum(
                a["prefix_cache_hits_total"] - b["prefix_cache_hits_total"] for a, b in zip(after, before, strict=True)
            )
            queries = sum(
                a["prefix_cache_queries_total"] - b["prefix_cache_queries_total"]
                for a, b in zip(after, before, strict=True)
            )
            split = [
                int(a["request_success_total"] - b["request_success_total"]) for a, b in zip(after, before, strict=True)
            ]
            results.append(
                {
                    "policy": label,
                    "hit_rate": hits / queries if queries else 0.0,
                    "hit_tokens": hits,
                    "prompt_tokens": queries,
                    "requests_per_replica": split,
                    "seconds": elapsed,
                }
            )
            print(
                f"  {label:18s} hit rate {results[-1]['hit_rate']:.1%}  requests per replica {split}  {elapsed:.1f} s"
            )
    finally:
        stop_workers(procs)
    by = {r["policy"]: r for r in results}
    base = by["round robin"]["hit_rate"]
    print("\n| policy | prefix-cache hit rate | requests per replica | vs round robin |")
    print("|---|---:|---:|---:|")
    for r in results:
        ratio = f"{r['hit_rate'] / base:.2f}x" if base else "-"
        print(f"| {r['policy']} | {r['hit_rate']:.1%} | {r['requests_per_replica']} | {ratio} |")
    out = ROOT / "bench" / "results" / "prefix_affinity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
