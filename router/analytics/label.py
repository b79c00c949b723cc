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
from router.analytics.arguments import count, positive
from router.core.shadow import ShadowPair
from router.core.types import Role
from router.errors import ConfigError
from router.settings import load_settings

__all__ = [
    "JUDGE_SYSTEM",
    "JUDGE_USER",
    "Judge",
    "JudgeError",
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
        """The judge's verdict text; JudgeError when its answer is not one (too big, too slow, malformed)."""
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
        try:
            async with asyncio.timeout(self.timeout):  # the whole answer, not each read: a trickle is slow too
                raw = await _bounded_post(client, f"{self.base_url}/chat/completions", body, headers)
        except TimeoutError:
            raise JudgeError(f"no answer within {self.timeout:g} s") from None
        content, prompt_tokens, completion_tokens = _judge_answer(raw)
        self.spend.calls += 1
        self.spend.prompt_tokens += prompt_tokens
        self.spend.completion_tokens += completion_tokens
        return content

    async def label(self, client: httpx.AsyncClient, pair: ShadowPair) -> tuple[float, float] | None:
        verdicts = await asyncio.gather(
            self.verdict(client, pair.prompt, pair.small_answer, pair.large_answer),
            self.verdict(client, pair.prompt, pair.large_answer, pair.small_answer),
            return_exceptions=True,  # both calls end here: neither is left running when the other failed
        )
        small_first, large_first = verdicts
        for v in verdicts:
            if isinstance(v, BaseException):
                raise v
        assert isinstance(small_first, str) and isinstance(large_first, str)
        return pairwise_outcomes(small_first, large_first)


class JudgeError(ValueError):
    """The judge's answer cannot be used: the pair stays unlabelled."""


MAX_JUDGE_ANSWER_BYTES = 1 << 20  # a verdict is a word; an answer this big is not one
MAX_JUDGE_TOKENS = 1 << 31  # usage beyond this is not a count of tokens (no context is near 2 billion)


async def _bounded_post(client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    async with client.stream("POST", url, json=body, headers=headers) as r:
        if r.status_code != 200:
            raise JudgeError(f"HTTP {r.status_code} from {url}")
        chunks, size = [], 0
        async for chunk in r.aiter_bytes():
            size += len(chunk)
            if size > MAX_JUDGE_ANSWER_BYTES:
                raise JudgeError(f"an answer of more than {MAX_JUDGE_ANSWER_BYTES} bytes from {url}")
            chunks.append(chunk)
    return b"".join(chunks)


def _judge_answer(raw: bytes) -> tuple[str, int, int]:
    """(verdict text, prompt tokens, completion tokens) of a chat completion; JudgeError when it is not one."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # not JSON, or a number past the int parser's 4,300 digits
        raise JudgeError(f"not JSON ({str(exc)[:80]})") from None
    if not isinstance(doc, dict):
        raise JudgeError(f"a JSON {type(doc).__name__}, not a chat completion")
    choices = doc.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise JudgeError("no choices[0].message in the answer")
    usage = doc.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise JudgeError(f"usage is a JSON {type(usage).__name__}, not an object")
    tokens = [_token_count(usage or {}, name) for name in ("prompt_tokens", "completion_tokens")]
    content = message.get("content")
    return (content if isinstance(content, str) else ""), tokens[0], tokens[1]


def _token_count(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < MAX_JUDGE_TOKENS:
        raise JudgeError(f"usage.{name} is {str(value)[:40]}, not a token count")
    if value != int(value):
        raise JudgeError(f"usage.{name} is {value}, not a whole number")
    return int(value)


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
        return Judge(args.judge_url.rstrip("/"), args.judge_model, args.judge_key, timeout=args.judge_timeout)
    if args.config is None:
        raise ConfigError("say which model judges: --config (its large worker) or --judge-url and --judge-model")
    settings = load_settings(args.config)
    worker = next(w for w in settings.workers if w.role is Role.LARGE)
    if not worker.model or not worker.base_url:
        raise ConfigError(f"worker {worker.name!r} needs base_url and model to judge; or pass --judge-url")
    resolved = worker.to_worker()
    spend = Spend(price_input=resolved.prices.input, price_output=resolved.prices.output)
    key = args.judge_key or resolved.api_key
    return Judge(resolved.base_url.rstrip("/"), worker.model, key, spend, timeout=args.judge_timeout)


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
    except (httpx.HTTPError, JudgeError) as exc:
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
    p.add_argument(
        "--judge-timeout",
        type=positive,
        default=120.0,
        help="seconds a judge call may take, its whole answer (default 120); a late answer leaves the pair unlabelled",
    )
    p.add_argument("--concurrency", type=count, default=4, help="judge calls in flight (default 4)")
    p.add_argument("--limit", type=count, help="label at most this many pairs this run")
    p.set_defaults(run=_label)
