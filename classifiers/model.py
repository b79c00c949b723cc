"""A trained difficulty classifier and its file format.

The file is JSON: the feature spec, a linear model's weights (little-endian float32, zlib, base64, with a
sha256), a Platt scaling pair, and probes: fixed texts with the scores they had at training time. Nothing
is unpickled, and loading recomputes the probes, so a file whose features or weights do not reproduce here
(corrupt, hand-edited, or from an incompatible feature pipeline) is refused with a message saying why. Loading
needs neither scikit-learn nor scipy: the version a file was trained with is kept for provenance only."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import operator
import zlib
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from classifiers.features import FeatureSpec, Featurizer

__all__ = ["FORMAT", "FORMAT_VERSION", "PROBES", "Classifier", "ClassifierFileError"]


FORMAT = "llm-triage-classifier"
FORMAT_VERSION = 1
# Project-written texts whose scores are stored at training and recomputed on load.
PROBES = (
    "hi",
    "What is the capital of France?",
    "Prove that there are infinitely many primes p such that p + 2 is also prime, or explain why this is open.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Write a Python function that merges overlapping intervals and explain its time complexity.",
    "Which of the following is a mammal?\nA. shark\nB. dolphin\nC. trout\nD. squid\nAnswer:",
)
PROBE_TOLERANCE = 1e-4


class ClassifierFileError(ValueError):
    """A classifier file that cannot be used; the message says which file and why."""


@dataclass
class Classifier:
    spec: FeatureSpec
    coef: np.ndarray  # float32, length spec.width
    intercept: float
    platt: tuple[float, float]  # score = sigmoid(a * raw + b)
    meta: dict[str, Any] = field(default_factory=dict)
    digest: str = field(default="", compare=False)  # sha256 of the file's bytes, when loaded from one

    def __post_init__(self) -> None:
        self.coef = np.ascontiguousarray(self.coef, dtype=np.float32)
        if self.coef.shape != (self.spec.width,):
            raise ClassifierFileError(f"weights have shape {self.coef.shape}, the feature spec needs {self.spec.width}")
        self._featurizer = Featurizer(self.spec)

    def raw_many(self, texts: list[str]) -> np.ndarray:
        rows = (self._featurizer.row(text) for text in texts)
        raw = [
            float(np.dot(values.astype(np.float64), self.coef[indices].astype(np.float64))) for indices, values in rows
        ]
        return np.asarray(raw, dtype=np.float64) + self.intercept

    def score(self, text: str) -> float:
        """Probability-like difficulty in [0, 1]: higher means the large model is needed."""
        short = self._featurizer.short_row(text)
        if short is not None:  # plain Python: a float32 memoryview gathers the weights, no numpy call
            cols, vals = short
            raw = sum(map(operator.mul, map(self.coef.data.__getitem__, cols), vals)) + self.intercept
        else:
            indices, values = self._featurizer.row(text)
            raw = float(values @ self.coef[indices]) + self.intercept
        a, b = self.platt
        return 1.0 / (1.0 + math.exp(-(a * raw + b)))

    def score_many(self, texts: list[str]) -> list[float]:
        a, b = self.platt
        return [float(v) for v in 1.0 / (1.0 + np.exp(-(a * self.raw_many(texts) + b)))]

    # -- persistence -------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        raw = self.coef.astype("<f4").tobytes()
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "sklearn_version": _sklearn_version(),
            "spec": self.spec.to_json(),
            "intercept": self.intercept,
            "platt": list(self.platt),
            "coef": {
                "dtype": "float32-le",
                "length": int(self.coef.shape[0]),
                "sha256": hashlib.sha256(raw).hexdigest(),
                "zlib_base64": base64.b64encode(zlib.compress(raw, 9)).decode("ascii"),
            },
            "probes": [
                [text, round(score, 7)] for text, score in zip(PROBES, self.score_many(list(PROBES)), strict=True)
            ],
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        path = Path(path)
        try:
            data = path.read_bytes()  # read once: the checksum is of exactly what was loaded
            doc = json.loads(data.decode("utf-8"))
        except OSError as exc:
            raise ClassifierFileError(f"{path}: cannot read classifier: {exc.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ClassifierFileError(f"{path}: not a classifier file (invalid JSON: {exc})") from None
        try:
            model = cls._from_doc(doc, path)
        except ClassifierFileError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, zlib.error) as exc:
            raise ClassifierFileError(f"{path}: malformed classifier file ({type(exc).__name__}: {exc})") from None
        model.digest = hashlib.sha256(data).hexdigest()
        return model

    @classmethod
    def _from_doc(cls, doc: Any, path: Path) -> Classifier:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ClassifierFileError(f"{path}: not an {FORMAT} file")
        if doc["format_version"] != FORMAT_VERSION:
            raise ClassifierFileError(
                f"{path}: format version {doc['format_version']}, this llm-triage reads version {FORMAT_VERSION}"
            )
        blob = doc["coef"]
        raw = zlib.decompress(base64.b64decode(blob["zlib_base64"], validate=True))
        if hashlib.sha256(raw).hexdigest() != blob["sha256"]:
            raise ClassifierFileError(f"{path}: weights are corrupt (checksum mismatch)")
        coef = np.frombuffer(raw, dtype="<f4")
        if coef.shape[0] != blob["length"]:
            raise ClassifierFileError(f"{path}: weights are truncated")
        model = cls(
            FeatureSpec.from_json(doc["spec"]),
            coef,
            float(doc["intercept"]),
            (float(doc["platt"][0]), float(doc["platt"][1])),
            dict(doc.get("meta") or {}),
        )
        texts = [str(p[0]) for p in doc["probes"]]
        expected = [float(p[1]) for p in doc["probes"]]
        got = [model.score(t) for t in texts]  # the serving path: what the gateway will compute
        worst = max((abs(g - e) for g, e in zip(got, expected, strict=True)), default=0.0)
        if not texts or worst > PROBE_TOLERANCE:
            raise ClassifierFileError(
                f"{path}: probe scores do not reproduce here (off by {worst:.2g}); the file was altered or comes "
                "from an incompatible feature pipeline: retrain with `triage classifier train`"
            )
        return model


def _sklearn_version() -> str:
    try:
        return version("scikit-learn")
    except PackageNotFoundError:
        return "none"
