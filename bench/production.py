"""The production configuration's cost, feature by feature, against the bare pass-through in the same run: what a
deployment of several replicas runs (limits and conversation memory in Redis, the ledger as a Redis stream)
beside the embedded configuration (in-process limits, SQLite ledger).

    ./dev bench production [--duration 4] [--repeats 3] [--redis redis://127.0.0.1:6379/0] [--compare CHECKOUT]
    ./dev bench production --instructions 300 [--compare CHECKOUT]

--compare runs every gateway arm a second time from another checkout of llm-triage (say, the main branch's), in
the same run and interleaved: a before/after table with the noise falling on both.

Arms, each one gateway process (every arm has the same tier limits: requests, tokens and concurrency per
minute, all far above what the bench sends, so that every request pays for every limit):

    embedded            in-process limits, SQLite ledger, conversation memory off (per_turn)
    + limits in Redis   the limits in Redis
    + ledger in Redis   and the ledger as a Redis stream
    + conversations     and conversation memory in Redis (escalate_only: a GET on every later turn)
    + shadow and cache  and shadow pairs for 5% (prompts stored) and the response cache on

The body is a later turn of a conversation (user, assistant, user), so that conversation memory is read; it is
not temperature 0, so the response cache is consulted by key only. Load, pinning, repeats and the table's
spread are those of bench/gateway_overhead.py (wrk and the upstream on CPU 1, the server on CPU 0, Redis
unpinned). Prints req/s, p50, p99 and server CPU per request by arm, and each arm as a fraction of the bare
pass-through; writes bench/results/production.json. Needs Redis; its keys are removed at the end.

--instructions N counts instead, with valgrind's callgrind (bench/instructions.py; installed from Debian's
packages if missing), the instructions each server executes per request over N sequential requests, JSON and
SSE, bare pass-through included: steady to about 0.1% between runs where req/s varies by 10-40%, so it shows
what a change of a few µs does; it leaves out the kernel's share. Writes bench/results/production_instructions.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import instructions
from gateway_overhead import (
    CONCURRENCY,
    MODES,
    ROOT,
    Arm,
    Cell,
    ensure_wrk,
    free_port,
    measure,
    start,
    start_upstream_and_bare,
    stop,
    wait_http,
)

sys.path.insert(0, str(ROOT))

import redis

BODY: dict[str, object] = {
    "model": "auto",
    "messages": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    "max_tokens": 16,
}
LIMITS = {
    "requests_per_minute": 1_000_000_000,
    "tokens_per_minute": 1_000_000_000_000,
    "max_concurrent": 100_000,
}
# arm -> (limits in Redis, ledger in Redis, conversation memory, shadow and cache)
ARMS: dict[str, tuple[bool, bool, bool, bool]] = {
    "embedded": (False, False, False, False),
    "+ limits in Redis": (True, False, False, False),
    "+ ledger in Redis": (True, True, False, False),
    "+ conversations": (True, True, True, False),
    "+ shadow and cache": (True, True, True, True),
}


def gateway_config(tmp: Path, port: int, upstream: str, redis: tuple[str, str], arm: str) -> dict[str, Any]:
    """One arm's config; `redis` is the URL and the key prefix of this run."""
    redis_url, prefix = redis
    limits_redis, ledger_redis, conversations, extras = ARMS[arm]
    workers = [
        {"name": "small", "role": "small", "base_url": upstream, "model": "bench-model"},
        {"name": "large", "role": "large", "base_url": upstream, "model": "bench-model"},
    ]
    routing: dict[str, Any] = {"alias": "auto", "conversation": "escalate_only" if conversations else "per_turn"}
    if extras:
        routing["shadow"] = {"rate": 0.05}
    return {
        "server": {"port": port, "log_level": "warning"},
        "routing": routing,
        "workers": workers,
        "tiers": {"anonymous": LIMITS},
        "auth": {"identity_secret": "bench-identity-secret-0123456789"},
        "limits": {"redis_url": redis_url, "key_prefix": prefix} if limits_redis else {},
        "ledger": {
            "backend": "redis" if ledger_redis else "sqlite",
            "path": str(tmp / f"ledger-{port}.sqlite"),
            "stream": f"{prefix}:decisions",
            "store_prompts": extras,
        },
        "cache": {"enabled": extras, "backend": "redis" if limits_redis else "memory"},
    }


def cleanup(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


def report(cells: list[Cell], rss: dict[str, float]) -> None:
    targets = list(dict.fromkeys(c.target for c in cells))
    columns = [(m, c) for m in MODES for c in CONCURRENCY]

    def values(t: str, m: str, c: int, field: str) -> list[float]:
        return [v for x in cells if (x.target, x.mode, x.concurrency) == (t, m, c) and (v := getattr(x, field))]

    def med(t: str, m: str, c: int, field: str) -> float | None:
        v = values(t, m, c, field)
        return statistics.median(v) if v else None

    def head(title: str) -> None:
        print(f"\n{title}\n")
        print("| | " + " | ".join(f"{m.upper()} c={c}" for m, c in columns) + " |")
        print("|---|" + "---:|" * len(columns))

    head("req/s, median of the repeats (± half their range, relative)")
    for t in targets:
        row = []
        for m, c in columns:
            v = values(t, m, c, "rps")
            mid = statistics.median(v) if v else 0
            spread = f" ±{(max(v) - min(v)) / 2 / mid:.0%}" if len(v) > 1 and mid else ""
            row.append(f"{mid:,.0f}{spread}" if v else "-")
        print(f"| {t} | " + " | ".join(row) + " |")
    head("each arm / bare pass-through, req/s (median of the per-repeat ratios; min-max)")
    for t in targets[1:]:
        row = []
        for m, c in columns:
            bare = {x.repeat: x.rps for x in cells if (x.target, x.mode, x.concurrency) == (targets[0], m, c)}
            ratios = [
                x.rps / bare[x.repeat]
                for x in cells
                if (x.target, x.mode, x.concurrency) == (t, m, c) and bare.get(x.repeat)
            ]
            row.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "-")
        print(f"| {t} | " + " | ".join(row) + " |")
    for field, title, fmt in (
        ("p50_ms", "p50 (ms)", "{:,.2f}"),
        ("p99_ms", "p99 (ms)", "{:,.2f}"),
        ("cpu_us", "server CPU per request (µs)", "{:,.0f}"),
    ):
        head(f"{title}, median of the repeats")
        for t in targets:
            cols = [med(t, m, c, field) for m, c in columns]
            print(f"| {t} | " + " | ".join("-" if x is None else fmt.format(x) for x in cols) + " |")
    errors = {t: sum(x.errors for x in cells if x.target == t) for t in targets}
    print("\nerrors per arm: " + ", ".join(f"{t} {n}" for t, n in errors.items()))
    print("peak RSS (MB): " + ", ".join(f"{t} {v:.0f}" for t, v in rss.items()))


def count_instructions(args: argparse.Namespace) -> int:
    """--instructions: every arm's instructions per request against the bare pass-through's."""
    instructions.ensure_valgrind()
    tmp = Path(tempfile.mkdtemp(prefix="triage-instructions-"))
    prefix = f"bench-production-{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen[bytes]] = []
    rows: dict[str, dict[str, float]] = {}
    checkouts = [(ROOT, "")] + ([(args.compare.resolve(), f" ({args.compare.name})")] if args.compare else [])
    try:
        up_port = free_port()
        procs.append(
            start([sys.executable, str(ROOT / "bench" / "instant_upstream.py"), str(up_port)], 1, tmp / "up.log")
        )
        upstream = f"http://127.0.0.1:{up_port}/v1"
        wait_http(f"{upstream}/models", 10)
        servers: list[tuple[str, instructions.Server, str]] = []  # (arm, server, model asked for)
        port = free_port()
        bare = [sys.executable, str(ROOT / "bench" / "bare_proxy.py"), str(port), upstream]
        servers.append(("bare pass-through", instructions.Server(bare, port), "bench-model"))
        for name in args.arms:
            for checkout, label in checkouts:
                port = free_port()
                config = tmp / f"gateway-{port}.yaml"
                config.write_text(json.dumps(gateway_config(tmp, port, upstream, (args.redis, prefix), name)))
                cmd = [sys.executable, "-m", "router", "serve", "--config", str(config)]
                servers.append((name + label, instructions.Server(cmd, port, checkout), "auto"))
        for target, server, model in servers:
            rows[target] = {}
            for mode in MODES:
                body = {**BODY, "model": model, **({"stream": True} if mode == "sse" else {})}
                out = tmp / f"callgrind-{server.port}-{mode}.out"
                rows[target][mode] = instructions.count(server, body, args.instructions, out)
                print(f"{target} {mode}: {rows[target][mode]:,.0f} instructions per request", file=sys.stderr)
    finally:
        for proc in procs:
            stop(proc)
        cleanup(args.redis, prefix)
        shutil.rmtree(tmp, ignore_errors=True)  # callgrind's dumps: megabytes per server
    bare_row = rows["bare pass-through"]
    print(f"\ninstructions per request ({args.instructions} sequential requests after {instructions.WARM} warm-up)\n")
    print("| | JSON | SSE | JSON / bare | SSE / bare |")
    print("|---|---:|---:|---:|---:|")
    for target, row in rows.items():
        ratios = " | ".join(f"{row[m] / bare_row[m]:.2f}" for m in MODES)
        print(f"| {target} | {row['json']:,.0f} | {row['sse']:,.0f} | {ratios} |")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "production_instructions.json").write_text(json.dumps(rows, indent=2))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per cell and repeat (default 4)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of every cell, arms interleaved (default 3)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the Redis the production arms use")
    ap.add_argument("--arms", nargs="*", choices=list(ARMS), default=list(ARMS), help="gateway arms to run")
    ap.add_argument("--compare", type=Path, help="another checkout whose gateway runs every arm too (before/after)")
    ap.add_argument(
        "--instructions", type=int, metavar="N", help="count instructions per request over N requests instead"
    )
    args = ap.parse_args()
    if args.duration <= 0 or args.repeats < 1:
        ap.error("--duration must be positive and --repeats at least 1")
    if args.instructions is not None:
        if args.instructions < 1:
            ap.error("--instructions must be at least 1")
        return count_instructions(args)
    wrk = ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="triage-production-"))
    prefix = f"bench-production-{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen[bytes]] = []
    rss: dict[str, float] = {}
    arms: list[Arm] = []
    try:
        upstream, bare, bare_url = start_upstream_and_bare(tmp, procs)
        arms.append(Arm("bare pass-through", f"{bare_url}/v1/chat/completions", bare.pid, "bench-model"))
        checkouts = [(ROOT, "")] + ([(args.compare.resolve(), f" ({args.compare.name})")] if args.compare else [])
        for name in args.arms:
            for checkout, label in checkouts:
                port = free_port()
                config = tmp / f"gateway-{port}.yaml"
                config.write_text(json.dumps(gateway_config(tmp, port, upstream, (args.redis, prefix), name)))
                # env -C: `python -m` puts the working folder first on sys.path, so it picks the checkout
                cmd = ["env", "-C", str(checkout), sys.executable, "-m", "router", "serve", "--config", str(config)]
                gw = start(cmd, 0, tmp / f"{port}.log")
                procs.append(gw)
                wait_http(f"http://127.0.0.1:{port}/health", 30)
                arms.append(Arm(name + label, f"http://127.0.0.1:{port}/v1/chat/completions", gw.pid, "auto"))
        print(
            f"arms: {', '.join(a.target for a in arms)}; {args.repeats} x {args.duration:g} s per cell", file=sys.stderr
        )
        cells = measure(arms, wrk, tmp, args.duration, args.repeats, rss, BODY)
    finally:
        for proc in procs:
            stop(proc)
        cleanup(args.redis, prefix)
    report(cells, rss)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "production.json").write_text(json.dumps({"cells": [asdict(c) for c in cells], "rss_mb": rss}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
