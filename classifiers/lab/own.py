"""Learning from a deployment's own outcomes (classifiers.lab.outcomes): a ridge fitted to their outcome gap,
blended with a prior classifier (by default the shipped one, itself trained on the public outcomes).

The blend is one linear model in the prior's feature space, so it ships in the same file format: the weighted
sum of the two models' scores, each standardised on the deployment's prompts. The own model's weight grows with
the number of outcomes, w = k / (k + OWN_HALF): few outcomes mostly keep the prior, many mostly replace it.
OWN_HALF and OWN_ALPHA were chosen by the `own traffic` protocol (`triage classifier eval --protocol "own
traffic"`): each family held out of the prior, k of its items as outcomes, the rest to score; the README gives
the table. Platt scaling and the suggested threshold come from the outcomes themselves, out of fold: they are
the deployment's own pair, which the prior's calibration (GPT-4 against Mixtral) is not."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from classifiers.answer import answer_text
from classifiers.features import FeatureSpec
from classifiers.lab.calibrate import threshold_for_quality
from classifiers.lab.matrix import feature_matrix
from classifiers.lab.outcomes import Outcome
from classifiers.lab.train import platt
from classifiers.model import Classifier

__all__ = ["OWN_ALPHA", "OWN_HALF", "blend", "fit_own", "learning_curve", "own_weight"]

OWN_ALPHA = 30.0  # ridge regularisation of the own model
OWN_HALF = 100  # outcomes at which the own model and the prior weigh the same


def own_weight(k: int, half: float = OWN_HALF) -> float:
    return k / (k + half) if k > 0 else 0.0


def blend(
    X: Any, prior: tuple[np.ndarray, float] | None, own: tuple[np.ndarray, float], weight: float
) -> tuple[np.ndarray, float]:
    """(coef, intercept) of (1 - weight) * prior + weight * own, each standardised on X's rows."""
    if prior is None:
        return own
    parts = []
    for (coef, intercept), share in ((prior, 1.0 - weight), (own, weight)):
        raw = np.asarray(X @ coef, dtype=np.float64) + intercept
        spread = float(raw.std()) or 1.0
        parts.append((np.asarray(coef, dtype=np.float64) * share / spread, share * (intercept - raw.mean()) / spread))
    return parts[0][0] + parts[1][0], parts[0][1] + parts[1][1]


def _ridge(X: Any, gap: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import Ridge

    model = Ridge(alpha=alpha, solver="sparse_cg", tol=1e-6, max_iter=3000).fit(X, gap)
    return np.asarray(model.coef_, dtype=np.float64), float(model.intercept_)


def fit_own(
    outcomes: Sequence[Outcome],
    prior: Classifier | None,
    *,
    answers: bool = False,
    meta: dict[str, object] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Classifier:
    """A classifier (an answer scorer with `answers`) from the outcomes, blended with `prior` (None: the
    outcomes alone). With `answers`, every outcome must carry `small_answer`."""
    alpha, half, folds = OWN_ALPHA, OWN_HALF, 5
    from sklearn.model_selection import KFold

    if answers and any(o.small_answer is None for o in outcomes):
        raise ValueError("training an answer scorer needs `small_answer` on every outcome record")
    spec = prior.spec if prior is not None else FeatureSpec(answer=answers)
    if spec.answer != answers:
        raise ValueError("the prior is " + ("an answer scorer" if spec.answer else "a difficulty classifier"))
    texts = [answer_text(o.prompt, o.small_answer or "") if answers else o.prompt for o in outcomes]
    small = np.array([o.small for o in outcomes])
    large = np.array([o.large for o in outcomes])
    progress(f"featurizing {len(texts)} outcomes")
    X = feature_matrix(spec, texts)
    base = (prior.coef.astype(np.float64), prior.intercept) if prior is not None else None
    weight = own_weight(len(texts), half) if prior is not None else 1.0
    oof = np.zeros(len(texts))
    if len(texts) >= 2 * folds:
        for i, (tr, te) in enumerate(KFold(folds, shuffle=True, random_state=0).split(texts), 1):
            progress(f"calibration fold {i}/{folds}")
            own = _ridge(X[tr], large[tr] - small[tr], alpha)
            coef, intercept = blend(X[tr], base, own, own_weight(len(tr), half) if base is not None else 1.0)
            oof[te] = X[te] @ coef + intercept
    progress("fitting on every outcome")
    coef, intercept = blend(X, base, _ridge(X, large - small, alpha), weight)
    if not oof.any():
        oof = X @ coef + intercept
    a, b = platt(oof, small, large)
    calibrated = 1.0 / (1.0 + np.exp(-(a * oof + b)))
    info: dict[str, object] = dict(prior.meta if prior is not None else {}) | dict(meta or {})
    info |= {
        "own_outcomes": len(texts),
        "own_weight": round(weight, 6),
        "own_alpha": alpha,
        "suggested_threshold": round(threshold_for_quality(calibrated, small, large, 0.95), 6),
        "suggested_for": "95% of the large model's quality on the outcomes it was trained on, out of fold",
    }
    return Classifier(spec, coef.astype(np.float32), float(intercept), (a, b), info)


def learning_curve(
    X: Any,
    families: Sequence[Any],
    prior_scores: Sequence[np.ndarray],
    *,
    ks: Sequence[int] = (0, 100, 300, 1000),
    seeds: int = 5,
) -> dict[str, dict[int, tuple[float, float]]]:
    """The `own traffic` protocol: for each scored family, k of its graded items (drawn `seeds` times) become a
    deployment's outcomes, blended with the prior trained without the family (`prior_scores`, from
    classifiers.lab.lodo.held_out_scores), and the family's other items are scored. Per family and k: the mean APGR
    of the blend and of the prior alone on the same items. A k is left out where fewer than 100 items would be
    left to score."""
    from classifiers.lab.lodo import MIN_GAP, row_index

    alpha, half = OWN_ALPHA, OWN_HALF
    rows = row_index(families)
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for fam, fam_rows, scores in zip(families, rows, prior_scores, strict=True):
        graded = np.flatnonzero(fam.eval_mask())
        small = np.array([fam.items[i].small for i in graded])
        large = np.array([fam.items[i].large for i in graded])
        if large.mean() - small.mean() < MIN_GAP:
            continue
        Xf, pf = X[fam_rows[graded]], np.asarray(scores)[graded]
        for k in ks:
            if k and len(graded) - k < 100:
                continue
            got, alone = [], []
            for seed in range(seeds if k else 1):
                order = np.random.default_rng(seed).permutation(len(graded))
                train, test = order[:k], order[k:]
                s = pf[test]
                alone.append(_apgr(s, small[test], large[test]))
                if k:
                    own = _ridge(Xf[train], large[train] - small[train], alpha)
                    own_train, own_test = Xf[train] @ own[0] + own[1], Xf[test] @ own[0] + own[1]
                    w = own_weight(k, half)
                    s = (1 - w) * _z(pf[test], pf[train]) + w * _z(own_test, own_train)
                got.append(_apgr(s, small[test], large[test]))
            out.setdefault(fam.name, {})[k] = (float(np.mean(got)), float(np.mean(alone)))
    return out


def _apgr(scores: np.ndarray, small: np.ndarray, large: np.ndarray) -> float:
    from classifiers.lab.metrics import route_metrics, routing_curve

    return float(route_metrics(routing_curve(scores, small, large), small.mean(), large.mean(), 0.24, 24.7).apgr)


def _z(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    spread = float(reference.std()) or 1.0
    return np.asarray((np.asarray(values) - reference.mean()) / spread, dtype=np.float64)
