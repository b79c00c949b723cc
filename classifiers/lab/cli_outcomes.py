"""`triage classifier ... --outcomes`: training, evaluating and calibrating on a deployment's own outcomes
(classifiers.lab.outcomes), and the `own traffic` protocol that measures how much they help."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from classifiers.lab.matrix import feature_matrix
from classifiers.lab.outcomes import Outcome, OutcomesError, read_outcomes
from classifiers.model import Classifier

__all__ = [
    "calibrate_outcomes",
    "eval_outcomes",
    "eval_own_traffic",
    "eval_own_traffic_mix",
    "load_or_exit",
    "train_outcomes",
]

DEFAULT_OUT = "own-classifier.json"
DEFAULT_ANSWERS_OUT = "own-answer-scorer.json"


def load_or_exit(paths: Sequence[str]) -> list[Outcome]:
    """The outcome records, or exit 2 with each bad line named: never a traceback."""
    try:
        return read_outcomes(paths)
    except OutcomesError as exc:
        print(f"triage: {exc}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"triage: cannot read outcomes: {exc}", file=sys.stderr)
    raise SystemExit(2)


def _classifier_or_exit(path: str | Path) -> Classifier:
    import classifiers

    try:
        return classifiers.load(path)
    except classifiers.ClassifierFileError as exc:
        print(f"triage: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def train_outcomes(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    import classifiers
    from classifiers.lab.own import fit_own

    outcomes = load_or_exit(args.outcomes)
    if args.answers and any(o.small_answer is None for o in outcomes):
        lines = sum(o.small_answer is None for o in outcomes)
        print(f"triage: --answers needs `small_answer` on every record ({lines} lack it)", file=sys.stderr)
        return 2
    prior = None
    if args.prior != "none":
        default = classifiers.default_answer_path() if args.answers else classifiers.default_path()
        prior = _classifier_or_exit(default if args.prior == "default" else args.prior)
        if prior.spec.answer != args.answers:
            kind = "an answer scorer" if prior.spec.answer else "a prompt classifier"
            print(f"triage: --prior {args.prior} is {kind}", file=sys.stderr)
            return 2
    say(f"training on {len(outcomes)} outcomes" + (f" blended with the prior ({args.prior})" if prior else ""))
    meta: dict[str, object] = {"own_files": [Path(p).name for p in args.outcomes], "prior": args.prior}
    if args.answers:
        meta["kind"] = "answer_scorer"
    model = fit_own(outcomes, prior, answers=args.answers, meta=meta, progress=say)
    out = Path(args.out or (DEFAULT_ANSWERS_OUT if args.answers else DEFAULT_OUT))
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    key = "cascade.answer_scorer" if args.answers else "routing.classifier_path"
    check = model.meta.get("own_check")
    if isinstance(check, dict):
        print(("PRIOR KEPT: " if model.meta["prior_kept"] else "") + str(check["verdict"]))
    clusters = f", {model.meta['own_clusters']} clusters of your prompts" if model.meta.get("own_clusters") else ""
    say(
        f"wrote {out}: own model weight {model.meta['own_weight']}{clusters}, suggested threshold "
        f"{model.meta['suggested_threshold']}; point {key} at it and send the gateway SIGHUP to load it"
    )
    return 0


def _metrics_row(name: str, scores: Sequence[float] | np.ndarray, small: np.ndarray, large: np.ndarray) -> str:
    from classifiers.lab.metrics import route_metrics, routing_curve

    m = route_metrics(routing_curve(np.asarray(scores), small, large), small.mean(), large.mean(), 0.24, 24.7)
    return f"| {name} | {m.apgr:.3f} | {_pct(m.cpt50)} | {_pct(m.cpt80)} | {_pct(m.share_at_95)} |"


def _pct(x: float) -> str:
    return "-" if x != x else f"{x:.1%}"


def eval_outcomes(args: argparse.Namespace) -> int:
    """A classifier file judged on held-out outcomes, beside random and the shipped prior."""
    import classifiers
    from classifiers.lab.lodo import MIN_GAP
    from classifiers.lab.metrics import route_metrics, routing_curve

    outcomes = load_or_exit(args.outcomes)
    small = np.array([o.small for o in outcomes])
    large = np.array([o.large for o in outcomes])
    if large.mean() - small.mean() < MIN_GAP:
        print(
            f"triage: the large model's mean outcome ({large.mean():.3f}) is not above the small model's "
            f"({small.mean():.3f}) by {MIN_GAP}: no router can be ranked on these outcomes",
            file=sys.stderr,
        )
        return 2
    model = _classifier_or_exit(args.model or classifiers.default_path())
    texts = [
        classifiers.answer_text(o.prompt, o.small_answer or "") if model.spec.answer else o.prompt for o in outcomes
    ]
    if model.spec.answer and any(o.small_answer is None for o in outcomes):
        print("triage: an answer scorer needs `small_answer` on every record", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    randoms = [
        route_metrics(routing_curve(rng.random(len(outcomes)), small, large), small.mean(), large.mean(), 0.24, 24.7)
        for _ in range(200)
    ]
    apgrs = np.array([r.apgr for r in randoms])
    print(f"\n{len(outcomes)} outcomes: small {small.mean():.3f}, large {large.mean():.3f}")
    print("| router | APGR | CPT(50%) | CPT(80%) | large share at 95% quality |")
    print("|---|---:|---:|---:|---:|")
    print(_metrics_row(str(args.model or "shipped prior"), model.score_many(texts), small, large))
    if args.model:
        prior = classifiers.load(classifiers.default_path())
        print(_metrics_row("shipped prior", prior.score_many([o.prompt for o in outcomes]), small, large))
    share = np.nanmean([r.share_at_95 for r in randoms])
    print(f"| random (200 draws) | {apgrs.mean():.3f} ±{apgrs.std():.3f} | | | {_pct(float(share))} |")
    return 0


def calibrate_outcomes(args: argparse.Namespace) -> int:
    import classifiers
    from classifiers.lab.calibrate import threshold_for_quality

    outcomes = load_or_exit(args.outcomes)
    model = _classifier_or_exit(args.model or classifiers.default_path())
    scores = model.score_many([o.prompt for o in outcomes])
    floor = args.quality_floor
    threshold = threshold_for_quality(scores, [o.small for o in outcomes], [o.large for o in outcomes], floor)
    share = sum(s >= threshold for s in scores) / len(scores)
    print(
        f"threshold {threshold:.6f} for {floor:.0%} of the large model's quality: {share:.1%} of {len(scores)} "
        "prompts go to the large model"
    )
    print(f"config:\n  routing:\n    threshold: {threshold:.6f}")
    return 0


def eval_own_traffic(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    """The learning curve: APGR against the number of a family's own outcomes, each family held out of the
    prior (classifiers.lab.own.learning_curve)."""
    from classifiers.features import FeatureSpec
    from classifiers.lab.families import load_families
    from classifiers.lab.lodo import PRIOR, RECIPES, held_out_scores
    from classifiers.lab.own import OWN_ALPHA, OWN_HALF, learning_curve

    families = list(load_families(args.data).values())
    spec = RECIPES[PRIOR].serving_spec(FeatureSpec())  # the prior's features: what `train --outcomes` fits on
    say(f"featurizing {sum(len(f.items) for f in families)} prompts from {len(families)} families")
    X = feature_matrix(spec, [p for f in families for p in f.prompts])
    prior = held_out_scores(X, spec, families, RECIPES[PRIOR], say)
    say("learning curves")
    ks = (0, 100, 300, 1000)
    curve = learning_curve(X, families, prior, ks=ks)
    print(
        f"\n## own traffic: APGR with k of a family's own outcomes blended with the prior trained without it "
        f"(ridge alpha {OWN_ALPHA}, own weight k / (k + {OWN_HALF}); mean of 5 draws; the rest of the family scored)\n"
    )
    print("| family | " + " | ".join(f"k = {k}" for k in ks) + " |")
    print("|---|" + "---:|" * len(ks))
    for fam, row in curve.items():
        cells = [f"{row[k][0]:.3f}" + (f" ({row[k][1]:.3f})" if k else "") if k in row else "-" for k in ks]
        print(f"| {fam} | " + " | ".join(cells) + " |")
    gains = []
    for k in ks[1:]:
        rows = [row[k] for row in curve.values() if k in row]
        gains.append(f"**{np.mean([a - b for a, b in rows]):+.3f}** ({len(rows)})" if rows else "-")
    print("| **mean gain over the prior on the same items** (families) | | " + " | ".join(gains) + " |")
    print("\n(in brackets: the prior alone on the same held-out items)")


MIX_KS = (50, 100, 300, 1000)


def eval_own_traffic_mix(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    """The learning curve on the pooled mix (classifiers.lab.own_mix), for the prompt classifier and the answer
    scorer: pooled APGR against the number of own outcomes, mean ± sd over 5 draws."""
    from classifiers.lab.families import load_families
    from classifiers.lab.lodo import PRIOR, RECIPES
    from classifiers.lab.own_mix import MIX, build_mix, in_answer_space, mix_curve, mix_prior, small_answers

    name = (args.recipe or [PRIOR])[-1]
    if name not in RECIPES:
        raise SystemExit(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    families = list(load_families(args.data).values())
    say(f"training the prior ({name}) on the {len(families) - len(MIX)} families outside the mix")
    spec, prior = mix_prior(families, RECIPES[name])
    answer_spec, answer_prior = in_answer_space(spec, prior)
    mixes = {
        "prompt classifier": build_mix(families, spec, prior),
        "answer scorer": build_mix(families, answer_spec, answer_prior, small_answers(args.data)),
    }
    print(
        f"\n## own traffic, pooled mix: {', '.join(MIX)} pooled, each family weighing the same; k own outcomes "
        f"drawn from the mix, the rest scored; prior: {name} trained on the llmrouter families alone (none of the "
        "three); pooled APGR, mean ±sd over 5 draws\n"
    )
    for what, mix in mixes.items():
        say(f"{what}: learning curve")
        results, (mean, sd) = mix_curve(mix, MIX_KS, 5, say)
        sizes = ", ".join(f"{n} {len(r)}" for n, r in zip(mix.names, mix.rows, strict=True))
        print(f"\n### {what} (items: {sizes})\n")
        print("| router | " + " | ".join(f"k = {k}" for k in MIX_KS) + " |")
        print("|---|" + "---:|" * len(MIX_KS))
        for router in dict.fromkeys(r.router for r in results):
            cells = {r.k: f"{r.mean:.3f} ±{r.sd:.3f}" for r in results if r.router == router}
            print(f"| {router} | " + " | ".join(cells.get(k, "-") for k in MIX_KS) + " |")
        print(f"| random (200 draws, whole mix) | {mean:.3f} ±{sd:.3f} | | | |")
