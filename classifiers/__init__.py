"""Difficulty classifiers: features, training, evaluation; imports nothing from router.

import classifiers
clf = classifiers.load()            # the default shipped with llm-triage, or load("path.json")
clf.score("Prove Fermat's little theorem")   # higher: the large model is needed
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from classifiers.model import Classifier, ClassifierFileError

__all__ = ["Classifier", "ClassifierFileError", "default_path", "load"]


def default_path() -> Path:
    return Path(str(resources.files("classifiers") / "default" / "classifier.json"))


def load(path: str | Path | None = None) -> Classifier:
    """The shipped default classifier, or the file given. Raises ClassifierFileError for an unusable file."""
    return Classifier.load(path or default_path())
