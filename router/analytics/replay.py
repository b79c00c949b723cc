"""`triage replay FILE`: send a file of prompts through a running gateway, to see the routing and the saving
on one's own traffic before going live. Each line is JSON with `prompt` (or chat `messages`), and optionally
`tier` (sent with the API key given for that tier by --key TIER=KEY) and `max_tokens`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from router.analytics.arguments import count, positive

__all__ = ["ReplayLine", "ReplayResult", "add_command", "read_lines", "replay"]


@dataclass(frozen=True, slots=True)
class ReplayLine:
    messages: list[dict[str, Any]]
    tier: str | None = None
    max_tokens: int | None = None


@dataclass
class ReplayResult:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    failures: int = 0  # no HTTP answer at all
    failure: str = ""  # the first of them, for the message


def read_lines(path: Path) -> list[ReplayLine]:
    lines = []
    with path.open(encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                doc = json.loads(raw)
                if "messages" in doc:
                    messages = list(doc["messages"])
                else:
                    messages = [{"role": "user", "content": str(doc["prompt"])}]
                lines.append(ReplayLine(messages, doc.get("tier"), doc.get("max_tokens")))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: each line needs `prompt` or `messages` ({exc})") from None
    if not lines:
        raise ValueError(f"{path}: no prompts")
    return lines


async def replay(
    lines: list[ReplayLine],
    *,
    url: str,
    model: str,
    keys: dict[str, str],
    concurrency: int,
    rate: float | None,
    max_tokens: int,
    progress: bool = True,
) -> ReplayResult:
    result = ReplayResult()
    gate = asyncio.Semaphore(concurrency)
    start = time.monotonic()

    async def one(i: int, line: ReplayLine, client: httpx.AsyncClient) -> None:
        if rate:
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        headers = {"authorization": f"Bearer {keys[line.tier]}"} if line.tier in keys else {}
        body = {"model": model, "messages": line.messages, "max_tokens": line.max_tokens or max_tokens}
        async with gate:
            try:
                r = await client.post(f"{url}/chat/completions", json=body, headers=headers)
                result.statuses[r.status_code] += 1
                if r.status_code == 200:
                    result.models[r.headers.get("x-triage-model", "?")] += 1
            except httpx.HTTPError as exc:
                result.failures += 1
                result.failure = result.failure or _why(exc)
            result.sent += 1
            if progress:
                done = result.sent / len(lines)
                bar = "#" * int(30 * done)
                print(
                    f"\r[{bar:<30}] {result.sent}/{len(lines)}  ok {result.statuses[200]}  "
                    f"429 {result.statuses[429]}  failed {result.failures}",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(one(i, line, client) for i, line in enumerate(lines)))
    if progress:
        print(file=sys.stderr)
    return result


def _why(exc: httpx.HTTPError) -> str:
    """What went wrong, naming the URL (httpx's own messages often do not)."""
    url = str(exc.request.url) if _has_request(exc) else "the gateway"
    if isinstance(exc, httpx.ConnectError):
        return f"{url} refused the connection or could not be reached ({exc}): is `triage serve` running there?"
    if isinstance(exc, httpx.TimeoutException):
        return f"{url} did not answer in time ({type(exc).__name__})"
    return f"{url}: {exc or type(exc).__name__}"


def _has_request(exc: httpx.HTTPError) -> bool:
    try:
        exc.request  # noqa: B018 - httpx raises RuntimeError when the error carries no request
    except RuntimeError:
        return False
    return True


def _run(args: argparse.Namespace) -> int:
    keys = dict(k.split("=", 1) for k in args.key or [])
    lines = read_lines(Path(args.file))
    result = asyncio.run(
        replay(
            lines,
            url=args.url.rstrip("/"),
            model=args.model,
            keys=keys,
            concurrency=args.concurrency,
            rate=args.rate,
            max_tokens=args.max_tokens,
        )
    )
    counts = [f"{code}: {n}" for code, n in sorted(result.statuses.items())]
    print(
        f"sent {result.sent}: " + ", ".join([*counts, *([f"no answer: {result.failures}"] if result.failures else [])])
    )
    if result.failures:
        print(f"no answer for {result.failures} of {result.sent}: {result.failure} (--url sets the gateway's URL)")
    if result.models:
        print("served by: " + ", ".join(f"{m} {n}" for m, n in result.models.most_common()))
    if result.failures < result.sent:
        print("the gateway's ledger has the decisions: triage analytics summary")
    return 0 if result.failures == 0 else 1


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="send a file of prompts through a running gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="JSONL: prompt or messages, optional tier and max_tokens per line")
    p.add_argument("--url", default="http://127.0.0.1:9000/v1", help="the gateway's base URL")
    p.add_argument("--model", default="auto", help="model to ask for (default auto: routed)")
    p.add_argument("--concurrency", type=count, default=4, help="requests in flight at once (default 4)")
    p.add_argument("--rate", type=positive, help="requests started per second (default: as fast as concurrency allows)")
    p.add_argument("--max-tokens", type=count, default=64, help="max_tokens for lines that set none (default 64)")
    p.add_argument("--key", action="append", metavar="TIER=KEY", help="API key to send for lines of that tier")
    p.set_defaults(run=_run)
