"""The writer lock, held to what it promises: it never follows a planted symbolic link, nested
use keeps it, a failed setup releases it, it works without os.pwrite (Windows), and a search
that rebuilds vectors.faiss does not hold it (a writer started meanwhile runs).

Two WriterLock objects in one process open write.lock separately, and flock conflicts between
separate opens as between processes, so the second one stands in for another process."""

from __future__ import annotations

import errno
import json
import os
import threading

import numpy as np
import pytest

import imgsearch.storage.lock
from conftest import make_photos
from imgsearch.ground.errors import IndexLocked, StoreCorrupt, StoreWriteFailed
from imgsearch.index import VECTORS_NAME, Index
from imgsearch.storage.lock import LOCK_NAME, WriterLock
from imgsearch.storage.vectors import VectorIndex
from index_oracle import check_consistent


def test_a_symlink_at_write_lock_is_refused_and_its_target_left_alone(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("a file the user cares about\n")
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    os.symlink(target, index_dir / LOCK_NAME)

    with pytest.raises(StoreCorrupt, match=f"{index_dir / LOCK_NAME} is a symbolic link.*rm "):
        WriterLock(index_dir).acquire()

    assert target.read_text() == "a file the user cares about\n"
    assert os.path.islink(index_dir / LOCK_NAME)


def test_nested_use_keeps_the_lock_until_the_outermost_release(tmp_path):
    lock, other = WriterLock(tmp_path), WriterLock(tmp_path)
    with lock:
        with lock:
            pass
        assert lock.held
        assert not other.try_acquire()  # still ours after the inner block
    assert other.try_acquire()  # free once the outer block ends
    other.release()


def test_a_failed_write_of_the_holder_details_releases_the_lock(tmp_path, monkeypatch):
    def disk_full(fd, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    held_before = set(imgsearch.storage.lock._held_fds)
    monkeypatch.setattr(imgsearch.storage.lock.os, "ftruncate", disk_full)
    lock = WriterLock(tmp_path)
    with pytest.raises(StoreWriteFailed, match="No space left on device"):
        lock.acquire()
    monkeypatch.undo()

    assert not lock.held and imgsearch.storage.lock._held_fds == held_before
    other = WriterLock(tmp_path)
    assert other.try_acquire()  # not left locked until this process exits
    other.release()


def test_holder_details_are_written_without_os_pwrite(tmp_path, monkeypatch):
    monkeypatch.delattr(imgsearch.storage.lock.os, "pwrite", raising=False)  # as on Windows
    (tmp_path / LOCK_NAME).write_text('{"pid": 1, "host": "an earlier, longer holder record", "x": 0}\n' * 3)
    with WriterLock(tmp_path):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and set(holder) == {"pid", "host", "command", "since"}


def test_a_writer_waits_briefly_for_a_lock_about_to_be_freed(tmp_path):
    """A search checks for a running writer by taking the lock for an instant; a writer starting
    in that instant waits for it instead of failing."""
    search = WriterLock(tmp_path)
    assert search.try_acquire()
    threading.Timer(0.1, search.release).start()
    with WriterLock(tmp_path):  # would raise IndexLocked without the wait
        pass
    with WriterLock(tmp_path), pytest.raises(IndexLocked, match="is being written by pid"):
        WriterLock(tmp_path).acquire(patience=0.1)  # a real writer still refuses a second one


def test_a_search_rebuilding_vectors_faiss_does_not_hold_the_writer_lock(tmp_path, model_dir, monkeypatch):
    photos = make_photos(tmp_path / "photos", range(6))
    index_dir = tmp_path / "index"
    with Index.create(index_dir, model_dir, device="cpu") as index:
        index.add([photos], workers=0)
    (index_dir / VECTORS_NAME).unlink()  # the next open rebuilds it

    building, go_on = threading.Event(), threading.Event()
    build = VectorIndex.build

    def paused_build(*args, **kwargs):
        building.set()
        assert go_on.wait(30)
        return build(*args, **kwargs)

    monkeypatch.setattr(VectorIndex, "build", paused_build)
    opened = {}
    search = threading.Thread(target=lambda: opened.setdefault("index", Index.open(index_dir, device="cpu")))
    search.start()
    try:
        assert building.wait(30)
        writer = WriterLock(index_dir)
        writer.acquire(patience=0)  # an `imgsearch index` started now is not refused
        writer.release()
    finally:
        go_on.set()
        search.join(30)
    monkeypatch.undo()

    with opened["index"] as reader:
        check_consistent(reader)
        assert np.array_equal(VectorIndex.load(index_dir / VECTORS_NAME).ids(), reader.store.ok_ids())  # saved
