"""Fit a difficulty classifier on recorded outcomes of a small and a large model.

The label is the outcome gap, large minus small (in {-1, 0, 1} for right/wrong benchmarks): a ridge
regression on hashed n-grams and structure predicts how much the large model gains on a prompt, which
ranks prompts better than "is the small model wrong" (measured: APGR 0.665 vs 0.585 in 5-fold CV on MMLU);
alpha 10 rather than 3 transfers better across benchmarks at no cost within them.
A Platt scaling fitted on out-of-fold predictions turns the raw gain into P(large strictly better)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from classifiers.features import FeatureSpec
from classifiers.lab.calibrate import threshold_for_mean_quality, threshold_for_quality
from classifiers.lab.families import Family
from classifiers.lab.matrix import feature_matrix
from classifiers.model import Classifier

__all__ = ["DEFAULT_ALPHA", "fit", "fit_prior", "fit_raw", "platt"]

DEFAULT_ALPHA = 10.0


# scikit-learn is imported inside the functions that train: the gateway imports this module (through the CLI)
# but never trains, and scikit-learn costs ~80 MB of memory.


def fit_raw(X: Any, small: np.ndarray, large: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge weights and intercept predicting large - small, from a sparse matrix. sparse_cg is deterministic."""
    from sklearn.linear_model import Ridge

    ridge = Ridge(alpha=alpha, solver="sparse_cg", tol=1e-6, max_iter=2000)
    ridge.fit(X, np.asarray(large, dtype=np.float64) - np.asarray(small, dtype=np.float64))
    return np.asarray(ridge.coef_, dtype=np.float32), float(ridge.intercept_)


def platt(raw: np.ndarray, small: np.ndarray, large: np.ndarray) -> tuple[float, float]:
    """(a, b) of sigmoid(a * raw + b) fitted to whether the large model did strictly better."""
    from sklearn.linear_model import LogisticRegression

    y = (np.asarray(large) > np.asarray(small)).astype(int)
    if y.min() == y.max():
        return 1.0, 0.0
    lr = LogisticRegression(C=1e4, max_iter=1000).fit(raw.reshape(-1, 1), y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def fit(
    texts: Sequence[str],
    small: Sequence[float],
    large: Sequence[float],
    *,
    spec: FeatureSpec | None = None,
    alpha: float = DEFAULT_ALPHA,
    calibration_folds: int = 5,
    meta: dict[str, object] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Classifier:
    from sklearn.model_selection import KFold

    spec = spec or FeatureSpec()
    small_a, large_a = np.asarray(small, dtype=np.float64), np.asarray(large, dtype=np.float64)
    progress(f"featurizing {len(texts)} prompts")
    X = feature_matrix(spec, list(texts))
    oof = np.zeros(len(texts))
    if calibration_folds >= 2 and len(texts) >= 2 * calibration_folds:
        for i, (tr, te) in enumerate(KFold(calibration_folds, shuffle=True, random_state=0).split(X), 1):
            progress(f"calibration fold {i}/{calibration_folds}")
            coef, intercept = fit_raw(X[tr], small_a[tr], large_a[tr], alpha)
            oof[te] = X[te] @ coef + intercept
    progress("fitting on all prompts")
    coef, intercept = fit_raw(X, small_a, large_a, alpha)
    if not oof.any():
        oof = X @ coef + intercept
    a, b = platt(oof, small_a, large_a)
    calibrated = 1.0 / (1.0 + np.exp(-(a * oof + b)))
    info = dict(meta or {})
    # The threshold that kept 95% of the large model's quality on held-out folds of the training data.
    info["suggested_threshold"] = round(threshold_for_quality(calibrated, small_a, large_a, 0.95), 6)
    info["suggested_for"] = "95% of the large model's quality, out-of-fold on the training data"
    return Classifier(spec, coef, intercept, (a, b), info)


def fit_prior(
    families: Sequence[Family],
    recipe_name: str,
    *,
    spec: FeatureSpec | None = None,
    folds: int = 5,
    meta: dict[str, object] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Classifier:
    """A routing prior trained across task families by a named recipe (classifiers.lab.lodo). Its Platt scaling and
    suggested threshold come from out-of-fold scores of the items graded with the RouteLLM pair (GPT-4 against
    Mixtral), the pair whose quality the product promises to keep."""
    from classifiers.lab.lodo import RECIPES, fit_recipe, row_index

    recipe = RECIPES[recipe_name]
    spec = spec or recipe.serving_spec(FeatureSpec())
    progress(f"featurizing {sum(len(f.items) for f in families)} prompts from {len(families)} families")
    X = feature_matrix(spec, [p for f in families for p in f.prompts])
    rows = row_index(families)
    oof = np.zeros(X.shape[0])
    rng = np.random.default_rng(0)
    fold_of = [rng.permutation(len(r)) % folds for r in rows]
    for k in range(folds):
        progress(f"calibration fold {k + 1}/{folds}")
        train = [
            Family(f.name, tuple(i for i, fo in zip(f.items, fk, strict=True) if fo != k))
            for f, fk in zip(families, fold_of, strict=True)
        ]
        coef, intercept = fit_recipe(X, spec, train, [r[fk != k] for r, fk in zip(rows, fold_of, strict=True)], recipe)
        for r, fk in zip(rows, fold_of, strict=True):
            oof[r[fk == k]] = X[r[fk == k]] @ coef + intercept
    progress("fitting on all prompts")
    coef, intercept = fit_recipe(X, spec, families, rows, recipe)
    graded = np.array([i.source == "routellm" for f in families for i in f.items])
    small = np.array([i.small for f in families for i in f.items])
    large = np.array([i.large for f in families for i in f.items])
    a, b = platt(oof[graded], small[graded], large[graded])
    calibrated = 1.0 / (1.0 + np.exp(-(a * oof + b)))
    groups = [r[graded[r]] for r in rows if graded[r].any()]
    info = dict(meta or {})
    # Over the three families, each weighing the same: pooled, MMLU's 14,037 items would set it alone.
    threshold = threshold_for_mean_quality(calibrated, small, large, groups, 0.95)
    info["suggested_threshold"] = round(max(threshold, 0.0), 6)
    info["suggested_for"] = (
        "95% of the large model's quality on average over the GPT-4/Mixtral-graded families, each weighing "
        "the same (out of fold)"
    )
    return Classifier(spec, coef.astype(np.float32), float(intercept), (a, b), info)
