"""Difficulty classifiers: features, training, evaluation; imports nothing from router.

import classifiers
clf = classifiers.load()            # the default shipped with llm-triage, or load("path.json")
clf.score("Prove Fermat's little theorem")   # higher: the large model is needed

judge = classifiers.load(classifiers.default_answer_path())      # the cascade's answer scorer
judge.score(classifiers.answer_text(prompt, small_answer))        # higher: escalate to the large model
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from classifiers.answer import answer_text
from classifiers.model import Classifier, ClassifierFileError

__all__ = ["Classifier", "ClassifierFileError", "answer_text", "default_answer_path", "default_path", "load"]


def default_path() -> Path:
    return Path(str(resources.files("classifiers") / "default" / "classifier.json"))


def default_answer_path() -> Path:
    """The shipped answer scorer: trained on GSM8K (prompt, small model's answer) pairs."""
    return Path(str(resources.files("classifiers") / "default" / "answer_scorer.json"))


def load(path: str | Path | None = None) -> Classifier:
    """The shipped default classifier, or the file given. Raises ClassifierFileError for an unusable file."""
    return Classifier.load(path or default_path())
