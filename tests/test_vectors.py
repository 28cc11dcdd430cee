"""The vector index: exact below a size threshold, IVF above it, checked against brute force."""

from __future__ import annotations

import numpy as np
import pytest

import imgsearch.storage.vectors as vectors_module
from imgsearch import Index
from imgsearch.storage.vectors import DEFAULT_MEMORY_BUDGET, EXACT_LIMIT, IndexSpec, VectorIndex, choose_spec


def clustered(count: int, dim: int, clusters: int, seed: int, spread: float = 0.35) -> np.ndarray:
    """Unit vectors around random cluster centres, like embeddings of photos of a few kinds."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)  # (K, d)
    points = centres[rng.integers(0, clusters, count)] + spread * rng.standard_normal((count, dim)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)  # (N, d)


def exact_top(database: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = database @ query  # (N, d) x (d,) --> (N,)
    order = np.argsort(-scores, kind="stable")[:k]
    return scores[order], ids[order]


@pytest.fixture(scope="module")
def collection():
    database = clustered(20_000, 32, clusters=40, seed=0)
    ids = np.arange(len(database), dtype=np.int64) * 3 + 5  # ids are not row numbers
    queries = clustered(50, 32, clusters=40, seed=0, spread=0.5)  # same centres, other points
    return database, ids, queries


@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_sq8"])
def test_ivf_recall_at_10_against_brute_force(collection, kind):
    database, ids, queries = collection
    index = VectorIndex.build(ids, database, 32, IndexSpec(kind, nlist=64, nprobe=8))
    hits = 0
    for query in queries:
        _, found = index.search(query, 10)
        _, truth = exact_top(database, ids, query, 10)
        hits += len(set(found.tolist()) & set(truth.tolist()))
    assert hits / (10 * len(queries)) >= 0.95


def test_ivf_scanning_every_list_is_exact(collection):
    database, ids, queries = collection
    index = VectorIndex.build(ids, database, 32, IndexSpec("ivf_flat", nlist=64, nprobe=64))
    for query in queries[:10]:
        scores, found = index.search(query, 10)
        truth_scores, _ = exact_top(database, ids, query, 10)
        np.testing.assert_allclose(scores, truth_scores, rtol=1e-5, atol=1e-5)  # tie-tolerant: compare scores
        np.testing.assert_allclose(database[(found - 5) // 3] @ query, scores, rtol=1e-5, atol=1e-5)


def test_choice_by_size_and_memory_budget():
    assert choose_spec(EXACT_LIMIT - 1, 256).kind == "flat"
    large = choose_spec(1_000_000, 256)
    assert (large.kind, large.nlist, large.nprobe) == ("ivf_flat", 4096, 128)
    assert choose_spec(EXACT_LIMIT, 256).kind == "ivf_flat"
    assert 1_000_000 * large.bytes_per_vector(256) <= DEFAULT_MEMORY_BUDGET
    small_budget = choose_spec(1_000_000, 256, memory_budget=512 * 1024**2)
    assert small_budget.kind == "ivf_sq8" and small_budget.bytes_per_vector(256) == 264
    assert choose_spec(200, 256).nlist == 0
    assert choose_spec(10_000_000, 256).kind == "ivf_sq8"


def test_persistence_round_trip_keeps_kind_and_parameters(collection, tmp_path):
    database, ids, queries = collection
    index = VectorIndex.build(ids, database, 32, IndexSpec("ivf_sq8", nlist=32, nprobe=5))
    index.remove(ids[:100])
    index.save(tmp_path / "vectors.faiss")
    loaded = VectorIndex.load(tmp_path / "vectors.faiss")
    assert loaded.spec == IndexSpec("ivf_sq8", nlist=32, nprobe=5)
    np.testing.assert_array_equal(loaded.ids(), np.sort(ids[100:]))
    for query in queries[:5]:
        for a, b in zip(index.search(query, 10), loaded.search(query, 10)):
            np.testing.assert_array_equal(a, b)


def test_flat_index_is_exact_and_fits_small_collections(collection):
    database, ids, queries = collection
    index = VectorIndex.build(ids[:1000], database[:1000], 32)
    assert index.spec.kind == "flat" and index.fits()
    scores, found = index.search(queries[0], 10)
    truth_scores, truth = exact_top(database[:1000], ids[:1000], queries[0], 10)
    np.testing.assert_allclose(scores, truth_scores, rtol=1e-5, atol=1e-5)


def test_index_switches_to_ivf_when_it_grows_past_the_threshold(tmp_path, model_dir, image_folder, monkeypatch):
    monkeypatch.setattr(vectors_module, "EXACT_LIMIT", 5)
    monkeypatch.setattr(vectors_module, "TRAIN_POINTS_PER_LIST", 4)
    with Index.create(tmp_path / "idx", model=model_dir, device="cpu") as index:
        index.add([image_folder], workers=0)
        assert index.vectors.spec.kind == "ivf_flat" and index.vectors.spec.nlist == 3
        flat = VectorIndex.build(*index.store.global_vectors(), index.manifest.embed_dim, IndexSpec("flat"))
        query = index.store.global_vectors()[1][0]
        # 3 lists, all scanned (nprobe floor 64): the same answer as exact search
        np.testing.assert_array_equal(index.vectors.search(query, 5)[1], flat.search(query, 5)[1])
    with Index.open(tmp_path / "idx", device="cpu") as reopened:  # the FAISS file is in step: not rebuilt
        assert reopened.vectors.spec == IndexSpec("ivf_flat", nlist=3, nprobe=64)
