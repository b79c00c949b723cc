"""MT-Bench's second turns: does scoring with the conversation's context, or keeping a conversation on one model,
route a follow-up better than scoring the follow-up alone? Both models are graded on both turns (GPT-4 as judge,
scores / 10). The scorer is the routing prior trained with MT-Bench held out (classifiers.lab.lodo), so that its
first turns are not in the training data of what scores them.

Routers compared on the turn-2 outcomes, each as a ranking of the 80 conversations:
- last turn only: the follow-up's score (what the gateway scores today);
- with context: the follow-up followed by the previous user turn, read up to the featurizer's budget;
- sticky: the first turn's score (every later turn goes where the first went);
- escalate_only: the larger of the two turns' standardised scores (once large, stays large)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifiers.lab.data import LARGE, SMALL, data_root
from classifiers.lab.metrics import route_metrics, routing_curve

__all__ = ["Conversation", "TurnResult", "load_second_turns", "paired_difference", "turn_two"]


@dataclass(frozen=True, slots=True)
class Conversation:
    first: str
    second: str
    small: float  # turn-2 outcomes
    large: float


@dataclass(frozen=True, slots=True)
class TurnResult:
    router: str
    apgr: float
    share_at_95: float
    minus_last_turn: tuple[float, float, float] | None  # paired bootstrap: mean, 2.5% and 97.5% quantiles


def load_second_turns(root: str | Path | None = None) -> list[Conversation]:
    folder = data_root(root) / "mt_bench"
    scores: dict[tuple[int, str, int], float] = {}
    with (folder / "judgements.jsonl").open(encoding="utf-8") as f:
        for line in f:
            j = json.loads(line)
            scores[(int(j["question_id"]), j["model"], int(j["turn"]))] = float(j["score"]) / 10
    out = []
    with (folder / "question.jsonl").open(encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            key = int(q["question_id"])
            if (key, SMALL, 2) in scores and (key, LARGE, 2) in scores:
                out.append(Conversation(q["turns"][0], q["turns"][1], scores[(key, SMALL, 2)], scores[(key, LARGE, 2)]))
    return out


def _metrics(scores: np.ndarray, small: np.ndarray, large: np.ndarray) -> tuple[float, float]:
    m = route_metrics(routing_curve(scores, small, large), small.mean(), large.mean(), 0.24, 24.7)
    return m.apgr, m.share_at_95


def paired_difference(
    a: np.ndarray, b: np.ndarray, small: np.ndarray, large: np.ndarray, draws: int = 2000
) -> tuple[float, float, float]:
    """APGR(a) - APGR(b) over bootstrap resamples of the same conversations: (mean, 2.5%, 97.5%)."""
    rng = np.random.default_rng(1)
    diffs = []
    for _ in range(draws):
        i = rng.integers(0, len(small), len(small))
        if large[i].mean() - small[i].mean() <= 0.01:
            continue
        diffs.append(_metrics(a[i], small[i], large[i])[0] - _metrics(b[i], small[i], large[i])[0])
    d = np.array(diffs)
    return float(d.mean()), float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))


def turn_two(
    conversations: list[Conversation], raw: Callable[[str], float]
) -> tuple[list[TurnResult], tuple[float, float]]:
    """Each router's APGR and large share at 95% quality on the second turns, with its paired difference from
    last-turn-only; and the random router's mean APGR and spread (200 permutations)."""
    small = np.array([c.small for c in conversations])
    large = np.array([c.large for c in conversations])
    first = np.array([raw(c.first) for c in conversations])
    last = np.array([raw(c.second) for c in conversations])

    def z(a: np.ndarray) -> np.ndarray:
        return np.asarray((a - a.mean()) / (a.std() or 1.0), dtype=np.float64)

    routers = {
        "last turn only": last,
        "with context (follow-up, then the previous user turn)": np.array(
            [raw(c.second + "\n\n" + c.first) for c in conversations]
        ),
        "sticky (the first turn's score)": first,
        "escalate_only (the larger of the two turns' scores)": np.maximum(z(first), z(last)),
    }
    results = []
    for name, scores in routers.items():
        apgr, share = _metrics(scores, small, large)
        diff = None if scores is last else paired_difference(scores, last, small, large)
        results.append(TurnResult(name, apgr, share, diff))
    rng = np.random.default_rng(0)
    randoms = np.array([_metrics(rng.random(len(small)), small, large)[0] for _ in range(200)])
    return results, (float(randoms.mean()), float(randoms.std()))
