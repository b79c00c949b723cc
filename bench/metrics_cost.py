"""CPU time the metrics cost: per decision record (every request pays it) and per scrape, with one process's
registry and in prometheus_client's multiprocess mode (`triage serve --workers N`), measured in the same run.

    ./dev bench metrics_cost [--records 100000]

Each mode runs in a process of its own (the library picks its value store when it is first imported). Prints the
best of 7 repeats of CPU time (time.process_time), so other load on the machine counts little."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from router.core.records import DecisionRecord

RECORD = DecisionRecord(
    ts=0.0,
    request_id="r",
    tier="anonymous",
    caller="c",
    model_requested="auto",
    model="tiny-small",
    worker="small",
    role="small",
    score=0.1,
    threshold=0.5,
    reason="below_threshold",
    escalated=False,
    cache_hit=False,
    prompt_tokens=7,
    completion_tokens=5,
    ttft_ms=3.0,
    latency_ms=3.0,
    status=200,
    cost=1e-6,
    cost_large=2e-5,
)


def measure(records: int) -> str:
    from router.adapters.metrics import Metrics

    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics = Metrics(Path(folder) if folder else None)
    metrics.counter("bench_read_total", "A total read at scrape time.", lambda: 1.0)
    per_record = min(timeit.Timer(lambda: metrics.emit(RECORD), timer=time.process_time).repeat(7, records))
    per_scrape = min(timeit.Timer(metrics.render, timer=time.process_time).repeat(7, 100))
    mode = "multiprocess" if folder else "one process"
    return f"{mode:>13}: {per_record / records * 1e6:6.2f} us per record, {per_scrape / 100 * 1e3:5.2f} ms per scrape"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000, help="records per repeat (default 100000)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(measure(args.records))
        return
    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as folder:
        for env in ({}, {"PROMETHEUS_MULTIPROC_DIR": folder}):
            clean = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            command = [sys.executable, __file__, "--child", "--records", str(args.records)]
            subprocess.run(command, env={**clean, **env}, check=True)


if __name__ == "__main__":
    main()
