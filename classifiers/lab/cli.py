"""`triage classifier train | eval | calibrate`. Registered into router's CLI, which imports this module;
this module never imports router."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from classifiers.lab.matrix import feature_matrix

__all__ = ["OWN_TRAFFIC", "OWN_TRAFFIC_MIX", "add_commands"]

OWN_TRAFFIC = "own traffic"  # the learning-curve protocol of `triage classifier eval`
OWN_TRAFFIC_MIX = "own traffic mix"  # the same on a pooled mix of families the prior never saw
TURN_TWO = "turn 2"  # MT-Bench's second turns: context-aware scoring and conversation policies


def _progress() -> Callable[[str], None]:
    start = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - start:6.1f}s] {message}", file=sys.stderr, flush=True)

    return say


def _need_training_libraries() -> None:
    try:
        import scipy  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError:
        raise SystemExit(
            "triage: training and evaluating classifiers needs scikit-learn and scipy, which serving does not: "
            "pip install 'llm-triage[train]'"
        ) from None


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def _train(args: argparse.Namespace) -> int:
    _need_training_libraries()
    from classifiers import default_answer_path, default_path
    from classifiers.answer import answer_text
    from classifiers.features import FeatureSpec
    from classifiers.lab.data import load_benchmark
    from classifiers.lab.train import fit

    say = _progress()
    if args.outcomes:
        from classifiers.lab.cli_outcomes import train_outcomes

        return train_outcomes(args, say)
    if not args.answers and not args.benchmarks:
        return _train_prior(args, say)
    names = [n.strip() for n in (args.benchmarks or ("gsm8k" if args.answers else "mmlu,gsm8k")).split(",")]
    benches = [load_benchmark(n, args.data) for n in names if n]
    items = [i for b in benches for i in b.items]
    if args.answers:
        missing = [b.name for b in benches if any(i.small_answer is None for i in b.items)]
        if missing:
            raise SystemExit(f"--answers needs the small model's recorded answers, which {missing} lack")
    say(f"training on {', '.join(f'{b.name} ({len(b.items)})' for b in benches)}")
    what = " of the prompt and the small model's answer" if args.answers else ""
    meta: dict[str, object] = {
        "trained_on": {b.name: len(b.items) for b in benches},
        "alpha": args.alpha,
        "label": f"large minus small outcome (ridge on hashed n-grams + structure{what}), "
        "Platt-scaled to P(large better)",
    }
    if args.answers:  # (the difficulty classifier's file predates the field: it stays byte for byte the same)
        meta["kind"] = "answer_scorer"
    texts = [answer_text(i.prompt, i.small_answer or "") if args.answers else i.prompt for i in items]
    model = fit(
        texts,
        [i.small for i in items],
        [i.large for i in items],
        spec=FeatureSpec(answer=args.answers),
        alpha=args.alpha,
        meta=meta,
        progress=say,
    )
    out = Path(args.out or (default_answer_path() if args.answers else default_path()))
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    size = out.stat().st_size
    say(f"wrote {out} ({size / 1e6:.2f} MB); suggested threshold {model.meta.get('suggested_threshold')}")
    return 0


def _train_prior(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    """The default: a routing prior across every task family, by the recipe that won leave-one-family-out."""
    from classifiers import default_path
    from classifiers.lab.families import load_families
    from classifiers.lab.lodo import RECIPES
    from classifiers.lab.train import fit_prior

    if args.recipe not in RECIPES:
        raise SystemExit(f"unknown recipe {args.recipe!r}; known: {', '.join(RECIPES)}")
    families = list(load_families(args.data).values())
    meta: dict[str, object] = {
        "recipe": args.recipe,
        "trained_on": {f.name: len(f.items) for f in families},
        "label": f"recipe {args.recipe} (classifiers/lab/lodo.py), Platt-scaled to P(large better)",
    }
    model = fit_prior(families, args.recipe, meta=meta, progress=say)
    out = Path(args.out or default_path())
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    say(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB); suggested threshold {model.meta.get('suggested_threshold')}")
    return 0


def _eval_lodo(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    from classifiers.features import FeatureSpec
    from classifiers.lab.families import PEER_LARGE, load_families
    from classifiers.lab.lodo import (
        MIN_GAP,
        PREVIOUS_PRIOR,
        PRIOR,
        RECIPES,
        FamilyResult,
        familiarity_effect,
        held_out_fits,
        held_out_scores,
        in_family,
        kfold_within,
        large_shares,
        oracles,
        random_spread,
        score_family,
    )
    from classifiers.lab.lodo_report import level_table, pooled_table

    names = args.recipe or ["shipped-v1", PREVIOUS_PRIOR, PRIOR]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe {unknown[0]!r}; known: {', '.join(RECIPES)}")
    families = list(load_families(args.data).values())
    recipes = [RECIPES[n] for n in names]
    # Only the features some recipe reads: byte n-grams are most of the hashing, and the matrix's width
    spec = FeatureSpec(
        char_bits=FeatureSpec().char_bits if any(r.reads_bytes() for r in recipes) else 0,
        tasks=any(r.reads_tasks() for r in recipes),
    )
    say(f"featurizing {sum(len(f.items) for f in families)} prompts from {len(families)} families")
    X = feature_matrix(spec, [p for f in families for p in f.prompts])
    spread, mean_spread = random_spread(families)
    fits = {n: held_out_fits(X, spec, families, RECIPES[n], say) for n in names}
    scores = {n: held_out_scores(X, spec, families, RECIPES[n], fits=fits[n]) for n in names}
    results = {n: [score_family(f, s) for f, s in zip(families, scores[n], strict=True)] for n in names}
    mmlu = {n: kfold_within(X, spec, families, RECIPES[n], "mmlu").apgr for n in names}
    say("in-family reference (each family's own outcomes, 5-fold)")
    own = in_family(X, spec, families)
    print("\n## leave one family out (LODO): APGR / large share at 95% quality, each family held out of training")
    print(f"(families whose pair differs by less than {MIN_GAP} cannot rank routers: trained on, not scored;")
    print(" in-family: fitted to the family's own pair outcomes, 5-fold: not LODO, the reference to read it against)\n")
    print("| family | items | small | large | random ±sd | " + " | ".join(names) + " | in-family |")
    print("|---|---:|---:|---:|---:|" + "---:|" * (len(names) + 1))
    first = results[names[0]]
    for k, fam in enumerate(first):
        cells = [f"{r.apgr:.3f} / {_pct(r.share_at_95)}" for r in (*(results[n][k] for n in names), own[k])]
        sd = spread.get(fam.family)
        print(
            f"| {fam.family} | {fam.items} | {fam.q_small:.3f} | {fam.q_large:.3f} | "
            + ("-" if sd is None else f"0.500 ±{sd:.3f}")
            + " | "
            + " | ".join("-" if not fam.scored else c for c in cells)
            + " |"
        )

    def mean(rs: list[FamilyResult], among: tuple[str, ...] = ()) -> float:
        picked = [r.apgr for r in rs if r.scored and (not among or r.family in among)]
        return sum(picked) / len(picked)

    runs = [*(results[n] for n in names), own]
    print(
        f"| **mean over scored families** | | | | 0.500 ±{mean_spread:.3f} | "
        + " | ".join(f"**{mean(rs):.3f}**" for rs in runs)
        + " |"
    )
    pair = ("mmlu", "gsm8k", "mt_bench")
    pair_means = " | ".join(f"{mean(rs, pair):.3f}" for rs in runs)
    print(f"| mean, families graded GPT-4 vs Mixtral | | | | | {pair_means} |")
    print("| MMLU 5-fold (in-family, for reference) | | | | | " + " | ".join(f"{mmlu[n]:.3f}" for n in names) + " | |")
    print(pooled_table(families, scores, {n: mean(results[n]) for n in names}, mean_spread))
    print(level_table(families, {n: large_shares(X, families, fits[n]) for n in names}))
    last = {r.family: r.apgr for r in results[names[-1]]}
    known = oracles(families)
    print("\n## routing by what other models actually did on each item (families scored with the open pair)")
    print("(what knowing difficulty outright earns there; a prompt-only prior can at best estimate it)\n")
    print(f"| family | other small models' failure rate | {PEER_LARGE}'s outcome | {names[-1]} (LODO) |")
    print("|---|---:|---:|---:|")
    for name, by_failure, by_large in known:
        print(f"| {name} | {by_failure:.3f} | {by_large:.3f} | {last[name]:.3f} |")
    if known:
        cols = list(zip(*[(a, b, last[n]) for n, a, b in known], strict=True))
        print("| **mean** | " + " | ".join(f"**{sum(c) / len(c):.3f}**" for c in cols) + " |")
    say(f"familiarity under LODO ({names[-1]})")
    effect = familiarity_effect(X, spec, families, scores[names[-1]])
    print(f"\n## the least familiar prompts sent to the large model first, under LODO ({names[-1]})\n")
    print("| least familiar share sent first | mean APGR | mean large share at 95% quality |")
    print("|---:|---:|---:|")
    for share, (apgr, share95) in effect.items():
        print(f"| {share:.0%} | {apgr:.3f} | {_pct(share95)} |")


def _eval_turn_two(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    from classifiers.features import FeatureSpec, Featurizer
    from classifiers.lab.families import load_families
    from classifiers.lab.lodo import PRIOR, RECIPES, fit_recipe, row_index
    from classifiers.lab.turns import load_second_turns, turn_two

    families = [f for f in load_families(args.data).values() if f.name != "mt_bench"]
    spec = RECIPES[PRIOR].serving_spec(FeatureSpec())
    say("training the prior without MT-Bench")
    X = feature_matrix(spec, [p for f in families for p in f.prompts])
    coef, intercept = fit_recipe(X, spec, families, row_index(families), RECIPES[PRIOR])
    featurizer = Featurizer(spec)

    def raw(text: str) -> float:
        idx, val = featurizer.row(text)
        return float(val @ coef[idx]) + intercept

    conversations = load_second_turns(args.data)
    results, (mean, spread) = turn_two(conversations, raw)
    print(f"\n## MT-Bench second turns ({len(conversations)} conversations; prior trained without MT-Bench)\n")
    print("| router | APGR | large share at 95% quality | APGR minus last-turn-only (paired bootstrap, 95%) |")
    print("|---|---:|---:|---:|")
    for r in results:
        diff = "-" if r.minus_last_turn is None else "{:+.3f} [{:+.3f}, {:+.3f}]".format(*r.minus_last_turn)
        print(f"| {r.router} | {r.apgr:.3f} | {_pct(r.share_at_95)} | {diff} |")
    print(f"| random (200 permutations) | {mean:.3f} ±{spread:.3f} | | |")


def _eval_families(args: argparse.Namespace, say: Callable[[str], None], wanted: set[str]) -> None:
    """The protocols over every task family (after the per-benchmark ones), in this order."""
    if "lodo" in wanted:
        _eval_lodo(args, say)
    if TURN_TWO in wanted:
        _eval_turn_two(args, say)
    if OWN_TRAFFIC in wanted:
        from classifiers.lab.cli_outcomes import eval_own_traffic

        eval_own_traffic(args, say)
    if OWN_TRAFFIC_MIX in wanted:
        from classifiers.lab.cli_outcomes import eval_own_traffic_mix

        eval_own_traffic_mix(args, say)


def _eval(args: argparse.Namespace) -> int:
    _need_training_libraries()
    from classifiers.lab.evaluate import PROTOCOLS, ROUTELLM_PUBLISHED, run_protocols
    from classifiers.lab.train import DEFAULT_ALPHA

    say = _progress()
    if args.outcomes:
        from classifiers.lab.cli_outcomes import eval_outcomes

        return eval_outcomes(args)
    protocols = tuple(args.protocol) if args.protocol else (*PROTOCOLS, "lodo")
    protocols_all = protocols
    protocols = tuple(p for p in protocols if p not in ("lodo", OWN_TRAFFIC, OWN_TRAFFIC_MIX, TURN_TWO))
    # (run_protocols featurizes every benchmark first: half a minute wasted when only family protocols are asked)
    results = (
        run_protocols(
            root=args.data,
            alpha=args.alpha or DEFAULT_ALPHA,
            price_small=args.small_price,
            price_large=args.large_price,
            protocols=protocols,
            progress=say,
        )
        if protocols
        else []
    )
    if args.format == "json":
        print(json.dumps([r.to_json() for r in results], indent=2))
    elif results:
        print(
            f"\nPrices: small {args.small_price}, large {args.large_price} per million tokens; cost saved is at "
            "the share that keeps 95% of the large model's quality."
        )
        for r in results:
            print(f"\n## {r.name}  (test: {r.test}, {r.items} items; small {r.q_small:.3f}, large {r.q_large:.3f})")
            print("| router | APGR | CPT(50%) | CPT(80%) | large share at 95% | saved (small free) | saved (priced) |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            for row in r.rows:
                print(
                    f"| {row.router} | {row.apgr:.3f} | {_pct(row.cpt50)} | {_pct(row.cpt80)} | "
                    f"{_pct(row.share_at_95)} | {_pct(row.saved_free_small)} | {_pct(row.saved_priced)} |"
                )
            published = ROUTELLM_PUBLISHED.get(r.test, {})
            if published:
                apgr = published.get("apgr")
                print(
                    f"| RouteLLM (published, arena-trained) | {'-' if apgr is None else f'{apgr:.3f}'} | | | "
                    f"~{_pct(published['share_at_95'])} | | |"
                )
    _eval_families(args, say, set(protocols_all))
    if args.plots:
        from classifiers.lab.plots import plot_results

        for path in plot_results(results, Path(args.plots)):
            say(f"wrote {path}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import classifiers

    if args.outcomes:
        if args.quality_floor is None:
            print(
                "triage: --outcomes goes with --quality-floor (--share and --budget need no outcomes)", file=sys.stderr
            )
            return 2
        from classifiers.lab.cli_outcomes import calibrate_outcomes

        return calibrate_outcomes(args)
    from classifiers.lab.calibrate import (
        read_prompts,
        threshold_for_budget,
        threshold_for_quality,
        threshold_for_share,
    )

    records = read_prompts(args.prompts)
    model = classifiers.load(args.model)
    scores = model.score_many([r.prompt for r in records])
    if args.share is not None:
        threshold, goal = threshold_for_share(scores, args.share), f"{args.share:.0%} to the large model"
    elif args.budget is not None:
        threshold = threshold_for_budget(scores, args.budget, args.small_price, args.large_price)
        goal = f"budget {args.budget} (small {args.small_price}, large {args.large_price})"
    else:
        labelled = [r for r in records if r.small is not None and r.large is not None]
        if len(labelled) != len(records):
            print("triage: --quality-floor needs `small` and `large` outcomes on every line", file=sys.stderr)
            return 2
        threshold = threshold_for_quality(
            scores, [r.small or 0.0 for r in labelled], [r.large or 0.0 for r in labelled], args.quality_floor
        )
        goal = f"{args.quality_floor:.0%} of the large model's quality"
    share = sum(s >= threshold for s in scores) / len(scores)
    print(f"threshold {threshold:.6f} for {goal}: {share:.1%} of {len(scores)} prompts go to the large model")
    print(f"config:\n  routing:\n    threshold: {threshold:.6f}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from classifiers.lab.lodo import PRIOR
    from classifiers.lab.train import DEFAULT_ALPHA

    p = sub.add_parser("classifier", help="train, evaluate and calibrate the difficulty classifier")
    cmds = p.add_subparsers(dest="classifier_command", required=True)
    data_help = "folder holding routellm/ (default: $TRIAGE_DATA or ../shared/data)"

    t = cmds.add_parser("train", help="train on recorded outcomes; by default rewrites the shipped model")
    t.add_argument("--data", help=data_help)
    t.add_argument(
        "--benchmarks", help="train on these RouteLLM benchmarks alone, comma-separated (with --answers: gsm8k)"
    )
    t.add_argument(
        "--answers",
        action="store_true",
        help="train the cascade's answer scorer on (prompt, small model's answer) pairs instead",
    )
    t.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help=f"ridge regularisation with --benchmarks (default {DEFAULT_ALPHA})",
    )
    t.add_argument(
        "--recipe",
        default=PRIOR,
        help=f"how to train across all task families (default {PRIOR}, the pooled leave-one-family-out winner); "
        "ignored with --benchmarks or --answers",
    )
    t.add_argument(
        "--outcomes",
        nargs="+",
        metavar="FILE",
        help="train on your own outcomes (JSONL: prompt, small, large[, small_answer]), blended with --prior",
    )
    t.add_argument(
        "--prior",
        default="default",
        help="with --outcomes: `default` (the shipped classifier, trained on the public outcomes), `none` (the "
        "outcomes alone), or a classifier file",
    )
    t.add_argument(
        "--out",
        help="output file (default: the packaged classifiers/default/classifier.json or answer_scorer.json; "
        "with --outcomes: own-classifier.json or own-answer-scorer.json here)",
    )
    t.set_defaults(run=_train)

    e = cmds.add_parser("eval", help="evaluate under every protocol against random, always-small/large, oracle")
    e.add_argument("--data", help=data_help)
    e.add_argument("--alpha", type=float)
    e.add_argument(
        "--protocol",
        action="append",
        help="run only this protocol (repeatable; `lodo`: leave one family out; `own traffic`: the learning curve "
        "per family; `own traffic mix`: on a pooled mix of families the prior never saw)",
    )
    e.add_argument("--outcomes", nargs="+", metavar="FILE", help="judge --model on these held-out outcomes instead")
    e.add_argument("--model", help="with --outcomes: the classifier file to judge (default: the shipped one)")
    e.add_argument(
        "--recipe",
        action="append",
        help="with lodo: a recipe to evaluate (repeatable; see classifiers/lab/lodo.py); with `own traffic mix`: the "
        "prior's recipe (default: the shipped one's)",
    )
    e.add_argument("--small-price", type=float, default=0.24, help="USD per million tokens (default 0.24)")
    e.add_argument("--large-price", type=float, default=24.7, help="USD per million tokens (default 24.7)")
    e.add_argument("--format", choices=["table", "json"], default="table")
    e.add_argument("--plots", metavar="DIR", help="write a PNG of the quality curves per benchmark here")
    e.set_defaults(run=_eval)

    c = cmds.add_parser("calibrate", help="pick a threshold from a file of prompts")
    source = c.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--prompts",
        help="JSONL (prompt or messages; optional small/large outcomes) or plain text, one prompt per line",
    )
    source.add_argument("--outcomes", nargs="+", metavar="FILE", help="outcome records (with --quality-floor)")
    c.add_argument("--model", help="classifier file (default: the shipped one)")
    goal = c.add_mutually_exclusive_group(required=True)
    goal.add_argument("--share", type=float, help="target share of large-model calls, 0..1")
    goal.add_argument("--budget", type=float, help="average cost per request you can afford (same unit as prices)")
    goal.add_argument("--quality-floor", type=float, help="fraction of the large model's quality to keep (labelled)")
    c.add_argument("--small-price", type=float, default=0.24)
    c.add_argument("--large-price", type=float, default=24.7)
    c.set_defaults(run=_calibrate)
