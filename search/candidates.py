"""Search, candidate stage: the nearest stored global vectors to a query vector, in FAISS,
optionally only among allowed ids (the folder and date filters)."""

from __future__ import annotations

import numpy as np

from imgsearch.storage.store import Store
from imgsearch.storage.vectors import EXACT_LIMIT, VectorIndex

__all__ = ["nearest"]


def nearest(
    vectors: VectorIndex, store: Store, query: np.ndarray, depth: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-`depth` images by cosine with `query` (d,), best first: scores (n,) float32, ids (n,) int64.

    With `allowed` (sorted ids), only those: inside FAISS with an ID selector, except that an
    IVF index with a small subset (under EXACT_LIMIT) is scanned exactly over the subset's
    stored vectors instead, since its probed lists may hold few of them.
    """
    if allowed is None:
        return vectors.search(query, depth)
    if len(allowed) == 0 or depth <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    if vectors.spec.kind == "flat" or len(allowed) >= EXACT_LIMIT:
        return vectors.search(query, depth, allowed)
    subset = store.global_vectors_of(allowed.tolist())  # (n, d) float32
    scores = subset @ query.astype(np.float32)  # (n, d) x (d,) --> (n,)
    order = np.argsort(-scores, kind="stable")[:depth]
    return scores[order], allowed[order]
