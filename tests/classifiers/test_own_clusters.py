"""Learning from own outcomes, coarse before fine: clusters of the deployment's prompts with a shrunk gain each,
stored in the classifier file and assigned at serve time; and the check that ships the prior where the own model
does not beat it out of fold."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import classifiers
from classifiers.clusters import Clusters
from classifiers.features import FeatureSpec
from classifiers.lab.matrix import feature_matrix
from classifiers.lab.outcomes import Outcome
from classifiers.lab.own import fit_own
from classifiers.lab.own_clustered import Pairs, cluster_count, fit_clustered, shrunk_means
from classifiers.lab.own_mix import draw, llmrouter_only
from router.cli import main

NOUNS = [f"n{i}q{j}" for i in range(30) for j in "xyz"]

# Three kinds of request, told apart by their form; the large model gains on proofs always, on code now and
# then, on translations never. Within a kind nothing tells one item from another.
KINDS: dict[str, tuple[Callable[[random.Random], str], float]] = {
    "translate": (lambda r: f"Translate the word {r.choice(NOUNS)} into German, please.", 0.0),
    "code": (
        lambda r: (
            f"def f{r.randint(1, 999)}(x):\n    return x + {r.randint(1, 99)}\n# fix the bug in {r.choice(NOUNS)}"
        ),
        0.35,
    ),
    "prove": (lambda r: f"Prove rigorously that lemma {r.randint(1, 999)} holds for every {r.choice(NOUNS)}.", 0.9),
}


def kinds(n: int, seed: int) -> list[tuple[str, Outcome]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = list(KINDS)[i % 3]
        make, p_gain = KINDS[kind]
        gain = rng.random() < p_gain
        out.append((kind, Outcome(make(rng), 0.0 if gain else 1.0, 1.0)))
    return out


def test_shrinkage_moves_a_cluster_by_how_many_outcomes_back_it() -> None:
    # Clusters 0 and 1 (100 outcomes each) differ far beyond chance; cluster 2 has two outcomes only.
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(1.0, 0.1, 100), rng.normal(0.0, 0.1, 100), [1.0, 1.0]])
    labels = np.array([0] * 100 + [1] * 100 + [2, 2])
    targets = np.full(3, 0.5)
    levels, stats = shrunk_means(values, labels, targets, 3)
    assert stats["tau2"] > 0.1
    assert levels[0] == pytest.approx(values[:100].mean(), abs=0.002)  # backed by 100: its own mean
    assert levels[1] == pytest.approx(values[100:200].mean(), abs=0.002)
    # two outcomes, within-variance 0.01: B = tau2 / (tau2 + 0.005), close to 1 but not 1
    assert 0.5 < levels[2] < 1.0
    # clusters that differ from their targets no more than chance keep their targets, whatever their size
    flat = np.tile([0.0, 1.0], 50)
    same, stats = shrunk_means(flat, np.repeat([0, 1, 2, 3], 25), np.array([0.5, 0.5, 0.5, 0.5]), 4)
    assert stats["tau2"] == 0.0 and same == pytest.approx([0.5] * 4)


def test_the_number_of_clusters_follows_the_data_size() -> None:
    assert [cluster_count(n) for n in (4, 50, 100, 300, 1000, 10**6)] == [2, 5, 7, 12, 22, 40]


def test_kinds_are_learnt_from_few_outcomes_and_survive_the_file(tmp_path: Path) -> None:
    """60 outcomes (20 per kind, each a coin flip): the model ranks the kinds by their gain (proofs, code,
    translations) on new prompts; the clusters go into the file, load back, and score(), score_many() and the
    file's probes agree."""
    train = [o for _, o in kinds(60, seed=1)]
    model = fit_own(train, None)
    assert model.clusters is not None and model.meta["own_clusters"] == cluster_count(60)
    held = kinds(90, seed=2)
    scores = model.score_many([o.prompt for _, o in held])
    by_kind = {k: np.mean([s for (kind, _), s in zip(held, scores, strict=True) if kind == k]) for k in KINDS}
    assert by_kind["prove"] > by_kind["code"] > by_kind["translate"]
    path = tmp_path / "own.json"
    model.save(path)
    doc = json.loads(path.read_text())
    assert doc["format_version"] == 2 and "clusters" in doc
    again = classifiers.load(path)
    assert again.clusters is not None
    texts = [o.prompt for _, o in held[:12]] + ["hi", "x " * 400]  # short (plain-Python path) and long prompts
    one_by_one = [again.score(t) for t in texts]
    assert one_by_one == pytest.approx(again.score_many(texts), abs=1e-6)
    assert one_by_one == pytest.approx(model.score_many(texts), abs=1e-6)


def test_a_file_without_clusters_is_still_version_1(tmp_path: Path) -> None:
    """Files a previous llm-triage reads must stay readable by it: only a file with clusters is version 2."""
    shipped = classifiers.load()
    assert shipped.clusters is None
    path = tmp_path / "copy.json"
    shipped.save(path)
    assert json.loads(path.read_text())["format_version"] == 1
    assert path.read_bytes() == classifiers.default_path().read_bytes()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["centroids"].update(sha256="0" * 64), "cluster centroids are corrupt"),
        (lambda c: c["offsets"].update(shape=[99]), "cluster offsets are truncated"),
        (lambda c: c.pop("offsets"), "malformed"),
        (lambda c: c.update(fold_bits=11), "disagree"),
    ],
)
def test_corrupt_clusters_are_refused(tmp_path: Path, change: object, message: str) -> None:
    model = fit_own([o for _, o in kinds(30, seed=3)], None)
    path = tmp_path / "own.json"
    model.save(path)
    doc = json.loads(path.read_text())
    change(doc["clusters"])  # type: ignore[operator]
    path.write_text(json.dumps(doc))
    with pytest.raises(classifiers.ClassifierFileError, match=message):
        classifiers.load(path)


def test_the_prior_s_slope_is_kept_within_clusters_and_never_inverted() -> None:
    """Column 0 tells each item's gain; a prior reading it the right way keeps a positive slope, one reading it
    upside down is muted (slope 0), not flipped."""
    import scipy.sparse as sp

    spec = FeatureSpec(word_bits=4, char_bits=0)
    rng = np.random.default_rng(0)
    signal = rng.random(200)
    dense = np.zeros((200, spec.width))
    dense[:, 0] = signal
    dense[:, spec.structure_offset] = np.repeat([0.0, 3.0], 100)  # two kinds of request
    X = sp.csr_matrix(dense)
    gain = (rng.random(200) < signal).astype(float)
    right, upside_down = np.zeros(spec.width), np.zeros(spec.width)
    right[0], upside_down[0] = 1.0, -1.0
    pairs = Pairs(X, 1.0 - gain, np.ones(200), spec)
    kept = fit_clustered(pairs, (right, 0.0), alpha=30.0).info["own_prior_slope"]
    muted = fit_clustered(pairs, (upside_down, 0.0), alpha=30.0).info["own_prior_slope"]
    assert isinstance(kept, float) and kept > 0.5
    assert muted == 0.0


def _noise(n: int, seed: int) -> list[Outcome]:
    rng = random.Random(seed)
    return [
        Outcome(make(rng), float(rng.random() < 0.5), float(rng.random() < 0.7))
        for make, _ in KINDS.values()
        for _ in range(n // 3)
    ]


def test_labels_that_are_noise_ship_the_prior_and_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Outcomes whose gain no prompt can tell (coin flips): the own model cannot beat the prior out of fold, so
    `train --outcomes` ships the prior's weights, says so, and records it in the file."""
    path = tmp_path / "noise.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": o.prompt, "small": o.small, "large": o.large}) + "\n" for o in _noise(300, seed=5)
        )
    )
    out = tmp_path / "own.json"
    capsys.readouterr()
    assert main(["classifier", "train", "--outcomes", str(path), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "PRIOR KEPT: the own model did not beat the prior out of fold" in said
    model, prior = classifiers.load(out), classifiers.load()
    assert model.meta["prior_kept"] is True and model.meta["own_weight"] == 0.0
    assert "did not beat the prior" in model.meta["own_check"]["verdict"]
    assert model.clusters is None
    assert np.array_equal(model.coef, prior.coef) and model.intercept == prior.intercept  # the prior's scores
    texts = [o.prompt for o in _noise(30, seed=6)]
    assert np.argsort(model.score_many(texts)).tolist() == np.argsort(prior.score_many(texts)).tolist()


def test_outcomes_with_a_signal_ship_the_own_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "kinds.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": o.prompt, "small": o.small, "large": o.large}) + "\n" for _, o in kinds(300, seed=7)
        )
    )
    out = tmp_path / "own.json"
    capsys.readouterr()
    assert main(["classifier", "train", "--outcomes", str(path), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "won out of fold" in said and "PRIOR KEPT" not in said
    model = classifiers.load(out)
    assert model.meta["prior_kept"] is False and model.meta["own_weight"] > 0.0
    check = model.meta["own_check"]
    assert check["apgr_by_own_weight"][str(model.meta["own_weight"])] > check["apgr_by_own_weight"]["0.0"]


def test_a_prior_with_clusters_is_refused() -> None:
    own = fit_own([o for _, o in kinds(30, seed=8)], None)
    with pytest.raises(ValueError, match="clusters of another deployment"):
        fit_own([o for _, o in kinds(30, seed=9)], own)


def test_the_mix_draw_weighs_families_alike_and_leaves_each_some_to_score() -> None:
    sizes = [5000, 400, 40]
    for k in (30, 300):
        train, rest = draw(sizes, k, seed=1)
        assert len(train) == k == len(set(train.tolist()))
        starts = np.cumsum([0, *sizes])
        per = [int(((train >= starts[f]) & (train < starts[f + 1])).sum()) for f in range(3)]
        assert all(n <= s // 2 for n, s in zip(per, sizes, strict=True))  # at most half of a family is drawn
        assert sum(len(r) for r in rest) + k == sum(sizes) and not set(train.tolist()) & set(np.concatenate(rest))
        if k == 30:
            assert min(per) >= 5  # drawn alike, not by size (by size the smallest would get none)
    assert draw(sizes, 300, seed=1)[0].tolist() == draw(sizes, 300, seed=1)[0].tolist()
    with pytest.raises(ValueError, match="fewer than k"):
        draw(sizes, 3000, seed=1)


def test_the_mix_prior_never_sees_the_mix() -> None:
    from classifiers.lab.lodo import PRIOR, RECIPES

    recipe = llmrouter_only(RECIPES[PRIOR])
    parts = [recipe] + ([recipe.blend[0]] if recipe.blend else [])
    assert all(r.sources == ("llmrouter",) and not r.families for r in parts)


def test_clusters_check_their_shapes() -> None:
    with pytest.raises(ValueError, match="disagree"):
        Clusters(4, 0.5, np.zeros((3, 16 + 12)), np.zeros(2))


def test_the_mix_learning_curve_scores_every_router_on_the_same_draws() -> None:
    """A synthetic mix of three kinds, a prior that ranks the kinds upside down: with 90 own outcomes the shipped
    recipe routes the pooled mix better than the prior alone, on every draw."""
    from classifiers.lab.own_mix import Mix, mix_curve

    spec = FeatureSpec(word_bits=12, char_bits=0)
    groups = [[o for kind, o in kinds(600, seed=10) if kind == k] for k in KINDS]
    outcomes = [o for g in groups for o in g]
    X = feature_matrix(spec, [o.prompt for o in outcomes])
    starts = np.cumsum([0] + [len(g) for g in groups])
    rows = [np.arange(starts[j], starts[j + 1]) for j in range(3)]
    small, large = np.array([o.small for o in outcomes]), np.array([o.large for o in outcomes])
    prior = fit_clustered(Pairs(X, large, small, spec), None, alpha=30.0, clusters=False)  # the gain reversed
    mix = Mix(list(KINDS), X, rows, small, large, spec, (prior.coef, prior.intercept))
    results, (mean, sd) = mix_curve(mix, ks=(90,), draws=2)
    by = {r.router: r for r in results}
    assert len(by) == 4 and all(len(r.apgrs) == 2 for r in results)
    assert 0.45 < mean < 0.55 and sd < 0.05
    shipped = by["**clusters + items, checked (shipped)**"]
    assert all(a > b + 0.1 for a, b in zip(shipped.apgrs, by["prior alone"].apgrs, strict=True))
