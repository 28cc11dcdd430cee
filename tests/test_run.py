"""The indexing run (indexer/run.py) with a test's embedder and no model: what it stores, that
a stop keeps every group handed over and closes the embedder, that an error does the same and
reaches the caller, and that a later run finishes the job (the end equals one whole run)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from conftest import make_photos
from imgsearch.ground.paths import path_to_text
from imgsearch.indexer.embed_worker import DecodeDataset
from imgsearch.indexer.run import Finished, run_indexing
from imgsearch.indexer.shard import Shard, shard_id_of
from imgsearch.storage.store import Store
from imgsearch.storage.vectors import VectorIndex

DIM, REGIONS = 8, 2


def vector_of(sha256: str) -> np.ndarray:
    """A unit vector (DIM,) made from a content hash: the same content, the same vector."""
    rng = np.random.default_rng(int(sha256[:8], 16))
    vector = rng.standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


class HashEmbedder:
    """No model: each file's facts as the local embedder finds them (DecodeDataset), its vectors
    made from its content hash; `group` files to a group. Notes the groups it handed over, and
    whether the run closed it."""

    def __init__(self, group: int = 2) -> None:
        self.group = group
        self.handed = 0
        self.closed = False

    def embed(self, paths, known_contents):
        self.closed = False
        try:
            for start in range(0, len(paths), self.group):
                part = paths[start : start + self.group]
                dataset = DecodeDataset(part, image_size=16)
                records = [dataset[i][0] for i in range(len(part))]
                contents = []
                for record in records:
                    if record.error is None and record.sha256 not in known_contents:
                        known_contents.add(record.sha256)
                        contents.append(record.sha256)
                global_ = np.stack([vector_of(c) for c in contents]) if contents else np.zeros((0, DIM), np.float32)
                regions = np.repeat(global_[:, None, :], REGIONS, axis=1).astype(np.float16)  # (n, R, d)
                self.handed += 1
                yield Finished(Shard(shard_id_of([r.path for r in records]), records, contents, global_, regions, None))
        finally:
            self.closed = True


@pytest.fixture
def photos(tmp_path) -> Path:
    """Seven images (one a copy of another) and a file that is no image: eight files."""
    root = make_photos(tmp_path / "photos", range(6))
    (root / "img_006.png").write_bytes((root / "img_001.png").read_bytes())
    (root / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "index.db", DIM, REGIONS)
    yield store
    store.close()


def state(store: Store, vectors: VectorIndex) -> dict:
    """What the run stored: path --> (status, content), and that FAISS holds exactly the ok rows
    with their content's vector."""
    rows = store.all_images()
    ok = store.ok_ids()
    assert vectors.ids().tolist() == ok.tolist()
    for row in rows.values():
        if row.status == "ok":
            np.testing.assert_allclose(vectors.index.reconstruct(int(row.id)), vector_of(row.sha256), atol=1e-6)
    return {path: (row.status, row.sha256) for path, row in rows.items()}


def test_a_run_stores_what_its_embedder_hands_over(tmp_path, photos, store):
    vectors = VectorIndex.empty(DIM)
    embedder = HashEmbedder(group=3)
    progress = []

    summary = run_indexing([photos], store, vectors, embedder, progress=lambda *p: progress.append(p))

    assert (summary.added, summary.failed, summary.embedded, summary.interrupted) == (7, 1, 6, False)
    assert progress == [(3, 8), (6, 8), (8, 8)] and embedder.handed == 3 and embedder.closed
    stored = state(store, vectors)
    assert len(stored) == 8 and stored[path_to_text(photos / "broken.png")][0] == "error"
    assert stored[path_to_text(photos / "img_006.png")] == stored[path_to_text(photos / "img_001.png")]
    again = run_indexing([photos], store, vectors, HashEmbedder())
    assert (again.unchanged, again.added, again.embedded) == (8, 0, 0)


def test_a_stop_keeps_the_groups_handed_over_closes_the_embedder_and_the_next_run_finishes(tmp_path, photos, store):
    vectors = VectorIndex.empty(DIM)
    run_indexing([photos], store, vectors, HashEmbedder())
    (photos / "img_000.png").unlink()  # stored, then gone: pruned only by a run that ends
    (photos / "img_002.png").rename(photos / "zz_moved.png")  # a move, read in the last group
    for seed in range(10, 14):
        (photos / f"new_{seed}.png").write_bytes(hashlib.sha256(b"x").digest())  # four more bad files
    make_photos(photos, range(20, 22))
    embedder = HashEmbedder(group=2)
    asked = []

    stopped = run_indexing([photos], store, vectors, embedder, should_stop=lambda: asked.append(1) or True)

    assert stopped.interrupted and len(asked) == 1 and embedder.handed == 1 and embedder.closed
    assert stopped.removed == 0 and path_to_text(photos / "img_000.png") in store.all_images()
    finished = run_indexing([photos], store, vectors, HashEmbedder(group=2))
    assert not finished.interrupted and (finished.removed, finished.moved) == (1, 1)

    whole = Store(tmp_path / "whole.db", DIM, REGIONS)  # the oracle: one run over the same files
    whole_vectors = VectorIndex.empty(DIM)
    run_indexing([photos], whole, whole_vectors, HashEmbedder(group=5))
    assert state(store, vectors) == state(whole, whole_vectors)
    whole.close()


def test_an_error_while_storing_closes_the_embedder_and_reaches_the_caller(tmp_path, photos, store, monkeypatch):
    vectors = VectorIndex.empty(DIM)
    apply = Store.apply
    calls = []

    def fail_second_group(self, changes):
        calls.append(len(changes))
        if len(calls) == 2:
            raise RuntimeError("simulated")
        return apply(self, changes)

    monkeypatch.setattr(Store, "apply", fail_second_group)
    embedder = HashEmbedder(group=3)
    with pytest.raises(RuntimeError, match="simulated"):
        run_indexing([photos], store, vectors, embedder)
    monkeypatch.setattr(Store, "apply", apply)

    assert embedder.handed == 2 and embedder.closed
    assert len(state(store, vectors)) == 3  # the first group
    assert run_indexing([photos], store, vectors, HashEmbedder()).unchanged == 3
    assert len(state(store, vectors)) == 8
