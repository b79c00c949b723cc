"""Routing quality as RouteLLM defines it, computed exactly rather than at ten quantiles.

A router sends the items with the highest scores to the large model. For every share x of large-model
calls the curve gives the quality q(x): each item scored by the outcome of the model it went to. Items with
equal scores cannot be split by a threshold, so the curve has points only between distinct scores and is
linear across ties (which is random tie-breaking in expectation).

  PGR(x)   = (q(x) - q_small) / (q_large - q_small)      performance gap recovered
  APGR     = integral of PGR over x in [0, 1]            0.5 for a random router
  CPT(p)   = least x with PGR(x) >= p                    call-performance threshold
  share at 95% = least x with q(x) >= 0.95 * q_large

Pooled: a gateway sees a mix of kinds of request, so families are also judged as one stream. Each family's items
weigh 1/n_family (every family counts the same, whatever its size), and the curve runs over the weighted pool:
it asks whether the scores rank items within a family well AND put the families that gain most first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Curve",
    "Part",
    "RouteMetrics",
    "oracle_curve",
    "pooled_curve",
    "pooled_random",
    "pooled_route_metrics",
    "random_curve",
    "route_metrics",
    "routing_curve",
]

# One family's held-out (scores, small outcomes, large outcomes), equal lengths.
Part = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True, slots=True)
class Curve:
    share: np.ndarray  # x: fraction of items sent to the large model, increasing from 0 to 1
    quality: np.ndarray  # q(x)


def routing_curve(scores: np.ndarray, small: np.ndarray, large: np.ndarray, weights: np.ndarray | None = None) -> Curve:
    """`weights`: each item's weight in the share and the quality (default: all alike)."""
    scores, small, large = (np.asarray(a, dtype=np.float64) for a in (scores, small, large))
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    # Cut only where the next score differs: a threshold cannot separate equal scores.
    cuts = np.flatnonzero(np.diff(sorted_scores) != 0) + 1
    ks = np.concatenate([[0], cuts, [n]])
    if weights is None:
        gain = np.cumsum((large - small)[order])
        gains = np.concatenate([[0.0], gain])[ks]
        return Curve(ks / n, (small.sum() + gains) / n)
    w = np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    mass = np.concatenate([[0.0], np.cumsum(w[order])])[ks]
    gains = np.concatenate([[0.0], np.cumsum((w * (large - small))[order])])[ks]
    share = mass / total
    share[-1] = 1.0  # exactly, whatever the rounding of the sum
    return Curve(share, (float((w * small).sum()) + gains) / total)


def random_curve(small: np.ndarray, large: np.ndarray) -> Curve:
    """A router that picks the large model at random: the expected quality is linear in the share."""
    return Curve(np.array([0.0, 1.0]), np.array([float(np.mean(small)), float(np.mean(large))]))


def oracle_curve(small: np.ndarray, large: np.ndarray) -> Curve:
    """Knows the outcomes: sends first the items where the large model gains the most."""
    small, large = np.asarray(small, dtype=np.float64), np.asarray(large, dtype=np.float64)
    return routing_curve(large - small + np.linspace(0, 1e-9, len(small)), small, large)


def _first_share(curve: Curve, target: float) -> float:
    """Least share at which the (piecewise linear) curve reaches `target`; 1.0 if it never does."""
    x, q = curve.share, curve.quality
    if q[0] >= target:
        return 0.0
    above = np.flatnonzero(q >= target - 1e-12)
    if len(above) == 0:
        return float("nan")
    i = int(above[0])
    x0, x1, q0, q1 = x[i - 1], x[i], q[i - 1], q[i]
    return float(x0 + (target - q0) / (q1 - q0) * (x1 - x0)) if q1 != q0 else float(x1)


@dataclass(frozen=True, slots=True)
class RouteMetrics:
    apgr: float
    cpt50: float
    cpt80: float
    share_at_95: float  # share of large-model calls needed for 95% of the large model's quality
    quality_at_95: float
    saved_free_small: float  # cost saved at that share, small model free (RouteLLM's convention)
    saved_priced: float  # cost saved at that share with the given prices


def route_metrics(
    curve: Curve,
    q_small: float,
    q_large: float,
    price_small: float,
    price_large: float,
    *,
    cascade: bool = False,
) -> RouteMetrics:
    """`cascade`: the small model answers every item first, so its cost is paid on escalated items too."""
    gap = q_large - q_small
    pgr = (curve.quality - q_small) / gap
    apgr = float(np.trapezoid(pgr, curve.share))
    share95 = _first_share(curve, 0.95 * q_large)
    quality95 = float(np.interp(share95, curve.share, curve.quality)) if not np.isnan(share95) else float("nan")
    cost = share95 * price_large + (1.0 if cascade else 1 - share95) * price_small
    return RouteMetrics(
        apgr=apgr,
        cpt50=_first_share(curve, q_small + 0.5 * gap),
        cpt80=_first_share(curve, q_small + 0.8 * gap),
        share_at_95=share95,
        quality_at_95=quality95,
        saved_free_small=1 - share95,
        saved_priced=1 - cost / price_large,
    )


def _pool(parts: Sequence[Part]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scores, small, large, weights) of the pool: every family's items, each weighing 1/n_family."""
    if not parts:
        raise ValueError("pooling needs at least one family")
    arrays = [tuple(np.asarray(a, dtype=np.float64).ravel() for a in part) for part in parts]
    for k, (s, lo, hi) in enumerate(arrays):
        if not len(s) or not len(s) == len(lo) == len(hi):
            raise ValueError(f"family {k}: scores, small and large must be non-empty and of equal length")
    scores, small, large = (np.concatenate([a[j] for a in arrays]) for j in range(3))
    weights = np.concatenate([np.full(len(a[0]), 1.0 / len(a[0])) for a in arrays])
    return scores, small, large, weights


def pooled_curve(parts: Sequence[Part]) -> tuple[Curve, float, float]:
    """The routing curve of the families pooled into one stream with equal family weight, and the pool's
    (q_small, q_large): the means of the families' own qualities."""
    scores, small, large, weights = _pool(parts)
    q_small = float((weights * small).sum() / weights.sum())
    q_large = float((weights * large).sum() / weights.sum())
    return routing_curve(scores, small, large, weights), q_small, q_large


def pooled_route_metrics(parts: Sequence[Part], price_small: float = 0.24, price_large: float = 24.7) -> RouteMetrics:
    """APGR, large share at 95% quality etc. of the pool (default prices: RouteLLM's Mixtral / GPT-4).
    Raises ValueError when the pool's large model is not better than its small one (PGR is undefined)."""
    curve, q_small, q_large = pooled_curve(parts)
    if q_large - q_small <= 0:
        raise ValueError(f"the pool has no gap to recover (q_small {q_small:.4f}, q_large {q_large:.4f})")
    return route_metrics(curve, q_small, q_large, price_small, price_large)


def pooled_random(parts: Sequence[Part], draws: int = 200, seed: int = 0) -> tuple[float, float]:
    """A random router on the same pool: the (mean, standard deviation) of its pooled APGR over `draws` draws
    of uniform scores. The spread is the noise a pooled figure has to clear."""
    rng = np.random.default_rng(seed)
    apgrs = np.array(
        [
            pooled_route_metrics([(rng.random(len(np.asarray(s))), lo, hi) for s, lo, hi in parts]).apgr
            for _ in range(draws)
        ]
    )
    return float(apgrs.mean()), float(apgrs.std())
