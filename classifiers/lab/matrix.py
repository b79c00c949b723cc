"""Feature matrices for training and evaluation (scipy CSR). Serving scores one row at a time without scipy."""

from __future__ import annotations

from typing import Any

import numpy as np

from classifiers.features import FeatureSpec, Featurizer

__all__ = ["feature_matrix"]


def feature_matrix(spec: FeatureSpec | Featurizer, texts: list[str]) -> Any:
    """A CSR matrix of all texts, one row each, the same values as `Featurizer.row`."""
    import scipy.sparse as sp  # here, not at import: `triage serve` builds its CLI from the lab's parsers

    featurizer = spec if isinstance(spec, Featurizer) else Featurizer(spec)
    indptr = [0]
    indices: list[np.ndarray] = []
    data: list[np.ndarray] = []
    for text in texts:
        idx, val = featurizer.row(text)
        indices.append(idx)
        data.append(val)
        indptr.append(indptr[-1] + len(idx))
    matrix = sp.csr_matrix(
        (
            np.concatenate(data) if data else np.zeros(0, np.float32),
            np.concatenate(indices) if indices else np.zeros(0, np.int64),
            np.asarray(indptr),
        ),
        shape=(len(texts), featurizer.spec.width),
        dtype=np.float32,
    )
    matrix.sum_duplicates()  # also sorts the indices
    return matrix
