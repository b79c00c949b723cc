"""`triage analytics summary`: what routing saved and what it cost, from the decision ledger."""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from router.adapters.ledger_redis import read_stream_records
from router.adapters.ledger_sqlite import read_records
from router.adapters.quality import read_labelled
from router.analytics.quality import QualityEstimate, estimate
from router.analytics.report import Bucket, ShareBucket, Summary, by_tier, share_timeline, summarize, timeline
from router.core.records import COLUMNS, DecisionRecord

__all__ = ["add_commands", "parse_time", "render"]

DEFAULT_LEDGER = Path(".triage/ledger.sqlite")
DEFAULT_OUTCOMES = Path(".triage/outcomes.jsonl")  # where `triage label` writes


def parse_time(text: str, now: float | None = None) -> float:
    """An ISO date or time (UTC unless it says otherwise), or an age: 30m, 24h, 7d."""
    now = time.time() if now is None else now
    age = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if age:
        return now - float(age.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[age.group(2)]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use an ISO date like 2026-11-30, or an age like 24h or 7d)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _filters(args: argparse.Namespace) -> tuple[str, tuple[object, ...]]:
    where, params = [], []
    if args.since:
        where.append("ts >= ?")
        params.append(parse_time(args.since))
    if args.until:
        where.append("ts < ?")
        params.append(parse_time(args.until))
    if args.tier:
        where.append("tier = ?")
        params.append(args.tier)
    if args.model:
        where.append("model = ?")
        params.append(args.model)
    return " AND ".join(where), tuple(params)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render(s: Summary, ledger: Path) -> str:
    lines = [f"ledger {ledger}: {s.requests} requests from {_when(s.first_ts)} to {_when(s.last_ts)}"]
    if not s.requests:
        return lines[0]
    if s.cost_large:
        lines.append(
            f"saved {s.saving:.1%}: paid ${s.cost:.6f} against ${s.cost_large:.6f} had the large model served "
            "every answered request (each worker's configured prices; same tokens)"
        )
    else:
        lines.append("saving unknown: no prices were configured (set workers' price_input and price_output)")
    lines.append(f"served {s.served}, escalated {s.escalations}, cache hits {s.cache_hits}")
    if s.conversation_moves:
        lines.append(
            f"conversation policy moved {s.conversation_moves} turns ({s.conversation_moves / s.requests:.1%} of "
            "requests) to the model their conversation had"
        )
    if s.shadow_calls:
        lines.append(
            f"shadow pairs: {s.shadow_calls} second answers for ${s.shadow_cost:.6f} (not in the cost paid above; "
            "`triage label` turns them into outcomes)"
        )
    lines.append("\nmodel                      share   latency p50 / p95 / p99 ms     ttft p50 ms")
    for model, share in s.share.items():
        lat, ttft = s.latency_ms.get(model, {}), s.ttft_ms.get(model, {})
        lines.append(
            f"{model:<26} {share:6.1%}   {lat.get('p50', 0):8.1f} {lat.get('p95', 0):8.1f} "
            f"{lat.get('p99', 0):8.1f}     {ttft.get('p50', 0):8.1f}"
        )
    if s.rate_limited:
        lines.append("\nrate limited (429) by tier: " + ", ".join(f"{t} {n}" for t, n in s.rate_limited.items()))
    if s.errors:
        lines.append("errors by status: " + ", ".join(f"{k}: {v}" for k, v in s.errors.items()))
    return "\n".join(lines)


def _records(args: argparse.Namespace) -> list[DecisionRecord]:
    if args.ledger.startswith(("redis://", "rediss://")):
        since = parse_time(args.since) if args.since else float("-inf")  # parsed once, not per record
        until = parse_time(args.until) if args.until else float("inf")
        return [
            r
            for r in read_stream_records(args.ledger, args.stream)
            if since <= r.ts < until
            and (not args.tier or r.tier == args.tier)
            and (not args.model or r.model == args.model)
        ]
    ledger = Path(args.ledger)
    if not ledger.exists():
        raise FileNotFoundError(_no_ledger(ledger))
    where, params = _filters(args)
    return list(read_records(ledger, where, params))


def _no_ledger(ledger: Path) -> str:
    where = ""
    if not ledger.is_absolute():  # ledger.path is relative to the folder `triage serve` ran in, not to this one
        where = (
            f" (that is {ledger.absolute()}: a relative ledger path is relative to the folder `triage serve` ran "
            "in; run this there, or pass --ledger with the path the gateway's ledger.path names)"
        )
    return (
        f"no ledger at {ledger}{where}: `triage serve` writes one there once it has served traffic (with Redis "
        "configured it writes a stream instead: --ledger redis://HOST:PORT/DB)"
    )


def _quality_of(path: Path) -> QualityEstimate | None:
    return estimate(*read_labelled(path)) if path.is_file() else None


def _quality_line(q: QualityEstimate) -> str:
    return (
        f"quality kept {q.kept:.1%} of the large model's (95% CI {q.low:.1%} to {q.high:.1%}; {q.pairs} labelled "
        f"shadow pairs, {q.small_share:.0%} of them answered by the small model)"
    )


def _summary(args: argparse.Namespace) -> int:
    ledger = Path(args.ledger)
    summary = summarize(_records(args))
    quality = _quality_of(Path(args.outcomes))
    if args.format == "json":
        print(json.dumps(summary.to_json() | {"quality": quality.to_json() if quality else None}, indent=2))
        return 0
    text = render(summary, ledger)
    if quality is not None and summary.requests:
        lines = text.split("\n")
        lines.insert(2, _quality_line(quality))  # beside the saving
        text = "\n".join(lines)
    print(text)
    return 0


def _quality(args: argparse.Namespace) -> int:
    path = Path(args.outcomes)
    if not path.is_file():
        raise FileNotFoundError(f"no labelled outcomes at {path}: turn routing.shadow on, then run `triage label`")
    quality = estimate(*read_labelled(path))
    summary = summarize(_records(args)) if Path(args.ledger).exists() or args.ledger.startswith("redis") else None
    if args.format == "json":
        body = {"quality": quality.to_json() if quality else None, "saving": summary.saving if summary else None}
        print(json.dumps(body, indent=2))
        return 0
    if quality is None:
        print(f"{path}: no labelled shadow pairs with a large-model score above zero yet")
        return 0
    print(_quality_line(quality))
    if summary is not None and summary.cost_large:
        print(f"cost saved {summary.saving:.1%} against always-large ({summary.requests} requests in the ledger)")
    return 0


def _step(text: str) -> int:
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match:
        raise ValueError(f"not a step: {text!r} (use 15m, 1h, 1d)")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _buckets_out(buckets: list[Bucket], title: str, fmt: str) -> str:
    if fmt == "json":
        return json.dumps([{**asdict(b), "saving": b.saving} for b in buckets], indent=2)
    lines = [f"{title:<22} requests  served  large share  429s      cost paid   always-large  saved"]
    lines += [
        f"{b.key:<22} {b.requests:8d} {b.served:7d} {b.large_share:11.1%} {b.rate_limited:5d} "
        f"{b.cost:14.6f} {b.cost_large:14.6f} {b.saving:6.1%}"
        for b in buckets
    ]
    return "\n".join(lines)


def _timeline(args: argparse.Namespace) -> int:
    print(_buckets_out(timeline(_records(args), _step(args.step)), "period start (UTC)", args.format))
    return 0


def _targets(args: argparse.Namespace) -> dict[str, float]:
    """Each tier's share target as the gateway's config sets it: a tier's own, else the gateway's for a tier
    that routes by score without a threshold of its own."""
    if args.config is None:
        return {}
    from router.settings import load_settings  # only this command reads the gateway's config

    settings = load_settings(Path(args.config))
    targets = {}
    for name, tier in settings.tiers.items():
        share = tier.target_large_share
        if share is None and tier.threshold is None:
            share = settings.routing.target_large_share
        if share is not None and tier.mode == "route" and len(set(tier.models)) == 2:
            targets[name] = share
    return targets


def _shares_out(buckets: list[ShareBucket], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([{**asdict(b), "large_share": b.large_share} for b in buckets], indent=2)
    lines = ["period start (UTC)     tier              routed  large share   target  off by  threshold p50"]
    for b in buckets:
        target = "-" if b.target is None else f"{b.target:.1%}"
        off = "-" if b.target is None else f"{b.large_share - b.target:+.1%}"
        lines.append(
            f"{b.start:<22} {b.tier:<16} {b.routed:7d} {b.large_share:12.1%} {target:>8} {off:>7} "
            f"{b.threshold_p50:14.4f}"
        )
    return "\n".join(lines)


def _share(args: argparse.Namespace) -> int:
    if args.target is not None and not 0 < args.target < 1:
        raise ValueError(f"--target {args.target}: a share between 0 and 1, e.g. 0.3")
    buckets = share_timeline(_records(args), _step(args.step), _targets(args), args.target)
    print(_shares_out(buckets, args.format))
    return 0


def _tiers(args: argparse.Namespace) -> int:
    print(_buckets_out(by_tier(_records(args)), "tier", args.format))
    return 0


def _export(args: argparse.Namespace) -> int:
    records = _records(args)
    out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        if args.format == "json":
            json.dump([asdict(r) for r in records], out)
            out.write("\n")
        else:
            writer = csv.writer(out)
            writer.writerow(COLUMNS)
            writer.writerows([getattr(r, c) for c in COLUMNS] for r in records)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def _plot(args: argparse.Namespace) -> int:
    from router.analytics.plots import plot_ledger

    for path in plot_ledger(_records(args), Path(args.out), _step(args.step)):
        print(f"wrote {path}")
    return 0


def _with_filters(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--ledger",
        default=str(DEFAULT_LEDGER),
        help=f"ledger file, or a redis:// URL for the shared stream (default {DEFAULT_LEDGER})",
    )
    p.add_argument("--stream", default="triage:decisions", help="Redis stream name, with a redis:// ledger")
    p.add_argument("--since", help="ISO date/time or an age (24h, 7d)")
    p.add_argument("--until", help="ISO date/time or an age")
    p.add_argument("--tier", help="only this tier")
    p.add_argument("--model", help="only requests served by this model")
    p.add_argument(
        "--outcomes",
        default=str(DEFAULT_OUTCOMES),
        help=f"labelled shadow pairs (`triage label`'s output, default {DEFAULT_OUTCOMES}) for the quality kept",
    )
    return p


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("analytics", help="what routing saved and cost, from the decision ledger")
    cmds = p.add_subparsers(dest="analytics_command", required=True)
    s = _with_filters(cmds.add_parser("summary", help="requests, share per model, cost vs always-large, latency, 429s"))
    s.add_argument("--format", choices=["table", "json"], default="table")
    s.set_defaults(run=_summary)
    t = _with_filters(cmds.add_parser("timeline", help="requests, large-model share and saving per period"))
    t.add_argument("--step", default="1h", help="period length: 15m, 1h, 1d (default 1h)")
    t.add_argument("--format", choices=["table", "json"], default="table")
    t.set_defaults(run=_timeline)
    r = _with_filters(cmds.add_parser("tiers", help="requests, large-model share, 429s and saving per tier"))
    r.add_argument("--format", choices=["table", "json"], default="table")
    r.set_defaults(run=_tiers)
    q = _with_filters(cmds.add_parser("quality", help="quality kept by routing, from labelled shadow pairs"))
    q.add_argument("--format", choices=["table", "json"], default="table")
    q.set_defaults(run=_quality)
    h = _with_filters(
        cmds.add_parser("share", help="the large model's share of routed requests per period, against its target")
    )
    h.add_argument("--step", default="1h", help="period length: 15m, 1h, 1d (default 1h)")
    h.add_argument("--config", help="the gateway's config: each tier's target_large_share is read from it")
    h.add_argument("--target", type=float, help="the target share for tiers the config gives none (or no --config)")
    h.add_argument("--format", choices=["table", "json"], default="table")
    h.set_defaults(run=_share)
    e = _with_filters(cmds.add_parser("export", help="the records themselves, for a spreadsheet"))
    e.add_argument("--format", choices=["csv", "json"], default="csv")
    e.add_argument("--out", help="file to write (default: standard output)")
    e.set_defaults(run=_export)
    g = _with_filters(cmds.add_parser("plot", help="PNG charts: share and saving over time, latency per model"))
    g.add_argument("--out", default=".triage/plots", help="folder for the PNGs (default .triage/plots)")
    g.add_argument("--step", default="1h", help="period length for the time charts (default 1h)")
    g.set_defaults(run=_plot)
