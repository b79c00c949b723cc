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

from classifiers.clusters import Clusters
from classifiers.features import FeatureSpec, Featurizer
from classifiers.files import FileRefused, read_regular_file
from classifiers.validation import MAX_PROBES, MAX_WIDTH, InvalidField, check_meta, check_spec, integer, number

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_FILE_BYTES", "PROBES", "Classifier", "ClassifierFileError"]


FORMAT = "llm-triage-classifier"
FORMAT_VERSION = 2  # 2: may carry clusters (classifiers.clusters); a file without them is still written as 1
READS_VERSIONS = (1, 2)
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
MAX_FILE_BYTES = 32 << 20  # the shipped files are about 1 MB; a reload reads no more than this


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
    clusters: Clusters | None = None  # kinds of request, each with a raw-score offset (learnt from own outcomes)

    def __post_init__(self) -> None:
        self.coef = np.ascontiguousarray(self.coef, dtype=np.float32)
        if self.coef.shape != (self.spec.width,):
            raise ClassifierFileError(f"weights have shape {self.coef.shape}, the feature spec needs {self.spec.width}")
        self._featurizer = Featurizer(self.spec)

    def raw_many(self, texts: list[str]) -> np.ndarray:
        # Row by row in numpy (no scipy on the serving path), the same sums as score().
        raw = []
        for indices, values in map(self._featurizer.row, texts):
            value = float(np.dot(values.astype(np.float64), self.coef[indices].astype(np.float64)))
            if self.clusters is not None:
                value += self.clusters.offset_row(self.spec, indices, values)
            raw.append(value)
        return np.asarray(raw, dtype=np.float64) + self.intercept

    def score(self, text: str) -> float:
        """Probability-like difficulty in [0, 1]: higher means the large model is needed."""
        short = self._featurizer.short_row(text) if self.clusters is None else None
        if short is not None:  # plain Python: a float32 memoryview gathers the weights, no numpy call
            cols, vals = short
            raw = sum(map(operator.mul, map(self.coef.data.__getitem__, cols), vals)) + self.intercept
        else:
            indices, values = self._featurizer.row(text)
            raw = float(values @ self.coef[indices]) + self.intercept
            if self.clusters is not None:
                raw += self.clusters.offset_row(self.spec, indices, values)
        a, b = self.platt
        return 1.0 / (1.0 + math.exp(-(a * raw + b)))

    def score_many(self, texts: list[str]) -> list[float]:
        a, b = self.platt
        return [float(v) for v in 1.0 / (1.0 + np.exp(-(a * self.raw_many(texts) + b)))]

    # -- persistence -------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        raw = self.coef.astype("<f4").tobytes()
        doc: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION if self.clusters is not None else 1,
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
        if self.clusters is not None:
            doc["clusters"] = self.clusters.to_json()
        return doc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        path = Path(path)
        try:
            data = read_regular_file(path, MAX_FILE_BYTES)  # read once: the checksum is of exactly what was loaded
        except FileRefused as exc:
            raise ClassifierFileError(f"{path}: cannot read classifier: {exc}") from None
        except OSError as exc:
            raise ClassifierFileError(f"{path}: cannot read classifier: {exc.strerror or exc}") from None
        try:
            doc = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise ClassifierFileError(f"{path}: not a classifier file (invalid JSON: {reason})") from None
        try:
            model = cls._from_doc(doc)
        except (ClassifierFileError, InvalidField) as exc:
            raise ClassifierFileError(f"{path}: {exc}") from None
        except (KeyError, TypeError, ValueError, IndexError, zlib.error) as exc:
            raise ClassifierFileError(f"{path}: malformed classifier file ({type(exc).__name__}: {exc})") from None
        model.digest = hashlib.sha256(data).hexdigest()
        return model

    @classmethod
    def _from_doc(cls, doc: Any) -> Classifier:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ClassifierFileError(f"not an {FORMAT} file")
        if doc["format_version"] not in READS_VERSIONS:
            raise ClassifierFileError(
                f"format version {doc['format_version']!r}, this llm-triage reads version {FORMAT_VERSION}"
            )
        spec = check_spec(doc["spec"])
        platt = doc["platt"]
        if not isinstance(platt, list) or len(platt) != 2:
            raise InvalidField("platt is not a pair of numbers")
        model = cls(
            spec,
            _weights(doc["coef"], spec.width),
            number(doc["intercept"], "intercept"),
            (number(platt[0], "platt[0]"), number(platt[1], "platt[1]")),
            check_meta(doc.get("meta")),
            clusters=Clusters.from_json(doc["clusters"]) if doc["format_version"] >= 2 else None,
        )
        _check_probes(model, doc["probes"])
        return model


def _weights(blob: Any, width: int) -> np.ndarray:
    """The weights, decompressed no further than the spec's width: a small file cannot expand into gigabytes."""
    if not isinstance(blob, dict) or blob.get("dtype", "float32-le") != "float32-le":
        raise InvalidField("coef is not float32-le weights")
    if integer(blob["length"], "coef.length", 0, MAX_WIDTH) != width:
        raise InvalidField(f"weights have shape ({blob['length']},), the feature spec needs {width}")
    packed = base64.b64decode(blob["zlib_base64"], validate=True)
    stream = zlib.decompressobj()
    raw = stream.decompress(packed, 4 * width)
    if not stream.eof and stream.decompress(stream.unconsumed_tail, 1):
        raise InvalidField(f"weights decompress to more than the {width} float32 values the feature spec needs")
    if not stream.eof:
        raise InvalidField("weights are truncated (incomplete zlib stream)")
    if hashlib.sha256(raw).hexdigest() != blob["sha256"]:
        raise ClassifierFileError("weights are corrupt (checksum mismatch)")
    coef = np.frombuffer(raw, dtype="<f4")
    if coef.shape[0] != width:
        raise ClassifierFileError("weights are truncated")
    if not np.isfinite(coef).all():  # NaN scores compare false with every threshold: all traffic to one model
        raise InvalidField("weights include NaN or infinite values")
    return coef


def _check_probes(model: Classifier, probes: Any) -> None:
    if not isinstance(probes, list) or not 1 <= len(probes) <= MAX_PROBES:
        raise InvalidField(f"probes is not a list of 1 to {MAX_PROBES} [text, score] pairs")
    worst = 0.0
    for i, probe in enumerate(probes):
        if not isinstance(probe, list) or len(probe) != 2 or not isinstance(probe[0], str):
            raise InvalidField(f"probes[{i}] is not a [text, score] pair")
        expected = number(probe[1], f"probes[{i}] score", 0.0, 1.0)
        got = model.score(probe[0])  # the serving path: what the gateway will compute
        off = abs(got - expected) if math.isfinite(got) else math.inf
        worst = max(worst, off)
    if worst > PROBE_TOLERANCE:
        raise ClassifierFileError(
            f"probe scores do not reproduce here (off by {worst:.2g}); the file was altered or comes "
            "from an incompatible feature pipeline: retrain with `triage classifier train`"
        )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _sklearn_version() -> str:
    try:
        return version("scikit-learn")
    except PackageNotFoundError:
        return "none"
