"""A deployment's own outcomes: the file format, training on them (with and without the prior), judging and
calibrating a classifier on them, and what bad files get (a line number and a reason, exit 2, no traceback)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

import classifiers
from classifiers.lab.matrix import feature_matrix
from classifiers.lab.outcomes import Outcome, OutcomesError, read_outcomes
from classifiers.lab.own import fit_own, learning_curve, own_weight
from router.cli import main

WORDS = [f"w{i}x{j}" for i in range(40) for j in "abc"]


def _easy(rng: random.Random) -> str:
    return f"Translate the word {rng.choice(WORDS)} into French, please."


def _hard(rng: random.Random) -> str:
    return f"Derive the bound for lemma {rng.randint(1, 999)} on {rng.choice(WORDS)} and prove it rigorously."


def outcomes(n: int, seed: int = 0, answers: bool = False, large_for: str = "proofs") -> list[dict[str, object]]:
    """Known by construction: the small model answers the translation prompts as well as the large one, and
    fails the proofs, which the large model gets right (with large_for="translations", the other way round)."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for i in range(n):
        hard = i % 2 == 1
        needs_large = hard if large_for == "proofs" else not hard
        row: dict[str, object] = {"prompt": _hard(rng) if hard else _easy(rng), "small": 0.0 if needs_large else 1.0}
        row["large"] = 1.0
        if answers:
            row["small_answer"] = "I am not sure, perhaps it is 7?" if hard else "Le mot est traduit ainsi."
        rows.append(row)
    return rows


def write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_good_file_reads_with_blank_lines_and_extra_fields(tmp_path: Path) -> None:
    path = tmp_path / "o.jsonl"
    path.write_text(
        '{"prompt": "a", "small": 0, "large": 1, "domain": "d", "ts": 1.5, "request_id": "r", "extra": [1]}\n'
        "\n"
        '{"prompt": "b", "small": 0.5, "large": 0.25, "small_answer": "x"}\n',
        encoding="utf-8",
    )
    assert read_outcomes([path]) == [
        Outcome("a", 0.0, 1.0, None, "d", 1.5, "r"),
        Outcome("b", 0.5, 0.25, "x"),
    ]


def test_every_bad_record_is_named_by_line_with_its_reason(tmp_path: Path) -> None:
    lines = [
        '{"prompt": "ok", "small": 1, "large": 1}',
        "{not json",
        '["prompt", 1]',
        '{"prompt": "x", "large": 1}',
        '{"prompt": "x", "small": 1.5, "large": 1}',
        '{"prompt": "x", "small": true, "large": 1}',
        '{"prompt": "  ", "small": 1, "large": 1}',
        '{"prompt": "x", "small": 1, "large": NaN}',
        '{"prompt": "x", "small": 1, "large": 1, "ts": "yesterday"}',
        '{"prompt": "x", "small": 1, "large": 1, "small_answer": 7}',
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(OutcomesError) as caught:
        read_outcomes([path])
    err = caught.value
    assert err.total == 9
    expected = [
        (2, "not JSON"),
        (3, "must be a JSON object"),
        (4, "`small` is missing"),
        (5, "`small` must be in [0, 1]"),
        (6, "`small` must be a number"),
        (7, "`prompt` must be a non-empty string"),
        (8, "`large` must be in [0, 1]"),
        (9, "`ts` must be a number"),
        (10, "`small_answer` must be a string"),
    ]
    for problem, (line, reason) in zip(err.problems, expected, strict=True):
        assert problem.startswith(f"{path}:{line}: ") and reason in problem, problem


def test_bad_files_exit_2_with_the_line_and_no_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "small": 2, "large": 1}\n', encoding="utf-8")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"prompt": "\xff\xfe", "small": 1}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    missing = tmp_path / "nope.jsonl"
    for path, says in [
        (bad, f"{bad}:1: `small` must be in [0, 1]"),
        (binary, "not UTF-8"),
        (empty, "no outcome"),
        (missing, "No such file"),
    ]:
        for argv in (
            ["classifier", "train", "--outcomes", str(path), "--out", str(tmp_path / "m.json")],
            ["classifier", "eval", "--outcomes", str(path)],
            ["classifier", "calibrate", "--outcomes", str(path), "--quality-floor", "0.95"],
        ):
            with pytest.raises(SystemExit) as exit_:
                main(argv)
            assert exit_.value.code == 2
            err = capsys.readouterr().err
            assert says in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "m.json").exists()


def test_own_outcomes_teach_what_the_prior_cannot_know(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The prior ranks proofs above translations; it cannot know that on this deployment the small model's French
    is poor, so the translations need the large model and the proofs do not. 400 outcomes teach it, and eval,
    calibrate and the ledger-free CLI agree."""
    train = write(tmp_path / "train.jsonl", outcomes(400, seed=1, large_for="translations"))
    held = write(tmp_path / "held.jsonl", outcomes(200, seed=2, large_for="translations"))
    prior = classifiers.load()
    rng = random.Random(3)
    assert min(prior.score_many([_hard(rng) for _ in range(20)])) > max(
        prior.score_many([_easy(rng) for _ in range(20)])
    )
    out = tmp_path / "own.json"
    assert main(["classifier", "train", "--outcomes", str(train), "--out", str(out)]) == 0
    model = classifiers.load(out)
    assert model.meta["own_outcomes"] == 400 and model.meta["own_weight"] > 0 and not model.meta["prior_kept"]
    assert model.meta["recipe"] == classifiers.load().meta["recipe"]  # the prior's provenance is kept
    rng = random.Random(3)
    easy = model.score_many([_hard(rng) for _ in range(50)])  # on this deployment the proofs are the easy ones
    hard = model.score_many([_easy(rng) for _ in range(50)])
    assert min(hard) > max(easy)
    threshold = float(model.meta["suggested_threshold"])
    # Calibrated on the outcomes: no proof goes large, and (the threshold being the highest that kept 95% out of
    # fold, right at the edge of the translations' scores) nearly every new translation does.
    assert max(easy) < threshold
    assert sum(h >= threshold for h in hard) >= 40
    capsys.readouterr()
    assert main(["classifier", "eval", "--outcomes", str(held), "--model", str(out)]) == 0
    table = capsys.readouterr().out
    own_row = next(line for line in table.splitlines() if line.startswith(f"| {out} |"))
    assert float(own_row.split("|")[2]) == pytest.approx(0.75, abs=0.005)  # the oracle's APGR: every translation first
    assert "| shipped prior |" in table and "| random (200 draws) |" in table
    assert (
        main(["classifier", "calibrate", "--outcomes", str(held), "--model", str(out), "--quality-floor", "0.95"]) == 0
    )
    said = capsys.readouterr().out
    # Half are translations: 45% keeps 95% where their scores can be split; outcomes this separable saturate the
    # Platt scaling, so most proofs may tie at the top and all of them go (50%): the floor holds either way.
    share = float(said.split("% of 200 prompts")[0].rsplit(" ", 1)[1])
    assert 45.0 <= share <= 50.0, said


def test_without_a_prior_and_for_the_answer_scorer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = write(tmp_path / "train.jsonl", outcomes(200, seed=4, answers=True))
    out = tmp_path / "alone.json"
    assert main(["classifier", "train", "--outcomes", str(train), "--prior", "none", "--out", str(out)]) == 0
    alone = classifiers.load(out)
    assert alone.meta["own_weight"] == 1.0 and "recipe" not in alone.meta
    answers = tmp_path / "answers.json"
    assert main(["classifier", "train", "--answers", "--outcomes", str(train), "--out", str(answers)]) == 0
    scorer = classifiers.load(answers)
    assert scorer.spec.answer and scorer.meta["kind"] == "answer_scorer"
    unsure = scorer.score(classifiers.answer_text(_hard(random.Random(5)), "I am not sure, perhaps it is 7?"))
    sure = scorer.score(classifiers.answer_text(_easy(random.Random(5)), "Le mot est traduit ainsi."))
    assert unsure > sure
    no_answers = write(tmp_path / "plain.jsonl", outcomes(20))
    capsys.readouterr()
    assert main(["classifier", "train", "--answers", "--outcomes", str(no_answers), "--out", str(out)]) == 2
    assert "needs `small_answer` on every record (20 lack it)" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["classifier", "train", "--outcomes", str(train), "--prior", str(answers), "--out", str(out)]) == 2
    assert "is an answer scorer" in capsys.readouterr().err


def test_the_own_model_s_weight_is_earned_out_of_fold() -> None:
    """`own_weight` is the recipe used before (k / (k + 100)), kept for the per-family learning curve; what ships
    now is the weight that won out of fold, and too few outcomes to fold keep the prior."""
    assert own_weight(0) == 0.0
    assert own_weight(100) == pytest.approx(0.5)
    assert own_weight(300) == pytest.approx(0.75)
    assert own_weight(10_000) > 0.99
    rows = [Outcome(r["prompt"], r["small"], r["large"]) for r in outcomes(60, large_for="translations")]  # type: ignore[arg-type]
    few = fit_own(rows[:6], classifiers.load())
    many = fit_own(rows, classifiers.load())
    assert few.meta["own_weight"] == 0.0 and few.meta["prior_kept"] is True
    assert "too few outcomes" in str(few.meta["own_check"]["verdict"])
    assert many.meta["own_weight"] > 0.0 and many.meta["prior_kept"] is False


def test_the_learning_curve_gains_where_the_family_has_a_pattern_the_prior_lacks() -> None:
    from classifiers.features import FeatureSpec
    from classifiers.lab.families import Family, FamilyItem

    rng = random.Random(7)
    items = []
    for i in range(600):
        hard = i % 2 == 1
        prompt = _hard(rng) if hard else _easy(rng)
        items.append(FamilyItem(prompt, 0.0 if hard else 1.0, 1.0, 0.5, "llmrouter"))
    family = Family("synthetic", tuple(items))
    X = feature_matrix(FeatureSpec(), family.prompts)
    prior = [np.random.default_rng(0).random(len(items))]  # a prior that knows nothing of this family
    curve = learning_curve(X, [family], prior, ks=(0, 100, 300), seeds=2)["synthetic"]
    assert curve[0][0] == pytest.approx(0.5, abs=0.1)
    assert curve[100][0] > curve[100][1] + 0.2
    assert curve[300][0] > 0.72  # the oracle here: 0.75 (half the items need the large model)
