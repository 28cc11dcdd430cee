"""Incremental indexing: a re-run reads only new and changed files, embeds only content it
has not stored, keeps moved files' rows, prunes only under the folders given, and always
ends equal to a fresh index of the same files (the oracle)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import draw_image, file_permissions_enforced, make_photos
from imgsearch.cli import cli
from imgsearch.ground.errors import StoreWriteFailed
from imgsearch.images.decode import decode_file
from imgsearch.index import Index
from imgsearch.indexer.pipeline import LocalEmbedder
from imgsearch.storage.store import Store
from imgsearch.storage.vectors import VectorIndex
from index_oracle import assert_rows_match, assert_same_results, check_consistent, rows_of, search_results

QUERIES = ["a red circle", "a blue square"]


def fresh_rows(tmp_path: Path, model_dir: Path, folders: list[Path], name: str = "oracle"):
    """The oracle: rows and results of a new index built in one run over `folders`."""
    with Index.create(tmp_path / name, model_dir, device="cpu") as index:
        index.add(folders, workers=0)
        return rows_of(index), search_results(index, QUERIES)


def count_encoded(encoder, count) -> None:
    """count(pixels) of each batch the encoder is given, on torch (encode) or ONNX Runtime (encode_later)."""
    encode, encode_later = encoder.encode, encoder.encode_later
    encoder.encode = lambda pixels, *args: count(pixels) or encode(pixels, *args)
    encoder.encode_later = lambda pixels: count(pixels) or encode_later(pixels)


class Spy:
    """Counts the files the indexer reads and the images the backbone sees: index.add(embedder=spy.embedder())."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.read: list[str] = []
        self.embedded = 0
        count_encoded(index.image_encoder, self._count)

    def embedder(self, batch_size: int = 32) -> LocalEmbedder:
        """The local embedder (no decode workers) with a decoder that notes each file it reads."""
        return LocalEmbedder(self.index.image_encoder, batch_size=batch_size, workers=0, decode=self._decode)

    def _decode(self, path, **options):
        self.read.append(Path(path).name)
        return decode_file(path, **options)

    def _count(self, pixels) -> None:
        self.embedded += pixels.shape[0]  # (B, 3, S, S)


@pytest.fixture
def index(tmp_path, model_dir):
    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        yield index


def test_rerun_reads_only_new_and_changed_files(tmp_path, model_dir, index):
    photos = make_photos(tmp_path / "photos", range(10))
    index.add([photos], workers=0)
    draw_image(50).save(photos / "img_003.png")  # new content
    target = photos / "img_004.png"
    os.utime(target, (target.stat().st_atime, target.stat().st_mtime + 10))  # touched only
    make_photos(photos / "new", [20, 21])
    spy = Spy(index)

    summary = index.add([photos], embedder=spy.embedder(batch_size=2))

    assert sorted(spy.read) == ["img_003.png", "img_004.png", "img_020.png", "img_021.png"]
    assert spy.embedded == summary.embedded == 3  # the touched file is confirmed by its hash
    assert (summary.added, summary.updated, summary.unchanged, summary.moved, summary.removed, summary.failed) == (
        2,
        1,
        9,
        0,
        0,
        0,
    )
    check_consistent(index)
    expected_rows, expected_results = fresh_rows(tmp_path, model_dir, [photos])
    assert_rows_match(rows_of(index), expected_rows)
    assert_same_results(search_results(index, QUERIES), expected_results)
    assert index.info()["distinct_contents"] == 12  # the replaced content is gone

    spy.read.clear()
    again = index.add([photos], embedder=spy.embedder())
    assert spy.read == [] and again.unchanged == 12 and again.embedded == 0


def test_moved_and_renamed_files_keep_their_rows_without_the_backbone(tmp_path, model_dir, index):
    photos = make_photos(tmp_path / "photos", range(8))
    index.add([photos], workers=0)
    before = {row.path: row for row in index.store.all_images().values()}
    (photos / "2024").mkdir()
    os.rename(photos / "img_001.png", photos / "2024" / "img_001.png")  # moved
    os.rename(photos / "img_002.png", photos / "beach.png")  # renamed
    spy = Spy(index)

    summary = index.add([photos], embedder=spy.embedder())

    assert spy.embedded == summary.embedded == 0
    assert (summary.moved, summary.added, summary.removed, summary.unchanged) == (2, 0, 0, 6)
    after = index.store.all_images()
    assert after[f"{photos}/2024/img_001.png"].id == before[f"{photos}/img_001.png"].id
    assert after[f"{photos}/beach.png"].id == before[f"{photos}/img_002.png"].id
    assert f"{photos}/img_001.png" not in after
    check_consistent(index)
    expected_rows, expected_results = fresh_rows(tmp_path, model_dir, [photos])
    assert_rows_match(rows_of(index), expected_rows)
    assert_same_results(search_results(index, QUERIES), expected_results)


def test_identical_content_under_several_paths_is_embedded_once(tmp_path, model_dir, index):
    photos = make_photos(tmp_path / "photos", range(4))
    for name in ("a.png", "b.png", "c/d.png", "e/f/g.png"):  # in one batch and across batches
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photos / "img_002.png", photos / name)
    spy = Spy(index)

    summary = index.add([photos], embedder=spy.embedder(batch_size=3))

    assert spy.embedded == summary.embedded == 4
    assert summary.added == 8
    assert index.info()["distinct_contents"] == 4 and index.info()["images"] == 8
    check_consistent(index)
    assert_rows_match(rows_of(index), fresh_rows(tmp_path, model_dir, [photos])[0])


def test_old_content_reappearing_under_a_new_path_in_the_same_run_is_not_re_embedded(tmp_path, model_dir, index):
    photos = make_photos(tmp_path / "photos", range(4))
    index.add([photos], workers=0)
    shutil.copyfile(photos / "img_000.png", photos / "zz_old_version.png")  # read after img_000 changes
    draw_image(77).save(photos / "img_000.png")
    spy = Spy(index)

    summary = index.add([photos], embedder=spy.embedder(batch_size=1))

    assert spy.embedded == summary.embedded == 1  # only the new content
    assert (summary.updated, summary.added) == (1, 1)
    check_consistent(index)
    assert_rows_match(rows_of(index), fresh_rows(tmp_path, model_dir, [photos])[0])


class DeferredEncoding:
    """An embedder that makes the CPU take the GPU's path: it wraps a local one, and each batch's
    vectors are 'ready' only when waited for, so batches are stored by the run's writer thread
    while the next ones are decoded and encoded."""

    def __init__(self, local: LocalEmbedder) -> None:
        self.local = local
        self.waits = 0
        local.encoder.use_torch_runtime()  # synchronous on the CPU (ONNX Runtime's path is asynchronous itself)

    def embed(self, paths, known_contents):
        batches = self.local.embed(paths, known_contents)
        try:
            for pending in batches:
                if pending.contents:  # the encoder was started on this batch
                    assert not pending.asynchronous  # on the CPU
                    pending.ready = self
                yield pending
        finally:
            batches.close()

    def synchronize(self) -> None:  # the torch.cuda.Event method PendingShard.result calls
        self.waits += 1


def test_the_gpus_writer_thread_stores_what_the_cpu_path_stores(tmp_path, model_dir, index):
    photos = make_photos(tmp_path / "photos", range(7))
    shutil.copyfile(photos / "img_001.png", photos / "img_002_copy.png")
    spy = Spy(index)
    deferred = DeferredEncoding(spy.embedder(batch_size=3))
    progress = []

    # Batches of 3: img_000 img_001 img_002 | img_002_copy img_003 img_004 | img_005 img_006.
    # The copy's content may not be stored yet when its batch is read: it must not be embedded again.
    summary = index.add(
        [photos],
        embedder=deferred,
        progress=lambda done, total: progress.append((done, total, threading.current_thread().name)),
    )

    assert spy.embedded == summary.embedded == 7 and summary.added == 8
    assert deferred.waits == 3
    assert progress == [
        (3, 8, "imgsearch-store-writer"),
        (6, 8, "imgsearch-store-writer"),
        (8, 8, "imgsearch-store-writer"),
    ]
    check_consistent(index)
    assert_rows_match(rows_of(index), fresh_rows(tmp_path, model_dir, [photos])[0])


def test_a_stop_on_the_gpus_path_stores_every_batch_handed_over_then_resumes(tmp_path, model_dir, index):
    photos = make_photos(tmp_path / "photos", range(9))
    deferred = DeferredEncoding(LocalEmbedder(index.image_encoder, batch_size=3, workers=0))
    asked = []

    summary = index.add([photos], embedder=deferred, should_stop=lambda: asked.append(1) or len(asked) == 2)

    assert summary.interrupted and summary.added == 6 and index.info()["images"] == 6
    check_consistent(index)
    index.add([photos], embedder=deferred)
    assert_rows_match(rows_of(index), fresh_rows(tmp_path, model_dir, [photos])[0])


def test_a_write_error_on_the_gpus_writer_thread_reaches_the_caller(tmp_path, model_dir, index, monkeypatch):
    photos = make_photos(tmp_path / "photos", range(9))
    deferred = DeferredEncoding(LocalEmbedder(index.image_encoder, batch_size=3, workers=0))
    apply = Store.apply
    calls = []

    def fail_second_batch(self, changes):
        calls.append(len(changes))
        if len(calls) == 2:
            raise StoreWriteFailed("simulated: disk full")
        return apply(self, changes)

    monkeypatch.setattr(Store, "apply", fail_second_batch)
    with pytest.raises(StoreWriteFailed, match="simulated"):
        index.add([photos], embedder=deferred)
    monkeypatch.setattr(Store, "apply", apply)

    assert index.info()["images"] == 3  # the first batch; none after the failed one
    check_consistent(index)
    index.add([photos], embedder=deferred)
    assert_rows_match(rows_of(index), fresh_rows(tmp_path, model_dir, [photos])[0])


def run_json(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args] + ["--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_prune_removes_only_files_gone_from_the_folders_given(tmp_path, model_dir):
    pictures = make_photos(tmp_path / "Pictures", range(5), "pic")
    mnt = make_photos(tmp_path / "mnt" / "photos", range(10, 15), "mnt")
    index_dir = tmp_path / "index"
    base = ["--index", index_dir, "--model", model_dir, "--workers", 0, "-q"]
    run_json("index", pictures, *base)
    run_json("index", mnt, *base)
    (pictures / "pic_001.png").unlink()
    (mnt / "mnt_011.png").unlink()

    summary = run_json("index", pictures, *base)  # only ~/Pictures is looked at

    assert (summary["removed"], summary["unchanged"]) == (1, 4)
    with Index.open(index_dir) as index:
        paths = set(index.store.all_images())
    assert f"{pictures}/pic_001.png" not in paths
    assert f"{mnt}/mnt_011.png" in paths  # gone from disk, but under a folder not given: kept

    kept = run_json("index", mnt, *base, "--no-prune")
    assert (kept["removed"], kept["unchanged"]) == (0, 4)
    pruned = run_json("index", mnt, *base)
    assert (pruned["removed"], pruned["unchanged"]) == (1, 4)
    with Index.open(index_dir, device="cpu") as index:
        check_consistent(index)
        assert_rows_match(rows_of(index), fresh_rows(tmp_path, model_dir, [pictures, mnt])[0])


def test_prune_leaves_a_sibling_folder_whose_name_starts_the_same_alone(tmp_path, model_dir):
    photos = make_photos(tmp_path / "photos", range(3))
    photos2 = make_photos(tmp_path / "photos2", range(10, 13))  # "photos" is a prefix of its name
    base = ["--index", tmp_path / "index", "--model", model_dir, "--workers", 0, "-q"]
    run_json("index", photos, photos2, *base)
    (photos2 / "img_011.png").unlink()

    summary = run_json("index", photos, *base)  # only photos/ is looked at

    assert (summary["removed"], summary["unchanged"]) == (0, 3)
    with Index.open(tmp_path / "index") as index:
        assert f"{photos2}/img_011.png" in set(index.store.all_images())  # kept: not under photos/
    assert run_json("index", photos2, *base)["removed"] == 1  # pruned when its own folder is given


@pytest.mark.parametrize("source, target", [("photos2", "photos"), ("photos", "photos2")])
def test_a_move_between_sibling_folders_is_not_taken_from_a_folder_not_given(tmp_path, model_dir, source, target):
    folders = {
        name: make_photos(tmp_path / name, seeds, name)
        for name, seeds in (("photos", range(3)), ("photos2", range(10, 13)))
    }
    base = ["--index", tmp_path / "index", "--model", model_dir, "--workers", 0, "-q"]
    run_json("index", *folders.values(), *base)
    moved_from = next(iter(sorted(folders[source].iterdir())))
    moved_to = folders[target] / moved_from.name
    os.rename(moved_from, moved_to)

    summary = run_json("index", folders[target], *base)  # the source folder is not given

    assert (summary["added"], summary["moved"], summary["removed"], summary["embedded"]) == (1, 0, 0, 0)
    with Index.open(tmp_path / "index") as index:
        assert {str(moved_from), str(moved_to)} <= set(index.store.all_images())  # the old row is kept


def test_with_no_prune_a_moved_file_is_added_and_the_old_path_kept(tmp_path, model_dir):
    photos = make_photos(tmp_path / "photos", range(3))
    base = ["--index", tmp_path / "index", "--model", model_dir, "--workers", 0, "-q"]
    run_json("index", photos, *base)
    os.rename(photos / "img_000.png", photos / "renamed.png")

    summary = run_json("index", photos, *base, "--no-prune")

    assert (summary["added"], summary["moved"], summary["removed"], summary["embedded"]) == (1, 0, 0, 0)
    with Index.open(tmp_path / "index") as index:
        assert {f"{photos}/img_000.png", f"{photos}/renamed.png"} <= set(index.store.all_images())
    summary = run_json("index", photos, *base)  # the default prune run then drops the old path
    assert (summary["removed"], summary["unchanged"]) == (1, 3)


def test_json_summary_counts_every_kind_of_change(tmp_path, model_dir):
    photos = make_photos(tmp_path / "photos", range(6))
    base = ["--index", tmp_path / "index", "--model", model_dir, "--workers", 0, "-q"]
    first = run_json("index", photos, *base)
    assert {k: first[k] for k in ("added", "updated", "moved", "removed", "unchanged", "failed")} == {
        "added": 6,
        "updated": 0,
        "moved": 0,
        "removed": 0,
        "unchanged": 0,
        "failed": 0,
    }
    make_photos(photos, [30])  # added
    draw_image(31).save(photos / "img_001.png")  # updated
    os.rename(photos / "img_002.png", photos / "moved.png")  # moved
    (photos / "img_003.png").unlink()  # removed
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n nope")  # failed

    summary = run_json("index", photos, *base)

    assert {k: summary[k] for k in ("added", "updated", "moved", "removed", "unchanged", "failed")} == {
        "added": 1,
        "updated": 1,
        "moved": 1,
        "removed": 1,
        "unchanged": 3,
        "failed": 1,
    }
    assert summary["embedded"] == 2 and summary["interrupted"] is False
    assert [f["path"] for f in summary["failures"]] == [f"{photos}/broken.png"]


def test_a_failed_file_is_retried_only_when_it_changes(tmp_path, model_dir, index):
    photos = make_photos(tmp_path / "photos", range(3))
    (photos / "bad.png").write_text("not an image yet")
    os.symlink(photos / "later.png", photos / "link.png")  # broken until later.png exists
    first = index.add([photos], workers=0)
    assert first.failed == 2
    spy = Spy(index)

    again = index.add([photos], embedder=spy.embedder())

    assert spy.read == [] and (again.failed, again.unchanged) == (0, 5)  # not retried: unchanged
    draw_image(40).save(photos / "bad.png")
    draw_image(41).save(photos / "later.png")
    fixed = index.add([photos], embedder=spy.embedder())
    assert sorted(spy.read) == ["bad.png", "later.png", "link.png"]
    assert (fixed.updated, fixed.added, fixed.failed) == (2, 1, 0)
    assert index.failures() == []
    check_consistent(index)
    assert_rows_match(rows_of(index), fresh_rows(tmp_path, model_dir, [photos])[0])


def test_an_error_mid_run_keeps_the_store_and_the_open_index_in_step(tmp_path, model_dir, index, monkeypatch):
    photos = make_photos(tmp_path / "photos", range(6))
    calls = []
    add = VectorIndex.add

    def fail_on_third_batch(self, ids, vectors):
        calls.append(len(ids))
        if len(calls) == 3:  # after that batch was committed to SQLite
            raise RuntimeError("simulated failure")
        return add(self, ids, vectors)

    monkeypatch.setattr(VectorIndex, "add", fail_on_third_batch)
    with pytest.raises(RuntimeError, match="simulated"):
        index.add([photos], workers=0, batch_size=2)
    monkeypatch.setattr(VectorIndex, "add", add)

    check_consistent(index)  # the open index's vectors match what was committed
    assert index.info()["images"] == 6
    summary = index.add([photos], workers=0)
    assert summary.unchanged == 6
    assert_rows_match(rows_of(index), fresh_rows(tmp_path, model_dir, [photos])[0])


def test_files_in_a_folder_that_cannot_be_listed_are_not_pruned(tmp_path, model_dir, index, caplog):
    photos = make_photos(tmp_path / "photos", range(2))
    make_photos(photos / "private", range(10, 13))
    index.add([photos], workers=0)
    (photos / "private").chmod(0)  # still there, but neither listable nor stat-able
    try:
        with file_permissions_enforced():  # even as root, as CI runs
            summary = index.add([photos], workers=0)
    finally:
        (photos / "private").chmod(0o755)
    assert (summary.removed, summary.unchanged) == (0, 2)
    assert index.info()["images"] == 5
    assert "cannot list folder" in caplog.text


def test_a_full_disk_is_a_clear_error_and_keeps_what_was_stored(tmp_path, model_dir, index):
    photos = make_photos(tmp_path / "photos", range(3))
    index.add([photos], workers=0)
    make_photos(photos, range(10, 40))  # 30 more: their region features need many more pages
    pages = index.store.db.execute("PRAGMA page_count").fetchone()[0]
    index.store.db.execute(f"PRAGMA max_page_count = {pages + 2}")  # as if the disk were full

    with pytest.raises(StoreWriteFailed, match="full.*everything stored before is kept"):
        index.add([photos], workers=0, batch_size=4)

    check_consistent(index)
    assert index.info()["images"] >= 3
    index.store.db.execute("PRAGMA max_page_count = 1073741823")  # space freed
    index.add([photos], workers=0)
    assert_rows_match(rows_of(index), fresh_rows(tmp_path, model_dir, [photos])[0])
