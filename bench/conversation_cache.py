"""The KV-cache effect of the conversation policy: conversations whose turns the score would send to alternate
models, on the two local vLLM CPU workers (small and large, prefix caching on), under per_turn, sticky and
escalate_only, measured in the same run.

    ./dev bench conversation_cache [--conversations 16] [--turns 5] [--concurrency 4]

Each conversation opens with a long user turn (the length scorer sends it to the large model), then alternates
short and long follow-ups, so per_turn switches model on every turn and throws away the prefix the other worker
cached. Every policy gets conversations of its own (their own system prompts). Prefix-cache hits and queries are
summed over both workers' vllm:prefix_cache_* counters (tokens). Writes bench/results/conversation_cache.json."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prefix_affinity import WORDS, counters, free_port, post, serve_config, start_worker, stop_workers, wait_http

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("per_turn", "sticky", "escalate_only")


def conversation(gateway: str, rng: random.Random, turns: int) -> list[str]:
    """One conversation; the model that answered each turn."""
    # Short enough that six turns stay inside the CPU workers' 512-token context (the tiny tokenizer is coarse).
    system = "You are a helpful assistant. Context: " + " ".join(rng.choice(WORDS) for _ in range(12))
    messages: list[dict[str, str]] = [{"role": "system", "content": system}]
    models = []
    for t in range(turns):
        words = 16 if t % 2 == 0 else 2  # long turns score large, short ones small
        messages.append({"role": "user", "content": f"Turn {t}: " + " ".join(rng.choice(WORDS) for _ in range(words))})
        answer = post(
            gateway + "/v1/chat/completions",
            {"model": "auto", "messages": messages, "max_tokens": 8, "temperature": 0.7},
        )
        models.append(str(answer["model"]))
        content = answer["choices"][0]["message"]["content"]  # type: ignore[index]
        messages.append({"role": "assistant", "content": str(content)})
    return models


def start_gateway(small: str, large: str, policy: str, scratch: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = {
        "server": {"port": port, "log_level": "warning"},
        # A long turn (about 100 characters) scores at or above 0.5: the large model; a short one, the small.
        "routing": {"scorer": "length", "length_midpoint": 80, "threshold": 0.5, "conversation": policy},
        "ledger": {"enabled": False},
        "cache": {"enabled": False},
        "workers": [
            {"name": "small", "role": "small", "base_url": small + "/v1", "model": "triage-small"},
            {"name": "large", "role": "large", "base_url": large + "/v1", "model": "triage-large"},
        ],
    }
    return serve_config(config, port, scratch)


def run_policy(policy: str, workers: list[str], args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    gateway, url = start_gateway(workers[0], workers[1], policy, scratch)
    try:
        before = [counters(w) for w in workers]
        rng = random.Random(policy)
        seeds = [rng.random() for _ in range(args.conversations)]
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            answered = [
                m
                for job in [pool.submit(conversation, url, random.Random(s), args.turns) for s in seeds]
                for m in job.result()
            ]
        elapsed = time.perf_counter() - started
        after = [counters(w) for w in workers]
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
    hits = sum(a["prefix_cache_hits_total"] - b["prefix_cache_hits_total"] for a, b in zip(after, before, strict=True))
    queries = sum(
        a["prefix_cache_queries_total"] - b["prefix_cache_queries_total"] for a, b in zip(after, before, strict=True)
    )
    return {
        "policy": policy,
        "hit_tokens": hits,
        "prompt_tokens": queries,
        "hit_rate": hits / queries if queries else 0.0,
        "large_share": answered.count("triage-large") / len(answered),
        "seconds": elapsed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=16)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=32, help="vLLM KV block size: a multiple of 32 on CPU")
    args = ap.parse_args()
    python, models = os.environ.get("TRIAGE_VLLM_PYTHON"), os.environ.get("TRIAGE_MODELS")
    if not python or not models:
        raise SystemExit("run through ./dev bench conversation_cache (it sets TRIAGE_VLLM_PYTHON and TRIAGE_MODELS)")
    scratch = Path(tempfile.mkdtemp(prefix="conversation-cache-"))
    env = {**os.environ, "VLLM_PYTHON": python, "TRIAGE_RUN_DIR": str(scratch)}
    procs: list[subprocess.Popen[bytes]] = []
    workers: list[str] = []
    try:
        for i, name in enumerate(("triage-small", "triage-large")):
            proc, url = start_worker(name, i, args.block_size, env)
            procs.append(proc)
            workers.append(url)
        for url, proc in zip(workers, procs, strict=True):
            wait_http(url + "/health", 300, proc)
        print(f"small and large vLLM workers up; {args.conversations} conversations x {args.turns} turns per policy")
        results = []
        for policy in POLICIES:
            results.append(run_policy(policy, workers, args, scratch))
            r = results[-1]
            print(
                f"  {policy:14s} hit tokens {r['hit_tokens']:.0f} ({r['hit_rate']:.1%})  "
                f"large share {r['large_share']:.1%}  {r['seconds']:.1f} s"
            )
    finally:
        stop_workers(procs)
    base = results[0]["hit_tokens"] or 1.0
    print("\n| policy | prefix-cache hit tokens (both workers) | hit rate | large-model share | vs per_turn |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['policy']} | {r['hit_tokens']:.0f} | {r['hit_rate']:.1%} | {r['large_share']:.1%} | "
            f"{r['hit_tokens'] / base:.2f}x |"
        )
    out = ROOT / "bench" / "results" / "conversation_cache.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
