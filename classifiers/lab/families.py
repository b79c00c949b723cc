"""Every task family with recorded outcomes, from both sources under TRIAGE_DATA, as one table for training
across domains and for leave-one-family-out evaluation.

- routellm/: MMLU, GSM8K and MT-Bench, scored for Mixtral (small) and GPT-4 (large).
- llmrouter/: 12 families scored for 9 open models. Its evaluation pair is mistral-7b-instruct-v0.3 (small)
  against llama-3.1-nemotron-51b-instruct (large): of the open pairs it has a real gap on the most families
  (measured: 10 of 12; none has one on Natural Questions or TriviaQA, whose labels mostly grade formatting).
  Train and test files overlap (119 questions): rows are deduplicated by question.

GSM8K and MMLU are one family each across both sources: holding a family out removes it from both.

Two labels per item:
- `gap`: large minus small outcome of the item's own evaluation pair (MT-Bench judge scores / 10);
- `proxy`: a difficulty label, the mean failure rate of the six 7-9B open models where they were scored
  (llmrouter), else the small model's failure (routellm). It says how hard the item is for small models in
  general, not for one model, which is what should transfer to a pair and a domain never seen."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from classifiers.lab.data import load_benchmark

__all__ = ["FAMILIES", "LARGE_OPEN_MODELS", "PEER_LARGE", "Family", "FamilyItem", "load_families"]

LLMROUTER_SMALL = "mistral-7b-instruct-v0.3"
LLMROUTER_LARGE = "llama-3.1-nemotron-51b-instruct"
PEER_LARGE = "llama-3.3-nemotron-super-49b-v1"  # the other large model scored on every family
SMALL_OPEN_MODELS = (
    "qwen2.5-7b-instruct",
    "codegemma-7b",
    "gemma-2-9b-it",
    "llama-3.1-8b-instruct",
    "llama3-chatqa-1.5-8b",
    "mistral-7b-instruct-v0.3",
)
# llama3-chatqa-1.5-70b is left out: it scores about 0 on multiple choice (formatting, see PROVENANCE.md).
LARGE_OPEN_MODELS = (LLMROUTER_LARGE, PEER_LARGE)
FAMILIES = (
    "mmlu",
    "gsm8k",
    "mt_bench",
    "math",
    "agentverse-mgsm",
    "agentverse-logicgrid",
    "gpqa",
    "commonsense_qa",
    "openbook_qa",
    "natural_qa",
    "trivia_qa",
    "human_eval",
    "commongen",
)


@dataclass(frozen=True, slots=True)
class FamilyItem:
    prompt: str
    small: float  # the evaluation pair's outcomes, in [0, 1]
    large: float
    proxy: float  # difficulty for small models in general, in [0, 1]
    source: str  # routellm | llmrouter
    # What other models actually did on the item (llmrouter only, else nan): for the oracle rows of the LODO
    # report, never for training. The small open models' failure rate without the pair's small model, and
    # another large model's outcome.
    peer_failure: float = float("nan")
    peer_large: float = float("nan")
    # The open models' gain from size (llmrouter only, else nan): the two ~50B models' mean outcome minus the six
    # 7-9B models' mean. A training label: where scale gains, less noisy than one pair's outcome gap.
    open_gap: float = float("nan")


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    items: tuple[FamilyItem, ...]

    @property
    def prompts(self) -> list[str]:
        return [i.prompt for i in self.items]

    def eval_mask(self) -> list[bool]:
        """Which items the family is scored on: its RouteLLM items (GPT-4 against Mixtral) where it has them,
        since that is the pair the product is judged with; else its open-model items."""
        routellm = [i.source == "routellm" for i in self.items]
        return routellm if any(routellm) else [True] * len(self.items)


def _routellm(root: str | Path | None) -> dict[str, list[FamilyItem]]:
    out: dict[str, list[FamilyItem]] = {}
    for name in ("mmlu", "gsm8k", "mt_bench"):
        scale = 10.0 if name == "mt_bench" else 1.0
        out[name] = [
            FamilyItem(i.prompt, i.small / scale, i.large / scale, 1.0 - i.small / scale, "routellm")
            for i in load_benchmark(name, root).items
        ]
    return out


def _llmrouter(folder: Path) -> dict[str, list[FamilyItem]]:
    tasks: dict[str, str] = {}
    for name in ("query_train.jsonl", "query_test.jsonl"):
        with (folder / name).open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    tasks[row["query"]] = row["task_name"]
    seen: dict[str, dict[str, float]] = {}
    for name in ("dcrouter_train.json", "dcrouter_test.json"):
        for row in json.loads((folder / name).read_text(encoding="utf-8")):
            seen.setdefault(row["question"], row["scores"])
    out: dict[str, list[FamilyItem]] = {}
    peers = [m for m in SMALL_OPEN_MODELS if m != LLMROUTER_SMALL]
    for question, scores in seen.items():
        proxy = 1.0 - sum(float(scores[m]) for m in SMALL_OPEN_MODELS) / len(SMALL_OPEN_MODELS)
        item = FamilyItem(
            question,
            float(scores[LLMROUTER_SMALL]),
            float(scores[LLMROUTER_LARGE]),
            proxy,
            "llmrouter",
            peer_failure=1.0 - sum(float(scores[m]) for m in peers) / len(peers),
            peer_large=float(scores[PEER_LARGE]),
            open_gap=sum(float(scores[m]) for m in LARGE_OPEN_MODELS) / len(LARGE_OPEN_MODELS) - (1.0 - proxy),
        )
        out.setdefault(tasks[question], []).append(item)
    return out


def load_families(root: str | Path | None = None) -> dict[str, Family]:
    """Every family, in FAMILIES order. `root` holds routellm/ and llmrouter/ (default: TRIAGE_DATA)."""
    from classifiers.lab.data import data_root

    routellm_root = data_root(root)
    folder = routellm_root.parent / "llmrouter"
    if not (folder / "PROVENANCE.md").exists():
        raise FileNotFoundError(
            f"no routing data at {folder}: run `triage data fetch`, or set TRIAGE_DATA to the folder that holds "
            "routellm/ and llmrouter/"
        )
    merged = _routellm(root)
    for name, items in _llmrouter(folder).items():
        merged.setdefault(name, []).extend(items)
    unknown = set(merged) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unexpected task families in the data: {sorted(unknown)}")
    return {name: Family(name, tuple(merged[name])) for name in FAMILIES if name in merged}
