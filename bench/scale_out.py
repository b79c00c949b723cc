"""Scaling on one host: req/s of `triage serve --workers N` for N = 1 and 2 against the same instant upstream,
measured in the same run, repeats interleaved.

    ./dev bench scale_out [--duration 5] [--repeats 3] [--concurrency 64]

wrk and the upstream are pinned to CPU 1; the gateway gets CPU 0 with N = 1, and both CPUs with N = 2 (so on a
2-core machine its second process shares a core with the load generator: near-linear is the ceiling, not the
expectation). Every request is routed (`auto`, scored by the shipped classifier), limits and the ledger go to
Redis (N > 1 needs it; N = 1 uses it too, so that both pay the same). Prints the median req/s per N, the spread
of the repeats, and N = 2 over N = 1. Needs Redis on 127.0.0.1:6379."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from gateway_overhead import ROOT, ensure_wrk, free_port, run_wrk, start, stop, wait_http, wrk_script


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    wrk = ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="triage-scale-"))
    procs = []
    try:
        up = free_port()
        procs.append(start([sys.executable, str(ROOT / "bench" / "instant_upstream.py"), str(up)], 1, tmp / "up.log"))
        wait_http(f"http://127.0.0.1:{up}/v1/models", 10)
        urls = {}
        for n, cpus in ((1, "0"), (2, "0,1")):
            port = free_port()
            cfg = tmp / f"gateway-{n}.json"
            cfg.write_text(
                json.dumps(
                    {
                        "server": {"port": port, "log_level": "warning"},
                        "workers": [
                            {
                                "name": "s",
                                "role": "small",
                                "base_url": f"http://127.0.0.1:{up}/v1",
                                "model": "bench-model",
                            },
                            {
                                "name": "l",
                                "role": "large",
                                "base_url": f"http://127.0.0.1:{up}/v1",
                                "model": "bench-model",
                            },
                        ],
                        "tiers": {"anonymous": {}},
                        "limits": {
                            "redis_url": "redis://127.0.0.1:6379/0",
                            "key_prefix": f"bench-{uuid.uuid4().hex[:6]}",
                        },
                        "ledger": {"backend": "redis", "stream": f"bench-{uuid.uuid4().hex[:6]}"},
                        "cache": {"enabled": False},
                    }
                )
            )
            cmd = [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--workers", str(n)]
            with (tmp / f"gateway-{n}.log").open("wb") as log:  # its processes inherit the CPUs given here
                procs.append(
                    subprocess.Popen(
                        ["taskset", "-c", cpus, *cmd],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=dict(os.environ),
                        start_new_session=True,
                    )
                )
            wait_http(f"http://127.0.0.1:{port}/health", 60)
            urls[n] = f"http://127.0.0.1:{port}/v1/chat/completions"
        script = wrk_script(tmp, {"model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}]}, None)
        for url in urls.values():
            run_wrk(wrk, url, script, 16, 2)  # warm-up
        got: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.repeats):
            for n, url in urls.items():
                rps, _p50, _p99, errors, _done = run_wrk(wrk, url, script, args.concurrency, args.duration)
                if errors:
                    print(f"N={n}: {errors} errors in a repeat", file=sys.stderr)
                got[n].append(rps)
    finally:
        for p in procs:
            stop(p)
    print(f"\nJSON, concurrency {args.concurrency}, {args.repeats} x {args.duration:.0f} s interleaved\n")
    print("| processes | req/s median | repeats |")
    print("|---:|---:|---|")
    for n, values in got.items():
        print(f"| {n} | {statistics.median(values):,.0f} | {', '.join(f'{v:,.0f}' for v in values)} |")
    print(f"\nN = 2 over N = 1: {statistics.median(got[2]) / statistics.median(got[1]):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
