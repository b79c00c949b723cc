"""Training and scoring on small synthetic data; persistence round trip; corrupted and mismatched files."""

from __future__ import annotations

import base64
import json
import math
import random
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import classifiers
from classifiers.features import FeatureSpec, Featurizer
from classifiers.lab.calibrate import (
    read_prompts,
    threshold_for_budget,
    threshold_for_mean_quality,
    threshold_for_quality,
    threshold_for_share,
)
from classifiers.lab.matrix import feature_matrix
from classifiers.lab.train import fit
from classifiers.model import PROBES, Classifier, ClassifierFileError
from classifiers.tasks import TASKS, task_kind

SPEC = FeatureSpec(word_bits=12, char_bits=10)


def synthetic(n: int = 400, seed: int = 0) -> tuple[list[str], list[float], list[float]]:
    """Prompts about calculus are hard for the small model; prompts about greetings are easy."""
    rng = np.random.default_rng(seed)
    texts, small, large = [], [], []
    for i in range(n):
        hard = i % 2 == 0
        topic = (
            rng.choice(["integral of", "derivative of", "limit of"])
            if hard
            else rng.choice(["say hello to", "greet", "wave at"])
        )
        texts.append(f"{topic} item {rng.integers(0, 1000)} please")
        small.append(float(rng.random() < (0.2 if hard else 0.9)))
        large.append(float(rng.random() < 0.9))
    return texts, small, large


@pytest.fixture(scope="module")
def trained() -> Classifier:
    texts, small, large = synthetic()
    return fit(texts, small, large, spec=SPEC, alpha=1.0)


def test_learns_which_prompts_need_the_large_model(trained: Classifier) -> None:
    hard = trained.score_many([f"integral of item {i} please" for i in range(20)])
    easy = trained.score_many([f"greet item {i} please" for i in range(20)])
    assert min(hard) > max(easy)
    assert all(0.0 <= s <= 1.0 for s in hard + easy)


def test_score_matches_score_many(trained: Classifier) -> None:
    texts = ["derivative of x", "hello", "", "x" * 5000]
    assert [trained.score(t) for t in texts] == pytest.approx(trained.score_many(texts), abs=1e-6)


def test_suggested_threshold_is_recorded(trained: Classifier) -> None:
    assert 0.0 <= float(trained.meta["suggested_threshold"]) <= 1.0


def test_round_trip(tmp_path: Path, trained: Classifier) -> None:
    path = tmp_path / "c.json"
    trained.save(path)
    again = classifiers.load(path)
    texts = ["limit of item 3 please", "wave at item 9 please"]
    assert again.score_many(texts) == trained.score_many(texts)
    assert again.meta == trained.meta
    assert "integral" not in path.read_text()  # hashed features: no prompt text in the file


def test_training_is_deterministic(tmp_path: Path) -> None:
    texts, small, large = synthetic(200, seed=3)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    fit(texts, small, large, spec=SPEC).save(a)
    fit(texts, small, large, spec=SPEC).save(b)
    assert a.read_bytes() == b.read_bytes()


def _tamper(tmp_path: Path, trained: Classifier, change: object) -> Path:
    doc = json.loads(json.dumps(trained.to_json()))  # a copy: to_json shares the model's meta
    change(doc)  # type: ignore[operator]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    return path


def _flip_weight(doc: dict[str, object]) -> None:
    blob = doc["coef"]
    assert isinstance(blob, dict)
    raw = bytearray(zlib.decompress(base64.b64decode(blob["zlib_base64"])))
    raw[100] ^= 0xFF
    blob["zlib_base64"] = base64.b64encode(zlib.compress(bytes(raw))).decode()


def _reweigh_consistently(doc: dict[str, object]) -> None:
    """Valid checksum, but weights that no longer produce the recorded probe scores."""
    import hashlib

    blob = doc["coef"]
    assert isinstance(blob, dict)
    coef = np.frombuffer(zlib.decompress(base64.b64decode(blob["zlib_base64"])), dtype="<f4") * 3
    raw = coef.astype("<f4").tobytes()
    blob["zlib_base64"] = base64.b64encode(zlib.compress(raw)).decode()
    blob["sha256"] = hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="other"), "not an llm-triage-classifier file"),
        (lambda d: d.update(format_version=99), "format version 99"),
        (_flip_weight, "checksum mismatch"),
        (_reweigh_consistently, "probe scores do not reproduce"),
        (lambda d: d["spec"].update(word_bits=11), "shape"),
        (lambda d: d.pop("platt"), "malformed"),
    ],
)
def test_corrupt_or_mismatched_files_are_refused(
    tmp_path: Path, trained: Classifier, change: object, message: str
) -> None:
    with pytest.raises(ClassifierFileError, match=message):
        classifiers.load(_tamper(tmp_path, trained, change))


def test_the_training_library_version_is_provenance_not_a_gate(tmp_path: Path, trained: Classifier) -> None:
    """The probes prove that a file reproduces here; which scikit-learn trained it no longer matters (serving
    does not have scikit-learn at all)."""
    again = classifiers.load(_tamper(tmp_path, trained, lambda d: d.update(sklearn_version="0.24.2")))
    assert again.score_many(["integral of item 1 please"]) == trained.score_many(["integral of item 1 please"])


def test_serving_imports_neither_scikit_learn_nor_scipy() -> None:
    """The gateway's path, with both made unimportable: load the shipped classifier, build the app, score."""
    import subprocess
    import sys

    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('sklearn', 'scipy'):
            raise ImportError('blocked: ' + name)
        return None
sys.meta_path.insert(0, Block())
import classifiers
from router.api.app import create_app
from router.cli import parser
from router.settings import AuthSettings, Settings, WorkerSettings
parser()
workers = [WorkerSettings(name=n, role=n, base_url='http://127.0.0.1:9/v1', model=n) for n in ('small', 'large')]
create_app(Settings(workers=workers, auth=AuthSettings(identity_secret='x' * 20)))
print(classifiers.load().score('Prove that the square root of 2 is irrational'))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert 0.0 < float(out.stdout) < 1.0


def test_not_json_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "g.json"
    garbage.write_bytes(b"\x00\x01 not json")
    with pytest.raises(ClassifierFileError, match="invalid JSON"):
        classifiers.load(garbage)
    with pytest.raises(ClassifierFileError, match="cannot read"):
        classifiers.load(tmp_path / "missing.json")


def test_shipped_default_loads_and_ranks_sensibly() -> None:
    model = classifiers.load()
    assert classifiers.default_path().stat().st_size < 5_000_000
    easy = model.score("What is the capital of France?")
    hard = model.score(
        "Let f be a continuous function on [0,1] with f(0)=0. Prove that the integral of f "
        "squared is bounded by the square of the integral of |f'|, and find when equality holds."
    )
    assert 0.0 <= easy < hard <= 1.0
    assert 0.0 < float(model.meta["suggested_threshold"]) < 1.0


def test_featurizer_is_stable_across_calls() -> None:
    f = Featurizer(SPEC)
    a, b = f.row("Hello World 42"), f.row("Hello World 42")
    assert a[0].tolist() == b[0].tolist()
    assert a[1].tolist() == b[1].tolist()
    assert feature_matrix(f, ["Hello World 42", ""]).shape == (2, SPEC.width)


def test_short_and_long_texts_get_the_same_features_either_way() -> None:
    """Texts under 256 characters are featurized in plain Python, longer ones with numpy: the same columns and
    values for the same text, whichever path (words of any script, spacing, one-letter words; long texts, whose
    char n-grams numpy counts another way)."""
    rng = random.Random(0)
    alphabet = "ab c\td\n√é漢 ?1+=xyZ"
    texts = ["", "a", "What is 2+2?", "  spaced   out  ", "ü", "x" * 40, "a b c d e"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 250))) for _ in range(500)]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1500, 2500))) for _ in range(5)]
    for spec in (SPEC, replace(SPEC, tasks=True), classifiers.load().spec):
        f = Featurizer(spec)
        for text in texts:
            lowered = text.lower()
            small, numpy_path = f._small_row(text, lowered), f._numpy_row(text, lowered)
            dense_small, dense_numpy = np.zeros(spec.width), np.zeros(spec.width)
            np.add.at(dense_small, small[0], small[1])
            np.add.at(dense_numpy, numpy_path[0], numpy_path[1])
            assert np.allclose(dense_small, dense_numpy, rtol=1e-6, atol=0), text


def test_a_short_prompts_score_without_numpy_is_the_numpy_score(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short prompts are scored in plain Python (Featurizer.short_row): the same score as the numpy dot product,
    up to float32 summation order; long texts and answer scorers keep the numpy path. A structure weight other
    than 1 is applied in float32 on both paths."""
    rng = random.Random(1)
    alphabet = "ab c\td\n√é漢 ?1+=xyZ"
    texts = ["", "a", "What is 2+2?", "Prove that √2 is irrational", *PROBES]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 255))) for _ in range(200)]
    shipped = classifiers.load()
    weighted = Classifier(  # also read only up to max_chars, on both paths
        FeatureSpec(word_bits=10, char_bits=8, structure_weight=3.0, max_chars=100),
        np.random.default_rng(0).normal(size=FeatureSpec(word_bits=10, char_bits=8).width).astype(np.float32),
        0.1,
        (1.5, -0.2),
    )
    for model in (shipped, weighted):
        for text in texts:
            idx, val = model._featurizer.row(text)
            raw = float(val @ model.coef[idx]) + model.intercept
            expected = 1.0 / (1.0 + math.exp(-(model.platt[0] * raw + model.platt[1])))
            assert model._featurizer.short_row(text) is not None or len(text[: model.spec.max_chars]) >= 256
            assert model.score(text) == pytest.approx(expected, rel=1e-5, abs=1e-9), text  # float32 sums
    assert shipped._featurizer.short_row("word " * 60) is None  # 300 characters: numpy
    assert Featurizer(FeatureSpec(answer=True)).short_row("hi") is None
    expected = shipped.score("What is 2+2?")
    monkeypatch.setattr("classifiers.features.np", None)  # any numpy call on the short path now fails
    monkeypatch.setattr("classifiers.model.np", None)
    assert shipped.score("What is 2+2?") == expected


def test_thresholds_for_share_budget_and_quality() -> None:
    scores = [0.9, 0.8, 0.7, 0.1]
    assert threshold_for_share(scores, 0.5) == 0.8
    assert threshold_for_share(scores, 0.0) > 0.9
    assert threshold_for_share(scores, 1.0) == 0.1
    # budget 3.5 with prices 1 and 6 -> share 0.5
    assert threshold_for_budget(scores, 3.5, 1.0, 6.0) == 0.8
    # only item 0 gains from the large model: quality floor 100% needs just it
    assert threshold_for_quality(scores, [0, 1, 1, 1], [1, 1, 1, 1], 1.0) == 0.9


def test_read_prompts_accepts_jsonl_chat_and_text(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "a", "small": 1, "large": 0}\n'
        '{"messages": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "x"}]}\n'
        "plain c\n\n"
    )
    records = read_prompts(path)
    assert [r.prompt for r in records] == ["a", "b", "plain c"]
    assert (records[0].small, records[0].large, records[1].small) == (1.0, 0.0, None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nothing": 1}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        read_prompts(bad)


def test_the_threshold_for_a_mean_quality_is_the_highest_that_keeps_it() -> None:
    """Against the definition, threshold by threshold: the mean over groups of each group's quality (routed by
    the threshold) as a share of its large model's, at least the floor; each group weighs the same."""
    rng = np.random.default_rng(5)
    scores = np.round(rng.random(300), 2)  # ties
    small = (rng.random(300) < 0.6).astype(float)
    large = np.maximum(small, (rng.random(300) < 0.7).astype(float))
    groups = [np.arange(0, 250), np.arange(250, 280), np.arange(280, 300)]
    for floor in (0.8, 0.9, 0.95, 0.99, 1.0):
        expected = float("-inf")
        for t in np.unique(np.concatenate([scores[g] for g in groups]))[::-1]:
            kept = [np.where(scores[g] >= t, large[g], small[g]).mean() / large[g].mean() for g in groups]
            if np.mean(kept) >= floor - 1e-12:
                expected = float(t)
                break
        assert threshold_for_mean_quality(scores, small, large, groups, floor) == expected, floor
    # A floor above what sending everything large keeps is never reached
    assert threshold_for_mean_quality(scores, small, large, groups, 2.0) == float("-inf")


def test_task_indicators_by_hand() -> None:
    def kinds(text: str) -> set[str]:
        return {name for name, v in zip(TASKS, task_kind(text), strict=True) if v == 1.0}

    assert kinds('def add(a, b):\n    """Add two numbers."""\n') == {"code"}
    assert kinds("```js\nconsole.log(1)\n```") == {"code"}
    assert kinds("Tom has 3 apples and buys 4 more. How many apples does he have?") == {"arithmetic"}
    assert kinds("If $x^2 = 4$, what is $x$?") == {"latex_math"}  # a question only where it starts as one
    assert kinds("Write a poem about the sea.") == {"instruction"}
    assert kinds("Who wrote Hamlet?") == {"short_question"}
    assert kinds("dog, frisbee, catch, throw") == {"word_list"}
    assert kinds("") == set() and kinds("The sky is blue.") == set()
    assert all(v in (0.0, 1.0) for v in task_kind("x" * 3000 + "$\\frac{1}{2}$ how many 1 2"))


def test_task_indicators_extend_the_feature_space_and_old_files_are_unchanged(tmp_path: Path) -> None:
    """A spec with task indicators has len(TASKS) more columns after the structure counts and says so in its
    file; a spec without them writes no `tasks` key, so files written before them stay byte for byte the same."""
    plain, tasks = SPEC, replace(SPEC, tasks=True)
    assert tasks.width == plain.width + len(TASKS) and tasks.task_offset == plain.width
    assert "tasks" not in plain.to_json() and tasks.to_json()["tasks"] is True
    assert FeatureSpec.from_json(tasks.to_json()) == tasks and FeatureSpec.from_json(plain.to_json()) == plain
    idx, val = Featurizer(tasks).row("Who wrote Hamlet?")
    short_question = tasks.task_offset + TASKS.index("short_question")
    assert dict(zip(idx.tolist(), val.tolist(), strict=True))[short_question] == 1.0
    texts, small, large = synthetic(100)
    model = fit(texts, small, large, spec=tasks, alpha=1.0, calibration_folds=0)
    model.save(tmp_path / "t.json")
    again = Classifier.load(tmp_path / "t.json")
    assert again.spec == tasks and again.score_many(texts[:5]) == model.score_many(texts[:5])


def _nan_weights(doc: dict[str, object]) -> None:
    """NaN weights with a valid checksum and the original probes: every score is NaN, which compares false with
    any threshold (everything went to the small model)."""
    import hashlib

    blob = doc["coef"]
    assert isinstance(blob, dict)
    coef = np.frombuffer(zlib.decompress(base64.b64decode(blob["zlib_base64"])), dtype="<f4").copy()
    coef[:] = np.nan
    raw = coef.astype("<f4").tobytes()
    blob["zlib_base64"] = base64.b64encode(zlib.compress(raw)).decode()
    blob["sha256"] = hashlib.sha256(raw).hexdigest()


def _set(*keys: str | int, value: object) -> object:
    def change(doc: dict[str, object]) -> None:
        target: object = doc
        for key in keys[:-1]:
            target = target[key]  # type: ignore[index]
        target[keys[-1]] = value  # type: ignore[index]

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_nan_weights, "weights include NaN or infinite values"),
        (_set("meta", "suggested_threshold", value="abc"), r"meta\.suggested_threshold is 'abc', not a number"),
        (_set("meta", "suggested_threshold", value=1.5), r"meta\.suggested_threshold is 1\.5, outside \[0\.0, 1\.0\]"),
        (_set("meta", "suggested_threshold", value=-0.1), "outside"),
        (_set("meta", "suggested_threshold", value=True), "not a number"),
        (_set("meta", value=[1, 2]), "meta is"),
        (_set("intercept", value="0.5"), "intercept is '0.5', not a number"),
        (_set("intercept", value=10**400), "not a finite number"),  # an integer no float holds
        (_set("intercept", value=float("inf")), "Infinity is not a number"),  # json writes the Infinity literal
        (_set("platt", 0, value=float("nan")), "NaN is not a number"),
        (_set("platt", value=[1.0]), "platt is not a pair"),
        (_set("spec", "structure", value="false"), r"spec\.structure is 'false', not true or false"),
        (_set("spec", "word_bits", value=40), r"spec\.word_bits is 40, outside \[1, 24\]"),
        (_set("spec", "word_bits", value=12.5), "not an integer"),
        (_set("spec", "char_ngrams", value=[5, 3]), r"char_ngrams\[1\] is 3, outside \[5, 16\]"),
        (_set("spec", "max_chars", value=0), "max_chars"),
        (_set("coef", "length", value="4108"), "not an integer"),
        (_set("coef", "dtype", value="float64"), "not float32-le"),
        (_set("probes", 0, 1, value="0.5"), r"probes\[0\] score is '0\.5', not a number"),
        (_set("probes", 0, 0, value=7), r"probes\[0\] is not a \[text, score\] pair"),
        (_set("probes", value=[]), "probes is not a list"),
    ],
)
def test_values_that_are_not_finite_numbers_in_range_are_refused_naming_the_field(
    tmp_path: Path, trained: Classifier, change: object, message: str
) -> None:
    """Regression: NaN weights loaded (and routed everything to the small model), a threshold of 'abc' or 1.5
    loaded and failed later, as an unhandled ValueError or a threshold nothing reaches; strings passed float()."""
    with pytest.raises(ClassifierFileError, match=message) as refused:
        classifiers.load(_tamper(tmp_path, trained, change))
    assert str(refused.value).startswith(f"{tmp_path / 'bad.json'}: ")


def test_a_model_of_another_shape_is_refused_naming_the_file(tmp_path: Path, trained: Classifier) -> None:
    doc = trained.to_json()
    doc["spec"]["word_bits"] = 13  # the weights are for 12 bits
    path = tmp_path / "shape.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ClassifierFileError, match=rf"^{path}: weights have shape \(\d+,\), the feature spec needs"):
        classifiers.load(path)


def test_a_zlib_bomb_is_refused_without_being_inflated(tmp_path: Path, trained: Classifier) -> None:
    """Regression: 200 MB of zeros in a 200 KB blob was inflated whole before any check (a 1.4 MB file held
    +1 GB). Now the weights decompress no further than the spec's width."""
    import tracemalloc

    pack = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    packed = b"".join(pack.compress(chunk) for _ in range(200)) + pack.flush()
    doc = trained.to_json()
    doc["coef"]["zlib_base64"] = base64.b64encode(packed).decode()
    path = tmp_path / "bomb.json"
    path.write_text(json.dumps(doc))
    tracemalloc.start()
    try:
        with pytest.raises(ClassifierFileError, match="weights decompress to more than"):
            classifiers.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, peak


def _unblock_fifo(path: Path) -> None:
    """Open the FIFO's writing end, so that a reader stuck opening it (the old code) gets EOF and returns."""
    import contextlib
    import os

    with contextlib.suppress(OSError):  # ENXIO: no reader waiting
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory", "too-large", "deep-json", "huge-integer"])
def test_paths_that_are_not_a_bounded_regular_file_are_refused_unread(tmp_path: Path, kind: str) -> None:
    """Regression: a symlink to /dev/zero read until memory ran out, a FIFO wedged the loader for good (waiting
    for a writer), deeply nested JSON raised RecursionError and a 5,000-digit integer a bare ValueError."""
    import os
    import threading

    from classifiers.model import MAX_FILE_BYTES

    path = tmp_path / "classifier.json"
    expected = {
        "fifo": "not a regular file (a FIFO)",
        "dev-zero": "not a regular file (a character device)",
        "directory": "not a regular file (a directory)",
        "too-large": f"more than the {MAX_FILE_BYTES}",
        "deep-json": "nested too deeply",
        "huge-integer": "invalid JSON",
    }[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    elif kind == "too-large":
        with path.open("wb") as f:
            f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    elif kind == "deep-json":
        path.write_text("[" * 200_000)
    else:
        path.write_text('{"format": ' + "9" * 5000 + "}")
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            classifiers.load(path)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    loader.join(timeout=30)  # a deadline, not a timing: the fixed loader returns at once
    if kind == "fifo":
        _unblock_fifo(path)
        loader.join(timeout=30)
    assert outcome, f"loading {kind} did not return"
    assert isinstance(outcome[0], ClassifierFileError), outcome[0]
    assert str(outcome[0]).startswith(f"{path}: ")
    assert expected in str(outcome[0])


def test_a_file_written_while_it_is_read_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that appends between two reads (not the operator's way: write beside, then rename): refused, so
    that nothing torn is loaded; a later reload reads the finished file."""
    import os
    import shutil

    path = tmp_path / "c.json"
    shutil.copy(classifiers.default_path(), path)
    real_read = os.read
    grown: list[int] = []

    def read_while_written(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        if not grown:
            grown.append(len(data))
            with path.open("ab") as f:
                f.write(b" ")
        return data

    monkeypatch.setattr(os, "read", read_while_written)
    with pytest.raises(ClassifierFileError, match="changed while it was read"):
        classifiers.load(path)
    monkeypatch.undo()
    assert classifiers.load(path).digest  # finished: taken


def test_a_file_that_grows_past_the_limit_while_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import shutil

    from classifiers.model import MAX_FILE_BYTES

    path = tmp_path / "c.json"
    shutil.copy(classifiers.default_path(), path)
    real_read = os.read
    calls: list[int] = []

    def read_while_grown(fd: int, n: int) -> bytes:
        if not calls:
            with path.open("r+b") as f:
                f.truncate(MAX_FILE_BYTES * 2)  # sparse
        calls.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", read_while_grown)
    with pytest.raises(ClassifierFileError, match=f"grew past {MAX_FILE_BYTES} bytes"):
        classifiers.load(path)
    assert sum(calls) <= MAX_FILE_BYTES + 1 + (1 << 20)  # read up to the limit, no further
