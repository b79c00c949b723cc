"""Routing quality as RouteLLM defines it, computed exactly rather than at ten quantiles.

A router sends the items with the highest scores to the large model. For every share x of large-model
calls the curve gives the quality q(x): each item scored by the outcome of the model it went to. Items with
equal scores cannot be split by a threshold, so the curve has points only between distinct scores and is
linear across ties (which is random tie-breaking in expectation).

  PGR(x)   = (q(x) - q_small) / (q_large - q_small)      performance gap recovered
  APGR     = integral of PGR over x in [0, 1]            0.5 for a random router
  CPT(p)   = least x with PGR(x) >= p                    call-performance threshold
  share at 95% = least x with q(x) >= 0.95 * q_large
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Curve", "RouteMetrics", "oracle_curve", "random_curve", "route_metrics", "routing_curve"]


@dataclass(frozen=True, slots=True)
class Curve:
    share: np.ndarray  # x: fraction of items sent to the large model, increasing from 0 to 1
    quality: np.ndarray  # q(x)


def routing_curve(scores: np.ndarray, small: np.ndarray, large: np.ndarray) -> Curve:
    scores, small, large = (np.asarray(a, dtype=np.float64) for a in (scores, small, large))
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    gain = np.cumsum((large - small)[order])
    sorted_scores = scores[order]
    # Cut only where the next score differs: a threshold cannot separate equal scores.
    cuts = np.flatnonzero(np.diff(sorted_scores) != 0) + 1
    ks = np.concatenate([[0], cuts, [n]])
    gains = np.concatenate([[0.0], gain])[ks]
    return Curve(ks / n, (small.sum() + gains) / n)


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
