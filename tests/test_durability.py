"""A power cut loses at most the batch in flight: every temp-then-rename write flushes the file
before the rename and the folder after it, and SQLite flushes each committed batch."""

from __future__ import annotations

import numpy as np
import torch

from conftest import make_photos
from fsync_spy import FsyncSpy
from imgsearch.index import DB_NAME, VECTORS_NAME, Index
from imgsearch.model.checkpoint import write_checkpoint
from imgsearch.model.model_files import CONFIG_NAME, LABELS_NAME, WEIGHTS_NAME
from imgsearch.storage.manifest import MANIFEST_NAME, Manifest
from imgsearch.storage.store import Store
from imgsearch.storage.vectors import VectorIndex


def test_manifest_is_written_durably(tmp_path, model_dir, monkeypatch):
    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        manifest = index.manifest
    spy = FsyncSpy(monkeypatch)
    manifest.write(tmp_path / "index")
    spy.assert_durable(tmp_path / "index" / MANIFEST_NAME)
    assert Manifest.read(tmp_path / "index") == manifest


def test_vectors_faiss_is_written_durably(tmp_path, monkeypatch):
    vectors = np.eye(4, dtype=np.float32)
    spy = FsyncSpy(monkeypatch)
    VectorIndex.build(np.arange(4), vectors, 4).save(tmp_path / VECTORS_NAME)
    spy.assert_durable(tmp_path / VECTORS_NAME)
    assert VectorIndex.load(tmp_path / VECTORS_NAME).ids().tolist() == [0, 1, 2, 3]


def test_an_index_run_saves_vectors_faiss_durably(tmp_path, model_dir, monkeypatch):
    photos = make_photos(tmp_path / "photos", range(3))
    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        spy = FsyncSpy(monkeypatch)
        index.add([photos], workers=0)
    spy.assert_durable(tmp_path / "index" / VECTORS_NAME)


def test_model_checkpoints_are_written_durably(tmp_path, monkeypatch):
    spy = FsyncSpy(monkeypatch)
    write_checkpoint(tmp_path / "model", {"embed_dim": 2}, {"w": torch.ones(2)}, {LABELS_NAME: "a\nb\n"})
    spy.assert_durable(tmp_path / "model" / WEIGHTS_NAME)
    spy.assert_durable(tmp_path / "model" / LABELS_NAME)
    spy.assert_durable(tmp_path / "model" / CONFIG_NAME)


def test_sqlite_flushes_every_committed_batch(tmp_path, model_dir):
    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        assert index.store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert index.store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store = Store(tmp_path / "index" / DB_NAME, index.manifest.embed_dim, index.manifest.num_regions)
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    store.close()
