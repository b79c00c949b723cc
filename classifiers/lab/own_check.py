"""Never worse than the prior: the own-outcome model is checked against the prior out of fold, on the same
outcomes, before it ships.

Each fold's own model (classifiers.lab.own_clustered) scores the fold it never saw; the prior scores it too; blends of
the two (each standardised on its fold) are ranked by APGR over all outcomes. The best blend weight ships only
if it beats the prior alone in at least SUPPORT (3 in 4) of the outcomes' bootstrap resamples (a paired comparison
on the same items: a margin as wide as a random router's spread kept the prior where a few hundred outcomes beat
it on the pooled mix; no margin would ship the luckiest of several weights on noise); else the prior ships.
The cost of not checking: a family whose 1,000 own outcomes gave a model below random (0.46) where the prior kept
0.50."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classifiers.lab.metrics import route_metrics, routing_curve
from classifiers.lab.own_clustered import Pairs, fit_clustered

__all__ = [
    "BLEND_WEIGHTS",
    "RESAMPLES",
    "SUPPORT",
    "Check",
    "check_against_prior",
    "out_of_fold",
    "paired_support",
    "standardised",
]

BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the own model's weight; 0 is the prior alone
SUPPORT = 0.75  # share of bootstrap resamples in which the own blend must beat the prior (3 to 1)
RESAMPLES = 200


@dataclass(frozen=True, slots=True)
class Check:
    weight: float  # the blend weight that ships (0.0: the prior)
    apgr: dict[float, float]  # out-of-fold APGR per blend weight
    support: float  # share of bootstrap resamples in which the best blend beat the prior
    oof: np.ndarray  # out-of-fold scores of the weight that ships (standardised blend), for calibration

    @property
    def prior_kept(self) -> bool:
        return self.weight == 0.0


def _apgr(scores: np.ndarray, small: np.ndarray, large: np.ndarray) -> float:
    return route_metrics(routing_curve(scores, small, large), small.mean(), large.mean(), 0.24, 24.7).apgr


def paired_support(ours: np.ndarray, theirs: np.ndarray, small: np.ndarray, large: np.ndarray) -> float:
    """The share of bootstrap resamples of the items in which `ours` routes them better (APGR) than `theirs`
    (resamples with no gap to recover are skipped)."""
    rng = np.random.default_rng(0)
    wins = total = 0
    for _ in range(RESAMPLES):
        i = rng.integers(0, len(small), len(small))
        if large[i].mean() - small[i].mean() <= 0:
            continue
        total += 1
        wins += _apgr(ours[i], small[i], large[i]) > _apgr(theirs[i], small[i], large[i])
    return wins / total if total else 0.0


def standardised(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    spread = float(reference.std()) or 1.0
    return np.asarray((values - reference.mean()) / spread, dtype=np.float64)


def check_against_prior(pairs: Pairs, prior: tuple[np.ndarray, float], *, alpha: float, folds: int = 5) -> Check:
    """The blend weight to ship (see the module docstring). Outcomes with no gap to rank (the large model no
    better than the small on average) or too few to fold keep the prior."""
    small, large = pairs.small, pairs.large
    p = np.asarray(pairs.X @ prior[0], dtype=np.float64) + prior[1]
    if len(small) < 2 * folds or large.mean() - small.mean() <= 0:
        return Check(0.0, {}, 0.0, p)
    z_prior, z_own = out_of_fold(pairs, prior, alpha=alpha, folds=folds)
    apgr = {w: _apgr((1 - w) * z_prior + w * z_own, small, large) for w in BLEND_WEIGHTS}
    best = max(BLEND_WEIGHTS, key=lambda w: (apgr[w], w))
    chosen = (1 - best) * z_prior + best * z_own
    support = paired_support(chosen, z_prior, small, large) if best > 0 else 0.0
    if support >= SUPPORT:
        return Check(best, apgr, support, chosen)
    return Check(0.0, apgr, support, z_prior)


def out_of_fold(
    pairs: Pairs, prior: tuple[np.ndarray, float] | None, *, alpha: float, folds: int
) -> tuple[np.ndarray, np.ndarray]:
    """(the prior's, the own model's) scores of every outcome by models that never saw it, each standardised on
    its fold (the prior's are zeros without a prior)."""
    from sklearn.model_selection import KFold

    X, n = pairs.X, len(pairs.small)
    p = np.asarray(X @ prior[0], dtype=np.float64) + prior[1] if prior is not None else np.zeros(n)
    z_prior, z_own = np.zeros(n), np.zeros(n)
    for tr, te in KFold(folds, shuffle=True, random_state=0).split(np.arange(n)):
        own = fit_clustered(pairs.rows(tr), prior, alpha=alpha)
        # standardised on the fold's own rows (no labels read): a fold model's training rows spread wider than new
        # ones, by a different factor in each fold, which would mix the folds' scales
        held = own.raw(X[te])
        z_own[te] = standardised(held, held)
        z_prior[te] = standardised(p[te], p[te])
    return z_prior, z_own
