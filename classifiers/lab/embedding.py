"""Cluster embeddings of whole feature matrices (scipy): training and batch evaluation. Serving assigns one
prompt at a time with `Clusters.offset_row`, in numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

from classifiers.clusters import FOLD_BITS, STRUCTURE_SCALE, Clusters, embedding_slots
from classifiers.features import STRUCTURE, FeatureSpec

__all__ = ["assign_many", "embed_many", "offsets_many"]


def embed_many(spec: FeatureSpec, X: Any, fold_bits: int = FOLD_BITS, scale: float = STRUCTURE_SCALE) -> Any:
    """The embedding of every row of a CSR feature matrix, as a CSR matrix (rows, 2**fold_bits + 12): training
    and batch scoring (scipy, which serving does not import)."""
    import scipy.sparse as sp

    X = X.tocsr()
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    keep, slots = embedding_slots(spec, np.asarray(X.indices, dtype=np.int64), fold_bits)
    values = np.asarray(X.data, dtype=np.float64)[keep]
    values = np.where(slots >= (1 << fold_bits), values * scale, values)
    shape = (X.shape[0], (1 << fold_bits) + len(STRUCTURE))
    Z = sp.csr_matrix((values, (rows[keep], slots)), shape=shape)
    Z.sum_duplicates()  # repeated (row, slot) pairs add up; also sorts each row's slots
    return Z


def assign_many(clusters: Clusters, spec: FeatureSpec, X: Any) -> np.ndarray:
    """The nearest centroid of every row of a feature matrix."""
    Z = embed_many(spec, X, clusters.fold_bits, clusters.structure_scale)
    dots = np.asarray(Z @ clusters.centroids.T.astype(np.float64))
    norms = np.einsum("ij,ij->i", clusters.centroids, clusters.centroids, dtype=np.float64)
    return np.asarray(np.argmin(norms[None, :] - 2.0 * dots, axis=1))


def offsets_many(clusters: Clusters, spec: FeatureSpec, X: Any) -> np.ndarray:
    return np.asarray(clusters.offsets[assign_many(clusters, spec, X)], dtype=np.float64)
