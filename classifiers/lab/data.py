"""Recorded outcomes of a small and a large model on public benchmarks, read from TRIAGE_DATA.

The files stay outside the repository (see their PROVENANCE.md); this module only reads them. Contaminated
prompts are dropped the way RouteLLM drops them. Each item keeps the outcome of both models, so any routing
decision can be scored after the fact."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BENCHMARKS",
    "LARGE",
    "SMALL",
    "Benchmark",
    "Item",
    "cache_folder",
    "data_folder",
    "data_root",
    "load_benchmark",
]

SMALL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
LARGE = "gpt-4-1106-preview"
BENCHMARKS = ("mmlu", "gsm8k", "mt_bench")


@dataclass(frozen=True, slots=True)
class Item:
    prompt: str
    small: float  # outcome of the small model: 1/0 correct, or a judge score
    large: float
    group: str  # MMLU subject, MT-Bench category, or the benchmark name
    small_answer: str | None = None  # the small model's full answer, where recorded (GSM8K)


@dataclass(frozen=True, slots=True)
class Benchmark:
    name: str
    items: tuple[Item, ...]

    @property
    def prompts(self) -> list[str]:
        return [i.prompt for i in self.items]


def cache_folder() -> Path:
    """Where `triage data fetch` puts the data by default, and where TRIAGE_DATA falls back to."""
    base = os.environ.get("TRIAGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llm-triage")
    return Path(base) / "data"


def data_folder() -> Path:
    """TRIAGE_DATA if set; else ../shared/data where it exists; else the folder `triage data fetch` fills."""
    if env := os.environ.get("TRIAGE_DATA"):
        return Path(env)
    shared = Path("../shared/data")
    return shared if (shared / "routellm" / "PROVENANCE.md").exists() else cache_folder()


def data_root(path: str | Path | None = None) -> Path:
    root = Path(path or data_folder()) / "routellm"
    if not (root / "PROVENANCE.md").exists():
        raise FileNotFoundError(
            f"no routing data at {root}: run `triage data fetch`, or set TRIAGE_DATA to the folder that holds "
            "routellm/ and llmrouter/"
        )
    return root


def _contaminated(path: Path) -> set[str]:
    with path.open(encoding="utf-8") as f:
        return {json.loads(line)["eval_prompt"] for line in f if line.strip()}


def _rows(path: Path) -> Iterator[dict[str, str]]:
    csv.field_size_limit(1 << 30)
    with path.open(encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)


def _flag(value: str) -> float:
    return 1.0 if value.strip().lower() == "true" else 0.0


def _mmlu(root: Path) -> Benchmark:
    drop = _contaminated(root / "mmlu" / "contaminated_prompts.jsonl")
    items = []
    for path in sorted((root / "mmlu" / "responses").glob("mmlu_*.csv")):
        subject = path.stem.removeprefix("mmlu_")
        items += [
            Item(r["prompt"], _flag(r[SMALL]), _flag(r[LARGE]), subject) for r in _rows(path) if r["prompt"] not in drop
        ]
    return Benchmark("mmlu", tuple(items))


def _gsm8k(root: Path) -> Benchmark:
    drop = _contaminated(root / "gsm8k" / "contaminated_prompts.jsonl")
    items = tuple(
        Item(r["prompt"], _flag(r[SMALL]), _flag(r[LARGE]), "gsm8k", r[f"{SMALL}_response"])
        for r in _rows(root / "gsm8k" / "gsm8k_responses.csv")
        if r["prompt"] not in drop
    )
    return Benchmark("gsm8k", items)


def _mt_bench(root: Path) -> Benchmark:
    """Routed on the first turn; each model's outcome is its mean judge score over both turns (RouteLLM)."""
    drop = _contaminated(root / "mt_bench" / "contaminated_prompts.jsonl")
    scores: dict[tuple[int, str], list[float]] = {}
    with (root / "mt_bench" / "judgements.jsonl").open(encoding="utf-8") as f:
        for line in f:
            j = json.loads(line)
            scores.setdefault((int(j["question_id"]), j["model"]), []).append(float(j["score"]))
    items = []
    with (root / "mt_bench" / "question.jsonl").open(encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            turns = q["turns"]
            if turns[0] in drop or turns[1] in drop:
                continue
            small, large = scores[(q["question_id"], SMALL)], scores[(q["question_id"], LARGE)]
            items.append(Item(turns[0], sum(small) / len(small), sum(large) / len(large), q["category"]))
    return Benchmark("mt_bench", tuple(items))


def load_benchmark(name: str, root: str | Path | None = None) -> Benchmark:
    loaders = {"mmlu": _mmlu, "gsm8k": _gsm8k, "mt_bench": _mt_bench}
    if name not in loaders:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return loaders[name](data_root(root))
