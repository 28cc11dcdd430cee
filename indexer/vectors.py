"""The FAISS index of projected global vectors, derived from the SQLite store.

FAISS ids are the store's image ids. The index is exact inner product over
L2-normalised vectors (cosine similarity).
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

__all__ = ["VectorIndex"]


class VectorIndex:
    def __init__(self, index: faiss.Index) -> None:
        self.index = index

    @classmethod
    def empty(cls, dim: int) -> "VectorIndex":
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, dim: int) -> "VectorIndex":
        index = cls.empty(dim)
        index.add(ids, vectors)
        return index

    @classmethod
    def load(cls, path: str | os.PathLike) -> "VectorIndex":
        return cls(faiss.read_index(str(path)))

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, path)

    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    def ids(self) -> np.ndarray:
        """Every id in the index, sorted: (N,) int64."""
        return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            # (N, d) float32, (N,) int64
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))

    def remove(self, ids: list[int] | np.ndarray) -> None:
        if len(ids):
            self.index.remove_ids(np.asarray(ids, dtype=np.int64))

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of one query vector (d,): scores (k',) and ids (k',), best first,
        with FAISS's -1 padding (fewer than k vectors) dropped."""
        k = min(k, len(self))
        if k == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores, ids = self.index.search(np.ascontiguousarray(query[None, :], np.float32), k)  # (1, k)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]
