"""The `own traffic mix` protocol: how much a deployment's own outcomes buy on a pooled mix of families the prior
never saw.

The mix: MMLU, GSM8K and MT-Bench (graded GPT-4 against Mixtral), pooled as a gateway sees them, each family
weighing the same. The prior is the shipped recipe trained on the other families only (all from llmrouter; none of
the three). Per draw, k own outcomes are drawn from the mix without replacement, each item with probability
proportional to 1/n_family (so each family is drawn alike), and at most half of any family is drawn so that every
family keeps items to score (MT-Bench has 72); every item not drawn is scored, pooled with item weights
1/n_family (classifiers.metrics.pooled_route_metrics). The same draws are scored by the prior alone, by the
recipe `train --outcomes` used before (a ridge blended with the prior at weight k / (k + 100)), and by today's
(clusters, empirical-Bayes gain per cluster, the item model, checked against the prior out of fold).

The answer scorer reads the small model's answer where the data records it: GSM8K's answers, MT-Bench's first-turn
answers (from the judge's prompt); MMLU's one-token answers are not recorded, so its items carry an empty answer."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.features import FeatureSpec
from classifiers.lab.families import Family
from classifiers.lab.matrix import feature_matrix
from classifiers.lab.metrics import pooled_random, pooled_route_metrics

__all__ = [
    "MIX",
    "Mix",
    "MixResult",
    "build_mix",
    "draw",
    "in_answer_space",
    "llmrouter_only",
    "mix_curve",
    "mix_prior",
    "mt_bench_answers",
    "small_answers",
]

MIX = ("mmlu", "gsm8k", "mt_bench")
ANSWER_START = "[The Start of Assistant's Answer]\n"
ANSWER_END = "\n[The End of Assistant's Answer]"


@dataclass
class Mix:
    """The mix's graded items: X (prompt features, or (prompt, answer) features) with each family's rows."""

    names: list[str]
    X: Any
    rows: list[np.ndarray]
    small: np.ndarray
    large: np.ndarray
    spec: FeatureSpec
    prior: tuple[np.ndarray, float]


@dataclass(frozen=True, slots=True)
class MixResult:
    router: str
    k: int
    apgrs: tuple[float, ...]  # one per draw

    @property
    def mean(self) -> float:
        return float(np.mean(self.apgrs))

    @property
    def sd(self) -> float:
        return float(np.std(self.apgrs))


def llmrouter_only(recipe: Any) -> Any:
    """The recipe trained on llmrouter's families alone, every component of a blend too: what is left of any
    recipe once MMLU, GSM8K and MT-Bench (every RouteLLM item) are held out."""
    blend = None if recipe.blend is None else (llmrouter_only(recipe.blend[0]), recipe.blend[1])
    return replace(recipe, sources=("llmrouter",), families=(), blend=blend)


def mt_bench_answers(root: str | Path | None) -> dict[str, str]:
    """MT-Bench first turns -> Mixtral's first answer, as the judge's prompt quotes it."""
    from classifiers.lab.data import SMALL, data_root

    folder = data_root(root) / "mt_bench"
    questions = {}
    with (folder / "question.jsonl").open(encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            questions[int(q["question_id"])] = q["turns"][0]
    out = {}
    with (folder / "judgements.jsonl").open(encoding="utf-8") as f:
        for line in f:
            j = json.loads(line)
            text = j["user_prompt"]
            if j["model"] == SMALL and int(j["turn"]) == 1 and ANSWER_START in text:
                answer = text.split(ANSWER_START, 1)[1].split(ANSWER_END, 1)[0]
                out[questions[int(j["question_id"])]] = answer.strip()
    return out


def draw(sizes: Sequence[int], k: int, seed: int, cap: float = 0.5) -> tuple[np.ndarray, list[np.ndarray]]:
    """(k drawn positions into the concatenated families, each family's positions not drawn), as the module
    docstring says: weighted sampling without replacement (Efraimidis-Spirakis keys), at most `cap` of a family."""
    rng = np.random.default_rng(seed)
    family = np.concatenate([np.full(n, f) for f, n in enumerate(sizes)])
    weight = np.concatenate([np.full(n, 1.0 / n) for n in sizes])
    keys = np.log(rng.random(len(family))) / weight
    limit = [int(n * cap) for n in sizes]
    taken = [0] * len(sizes)
    picked: list[int] = []
    for i in np.argsort(-keys, kind="stable"):
        if len(picked) == k:
            break
        if taken[family[i]] < limit[family[i]]:
            taken[family[i]] += 1
            picked.append(int(i))
    if len(picked) < k:
        raise ValueError(f"the mix holds {sum(limit)} items to draw, fewer than k = {k}")
    chosen = np.zeros(len(family), bool)
    chosen[picked] = True
    starts = np.concatenate([[0], np.cumsum(sizes)])
    rest = [np.flatnonzero(~chosen[starts[f] : starts[f + 1]]) + starts[f] for f in range(len(sizes))]
    return np.array(sorted(picked)), rest


def _routers(mix: Mix, train: np.ndarray, k: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Per router, a function from rows of mix.X to scores, trained on the rows `train`."""
    from classifiers.lab.own import OWN_ALPHA, OWN_HALF, blend, own_weight
    from classifiers.lab.own_check import check_against_prior, standardised
    from classifiers.lab.own_clustered import Pairs, fit_clustered, ridge

    X, prior = mix.X, mix.prior
    pairs = Pairs(X[train], mix.small[train], mix.large[train], mix.spec)
    Xt = pairs.X
    coef, intercept = blend(Xt, prior, ridge(Xt, pairs.gain, OWN_ALPHA), own_weight(k, OWN_HALF))
    own = fit_clustered(pairs, prior, alpha=OWN_ALPHA)
    check = check_against_prior(pairs, prior, alpha=OWN_ALPHA)
    p_train = Xt @ prior[0] + prior[1]
    own_train = own.raw(Xt)

    def checked(rows: np.ndarray) -> np.ndarray:
        p = standardised(X[rows] @ prior[0] + prior[1], p_train)
        return (1 - check.weight) * p + check.weight * standardised(own.raw(X[rows]), own_train)

    return {
        "prior alone": lambda rows: np.asarray(X[rows] @ prior[0]) + prior[1],
        "before (ridge + prior, k/(k+100))": lambda rows: np.asarray(X[rows] @ coef) + intercept,
        "clusters + items, unchecked": lambda rows: own.raw(X[rows]),
        "**clusters + items, checked (shipped)**": checked,
    }


def mix_curve(
    mix: Mix,
    ks: Sequence[int] = (50, 100, 300, 1000),
    draws: int = 5,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[list[MixResult], tuple[float, float]]:
    """Per router and k, the pooled APGR of every draw; and a random router's (mean, sd) on the whole mix."""
    sizes = [len(r) for r in mix.rows]
    got: dict[tuple[str, int], list[float]] = {}
    for k in ks:
        for seed in range(draws):
            progress(f"k = {k}, draw {seed + 1}/{draws}")
            train, rest = draw(sizes, k, seed)
            rows = [np.concatenate(mix.rows)[r] for r in rest]
            train_rows = np.concatenate(mix.rows)[train]
            for name, score in _routers(mix, train_rows, k).items():
                parts = [(score(r), mix.small[r], mix.large[r]) for r in rows]
                got.setdefault((name, k), []).append(pooled_route_metrics(parts).apgr)
    rows_all = list(mix.rows)
    randoms = pooled_random([(np.zeros(len(r)), mix.small[r], mix.large[r]) for r in rows_all])
    return [MixResult(name, k, tuple(v)) for (name, k), v in got.items()], randoms


def build_mix(
    families: Sequence[Family],
    spec: FeatureSpec,
    prior: tuple[np.ndarray, float],
    answers: dict[str, str] | None = None,
) -> Mix:
    """A Mix of the MIX families' graded items. With `answers` (prompt -> the small model's answer; a prompt
    missing from it gets an empty answer), the texts are answer texts and `spec` an answer scorer's."""
    from classifiers.answer import answer_text

    picked = [f for f in families if f.name in MIX]
    items = [[i for i, keep in zip(f.items, f.eval_mask(), strict=True) if keep] for f in picked]
    starts = np.cumsum([0] + [len(i) for i in items])
    rows = [np.arange(starts[j], starts[j + 1]) for j in range(len(items))]
    prompts = [i.prompt for its in items for i in its]
    texts = prompts if answers is None else [answer_text(p, answers.get(p, "")) for p in prompts]
    X = feature_matrix(spec, texts)
    small = np.array([i.small for its in items for i in its])
    large = np.array([i.large for its in items for i in its])
    return Mix([f.name for f in picked], X, rows, small, large, spec, prior)


def small_answers(root: str | Path | None) -> dict[str, str]:
    """Every recorded answer of the small model to a mix prompt: GSM8K's, and MT-Bench's first turns."""
    from classifiers.lab.data import load_benchmark

    out = {i.prompt: i.small_answer for i in load_benchmark("gsm8k", root).items if i.small_answer is not None}
    return out | mt_bench_answers(root)


def mix_prior(families: Sequence[Family], recipe: Any) -> tuple[FeatureSpec, tuple[np.ndarray, float]]:
    """(the prior's feature spec, its (coef, intercept)): `recipe` trained on every family outside the mix."""
    from classifiers.lab.lodo import fit_recipe, row_index

    spec = recipe.serving_spec(FeatureSpec())
    others = [f for f in families if f.name not in MIX]
    X = feature_matrix(spec, [p for f in others for p in f.prompts])
    return spec, fit_recipe(X, spec, others, row_index(others), llmrouter_only(recipe))


def in_answer_space(spec: FeatureSpec, prior: tuple[np.ndarray, float]) -> tuple[FeatureSpec, tuple[np.ndarray, float]]:
    """A prompt prior as an answer scorer's prior: the prompt block comes first in an answer scorer's features, so
    its weights are the prompt prior's, and the answer's are zero (no answer scorer that never saw the mix
    exists: the shipped one was trained on GSM8K)."""
    answer_spec = replace(spec, answer=True)
    coef = np.zeros(answer_spec.width)
    coef[: len(prior[0])] = prior[0]
    return answer_spec, (coef, prior[1])
