"""`triage data fetch`: the public recorded outcomes, into the folder TRIAGE_DATA falls back to."""

from __future__ import annotations

import argparse
import math
import sys
import urllib.parse
from pathlib import Path

from classifiers.lab.data import cache_folder
from classifiers.lab.fetch import GITHUB_RAW, FetchError, Remote, fetch

__all__ = ["add_commands"]


def _fetch(args: argparse.Namespace) -> int:
    root = args.to or cache_folder()
    try:
        fetch(root, Remote(args.mirror, args.timeout), force=args.force, say=print)
    except FetchError as e:
        changed = f"{', '.join(e.updated)} already updated" if e.updated else "nothing was changed"
        print(f"error: {e}; {changed} in {root}", file=sys.stderr)
        print(
            f"hint: where {urllib.parse.urlsplit(args.mirror).netloc or args.mirror} cannot be reached, serve the "
            "files from a mirror of your own (--mirror URL, laid out as OWNER/REPO/COMMIT/PATH; see data/README.md), "
            "or point TRIAGE_DATA at a copy of the data folder",
            file=sys.stderr,
        )
        return 1
    if args.to is None:
        print(f"TRIAGE_DATA defaults to {root} where ../shared/data is absent")
    else:
        print(f"use it with: export TRIAGE_DATA={root}")
    return 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: a number of seconds above 0")
    return value


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("data", help="the recorded outcomes the classifier is trained on")
    cmds = p.add_subparsers(dest="data_command", required=True)
    f = cmds.add_parser(
        "fetch",
        help="download them from their public source, pinned to a commit and checked against sha256 sums",
        description="Downloads RouteLLM's GPT-4/Mixtral outcomes (lm-sys/RouteLLM) and LLMRouter's outcomes of 9 "
        "open models (ulab-uiuc/LLMRouter), each at a pinned commit, checks every file against its pinned sum, "
        "and swaps the folders in only when all of a source matches. A folder that already matches is kept.",
    )
    f.add_argument("--to", type=Path, help=f"folder to fill (default {cache_folder()}, or $TRIAGE_CACHE/data)")
    f.add_argument(
        "--mirror", default=GITHUB_RAW, help=f"base URL serving OWNER/REPO/COMMIT/PATH (default {GITHUB_RAW})"
    )
    f.add_argument("--force", action="store_true", help="download again even where the files already match")
    f.add_argument(
        "--timeout", type=_seconds, default=60.0, help="seconds for each file, its whole download (default 60)"
    )
    f.set_defaults(run=_fetch)
