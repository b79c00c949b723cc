"""What a share target costs: routed req/s of a gateway holding `routing.target_large_share` against the same
gateway with a fixed threshold, measured in the same run, arms interleaved; with the window in process, and with
it shared through Redis (against a fixed-threshold gateway that has the same Redis configured).

    ./dev bench share_target [--duration 5] [--repeats 3]
    ./dev bench share_target --simulate      # in process: how closely the share holds, per DEBT_SPAN

Every request is routed (`auto`, scored by the shipped classifier) with prompts of varied lengths (so the
window holds varied scores), the ledger on (SQLite). wrk and the instant upstream are pinned to CPU 1, the
gateway under test to CPU 0; one gateway is loaded at a time. Prints the median req/s per arm with the spread
of the repeats, the target arm over its fixed-threshold peer, and the share of large calls each target arm's
ledger shows (it must be the target: a bench of a share that does not hold would measure nothing). Needs Redis
on 127.0.0.1:6379 for the shared arms."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

from gateway_overhead import ROOT, cpu_seconds, ensure_wrk, free_port, run_wrk, start, stop, wait_http

sys.path.insert(0, str(ROOT))

import router.core.share as share_core
from router.adapters.ledger_sqlite import read_records
from router.adapters.score_windows import MemoryScores
from router.analytics.report import share_timeline
from router.core.types import Role

TARGET = 0.3
REDIS = "redis://127.0.0.1:6379/0"
WORDS = ("the", "a", "of", "model", "answer", "which", "value", "river", "city", "light", "paper", "energy")


def wrk_bodies(tmp: Path, n: int = 64) -> Path:
    """A wrk script that cycles through `n` chat bodies of varied lengths (2 to 400 words)."""
    rng = random.Random(0)
    bodies = []
    for _ in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(int(2 * 200 ** rng.random())))
        bodies.append(json.dumps({"model": "auto", "messages": [{"role": "user", "content": words}], "max_tokens": 16}))
    lua = ["bodies = {" + ", ".join(json.dumps(b) for b in bodies) + "}", "i = 0"]
    lua += [
        "request = function()",
        "  i = i + 1",
        '  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[(i % #bodies) + 1])',
        "end",
    ]
    path = tmp / "bodies.lua"
    path.write_text("\n".join(lua) + "\n")
    return path


def gateway_config(tmp: Path, name: str, upstream: str, target: bool, redis: bool) -> tuple[Path, int, Path]:
    port = free_port()
    ledger = tmp / f"ledger-{name}.sqlite"
    routing: dict[str, object] = {"target_large_share": TARGET} if target else {}
    cfg: dict[str, object] = {
        "server": {"port": port, "log_level": "warning"},
        "routing": routing,  # unset threshold: the shipped classifier's suggested one
        "workers": [
            {"name": "small", "role": "small", "base_url": upstream, "model": "bench-model"},
            {"name": "large", "role": "large", "base_url": upstream, "model": "bench-model"},
        ],
        "tiers": {"anonymous": {}},
        "ledger": {"backend": "sqlite", "path": str(ledger)},
        "cache": {"enabled": False},
    }
    if redis:
        cfg["limits"] = {"redis_url": REDIS, "key_prefix": f"bench-{uuid.uuid4().hex[:6]}"}
    path = tmp / f"gateway-{name}.json"
    path.write_text(json.dumps(cfg))
    return path, port, ledger


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per cell and repeat (default 5)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of every cell, arms interleaved (default 3)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--skip-redis", action="store_true", help="only the in-process window")
    ap.add_argument("--simulate", action="store_true", help="in process, no HTTP: the share's spread per DEBT_SPAN")
    args = ap.parse_args()
    if args.simulate:
        simulate()
        return 0
    wrk = ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="triage-share-"))
    procs = []
    arms: dict[str, tuple[str, Path, int]] = {}  # name -> (url, ledger, gateway pid)
    try:
        up = free_port()
        procs.append(start([sys.executable, str(ROOT / "bench" / "instant_upstream.py"), str(up)], 1, tmp / "up.log"))
        upstream = f"http://127.0.0.1:{up}/v1"
        wait_http(f"{upstream}/models", 10)
        # "fixed again": a second, identical fixed-threshold gateway, the A/A pair that shows the noise floor
        layout = [("fixed", False, False), ("target", True, False), ("fixed again", False, False)]
        if not args.skip_redis:
            layout += [("fixed+redis", False, True), ("target+redis", True, True)]
        for name, target, redis in layout:
            cfg, port, ledger = gateway_config(tmp, name, upstream, target, redis)
            gw = start([sys.executable, "-m", "router", "serve", "--config", str(cfg)], 0, tmp / f"{name}.log")
            procs.append(gw)
            wait_http(f"http://127.0.0.1:{port}/health", 60)
            arms[name] = (f"http://127.0.0.1:{port}/v1/chat/completions", ledger, gw.pid)
        script = wrk_bodies(tmp)
        for url, _, _ in arms.values():
            run_wrk(wrk, url, script, 16, min(2.0, args.duration))  # warm-up: connections, the window fills
        rps: dict[tuple[str, int], list[float]] = {}
        cpu: dict[tuple[str, int], list[float]] = {}  # the gateway's CPU time per request, us
        for c in args.concurrency:
            for r in range(args.repeats):
                order = list(arms.items())
                order = order[r % len(order) :] + order[: r % len(order)]  # each arm takes each turn: no position bias
                for name, (url, _, pid) in order:
                    cpu0 = cpu_seconds(pid)
                    value, p50, p99, errors, done = run_wrk(wrk, url, script, c, args.duration)
                    rps.setdefault((name, c), []).append(value)
                    cpu.setdefault((name, c), []).append((cpu_seconds(pid) - cpu0) / max(1, done) * 1e6)
                    print(
                        f"  {name:<13} c={c:<3} #{r} {value:8.0f} req/s  {cpu[(name, c)][-1]:6.0f} us CPU/req"
                        f"  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms" + (f"  ERRORS {errors}" if errors else ""),
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for p in procs:
            stop(p)
    report(rps, cpu, {name: ledger for name, (_, ledger, _) in arms.items()}, args.concurrency)
    return 0


def report(
    rps: dict[tuple[str, int], list[float]],
    cpu: dict[tuple[str, int], list[float]],
    ledgers: dict[str, Path],
    levels: list[int],
) -> None:
    print(f"\ntarget_large_share {TARGET} against a fixed threshold: median of repeats (min-max)")
    print("  arm                       routed req/s          gateway CPU us/request")
    for c in levels:
        for name in ledgers:
            r, u = rps[(name, c)], cpu[(name, c)]
            print(
                f"  c={c:<3} {name:<13} {statistics.median(r):8.0f} ({min(r):.0f}-{max(r):.0f})"
                f"     {statistics.median(u):8.0f} ({min(u):.0f}-{max(u):.0f})"
            )
        for target, fixed in (("target", "fixed"), ("fixed again", "fixed"), ("target+redis", "fixed+redis")):
            if (target, c) not in rps:
                continue
            paired = [t / f for t, f in zip(rps[(target, c)], rps[(fixed, c)], strict=True)]
            paired_cpu = [t / f for t, f in zip(cpu[(target, c)], cpu[(fixed, c)], strict=True)]
            print(
                f"  c={c:<3} {target:>12} / {fixed:<11}: req/s {statistics.median(paired):.3f} (repeats "
                + ", ".join(f"{p:.3f}" for p in paired)
                + f"); CPU/request {statistics.median(paired_cpu):.3f} (repeats "
                + ", ".join(f"{p:.3f}" for p in paired_cpu)
                + ")"
            )
    for name, ledger in ledgers.items():
        for bucket in share_timeline(list(read_records(ledger)), 10**9, {}):
            print(f"  {name:<13} large share of {bucket.routed} routed requests: {bucket.large_share:.1%}")


def simulate(seeds: int = 200) -> None:
    """The realised share over the last 150 requests of each half of a stream whose scores change level halfway
    (uniform 0-0.4, then a beta over 0.6-1.0; window 200), with the integral term at several spans and without
    it (a span so large that the debt never moves the quantile); and how often the decisions agree with the
    hindsight split of a stationary stream (top 30% of its own scores large), window 1000."""
    default = share_core.DEBT_SPAN
    print("debt span    share - target over 150 requests: sd    max |dev|   windows off by > 0.07   agreement")
    for span in (10**12, 50, 25, 10):
        share_core.DEBT_SPAN = int(span)
        devs, agree = [], []
        for seed in range(seeds):
            rng = random.Random(1000 + seed)
            scores = [rng.uniform(0.0, 0.4) for _ in range(600)] + [
                rng.betavariate(5, 2) * 0.4 + 0.6 for _ in range(600)
            ]
            large = _routed(scores, 200, 50)
            devs += [sum(large[e - 150 : e]) / 150 - TARGET for e in (600, 1200)]
            steady = [rng.betavariate(5, 2) for _ in range(1200)]
            large = _routed(steady, 1000, 50)[600:]
            cut = sorted(steady[600:])[int((1 - TARGET) * 600)]
            agree.append(sum((s >= cut) == big for s, big in zip(steady[600:], large, strict=True)) / 600)
        label = "none" if span > 1e9 else f"{span:g}"
        print(
            f"{label:>9}    {statistics.pstdev(devs):37.4f} {max(map(abs, devs)):11.3f} "
            f"{sum(abs(d) > 0.07 for d in devs):10d} of {len(devs)} {statistics.mean(agree):14.3f}"
        )
    share_core.DEBT_SPAN = default


def _routed(scores: list[float], window: int, min_scores: int) -> list[bool]:
    targets = share_core.ShareTargets(MemoryScores(window), min_scores)
    target = share_core.ShareTarget(TARGET, "routing")
    return [targets.decide(target, s, 0.5).role is Role.LARGE for s in scores]


if __name__ == "__main__":
    sys.exit(main())
