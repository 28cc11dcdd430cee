"""Shards, the unit of work between embed workers and the one writer, against oracles: a
shard file reads back equal field by field (and a damaged one is refused); a worker's
vectors equal the encoder run on each file alone; shards of a folder merged in any order
(one of them twice) give the index Index.add gives; incremental runs keep their meaning."""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

import imgsearch.indexer.merge
from conftest import draw_image, make_photos
from imgsearch.ground.errors import StoreCorrupt
from imgsearch.ground.paths import path_to_text
from imgsearch.images.decode import ImageRecord
from imgsearch.index import Index
from imgsearch.indexer.embed_worker import embed_shard
from imgsearch.indexer.files import input_roots, iter_image_files
from imgsearch.indexer.merge import AddSummary, ShardWriter
from imgsearch.indexer.plan import plan_run
from imgsearch.indexer.run import Finished
from imgsearch.indexer.shard import Shard, shard_id_of
from index_oracle import assert_rows_match, check_consistent, rows_of
from test_incremental import count_encoded
from test_search_oracles import encode_file

ATOL = 1e-5


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def oracle_rows(tmp_path: Path, model_dir: Path, folders: list[Path]):
    """The oracle: a new index built by Index.add over `folders`, in one run."""
    with Index.create(tmp_path / "oracle", model_dir, device="cpu") as index:
        summary = index.add(folders, workers=0)
        return rows_of(index), summary


class ShardsInOrder:
    """An embedder as a many-worker engine is one (imgsearch.indexer.run.Embedder): the files to
    read cut into shards by `split`, each embedded by embed_shard, optionally saved and loaded,
    and handed to the run in `order`."""

    def __init__(self, encoder, split, order, through_files: Path | None) -> None:
        self.encoder, self.split, self.order, self.through_files = encoder, split, order, through_files
        self.shards: list[Shard] = []

    def embed(self, paths, known_contents):
        shards = [
            embed_shard(part, self.encoder, known_contents=known_contents, batch_size=2) for part in self.split(paths)
        ]
        if self.through_files is not None:
            for number, shard in enumerate(shards):
                shard.save(self.through_files / f"{number}.shard")
            shards = [Shard.load(self.through_files / f"{number}.shard") for number in range(len(shards))]
        self.shards = shards
        for shard in self.order(shards):
            yield Finished(shard)


def index_by_shards(
    index: Index, folders: list[Path], split, order=lambda shards: shards, *, through_files: Path | None = None
) -> tuple[AddSummary, list[Shard]]:
    """What an engine does: the run (Index.add) with the files to read embedded as shards
    (`split` cuts the list), optionally saved and loaded, and merged in `order`."""
    embedder = ShardsInOrder(index.image_encoder, split, order, through_files)
    summary = index.add(folders, embedder=embedder)
    return summary, embedder.shards


def assert_shards_equal(got: Shard, want: Shard) -> None:
    assert got.shard_id == want.shard_id
    assert got.records == want.records
    assert got.contents == want.contents
    assert got.labels == want.labels
    for name in ("global_", "regions"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a, b), name
    assert got == want  # Shard.__eq__ agrees


@pytest.fixture
def photos(tmp_path) -> Path:
    """Six images in two folders, a copy of one of them, and a file that is no image."""
    root = make_photos(tmp_path / "photos", range(4))
    make_photos(root / "sub", range(4, 6))
    shutil.copyfile(root / "img_001.png", root / "sub" / "copy_of_001.png")
    (root / "broken.png").write_bytes(b"not a png at all")
    return root


@pytest.fixture
def index(tmp_path, model_dir):
    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        yield index


# ---- the shard file ----------------------------------------------------------------------


def hand_made_shard() -> Shard:
    rng = np.random.default_rng(3)
    records = [
        ImageRecord(
            path="/photos/a.jpg",
            size=1234,
            mtime=1700000000.123456,
            ctime=1700000001.5,
            sha256="aa" * 32,
            width=640,
            height=480,
            taken_at="2021-06-01T12:00:00",
        ),
        ImageRecord(
            path="/photos/caf\\xe9 \u00e9t\u00e9.png",
            size=99,
            mtime=1.0,
            ctime=2.0,
            sha256="bb" * 32,
            width=3,
            height=4,
        ),
        ImageRecord(path="/photos/copy.jpg", size=1234, mtime=5.0, ctime=6.0, sha256="aa" * 32, width=640, height=480),
        ImageRecord(path="/photos/bad.gif", error="cannot decode image: truncated"),
    ]
    global_ = rng.standard_normal((2, 8)).astype(np.float32)
    global_ /= np.linalg.norm(global_, axis=1, keepdims=True)
    return Shard(
        shard_id_of([r.path for r in records]),
        records,
        ["aa" * 32, "bb" * 32],
        global_,
        rng.standard_normal((2, 5, 8)).astype(np.float16),
        [[("tabby", 0.5123), ("tiger cat", 0.25)], [("daisy", 0.9999), ("bee", 0.0001)]],
    )


def test_a_saved_shard_loads_equal_field_by_field(tmp_path, index, photos):
    shard = hand_made_shard()
    shard.save(tmp_path / "hand.shard")
    assert not (tmp_path / "hand.shard.tmp").exists()
    assert_shards_equal(Shard.load(tmp_path / "hand.shard"), shard)
    changed = Shard.load(tmp_path / "hand.shard")
    changed.regions[1, 2, 3] += 1
    assert changed != shard

    embedded = embed_shard(sorted(photos.rglob("*.png")), index.image_encoder)  # no classifier: labels None
    embedded.save(tmp_path / "embedded.shard")
    assert_shards_equal(Shard.load(tmp_path / "embedded.shard"), embedded)

    empty = Shard(shard_id_of([]), [], [], np.zeros((0, 8), np.float32), np.zeros((0, 5, 8), np.float16), None)
    empty.save(tmp_path / "empty.shard")
    assert_shards_equal(Shard.load(tmp_path / "empty.shard"), empty)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def garbled_header(data: bytes) -> bytes:
    return data[:8] + bytes(b ^ 0x5A for b in data[8:40]) + data[40:]


def garbled_metadata(data: bytes) -> bytes:
    return data.replace(b'"contents', b'"c0ntents', 1)


def wrong_length(data: bytes) -> bytes:
    return (len(data) * 4).to_bytes(8, "little") + data[8:]


@pytest.mark.parametrize(
    "damage", [truncated, garbled_header, garbled_metadata, wrong_length, lambda data: b"", lambda data: data[:5]]
)
def test_a_damaged_shard_file_is_store_corrupt(tmp_path, damage):
    path = tmp_path / "x.shard"
    hand_made_shard().save(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StoreCorrupt, match="x.shard is damaged.*embed its files again"):
        Shard.load(path)


def test_a_safetensors_file_that_is_not_a_shard_is_store_corrupt(tmp_path):
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros((2, 2), np.float32)}, tmp_path / "model.safetensors")
    with pytest.raises(StoreCorrupt, match="damaged"):
        Shard.load(tmp_path / "model.safetensors")


# ---- the worker --------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1])
def test_embed_shard_equals_the_encoder_on_each_file_and_embeds_a_copy_once(index, photos, workers):
    encoder = index.image_encoder
    seen = []
    count_encoded(encoder, lambda pixels: seen.append(pixels.shape[0]))
    files = sorted(photos.rglob("*.png"))  # broken, img_000..003, sub/copy_of_001, sub/img_004..005
    try:
        shard = embed_shard(files, encoder, batch_size=3, workers=workers)
    finally:
        del encoder.encode, encoder.encode_later

    assert [r.path for r in shard.records] == [path_to_text(f) for f in files]
    assert shard.shard_id == hashlib.sha256("".join(path_to_text(f) + "\n" for f in files).encode()).hexdigest()
    good = [f for f in files if f.name != "broken.png"]
    assert shard.contents == list(dict.fromkeys(sha(f) for f in good))  # in file order, the copy once
    assert len(shard.contents) == 6 and sum(seen) == 6
    bad = next(r for r in shard.records if r.path.endswith("broken.png"))
    assert bad.error and bad.sha256 == sha(photos / "broken.png")
    for record, path in zip(shard.records, files):
        if record.error is None:
            assert (record.sha256, record.size, (record.width, record.height)) == (
                sha(path),
                path.stat().st_size,
                (48, 48),
            )
            assert record.mtime == path.stat().st_mtime
    assert shard.global_.dtype == np.float32 and shard.regions.dtype == np.float16
    assert shard.labels is None  # this model has no classifier
    for row, content in enumerate(shard.contents):
        path = next(f for f in good if sha(f) == content)
        expected = encode_file(encoder, path)
        np.testing.assert_allclose(shard.global_[row], expected.global_[0].numpy(), atol=ATOL)
        np.testing.assert_allclose(np.linalg.norm(shard.global_[row]), 1.0, atol=ATOL)
        np.testing.assert_allclose(shard.regions[row].astype(np.float32), expected.regions[0].numpy(), atol=2e-3)


def test_embed_shard_leaves_known_contents_out(index, photos):
    files = sorted(photos.glob("img_*.png"))
    known = {sha(files[0]), sha(files[2])}
    shard = embed_shard(files, index.image_encoder, known_contents=known)
    assert shard.contents == [sha(files[1]), sha(files[3])] and shard.global_.shape[0] == 2
    assert len(shard.records) == 4
    nothing = embed_shard(files[:1], index.image_encoder, known_contents=known)
    assert nothing.contents == [] and nothing.global_.shape == (0, index.manifest.embed_dim)
    assert nothing.regions.shape == (0, index.manifest.num_regions, index.manifest.embed_dim)


def test_embed_shard_labels_are_the_classifiers_top_classes(tmp_path, mobilenet_model_dir, photos):
    with Index.create(tmp_path / "labelled", mobilenet_model_dir, device="cpu") as index:
        shard = embed_shard(sorted(photos.rglob("*.png")), index.image_encoder, batch_size=4)
        index.add([photos], workers=0)
        stored = index.store.labels(index.store.ok_ids().tolist())
        by_content = {index.store.images([i])[i].sha256: labels for i, labels in stored.items()}
    assert shard.labels is not None and len(shard.labels) == len(shard.contents) == 6
    for content, labels in zip(shard.contents, shard.labels):
        assert len(labels) == 5 and labels == by_content[content]


# ---- the writer --------------------------------------------------------------------------


def test_shards_merged_in_any_order_and_one_twice_equal_index_add(tmp_path, model_dir, index, photos):
    make_photos(photos / "sub" / "deeper", range(6, 9))
    shutil.copyfile(photos / "img_002.png", photos / "sub" / "deeper" / "copy_of_002.png")

    def split(todo):  # uneven parts; a copy and its original in different shards
        return [todo[0:1], todo[1:5], todo[5:6], todo[6:]]

    def shuffled_with_a_retry(shards):
        order = list(shards)
        random.Random(5).shuffle(order)
        return order[:2] + [order[0]] + order[2:] + [order[1]]

    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    summary, shards = index_by_shards(index, [photos], split, shuffled_with_a_retry, through_files=shard_dir)
    expected, oracle_summary = oracle_rows(tmp_path, model_dir, [photos])

    check_consistent(index)
    assert_rows_match(rows_of(index), expected)
    assert index.store.counts() == {"ok": 11, "error": 1, "distinct_contents": 9}
    for name in ("added", "updated", "moved", "removed", "unchanged", "failed"):
        assert getattr(summary, name) == getattr(oracle_summary, name), name
    assert summary.failures == oracle_summary.failures
    # Copies in different shards are each embedded (and stored once); this split has at least one.
    assert summary.embedded == sum(len(s.contents) for s in shards) > oracle_summary.embedded
    assert len(shards) == 4


def test_merging_a_shard_again_stores_nothing_twice(tmp_path, index, photos):
    with index.lock:
        roots = input_roots([photos])
        plan = plan_run(list(iter_image_files(roots)), index.store.all_images(), roots, prune=True)
        shard = embed_shard(plan.todo, index.image_encoder)
        writer = ShardWriter(index.store, index.vectors, plan, AddSummary())
        writer.merge(shard)
        first = rows_of(index), index.store.ok_ids().tolist(), writer.summary.to_dict()
        shard.save(tmp_path / "again.shard")
        writer.merge(Shard.load(tmp_path / "again.shard"))  # a retried worker's shard
        writer.merge(shard)
        writer.finish(interrupted=False)
    rows, ids, summary = first
    assert index.store.ok_ids().tolist() == ids and index.vectors.ids().tolist() == ids
    assert_rows_match(rows_of(index), rows)
    assert writer.summary.to_dict() == summary and summary["added"] == 7


def test_incremental_runs_through_shards(tmp_path, model_dir, index, photos):
    (photos / "broken.png").unlink()
    index.add([photos], workers=0)
    id_of = {row.path: row.id for row in index.store.all_images().values()}

    (photos / "moved").mkdir()
    (photos / "img_000.png").rename(photos / "moved" / "img_000.png")  # a move
    shutil.copyfile(photos / "img_003.png", photos / "moved" / "copy_of_003.png")  # a copy
    (photos / "sub" / "img_004.png").unlink()  # deleted
    draw_image(40).save(photos / "img_002.png")  # changed content
    draw_image(41).save(photos / "new.png")  # new
    (photos / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")  # a bad file

    def one_file_each(todo):
        return [[path] for path in todo]

    summary, shards = index_by_shards(index, [photos], one_file_each, lambda shards: shards[::-1])

    stored = index.store.all_images()
    moved = stored[path_to_text(photos / "moved" / "img_000.png")]
    assert moved.id == id_of[path_to_text(photos / "img_000.png")]  # kept its id (and vectors)
    copy = stored[path_to_text(photos / "moved" / "copy_of_003.png")]
    assert copy.sha256 == stored[path_to_text(photos / "img_003.png")].sha256
    assert path_to_text(photos / "sub" / "img_004.png") not in stored  # pruned
    bad = stored[path_to_text(photos / "bad.jpg")]
    assert bad.status == "error" and bad.error
    assert (summary.moved, summary.added, summary.updated, summary.removed, summary.failed) == (1, 2, 1, 1, 1)
    assert summary.failures == [(path_to_text(photos / "bad.jpg"), bad.error)]
    assert summary.embedded == 2  # the changed file and the new one: neither the move nor the copy
    assert sorted(c for s in shards for c in s.contents) == sorted(
        [sha(photos / "img_002.png"), sha(photos / "new.png")]
    )
    check_consistent(index)
    assert_rows_match(rows_of(index), oracle_rows(tmp_path, model_dir, [photos])[0])
    assert index.add([photos], workers=0).unchanged == 9  # and the next local run finds nothing to do


def test_a_failed_merge_stores_nothing_and_a_retry_keeps_the_move(tmp_path, index, photos, monkeypatch):
    index.add([photos], workers=0)
    old_id = index.store.get(path_to_text(photos / "img_000.png")).id
    (photos / "img_000.png").rename(photos / "renamed.png")
    with index.lock:
        roots = input_roots([photos])
        plan = plan_run(list(iter_image_files(roots)), index.store.all_images(), roots, prune=True)
        shard = embed_shard(plan.todo, index.image_encoder, known_contents=index.store.content_hashes())
        writer = ShardWriter(index.store, index.vectors, plan, AddSummary())
        apply = imgsearch.indexer.merge.Store.apply

        def fail_once(self, changes):
            monkeypatch.setattr(imgsearch.indexer.merge.Store, "apply", apply)
            raise RuntimeError("simulated")

        monkeypatch.setattr(imgsearch.indexer.merge.Store, "apply", fail_once)
        with pytest.raises(RuntimeError, match="simulated"):
            writer.merge(shard)
        assert writer.summary.moved == 0 and shard.shard_id not in writer.merged
        writer.merge(shard)
        writer.finish(interrupted=False)
    assert writer.summary.moved == 1 and writer.summary.removed == 0
    assert index.store.get(path_to_text(photos / "renamed.png")).id == old_id
    check_consistent(index)


def test_the_local_run_merges_each_batch_as_a_shard(index, photos, monkeypatch):
    merged = []
    merge = ShardWriter.merge

    def spy(self, shard):
        merged.append([Path(r.path).name for r in shard.records])
        return merge(self, shard)

    monkeypatch.setattr(ShardWriter, "merge", spy)
    summary = index.add([photos], workers=0, batch_size=3)
    assert [len(names) for names in merged] == [3, 3, 2]
    assert sorted(n for names in merged for n in names) == sorted(p.name for p in photos.rglob("*.png"))
    assert (summary.added, summary.failed, summary.embedded) == (7, 1, 6)
