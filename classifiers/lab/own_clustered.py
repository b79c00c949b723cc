"""The own-outcome model: which kinds of request gain from the large model, then which items.

Outcomes teach the coarse fact before the fine one. With k outcomes:
1. the prompts are clustered without labels (k-means on classifiers.clusters' embedding, K = sqrt(k / 2) clusters,
   at least 2 and at most MAX_CLUSTERS);
2. each cluster's mean gain (large minus small) is shrunk toward what the prior says of the cluster, by how many
   outcomes back it: an empirical-Bayes (one-way random effects) estimate, the between-cluster variance from the
   data, so that a cluster of three outcomes moves little and one of three hundred moves to its own mean;
3. within clusters the prior's ranking is kept at the scale its within-cluster slope on the outcomes earns (never
   inverted), and a ridge on the outcomes' features learns what is left.

All of it is one linear model plus a per-cluster offset, in gain units:
    raw(x) = coef . x + intercept + offset[nearest cluster of x]."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from classifiers.clusters import FOLD_BITS, STRUCTURE_SCALE, Clusters
from classifiers.features import FeatureSpec
from classifiers.lab.embedding import embed_many, offsets_many

__all__ = ["MAX_CLUSTERS", "OwnModel", "Pairs", "cluster_count", "fit_clustered", "ridge", "shrunk_means"]

MAX_CLUSTERS = 40


def cluster_count(n: int) -> int:
    """K for n outcomes: sqrt(n / 2) (the usual rule of thumb), within [2, MAX_CLUSTERS]."""
    return max(2, min(MAX_CLUSTERS, round(math.sqrt(n / 2))))


@dataclass(frozen=True)
class Pairs:
    """Outcomes as the fitters read them: their features (CSR rows), each model's outcome, the feature spec."""

    X: Any
    small: np.ndarray
    large: np.ndarray
    spec: FeatureSpec

    @property
    def gain(self) -> np.ndarray:
        return np.asarray(self.large, dtype=np.float64) - np.asarray(self.small, dtype=np.float64)

    def rows(self, index: np.ndarray) -> Pairs:
        return Pairs(self.X[index], self.small[index], self.large[index], self.spec)


@dataclass
class OwnModel:
    spec: FeatureSpec
    coef: np.ndarray  # float64, spec.width
    intercept: float
    clusters: Clusters | None
    info: dict[str, object]

    def raw(self, X: Any) -> np.ndarray:
        out = np.asarray(X @ self.coef, dtype=np.float64) + self.intercept
        return out if self.clusters is None else out + offsets_many(self.clusters, self.spec, X)


def shrunk_means(
    values: np.ndarray, labels: np.ndarray, targets: np.ndarray, k: int
) -> tuple[np.ndarray, dict[str, float]]:
    """Per cluster, its mean of `values` shrunk toward `targets[c]`: t + B (mean - t), B = tau2 / (tau2 + s2 / n).
    s2 is the pooled within-cluster variance; tau2 the variance of the clusters' true deviations from their
    targets, by the method of moments (0 when the clusters differ no more than chance makes them)."""
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.bincount(labels, weights=values, minlength=k)
    means = np.divide(sums, counts, out=targets.astype(np.float64).copy(), where=counts > 0)
    n, used = len(values), int((counts > 0).sum())
    within = float(((values - means[labels]) ** 2).sum()) / max(n - used, 1)
    dev = np.where(counts > 0, means - targets, 0.0)
    between = float((counts * dev**2).sum())
    spread = n - float((counts**2).sum()) / n
    tau2 = max(0.0, (between - (used - 1) * within) / spread) if spread > 0 else 0.0
    share = np.where(counts > 0, tau2 / (tau2 + within / np.maximum(counts, 1) + 1e-12), 0.0)
    return targets + share * dev, {"tau2": tau2, "within_var": within}


def ridge(X: Any, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import Ridge

    model = Ridge(alpha=alpha, solver="sparse_cg", tol=1e-6, max_iter=3000).fit(X, y)
    return np.asarray(model.coef_, dtype=np.float64), float(model.intercept_)


def _kmeans(Z: Any, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    distinct = len({(tuple(r.indices), tuple(np.round(r.data, 6))) for r in Z})
    km = KMeans(n_clusters=min(k, distinct), n_init=3, random_state=seed).fit(Z)
    return np.asarray(km.cluster_centers_), np.asarray(km.labels_, dtype=np.int64)


def fit_clustered(
    pairs: Pairs, prior: tuple[np.ndarray, float] | None, *, alpha: float, clusters: bool = True
) -> OwnModel:
    """The model of the module docstring from the outcomes; `prior` is (coef, intercept) over the same features,
    or None. `clusters=False`: one cluster (the item level alone)."""
    X, spec, gain = pairs.X, pairs.spec, pairs.gain
    n = len(gain)
    p = np.asarray(X @ prior[0], dtype=np.float64) + prior[1] if prior is not None else np.zeros(n)
    if clusters and n >= 4:
        centroids, labels = _kmeans(embed_many(spec, X), cluster_count(n), seed=0)
    else:
        centroids, labels = np.zeros((1, (1 << FOLD_BITS) + 12)), np.zeros(n, dtype=np.int64)
    k = len(centroids)
    counts = np.maximum(np.bincount(labels, minlength=k), 1)
    p_means = np.bincount(labels, weights=p, minlength=k) / counts
    g_means = np.bincount(labels, weights=gain, minlength=k) / counts
    within_p, within_g = p - p_means[labels], gain - g_means[labels]
    # The prior's slope within clusters, never below 0: a prior is kept or muted, not turned upside down.
    denom = float(within_p @ within_p)
    slope = max(0.0, float(within_p @ within_g) / denom) if denom > 0 else 0.0
    mean_g, mean_p = float(gain.mean()), float(p.mean())
    targets = mean_g + slope * (p_means - mean_p)  # what the prior says of each cluster, in gain units
    levels, stats = shrunk_means(gain, labels, targets, k)
    # raw = level[c] + slope (p - p_mean[c]) + ridge(x): the ridge learns what the two leave
    rest = gain - levels[labels] - slope * within_p
    own_coef, own_intercept = ridge(X, rest, alpha)
    coef = own_coef + (slope * prior[0] if prior is not None else 0.0)
    intercept = own_intercept + (slope * prior[1] if prior is not None else 0.0)
    offsets = levels - slope * p_means
    model_clusters = None
    if k > 1:
        model_clusters = Clusters(FOLD_BITS, STRUCTURE_SCALE, centroids, offsets)
    else:
        intercept += float(offsets[0])
    info: dict[str, object] = {
        "own_clusters": k,
        "own_prior_slope": round(slope, 6),
        "own_cluster_tau2": round(stats["tau2"], 8),
    }
    return OwnModel(spec, coef, intercept, model_clusters, info)
