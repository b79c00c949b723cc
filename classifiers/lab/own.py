"""Learning from a deployment's own outcomes (classifiers.lab.outcomes), blended with a prior classifier (by default
the shipped one, itself trained on the public outcomes).

`fit_own` (what `triage classifier train --outcomes` ships): clusters of the outcomes' prompts, each with its
gain shrunk toward the prior by how many outcomes back it, and the item model under them
(classifiers.lab.own_clustered); checked against the prior out of fold, the prior's scores shipping where the own model
does not beat it (classifiers.lab.own_check). The blend is one linear model in the prior's feature space plus a
per-cluster offset (classifiers.clusters), each part standardised on the deployment's prompts. Platt scaling and
the suggested threshold come from the outcomes themselves, out of fold: they are the deployment's own pair, which
the prior's calibration (GPT-4 against Mixtral) is not.

`blend`, `own_weight` and `learning_curve` are the recipe used before (a ridge blended with the prior at weight
k / (k + OWN_HALF)), kept as the reference the `own traffic` protocols measure against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from classifiers.answer import answer_text
from classifiers.clusters import Clusters
from classifiers.features import FeatureSpec
from classifiers.lab.calibrate import threshold_for_quality
from classifiers.lab.embedding import offsets_many
from classifiers.lab.matrix import feature_matrix
from classifiers.lab.outcomes import Outcome
from classifiers.lab.own_check import SUPPORT
from classifiers.lab.own_clustered import OwnModel, Pairs, ridge
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


def fit_own(
    outcomes: Sequence[Outcome],
    prior: Classifier | None,
    *,
    answers: bool = False,
    meta: dict[str, object] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Classifier:
    """A classifier (an answer scorer with `answers`) from the outcomes: clusters of their prompts with a gain
    each, the item model under them (classifiers.lab.own_clustered), blended with `prior` at the weight that won out
    of fold, or the prior itself where the own model did not beat it (classifiers.lab.own_check). None: the outcomes
    alone. With `answers`, every outcome must carry `small_answer`."""
    from classifiers.lab.own_check import check_against_prior, out_of_fold
    from classifiers.lab.own_clustered import fit_clustered

    if answers and any(o.small_answer is None for o in outcomes):
        raise ValueError("training an answer scorer needs `small_answer` on every outcome record")
    spec = prior.spec if prior is not None else FeatureSpec(answer=answers)
    if spec.answer != answers:
        raise ValueError("the prior is " + ("an answer scorer" if spec.answer else "a difficulty classifier"))
    if prior is not None and prior.clusters is not None:
        raise ValueError("the prior carries clusters of another deployment's prompts: use a public prior")
    texts = [answer_text(o.prompt, o.small_answer or "") if answers else o.prompt for o in outcomes]
    small = np.array([o.small for o in outcomes])
    large = np.array([o.large for o in outcomes])
    progress(f"featurizing {len(texts)} outcomes")
    X = feature_matrix(spec, texts)
    base = (prior.coef.astype(np.float64), prior.intercept) if prior is not None else None
    pairs = Pairs(X, small, large, spec)
    info: dict[str, object] = dict(prior.meta if prior is not None else {}) | dict(meta or {})
    oof: np.ndarray | None = None
    if base is not None:
        progress("checking the own model against the prior, out of fold")
        check = check_against_prior(pairs, base, alpha=OWN_ALPHA)
        weight, oof = check.weight, check.oof
        info["own_check"] = {
            "apgr_by_own_weight": {str(w): round(a, 6) for w, a in check.apgr.items()},
            "bootstrap_support": round(check.support, 4),
            "verdict": _verdict(check.apgr, check.support, weight),
        }
    else:
        weight = 1.0
        oof = out_of_fold(pairs, None, alpha=OWN_ALPHA, folds=5)[1] if len(texts) >= 10 else None
    progress("fitting on every outcome")
    own = fit_clustered(pairs, base, alpha=OWN_ALPHA) if weight > 0 else None
    coef, intercept, clusters = _shipped(X, base, own, weight)
    raw = np.asarray(X @ coef, dtype=np.float64) + intercept
    if clusters is not None:
        raw += offsets_many(clusters, spec, X)
    oof = raw if oof is None else oof
    if prior is not None and weight == 0.0:
        a, b = prior.platt  # the prior's scores, exactly: a Platt fitted to labels it cannot rank may invert them
        oof = raw  # (the prior never saw these outcomes: its scores of them are out of fold)
    else:
        a, b = platt(oof, small, large)
        if a <= 0:  # outcomes that rank against the model out of fold: keep its order, a plain standardisation
            spread = float(oof.std()) or 1.0
            a, b = 1.0 / spread, -float(oof.mean()) / spread
    calibrated = 1.0 / (1.0 + np.exp(-(a * oof + b)))
    info |= (own.info if own is not None else {}) | {
        "own_outcomes": len(texts),
        "own_weight": round(weight, 6),
        "own_alpha": OWN_ALPHA,
        "prior_kept": base is not None and weight == 0.0,
        "suggested_threshold": round(threshold_for_quality(calibrated, small, large, 0.95), 6),
        "suggested_for": "95% of the large model's quality on the outcomes it was trained on, out of fold",
    }
    return Classifier(spec, coef.astype(np.float32), float(intercept), (a, b), info, clusters=clusters)


def _verdict(apgr: dict[float, float], support: float, weight: float) -> str:
    if not apgr:
        return "too few outcomes, or no gap between the models on them, to judge: the prior's scores ship"
    prior, best = apgr[0.0], max(apgr.values())
    if weight == 0.0:
        return (
            f"the own model did not beat the prior out of fold (best APGR {best:.3f} against the prior's "
            f"{prior:.3f}, better in {support:.0%} of bootstrap resamples, {SUPPORT:.0%} needed): the prior's scores "
            "ship, with a threshold suggested from these outcomes"
        )
    return (
        f"own model weight {weight:g} won out of fold (APGR {apgr[weight]:.3f} against the prior's {prior:.3f}, "
        f"better in {support:.0%} of bootstrap resamples)"
    )


def _shipped(
    X: Any, prior: tuple[np.ndarray, float] | None, own: OwnModel | None, weight: float
) -> tuple[np.ndarray, float, Clusters | None]:
    """(coef, intercept, clusters) of (1 - weight) * prior + weight * own, each standardised on X's rows; the
    prior unchanged at weight 0, the own model unchanged without a prior."""
    if own is None or prior is None:
        if own is None:
            assert prior is not None, "weight 0 needs a prior"
            return prior[0], prior[1], None
        return own.coef, own.intercept, own.clusters
    p = np.asarray(X @ prior[0], dtype=np.float64) + prior[1]
    o = own.raw(X)
    sp, so = float(p.std()) or 1.0, float(o.std()) or 1.0
    coef = (1 - weight) * prior[0] / sp + weight * own.coef / so
    intercept = (1 - weight) * (prior[1] - p.mean()) / sp + weight * (own.intercept - o.mean()) / so
    clusters = None
    if own.clusters is not None:
        clusters = replace(own.clusters, offsets=own.clusters.offsets * (weight / so))
    return coef, float(intercept), clusters


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
                    own = ridge(Xf[train], large[train] - small[train], alpha)
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
