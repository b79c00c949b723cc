"""Pick a routing threshold (route to the large model when score >= threshold) for an operator's goal:
a target share of large-model calls, a cost budget per request, or a quality floor on labelled prompts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np

from classifiers.lab.metrics import routing_curve

Floats: TypeAlias = Sequence[float] | np.ndarray

__all__ = [
    "PromptRecord",
    "read_prompts",
    "threshold_for_budget",
    "threshold_for_mean_quality",
    "threshold_for_quality",
    "threshold_for_share",
]


@dataclass(frozen=True, slots=True)
class PromptRecord:
    prompt: str
    small: float | None = None  # recorded outcomes, when the file has them
    large: float | None = None


def _text(record: dict[str, object]) -> str:
    if isinstance(record.get("prompt"), str):
        return str(record["prompt"])
    messages = record.get("messages")
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        content = (users[-1] if users else messages[-1]).get("content", "") if messages else ""
        if isinstance(content, list):
            return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return str(content)
    raise ValueError("each line needs a `prompt` string or a `messages` list")


def read_prompts(path: str | Path) -> list[PromptRecord]:
    """JSONL with `prompt` (or chat `messages`) and optional `small`/`large` outcomes; or plain text, one
    prompt per line."""
    records = []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if not line.lstrip().startswith("{"):
                records.append(PromptRecord(line.rstrip("\n")))
                continue
            try:
                doc = json.loads(line)
                small, large = doc.get("small"), doc.get("large")
                records.append(
                    PromptRecord(
                        _text(doc),
                        None if small is None else float(small),
                        None if large is None else float(large),
                    )
                )
            except (ValueError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None
    if not records:
        raise ValueError(f"{path}: no prompts")
    return records


def threshold_for_share(scores: Floats, share: float) -> float:
    """The threshold that sends (as nearly as ties allow) `share` of these prompts to the large model."""
    if not 0 <= share <= 1:
        raise ValueError("share must be between 0 and 1")
    ordered = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    k = round(share * len(ordered))
    if k == 0:
        return float(np.nextafter(ordered[0], np.inf))
    return float(ordered[k - 1])


def threshold_for_budget(scores: Floats, budget: float, price_small: float, price_large: float) -> float:
    """Budget and prices in the same unit per request (or per token, if requests are alike in length)."""
    if price_large <= price_small:
        raise ValueError("the large model must cost more than the small one")
    share = min(1.0, max(0.0, (budget - price_small) / (price_large - price_small)))
    return threshold_for_share(scores, share)


def threshold_for_quality(scores: Floats, small: Floats, large: Floats, floor: float) -> float:
    """Least large-model share whose quality on these labelled prompts is >= floor * the large model's."""
    s, sm, lg = (np.asarray(a, dtype=np.float64) for a in (scores, small, large))
    curve = routing_curve(s, sm, lg)
    target = floor * lg.mean()
    reached = np.flatnonzero(curve.quality >= target - 1e-12)
    share = float(curve.share[reached[0]]) if len(reached) else 1.0
    return threshold_for_share(s, share)


def threshold_for_mean_quality(
    scores: np.ndarray, small: np.ndarray, large: np.ndarray, groups: Sequence[np.ndarray], floor: float
) -> float:
    """The highest threshold (fewest large-model calls) whose quality, as a share of the large model's, averages
    at least `floor` over the groups (index arrays into scores, small and large), each group weighing the same;
    -inf if none does. Pooled items would let the largest group set the threshold for traffic that looks nothing
    like it. One sort per group: every candidate threshold is scored at once."""
    candidates = np.unique(np.concatenate([scores[g] for g in groups]))[::-1]
    kept = np.zeros(len(candidates))
    for g in groups:
        s, sm, lg = scores[g], small[g], large[g]
        gained = np.concatenate([[0.0], np.cumsum((lg - sm)[np.argsort(-s, kind="stable")])])
        sent = len(s) - np.searchsorted(np.sort(s), candidates, "left")  # items at or above each threshold
        kept += (sm.sum() + gained[sent]) / len(s) / lg.mean()
    reached = np.flatnonzero(kept / len(groups) >= floor - 1e-12)
    return float(candidates[reached[0]]) if len(reached) else float("-inf")
