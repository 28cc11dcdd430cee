"""The FAISS index of projected global vectors, derived from the SQLite store.

FAISS ids are the store's image ids; scores are inner products of L2-normalised
vectors (cosine similarity). Which FAISS index is used depends on the size of
the collection (see choose_spec):

- "flat": exact search, for collections under EXACT_LIMIT vectors, where a
  brute-force scan of one query takes about a millisecond.
- "ivf_flat": an inverted file (k-means lists), full float32 vectors; a query
  scans `nprobe` of `nlist` lists.
- "ivf_sq8": the same lists with 8-bit scalar-quantised vectors (4x less RAM),
  chosen when float32 vectors would not fit the memory budget.

Everything the index needs to be reopened (type, nlist, nprobe) is in the FAISS
file itself: faiss serialises nprobe with IVF indexes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from imgsearch.ground.durable import replace_durably

__all__ = ["VectorIndex", "IndexSpec", "choose_spec", "EXACT_LIMIT", "DEFAULT_MEMORY_BUDGET"]

# Below this many vectors the index is exact: a single-thread scan of 50k x 256-d
# float32 vectors is about 1-2 ms here (bench/benchmarks/query.sh), under the 5 ms target.
EXACT_LIMIT = 50_000
# RAM the vector index may use before it switches to 8-bit codes (per index).
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
# Lists scanned per query: nlist / 32, at least 64. Tuned on Flickr8k-derived vectors with
# real caption queries (bench/benchmarks/query.sh): recall@10 against exact search depends mostly on
# nprobe (16: 0.85, 32: 0.93, 64: 0.97-0.98 from 50k to 1M images), so 64 at most sizes
# and 128 from 1M (4096 lists: 0.99, under 2 ms).
NPROBE_FRACTION = 1 / 32
MIN_NPROBE = 64
# k-means training sample per list (faiss warns below 39).
TRAIN_POINTS_PER_LIST = 64


IndexKind = Literal["flat", "ivf_flat", "ivf_sq8"]


@dataclass(frozen=True)
class IndexSpec:
    kind: IndexKind
    nlist: int = 0  # IVF lists (0 for flat)
    nprobe: int = 0  # lists scanned per query (0 for flat)

    def bytes_per_vector(self, dim: int) -> int:
        """RAM per vector in the index: codes plus the 8-byte id."""
        code = dim if self.kind == "ivf_sq8" else 4 * dim
        return code + 8


def choose_spec(count: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> IndexSpec:
    """The index for `count` vectors of `dim`: exact when small, IVF above EXACT_LIMIT
    with about 4 sqrt(N) lists (a power of two), 8-bit codes when float32 would not fit."""
    if count < EXACT_LIMIT:
        return IndexSpec("flat")
    nlist = 2 ** round(math.log2(4 * math.sqrt(count)))
    nlist = max(1, min(nlist, count // TRAIN_POINTS_PER_LIST))  # enough points to train each list
    nprobe = max(MIN_NPROBE, round(nlist * NPROBE_FRACTION))
    kind: IndexKind = "ivf_flat" if count * IndexSpec("ivf_flat").bytes_per_vector(dim) <= memory_budget else "ivf_sq8"
    return IndexSpec(kind, nlist, nprobe)


class VectorIndex:
    def __init__(self, index: faiss.Index) -> None:
        self.index = index

    @classmethod
    def empty(cls, dim: int) -> VectorIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @classmethod
    def build(
        cls, ids: np.ndarray, vectors: np.ndarray, dim: int, spec: IndexSpec | None = None, seed: int = 0
    ) -> VectorIndex:
        """An index of `vectors` (N, d) under `ids` (N,); the kind is chosen by size unless given."""
        spec = spec or choose_spec(len(ids), dim)
        if spec.kind == "flat":
            index = cls.empty(dim)
        else:
            index = cls(_trained_ivf(spec, np.ascontiguousarray(vectors, np.float32), seed))
        index.add(ids, vectors)
        return index

    @classmethod
    def load(cls, path: str | os.PathLike) -> VectorIndex:
        return cls(faiss.read_index(str(path)))

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        replace_durably(tmp, path)

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def spec(self) -> IndexSpec:
        ivf = _as_ivf(self.index)
        if ivf is None:
            return IndexSpec("flat")
        # float32 codes, or 1 byte a dimension
        kind: IndexKind = "ivf_flat" if ivf.code_size == 4 * ivf.d else "ivf_sq8"
        return IndexSpec(kind, ivf.nlist, ivf.nprobe)

    def fits(self, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> bool:
        """Is this index the kind and size choose_spec would pick for its current size?
        When not (the collection grew or shrank past a threshold), rebuild it from the store."""
        return self.spec == choose_spec(len(self), self.dim, memory_budget)

    def __len__(self) -> int:
        return self.index.ntotal

    def ids(self) -> np.ndarray:
        """Every id in the index, sorted: (N,) int64."""
        ivf = _as_ivf(self.index)
        if ivf is None:
            return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))
        lists = ivf.invlists
        parts = [
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
            for i in range(ivf.nlist)
            if lists.list_size(i)
        ]
        return np.sort(np.concatenate(parts).astype(np.int64)) if parts else np.zeros(0, np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            # (N, d) float32, (N,) int64
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.asarray(ids, np.int64))

    def remove(self, ids: list[int] | np.ndarray) -> None:
        if len(ids):
            self.index.remove_ids(np.asarray(ids, dtype=np.int64))

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of one query vector (d,): scores (k',) and ids (k',), best first,
        with FAISS's -1 padding (fewer than k vectors, or IVF lists too short) dropped.

        allowed: ids (int64) the search is restricted to, inside FAISS (an ID selector). An
        IVF index then scans more lists, in proportion to how much of it the subset leaves
        out, so that a subset's top-k is found about as well as the whole index's."""
        k = min(k, len(self) if allowed is None else len(allowed))
        if k == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        params = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64))
            ivf = _as_ivf(self.index)
            if ivf is None:
                params = faiss.SearchParameters(sel=selector)
            else:
                share = max(len(allowed), 1) / max(len(self), 1)
                params = faiss.SearchParametersIVF(sel=selector, nprobe=min(ivf.nlist, math.ceil(ivf.nprobe / share)))
        scores, ids = self.index.search(np.ascontiguousarray(query[None, :], np.float32), k, params=params)  # (1, k)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]


def _trained_ivf(spec: IndexSpec, vectors: np.ndarray, seed: int) -> faiss.IndexIVF:
    """An empty IVF index whose lists are k-means centroids of a sample of `vectors` (N, d)."""
    dim = vectors.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    if spec.kind == "ivf_sq8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, spec.nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, spec.nlist, faiss.METRIC_INNER_PRODUCT)
    sample_size = min(len(vectors), spec.nlist * TRAIN_POINTS_PER_LIST)
    sample = vectors[np.random.default_rng(seed).choice(len(vectors), sample_size, replace=False)]  # (S, d)
    index.cp.seed = seed
    index.train(sample)
    index.own_fields = True
    quantizer.this.disown()  # the IVF index owns and frees its quantizer
    index.nprobe = spec.nprobe
    return index


def _as_ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
