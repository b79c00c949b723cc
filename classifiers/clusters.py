"""Kinds of request: the clusters of a deployment's own prompts, and the gain offset each one carries.

A model learnt from a deployment's outcomes first learns which kinds of request gain from the large model, then
which items (classifiers.lab.own). The kinds are clusters found without labels (k-means, classifiers.lab.own) in a small
embedding of the prompt's features: the hashed n-gram columns folded into 2**fold_bits slots, plus the structure
counts. Serving assigns a prompt to its nearest centroid in numpy and adds that cluster's offset to the linear
model's raw score, so the cluster model lives in the classifier file beside the weights."""

from __future__ import annotations

import base64
import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from classifiers.features import STRUCTURE, FeatureSpec

__all__ = ["FOLD_BITS", "STRUCTURE_SCALE", "Clusters", "decode_floats", "embedding_slots", "encode_floats"]

FOLD_BITS = 12  # 4,096 slots: enough to tell kinds of prompt apart, small enough to store K centroids
STRUCTURE_SCALE = 0.5  # the counts reach ~3, the n-gram block has norm 1: keep either from drowning the other


def encode_floats(values: np.ndarray) -> dict[str, Any]:
    """Little-endian float32, zlib, base64, with a sha256 (the classifier file's encoding of its weights)."""
    raw = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return {
        "dtype": "float32-le",
        "shape": list(values.shape),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "zlib_base64": base64.b64encode(zlib.compress(raw, 9)).decode("ascii"),
    }


def decode_floats(blob: dict[str, Any], what: str) -> np.ndarray:
    """encode_floats' inverse; ValueError naming `what` when the bytes are corrupt or the wrong size."""
    raw = zlib.decompress(base64.b64decode(blob["zlib_base64"], validate=True))
    if hashlib.sha256(raw).hexdigest() != blob["sha256"]:
        raise ValueError(f"{what} are corrupt (checksum mismatch)")
    shape = tuple(int(n) for n in blob["shape"])
    values = np.frombuffer(raw, dtype="<f4")
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{what} are truncated")
    return values.reshape(shape).astype(np.float32)


def embedding_slots(spec: FeatureSpec, cols: np.ndarray, fold_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(the prompt's columns kept, the embedding slot of each): n-gram columns fold modulo 2**fold_bits, the
    structure counts get slots of their own after them; an answer scorer's answer blocks are not read (the
    kind of request is the prompt's)."""
    keep = cols < (spec.structure_offset + (len(STRUCTURE) if spec.structure else 0))
    cols = cols[keep]
    folded = cols & ((1 << fold_bits) - 1)
    counts = cols >= spec.structure_offset
    return keep, np.where(counts, (1 << fold_bits) + cols - spec.structure_offset, folded)


@dataclass
class Clusters:
    fold_bits: int
    structure_scale: float
    centroids: np.ndarray  # float32 (K, 2**fold_bits + 12)
    offsets: np.ndarray  # float32 (K,): added to the raw score of a prompt in that cluster
    _norms: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.centroids = np.ascontiguousarray(self.centroids, dtype=np.float32)
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.float32)
        k, width = self.centroids.shape
        if self.offsets.shape != (k,) or width != (1 << self.fold_bits) + len(STRUCTURE) or k < 1:
            raise ValueError(f"clusters: centroids {self.centroids.shape} and offsets {self.offsets.shape} disagree")
        # argmin of ||c||^2 - 2 x.c is the nearest centroid: ||x||^2 is the same for every cluster
        self._norms = np.einsum("ij,ij->i", self.centroids, self.centroids, dtype=np.float64)

    def offset_row(self, spec: FeatureSpec, cols: np.ndarray, values: np.ndarray) -> float:
        """The offset of one prompt's cluster, from its sparse features (column indices, values)."""
        keep, slots = embedding_slots(spec, np.asarray(cols, dtype=np.int64), self.fold_bits)
        vals = np.asarray(values, dtype=np.float64)[keep]
        vals = np.where(slots >= (1 << self.fold_bits), vals * self.structure_scale, vals)
        dots = self.centroids[:, slots] @ vals
        return float(self.offsets[int(np.argmin(self._norms - 2.0 * dots))])

    def to_json(self) -> dict[str, Any]:
        return {
            "fold_bits": self.fold_bits,
            "structure_scale": self.structure_scale,
            "centroids": encode_floats(self.centroids),
            "offsets": encode_floats(self.offsets),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Clusters:
        return cls(
            int(doc["fold_bits"]),
            float(doc["structure_scale"]),
            decode_floats(doc["centroids"], "cluster centroids"),
            decode_floats(doc["offsets"], "cluster offsets"),
        )
