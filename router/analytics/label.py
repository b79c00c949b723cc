"""`triage label`: shadow pairs turned into outcomes (classifiers.lab.outcomes), which `triage classifier train
--outcomes` learns from and `triage analytics quality` reads.

Two ways to label a pair:
- a pairwise judge: an OpenAI-compatible model (by default the config's large worker) is shown the request and
  both answers and asked which is better, in both orders to cancel position bias, ties allowed (JUDGE_SYSTEM and
  JUDGE_USER below are the whole prompt). Each model's outcome is its share of the two verdicts, a tie counting
  half: both verdicts for the large answer give small 0, large 1; one tie gives 0.25 / 0.75. A verdict that is
  not A, B or TIE leaves the pair unlabelled (counted, never guessed).
- a reference scorer, where the requests have known answers (`--references FILE`: JSONL of {prompt, reference}):
  `exact` (the answer, normalised, ends with the reference), `regex:PATTERN` (the pattern, with `{reference}`
  replaced by the escaped reference, found in the answer), or `module:function` (called with prompt, answer,
  reference; returns a number in [0, 1]).

Labelling appends to the output file as it goes and skips request ids already in it: stop it and run it again
to resume. The judge's spend is shown from its token usage and the configured prices."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from router.adapters.pairs import pairs_path, read_pairs
from router.core.shadow import ShadowPair
from router.core.types import Role
from router.errors import ConfigError
from router.settings import load_settings

__all__ = [
    "JUDGE_SYSTEM",
    "JUDGE_USER",
    "Judge",
    "Spend",
    "add_command",
    "outcome_of",
    "pairwise_outcomes",
    "reference_scorer",
]

DEFAULT_OUT = Path(".triage/outcomes.jsonl")
JUDGE_SYSTEM = (
    "You compare two answers to the same request. Judge correctness first, then completeness and clarity. "
    "Reply with exactly one word: A if answer A is better, B if answer B is better, TIE if they are equally good "
    "or equally bad."
)
JUDGE_USER = "[Request]\n{prompt}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}\n\nWhich answer is better: A, B or TIE?"
_VERDICT = re.compile(r"^\W*(A|B|TIE)\b", re.I)


def pairwise_outcomes(small_first: str, large_first: str) -> tuple[float, float] | None:
    """(small, large) outcomes from the verdicts with the small answer shown as A, then with the large one as A;
    None when either verdict is not A, B or TIE."""
    v1, v2 = _VERDICT.match(small_first), _VERDICT.match(large_first)
    if v1 is None or v2 is None:
        return None
    first, second = v1.group(1).upper(), v2.group(1).upper()
    small = (first == "A") + (second == "B") + 0.5 * ((first == "TIE") + (second == "TIE"))
    large = (first == "B") + (second == "A") + 0.5 * ((first == "TIE") + (second == "TIE"))
    return small / 2, large / 2


@dataclass
class Spend:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    price_input: float = 0.0  # USD per million tokens
    price_output: float = 0.0

    @property
    def usd(self) -> float:
        return (self.prompt_tokens * self.price_input + self.completion_tokens * self.price_output) / 1e6


@dataclass
class Judge:
    base_url: str  # ends in /v1
    model: str
    api_key: str | None = None
    spend: Spend = field(default_factory=Spend)
    timeout: float = 120.0

    async def verdict(self, client: httpx.AsyncClient, prompt: str, a: str, b: str) -> str:
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": JUDGE_USER.format(prompt=prompt, a=a, b=b)},
            ],
            "temperature": 0,
            "max_tokens": 4,
        }
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        r = await client.post(f"{self.base_url}/chat/completions", json=body, headers=headers, timeout=self.timeout)
        r.raise_for_status()
        doc = r.json()
        self.spend.calls += 1
        usage = doc.get("usage") or {}
        self.spend.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.spend.completion_tokens += int(usage.get("completion_tokens") or 0)
        content = doc["choices"][0]["message"].get("content")
        return content if isinstance(content, str) else ""

    async def label(self, client: httpx.AsyncClient, pair: ShadowPair) -> tuple[float, float] | None:
        small_first, large_first = await asyncio.gather(
            self.verdict(client, pair.prompt, pair.small_answer, pair.large_answer),
            self.verdict(client, pair.prompt, pair.large_answer, pair.small_answer),
        )
        return pairwise_outcomes(small_first, large_first)


ReferenceScorer = Callable[[str, str, str], float]


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s.-]", " ", text.lower()).split()).rstrip(".")


def reference_scorer(spec: str) -> ReferenceScorer:
    """`exact`, `regex:PATTERN` or `module:function` as a scorer of (prompt, answer, reference) -> [0, 1]."""
    if spec == "exact":
        return lambda _p, answer, ref: float(bool(_normalise(ref)) and _normalise(answer).endswith(_normalise(ref)))
    if spec.startswith("regex:"):
        pattern = spec[6:]
        return lambda _p, answer, ref: float(
            re.search(pattern.replace("{reference}", re.escape(ref)), answer, re.S) is not None
        )
    module, _, name = spec.partition(":")
    if not name:
        raise ConfigError(f"--scorer {spec!r}: use exact, regex:PATTERN or module:function")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--scorer {spec!r}: {exc}") from None
    if not callable(fn):
        raise ConfigError(f"--scorer {spec!r} is not callable")

    def call(prompt: str, answer: str, ref: str) -> float:
        value = float(fn(prompt, answer, ref))
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{spec} returned {value}, not a number in [0, 1]")
        return value

    return call


def outcome_of(pair: ShadowPair, small: float, large: float, how: str) -> dict[str, Any]:
    """An outcome record (classifiers.lab.outcomes) for a labelled pair; `routed` and `tier` ride along for
    `triage analytics quality`."""
    return {
        "prompt": pair.prompt,
        "small": small,
        "large": large,
        "small_answer": pair.small_answer,
        "request_id": pair.request_id,
        "ts": pair.ts,
        "routed": pair.routed,
        "tier": pair.tier,
        "label": how,
    }


def _done_ids(out: Path) -> set[str]:
    if not out.exists():
        return set()
    ids = set()
    with out.open(encoding="utf-8") as f:
        for line in f:
            try:
                ids.add(json.loads(line)["request_id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return ids


def _judge_from(args: argparse.Namespace) -> Judge:
    if args.judge_url:
        if not args.judge_model:
            raise ConfigError("--judge-url needs --judge-model")
        return Judge(args.judge_url.rstrip("/"), args.judge_model, args.judge_key)
    if args.config is None:
        raise ConfigError("say which model judges: --config (its large worker) or --judge-url and --judge-model")
    settings = load_settings(args.config)
    worker = next(w for w in settings.workers if w.role is Role.LARGE)
    if not worker.model or not worker.base_url:
        raise ConfigError(f"worker {worker.name!r} needs base_url and model to judge; or pass --judge-url")
    resolved = worker.to_worker()
    spend = Spend(price_input=resolved.prices.input, price_output=resolved.prices.output)
    return Judge(resolved.base_url.rstrip("/"), worker.model, args.judge_key or resolved.api_key, spend)


def _references(path: str) -> dict[str, str]:
    refs: dict[str, str] = {}
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                refs[str(doc["prompt"])] = str(doc["reference"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"{path}:{n}: each line needs `prompt` and `reference`") from None
    return refs


async def _one(
    pair: ShadowPair,
    client: httpx.AsyncClient,
    judge: Judge | None,
    refs: dict[str, str] | None,
    scorer: ReferenceScorer | None,
) -> tuple[float, float] | None:
    if refs is not None:
        assert scorer is not None  # references come with their scorer
        ref = refs.get(pair.prompt)
        if ref is None:
            return None
        return scorer(pair.prompt, pair.small_answer, ref), scorer(pair.prompt, pair.large_answer, ref)
    assert judge is not None
    try:
        return await judge.label(client, pair)
    except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
        print(f"\ntriage: the judge failed on {pair.request_id}: {exc}", file=sys.stderr)
        return None


async def _label_all(args: argparse.Namespace, pairs: Sequence[ShadowPair], out: Path) -> tuple[int, int, Spend]:
    """Labels every pair, appending outcomes to `out` as they come; (labelled, left unlabelled, judge's spend)."""
    refs = _references(args.references) if args.references else None
    scorer = reference_scorer(args.scorer) if refs is not None else None
    judge = None if refs is not None else _judge_from(args)
    how = "reference" if refs is not None else "pairwise"
    gate = asyncio.Semaphore(max(1, args.concurrency))
    counts = [0, 0]  # labelled, unlabelled
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as sink:
        async with httpx.AsyncClient() as client:

            async def one(pair: ShadowPair) -> None:
                async with gate:
                    result = await _one(pair, client, judge, refs, scorer)
                if result is None:
                    counts[1] += 1
                else:
                    sink.write(json.dumps(outcome_of(pair, *result, how)) + "\n")
                    sink.flush()  # resumable: what is written stays labelled
                    counts[0] += 1
                spend = judge.spend.usd if judge else 0.0
                progress = f"\rlabelled {counts[0]}, unlabelled {counts[1]} of {len(pairs)}; judge ${spend:.6f}"
                print(progress, end="", file=sys.stderr)

            await asyncio.gather(*(one(p) for p in pairs))
    print(file=sys.stderr)
    return counts[0], counts[1], judge.spend if judge else Spend()


def _label(args: argparse.Namespace) -> int:
    out = Path(args.out)
    done = _done_ids(out)
    pairs = [p for p in read_pairs(args.pairs) if p.request_id not in done]
    if args.limit:
        pairs = pairs[: args.limit]
    if not pairs:
        print(f"nothing to label: every stored pair is already in {out}" if done else "no shadow pairs stored yet")
        return 0
    labelled, skipped, spend = asyncio.run(_label_all(args, pairs, out))
    print(f"labelled {labelled} pairs into {out} ({skipped} left unlabelled: no verdict or no reference)")
    if spend.calls:
        print(
            f"judge: {spend.calls} calls, {spend.prompt_tokens} prompt + {spend.completion_tokens} completion tokens, "
            f"${spend.usd:.6f}"
        )
    return 0


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("label", help="turn stored shadow pairs into outcomes (a pairwise judge, or references)")
    p.add_argument(
        "--pairs",
        default=str(pairs_path(Path(".triage/ledger.sqlite"))),
        help="the pairs store: an SQLite file (default beside the default ledger) or redis://HOST:PORT/DB#STREAM",
    )
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"outcomes JSONL, appended to (default {DEFAULT_OUT})")
    p.add_argument("--config", type=Path, help="gateway config: its large worker judges (prices from it too)")
    p.add_argument("--judge-url", help="an OpenAI-compatible base URL (…/v1) to judge with instead")
    p.add_argument("--judge-model", help="the judge's model name, with --judge-url")
    p.add_argument("--judge-key", help="API key for the judge (default: the worker's)")
    p.add_argument("--references", help="JSONL of {prompt, reference}: score answers against these, no judge")
    p.add_argument("--scorer", default="exact", help="with --references: exact, regex:PATTERN or module:function")
    p.add_argument("--concurrency", type=int, default=4, help="judge calls in flight (default 4)")
    p.add_argument("--limit", type=int, help="label at most this many pairs this run")
    p.set_defaults(run=_label)
