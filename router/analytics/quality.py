"""`triage analytics quality`: how much of the large model's quality the routed answers kept, estimated from
labelled shadow pairs (`triage label`'s outcomes: each carries which model answered the caller), with a
bootstrap confidence interval and the number of pairs behind it. Shadow pairs are a uniform sample of routed
requests (routing.shadow.rate), so the share they show is the traffic's."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["QualityEstimate", "estimate"]


@dataclass(frozen=True, slots=True)
class QualityEstimate:
    pairs: int
    kept: float  # routed answers' quality as a share of the large model's
    low: float  # 95% bootstrap interval
    high: float
    small_share: float  # share of the pairs the small model answered

    def to_json(self) -> dict[str, float | int]:
        return {
            "pairs": self.pairs,
            "kept": self.kept,
            "low": self.low,
            "high": self.high,
            "small_share": self.small_share,
        }


def estimate(routed: np.ndarray, large: np.ndarray, small: np.ndarray, draws: int = 2000) -> QualityEstimate | None:
    """None without pairs, or when the large model scored nothing on them (nothing to keep a share of)."""
    n = len(routed)
    if n == 0 or large.sum() <= 0:
        return None
    rng = np.random.default_rng(0)
    picks = rng.integers(0, n, size=(draws, n))
    big = large[picks].sum(axis=1)
    shares = np.divide(routed[picks].sum(axis=1), big, out=np.ones(draws), where=big > 0)
    low, high = np.quantile(shares, [0.025, 0.975])
    return QualityEstimate(n, float(routed.sum() / large.sum()), float(low), float(high), float(small.mean()))
