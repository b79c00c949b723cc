"""Leave one task family out (LODO): the yardstick for a routing prior, since a deployment's traffic is always a
family the classifier never saw. Each family in turn is held out of training entirely (both sources) and
scored on its own items. Two figures judge a recipe: the mean over families (is each family ranked well?) and
the pooled figure, every family's held-out scores as one stream with equal family weight (do the kinds of request
that gain from the large model come first?), which is what a gateway's mixed traffic sees (lodo_report).

A recipe says how to train: which label, which features, how strongly regularised, whether families weigh
alike, and optionally a second recipe to blend with. Every recipe trains one linear model over the shared
feature space, so whatever wins ships in the classifier file format the gateway already reads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from classifiers.features import STRUCTURE, FeatureSpec
from classifiers.lab.calibrate import threshold_for_mean_quality
from classifiers.lab.families import Family
from classifiers.lab.metrics import Part, route_metrics, routing_curve
from classifiers.tasks import TASKS

__all__ = [
    "IN_FAMILY",
    "MIN_GAP",
    "PREVIOUS_PRIOR",
    "PRIOR",
    "RECIPES",
    "FamilyResult",
    "Recipe",
    "familiarity",
    "familiarity_effect",
    "family_gain_scores",
    "fit_recipe",
    "held_out_fits",
    "held_out_scores",
    "in_family",
    "kfold_within",
    "large_shares",
    "lodo",
    "oracles",
    "pool_parts",
    "random_spread",
    "row_index",
    "score_family",
]

MIN_GAP = 0.03  # a family whose pair barely differs cannot rank routers (PGR divides by the gap)


@dataclass(frozen=True, slots=True)
class Recipe:
    name: str
    # gap (the pair's outcome gap) | proxy (small models' failure) | mix (their mean) | open (the open models' gain
    # from size where recorded, else the pair's gap)
    label: str = "gap"
    alpha: float = 10.0
    # full: hashed word n-grams, byte n-grams and structure | words: no byte n-grams | structure: the 12 counts |
    # tasks: the task-type indicators alone (classifiers.tasks) | structure+tasks: the counts and the indicators
    features: str = "full"
    balance: bool = True  # every family weighs the same in training, whatever its size
    centre: bool = True  # labels relative to their family's mean (else absolute: base rates teach too)
    sources: tuple[str, ...] = ("routellm", "llmrouter")
    families: tuple[str, ...] = ()  # train only on these (empty: all but the held-out one)
    blend: tuple[Recipe, float] | None = None  # (other recipe, its weight) blended on standardised scores

    def reads_bytes(self) -> bool:
        """Whether any part of the recipe reads byte n-grams (else serving need not compute them)."""
        return self.features == "full" or (self.blend is not None and self.blend[0].reads_bytes())

    def reads_tasks(self) -> bool:
        """Whether any part of the recipe reads the task-type indicators."""
        return self.features in ("tasks", "structure+tasks") or (self.blend is not None and self.blend[0].reads_tasks())

    def serving_spec(self, spec: FeatureSpec) -> FeatureSpec:
        """`spec` without the byte n-grams when no part of the recipe reads them: the scores are the same, and
        scoring costs half to a third as much (byte n-grams are most of a prompt's hashing); with the task
        indicators exactly when some part reads them."""
        return replace(spec, char_bits=spec.char_bits if self.reads_bytes() else 0, tasks=self.reads_tasks())


# Named so that `triage classifier eval --protocol lodo --recipe NAME` reproduces any row of the README.
RECIPES: dict[str, Recipe] = {}


def _register(*recipes: Recipe) -> None:
    for r in recipes:
        RECIPES[r.name] = r


_register(
    # Today's shipped model: the RouteLLM pair's labels on MMLU and GSM8K, ridge alpha 10.
    Recipe("shipped-v1", label="gap", alpha=10.0, balance=False, sources=("routellm",), families=("mmlu", "gsm8k")),
    Recipe("gap-a10", label="gap", alpha=10.0),
    Recipe("gap-a100", label="gap", alpha=100.0),
    Recipe("proxy-a10", label="proxy", alpha=10.0),
    Recipe("proxy-a100", label="proxy", alpha=100.0),
    Recipe("mix-a10", label="mix", alpha=10.0),
    Recipe("mix-a100", label="mix", alpha=100.0),
    Recipe("mix-a300", label="mix", alpha=300.0),
    Recipe("mix-a100-unbalanced", label="mix", alpha=100.0, balance=False),
    Recipe("structure-proxy", label="proxy", alpha=1.0, features="structure"),
    Recipe("structure-mix", label="mix", alpha=1.0, features="structure"),
    Recipe("structure-gap", label="gap", alpha=1.0, features="structure"),
)
# The structure counts fitted to the open models' difficulty (their items only: the proxy there is the mean of
# six models, not one model's failure), blended with hashed n-grams fitted to the RouteLLM pair's gap.
_register(Recipe("structure-proxy-open", label="proxy", alpha=1.0, features="structure", sources=("llmrouter",)))
_register(
    *(
        Recipe(
            f"ngram-gap+structure-proxy-open-{w}",
            label="gap",
            alpha=10.0,
            balance=False,
            sources=("routellm",),
            blend=(RECIPES["structure-proxy-open"], w),
        )
        for w in (0.5, 0.6, 0.7, 0.85)
    )
)
# The same blend without byte n-grams: a tie under LODO (0.537 against 0.535) that scores a prompt 2-6x faster.
_register(
    Recipe(
        "words-gap+structure-proxy-open-0.5",
        label="gap",
        alpha=10.0,
        features="words",
        balance=False,
        sources=("routellm",),
        blend=(RECIPES["structure-proxy-open"], 0.5),
    )
)
# Shipped until issue #25: the per-family LODO winner that kept MMLU 5-fold >= 0.65.
PREVIOUS_PRIOR = "words-gap+structure-proxy-open-0.5"

_register(
    Recipe("proxy-abs-a100", label="proxy", alpha=100.0, centre=False),
    Recipe("proxy-abs-a30", label="proxy", alpha=30.0, centre=False),
    Recipe("proxy-abs-a300", label="proxy", alpha=300.0, centre=False),
    Recipe("mix-abs-a100", label="mix", alpha=100.0, centre=False),
    Recipe("structure-proxy-abs", label="proxy", alpha=1.0, features="structure", centre=False),
    Recipe("gap-abs-a100", label="gap", alpha=100.0, centre=False),
)
_register(
    Recipe(
        "proxy-abs-a100+structure",
        label="proxy",
        alpha=100.0,
        centre=False,
        blend=(RECIPES["structure-proxy-abs"], 0.5),
    ),
    Recipe("mix-a100+structure", label="mix", alpha=100.0, blend=(RECIPES["structure-mix"], 0.5)),
    Recipe("proxy-a100+structure", label="proxy", alpha=100.0, blend=(RECIPES["structure-proxy"], 0.5)),
)

# The level across kinds of request (issue #25). Labels left uncentred, so that what a whole kind of task gains
# is learnt and not only the ranking inside a family; judged by pooled LODO (lodo_report). The structure counts
# fitted so read surface form as "hard"; the task indicators (classifiers.tasks) carry which kinds gain.
_register(
    Recipe("structure-gap-abs", label="gap", alpha=1.0, features="structure", centre=False),
    Recipe("structure-open-abs", label="open", alpha=10.0, features="structure", centre=False),
    Recipe("structure-mix-abs", label="mix", alpha=10.0, features="structure", centre=False),
    Recipe("structure+tasks-gap-abs", label="gap", alpha=1.0, features="structure+tasks", centre=False),
    Recipe("structure+tasks-mix-abs", label="mix", alpha=10.0, features="structure+tasks", centre=False),
    Recipe("structure+tasks-proxy-open", label="proxy", alpha=1.0, features="structure+tasks", sources=("llmrouter",)),
    Recipe("tasks-gap-abs", label="gap", alpha=1.0, features="tasks", centre=False),
    Recipe("tasks-open-abs", label="open", alpha=1.0, features="tasks", centre=False),
    Recipe("tasks-proxy-abs", label="proxy", alpha=1.0, features="tasks", centre=False),
    # The previous prior's n-gram half alone: word n-grams and counts fitted to the GPT-4-minus-Mixtral gap.
    Recipe("words-gap", label="gap", alpha=10.0, features="words", balance=False, sources=("routellm",)),
)


def _level_blend(within: str, share: float, level: str = "tasks-gap-abs") -> Recipe:
    """A level recipe blended with a within-family ranker that weighs `share`."""
    base = RECIPES[level]
    return replace(base, name=f"{level}+{within}-{share:g}", blend=(RECIPES[within], share))


_register(
    *(_level_blend("structure-proxy-open", w) for w in (0.5, 0.7)),
    *(_level_blend("words-gap", w) for w in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)),
    _level_blend(PREVIOUS_PRIOR, 0.6),
    _level_blend("structure+tasks-proxy-open", 0.5),
    _level_blend("structure-proxy-open", 0.7, "structure+tasks-gap-abs"),
)
# Chosen by pooled LODO (README, "The classifier"): the highest GPT-4/Mixtral pool among the recipes within a
# random router's spread of the best all-family pool whose per-family mean stays within noise of the previous.
PRIOR = "tasks-gap-abs+words-gap-0.1"


@dataclass(frozen=True, slots=True)
class FamilyResult:
    family: str
    items: int
    q_small: float
    q_large: float
    apgr: float
    share_at_95: float

    @property
    def scored(self) -> bool:
        return self.q_large - self.q_small >= MIN_GAP


def _labels(families: Sequence[Family], label: str, centre: bool) -> np.ndarray:
    """The training target. Centred: relative to the family's mean and scaled to unit spread within it, so that
    only the ranking inside a family is learnt. Uncentred: the label as it is, so that what makes whole kinds of
    task hard is learnt too (a mixture such as MT-Bench ranks across kinds)."""
    parts = []
    for fam in families:
        gap = np.array([i.large - i.small for i in fam.items])
        proxy = np.array([i.proxy for i in fam.items])
        # open: the open models' gain from size where recorded, else the item's own pair gap
        opened = np.array([i.large - i.small if np.isnan(i.open_gap) else i.open_gap for i in fam.items])
        parts_by = {"gap": [gap], "proxy": [proxy], "mix": [gap, proxy], "open": [opened]}[label]
        y = np.zeros(len(fam.items))
        for part in parts_by:
            if centre:
                part = part - part.mean()
                spread = part.std()
                part = part / spread if spread > 0 else part
            y += part
        parts.append(y / len(parts_by))
    return np.concatenate(parts) if parts else np.zeros(0)


def _columns(spec: FeatureSpec, features: str) -> np.ndarray | None:
    """The columns a recipe reads (None: every column): the 12 counts, those and the word n-grams, the task
    indicators, or all but the task indicators."""
    counts = np.arange(spec.structure_offset, spec.structure_offset + len(STRUCTURE))
    if features == "structure":
        return counts
    if features == "words":
        return np.concatenate([np.arange(spec.char_offset), counts])
    if features in ("tasks", "structure+tasks"):
        if not spec.tasks:
            raise ValueError("a recipe that reads task indicators needs features computed with tasks=True")
        tasks = np.arange(spec.task_offset, spec.task_offset + len(TASKS))
        return tasks if features == "tasks" else np.concatenate([counts, tasks])
    return np.arange(spec.task_offset) if spec.tasks else None


def _ridge(X: Any, y: np.ndarray, weights: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import Ridge

    ridge = Ridge(alpha=alpha, solver="sparse_cg", tol=1e-6, max_iter=3000)
    ridge.fit(X, y, sample_weight=weights)
    return np.asarray(ridge.coef_, dtype=np.float64), float(ridge.intercept_)


def fit_recipe(
    X: Any, spec: FeatureSpec, families: Sequence[Family], rows: Sequence[np.ndarray], recipe: Recipe
) -> tuple[np.ndarray, float]:
    """(coef over the whole feature space, intercept) of a recipe trained on `families`, whose items are the
    rows `rows[k]` of X. A blend is one linear model too: the weighted sum of standardised component scores."""
    keep = [
        (fam, idx[[i.source in recipe.sources for i in fam.items]])
        for fam, idx in zip(families, rows, strict=True)
        if not recipe.families or fam.name in recipe.families
    ]
    kept_fams = [Family(f.name, tuple(i for i in f.items if i.source in recipe.sources)) for f, _ in keep]
    kept_fams, idx_parts = zip(*[(f, i) for f, (_, i) in zip(kept_fams, keep, strict=True) if len(i)], strict=True)
    index = np.concatenate(idx_parts)
    y = _labels(kept_fams, recipe.label, recipe.centre)
    sizes = np.concatenate([np.full(len(i), 1.0 / len(i)) for i in idx_parts])
    weights = sizes * len(index) / len(idx_parts) if recipe.balance else np.ones(len(index))
    Xk = X[index]
    cols = _columns(spec, recipe.features)
    if cols is not None:
        small, intercept = _ridge(Xk[:, cols], y, weights, recipe.alpha)
        coef = np.zeros(X.shape[1])
        coef[cols] = small
    else:
        coef, intercept = _ridge(Xk, y, weights, recipe.alpha)
    if recipe.blend is None:
        return coef, intercept
    other, share = recipe.blend
    coef2, intercept2 = fit_recipe(X, spec, families, rows, other)
    raw1, raw2 = Xk @ coef + intercept, Xk @ coef2 + intercept2
    s1, s2 = float(raw1.std()) or 1.0, float(raw2.std()) or 1.0
    blended = (1 - share) * coef / s1 + share * coef2 / s2
    return blended, (1 - share) * (intercept - raw1.mean()) / s1 + share * (intercept2 - raw2.mean()) / s2


def row_index(families: Sequence[Family]) -> list[np.ndarray]:
    """The rows of each family's items in a matrix that holds all families' items in order."""
    rows, start = [], 0
    for fam in families:
        rows.append(np.arange(start, start + len(fam.items)))
        start += len(fam.items)
    return rows


def held_out_fits(
    X: Any,
    spec: FeatureSpec,
    families: Sequence[Family],
    recipe: Recipe,
    progress: Callable[[str], None] = lambda _: None,
) -> list[tuple[np.ndarray, float]]:
    """Per family, the recipe's (coef, intercept) trained on all the other families. X holds every family's
    items, in order."""
    rows = row_index(families)
    fits = []
    for k, held in enumerate(families):
        progress(f"{recipe.name}: holding out {held.name}")
        others = [f for j, f in enumerate(families) if j != k]
        other_rows = [r for j, r in enumerate(rows) if j != k]
        fits.append(fit_recipe(X, spec, others, other_rows, recipe))
    return fits


def held_out_scores(
    X: Any,
    spec: FeatureSpec,
    families: Sequence[Family],
    recipe: Recipe,
    progress: Callable[[str], None] = lambda _: None,
    fits: Sequence[tuple[np.ndarray, float]] | None = None,
) -> list[np.ndarray]:
    """Each family's items scored by the recipe trained on all the other families (`fits`: from held_out_fits,
    else fitted here)."""
    fits = fits if fits is not None else held_out_fits(X, spec, families, recipe, progress)
    return [X[r] @ coef + intercept for r, (coef, intercept) in zip(row_index(families), fits, strict=True)]


def _graded(fam: Family) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask of the family's scored items, their small outcomes, their large outcomes)."""
    mask = np.array(fam.eval_mask())
    items = [i for i, keep in zip(fam.items, mask, strict=True) if keep]
    return mask, np.array([i.small for i in items]), np.array([i.large for i in items])


def pool_parts(families: Sequence[Family], scores: Sequence[np.ndarray], among: Sequence[str] = ()) -> list[Part]:
    """Each family's scored items as (scores, small, large), for pooled_route_metrics (`among`: only these)."""
    parts = []
    for fam, s in zip(families, scores, strict=True):
        if not among or fam.name in among:
            mask, small, large = _graded(fam)
            parts.append((np.asarray(s)[mask], small, large))
    return parts


def family_gain_scores(families: Sequence[Family]) -> list[np.ndarray]:
    """Every item scored by its family's mean outcome gap: a reference router that knows only which kinds of
    request gain (each family's average), nothing about its items (ties within a family)."""
    return [np.full(len(f.items), float(np.mean(lg - sm))) for f in families for _, sm, lg in [_graded(f)]]


def large_shares(
    X: Any, families: Sequence[Family], fits: Sequence[tuple[np.ndarray, float]], floor: float = 0.95
) -> dict[str, float]:
    """The score level per held-out family: the share of its scored items at or above the threshold suggested
    by the model that never saw it (the highest keeping `floor` of the large model's quality on average over the
    GPT-4/Mixtral-graded training families, each weighing the same, as `triage classifier train` suggests;
    here on the training items' own scores, not out of fold)."""
    rows = row_index(families)
    small = np.array([i.small for f in families for i in f.items])
    large = np.array([i.large for f in families for i in f.items])
    graded = np.array([i.source == "routellm" for f in families for i in f.items])
    out = {}
    for k, (fam, (coef, intercept)) in enumerate(zip(families, fits, strict=True)):
        raw = np.asarray(X @ coef, dtype=np.float64) + intercept
        groups = [r[graded[r]] for j, r in enumerate(rows) if j != k and graded[r].any()]
        threshold = threshold_for_mean_quality(raw, small, large, groups, floor)
        mask, _, _ = _graded(fam)
        out[fam.name] = float(np.mean(raw[rows[k]][mask] >= threshold))
    return out


def lodo(
    X: Any,
    spec: FeatureSpec,
    families: Sequence[Family],
    recipe: Recipe,
    *,
    progress: Callable[[str], None] = lambda _: None,
) -> list[FamilyResult]:
    """Each family scored by a model trained on all the others."""
    return [
        score_family(f, s) for f, s in zip(families, held_out_scores(X, spec, families, recipe, progress), strict=True)
    ]


def kfold_within(
    X: Any, spec: FeatureSpec, families: Sequence[Family], recipe: Recipe, name: str, folds: int = 5
) -> FamilyResult:
    """In-family k-fold for one family (the old yardstick, kept beside LODO): each fold of it scored by the
    recipe trained on every other family plus the family's other folds."""
    from sklearn.model_selection import KFold

    rows = row_index(families)
    k = next(j for j, f in enumerate(families) if f.name == name)
    fam, fam_rows = families[k], rows[k]
    scores = np.zeros(len(fam.items))
    for train, test in KFold(folds, shuffle=True, random_state=0).split(fam_rows):
        part = Family(fam.name, tuple(fam.items[i] for i in train))
        others = [f for j, f in enumerate(families) if j != k] + [part]
        other_rows = [r for j, r in enumerate(rows) if j != k] + [fam_rows[train]]
        coef, intercept = fit_recipe(X, spec, others, other_rows, recipe)
        scores[test] = X[fam_rows[test]] @ coef + intercept
    return score_family(fam, scores)


# The in-family reference: word n-grams and counts fitted to the family's own pair outcomes (the best in-family
# form measured: structure alone, or alpha 100, reached less).
IN_FAMILY = Recipe("in-family", label="gap", alpha=10.0, features="words")


def in_family(X: Any, spec: FeatureSpec, families: Sequence[Family], folds: int = 5) -> list[FamilyResult]:
    """Each family scored by k-fold on its own graded items alone, fitted to the pair outcomes it is scored with:
    what a prompt-only model of the shipped form learns about a family when that family's outcomes are at hand.
    Not a LODO result (no deployment has them on day one): the reference a LODO figure is read against."""
    from sklearn.model_selection import KFold

    out = []
    for fam, idx in zip(families, row_index(families), strict=True):
        mask = np.array(fam.eval_mask())
        items = tuple(i for i, keep in zip(fam.items, mask, strict=True) if keep)
        own = idx[mask]
        scores = np.zeros(len(items))
        for train, test in KFold(folds, shuffle=True, random_state=0).split(own):
            part = Family(fam.name, tuple(items[i] for i in train))
            coef, intercept = fit_recipe(X, spec, [part], [own[train]], IN_FAMILY)
            scores[test] = X[own[test]] @ coef + intercept
        out.append(score_family(Family(fam.name, items), scores))
    return out


def score_family(fam: Family, scores: np.ndarray) -> FamilyResult:
    """APGR and large share at 95% quality of a family's items under these scores (its graded items only)."""
    mask = fam.eval_mask()
    items = [i for i, keep in zip(fam.items, mask, strict=True) if keep]
    s = scores[mask]
    small = np.array([i.small for i in items])
    large = np.array([i.large for i in items])
    q_small, q_large = float(small.mean()), float(large.mean())
    if q_large - q_small < MIN_GAP:
        return FamilyResult(fam.name, len(items), q_small, q_large, float("nan"), float("nan"))
    m = route_metrics(routing_curve(s, small, large), q_small, q_large, 0.24, 24.7)
    return FamilyResult(fam.name, len(items), q_small, q_large, m.apgr, m.share_at_95)


def oracles(families: Sequence[Family]) -> list[tuple[str, float, float]]:
    """Per family scored with the open pair: the APGR of routing by what other models actually did on each item
    (the other small models' failure rate; another large model's outcome). A prompt-only prior can at best
    estimate such difficulty, so this is what knowing it outright earns there (a reference, not a strict bound:
    a prior may fit one family's quirks by chance)."""
    out = []
    for fam in families:
        items = [i for i, keep in zip(fam.items, fam.eval_mask(), strict=True) if keep]
        if items[0].source != "llmrouter" or not score_family(fam, np.zeros(len(fam.items))).scored:
            continue
        graded = Family(fam.name, tuple(items))
        failure = np.array([i.peer_failure for i in items])
        large = np.array([i.peer_large for i in items])
        # Outcomes are mostly binary: ties are broken at random, and the APGR averaged over 20 such draws.
        rng = np.random.default_rng(0)
        draws = [rng.random(len(items)) * 1e-6 for _ in range(20)]
        out.append(
            (
                fam.name,
                float(np.mean([score_family(graded, failure + d).apgr for d in draws])),
                float(np.mean([score_family(graded, large + d).apgr for d in draws])),
            )
        )
    return out


def random_spread(families: Sequence[Family], draws: int = 200, seed: int = 0) -> tuple[dict[str, float], float]:
    """The standard deviation of a random router's APGR per scored family, and of its mean over them: the
    noise any LODO difference has to clear."""
    rng = np.random.default_rng(seed)
    per: dict[str, float] = {}
    means = np.zeros(draws)
    scored = 0
    for fam in families:
        items = [i for i, keep in zip(fam.items, fam.eval_mask(), strict=True) if keep]
        small = np.array([i.small for i in items])
        large = np.array([i.large for i in items])
        q_small, q_large = float(small.mean()), float(large.mean())
        if q_large - q_small < MIN_GAP:
            continue
        apgrs = np.array(
            [
                route_metrics(routing_curve(rng.random(len(items)), small, large), q_small, q_large, 0.24, 24.7).apgr
                for _ in range(draws)
            ]
        )
        per[fam.name] = float(apgrs.std())
        means += apgrs
        scored += 1
    return per, float((means / max(scored, 1)).std())


def familiarity(X_train: Any, X_test: Any, spec: FeatureSpec, min_count: int = 2) -> np.ndarray:
    """Per test row: the share of its hashed word n-grams that occur in at least `min_count` training rows
    (how much of the prompt the training data covered)."""
    width = 1 << spec.word_bits
    seen = np.asarray((X_train[:, :width] > 0).sum(axis=0)).ravel() >= min_count
    words = X_test[:, :width].tocsr()
    out = np.zeros(words.shape[0])
    for i in range(words.shape[0]):
        cols = words.indices[words.indptr[i] : words.indptr[i + 1]]
        out[i] = seen[cols].mean() if len(cols) else 0.0
    return out


def familiarity_effect(
    X: Any,
    spec: FeatureSpec,
    families: Sequence[Family],
    held_out: Sequence[np.ndarray],
    shares: Sequence[float] = (0.05, 0.1, 0.25),
) -> dict[float, tuple[float, float]]:
    """Under LODO (`held_out`: from held_out_scores): the mean APGR and mean large share at 95% quality when the
    least familiar `share` of each held-out family goes to the large model before anything the scores rank
    (0.0: the scores alone)."""
    rows = row_index(families)
    got: dict[float, list[tuple[float, float]]] = {s: [] for s in (0.0, *shares)}
    for k, held in enumerate(families):
        mask = np.array(held.eval_mask())
        items = [i for i, keep in zip(held.items, mask, strict=True) if keep]
        small, large = np.array([i.small for i in items]), np.array([i.large for i in items])
        if large.mean() - small.mean() < MIN_GAP:
            continue
        others = np.concatenate([r for j, r in enumerate(rows) if j != k])
        known = familiarity(X[others], X[rows[k][mask]], spec)
        scores = held_out[k][mask]
        for share in got:
            first = known <= np.quantile(known, share) if share else np.zeros(len(known), bool)
            m = route_metrics(routing_curve(scores + 1e6 * first, small, large), small.mean(), large.mean(), 0.24, 24.7)
            got[share].append((m.apgr, m.share_at_95))
    return {s: (float(np.mean([a for a, _ in v])), float(np.nanmean([x for _, x in v]))) for s, v in got.items()}
