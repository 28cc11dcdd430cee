"""Concurrent use, with real processes: a second writer is refused with the holder's name,
a dead writer's lock blocks nobody, readers see a consistent snapshot while a writer runs,
and Ctrl-C (SIGINT) stops a run after the current batch, keeping everything done."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from cli_process import CliProcess
from conftest import draw_image
from imgsearch.ground.errors import IndexLocked
from imgsearch.index import Index
from index_oracle import assert_rows_match, assert_same_results, check_consistent, open_index, rows_of, search_results

COUNT = 24
QUERIES = ["a red circle", "a green square"]


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(COUNT):
        draw_image(i).save(root / f"img_{i:03d}.png")
    return root


@pytest.fixture
def oracle(tmp_path, model_dir, photos):
    """Rows and search results of one uninterrupted in-process run over `photos`."""
    with Index.create(tmp_path / "oracle", model_dir, device="cpu") as index:
        index.add([photos], workers=0)
        return rows_of(index), search_results(index, QUERIES)


def wait_for_rows(db_path, count: int, timeout: float = 60, where_not_in: tuple = ()) -> None:
    """Until `count` images rows are committed in the store at `db_path` (of contents not in `where_not_in`)."""
    deadline = time.monotonic() + timeout
    query = "SELECT count(*) FROM images"
    if where_not_in:
        query += f" WHERE sha256 NOT IN ({', '.join('?' * len(where_not_in))})"
    while True:
        rows = 0
        try:
            connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
            try:
                rows = connection.execute(query, where_not_in).fetchone()[0]
            finally:
                connection.close()
        except sqlite3.Error:  # not made yet
            pass
        if rows >= count:
            return
        assert time.monotonic() < deadline, f"{rows} rows stored, not {count}"
        time.sleep(0.01)


def index_args(photos, index_dir, model_dir, *extra):
    return [
        "index",
        photos,
        "--index",
        index_dir,
        "--model",
        model_dir,
        "--device",
        "cpu",
        "--batch-size",
        1,
        "-q",
        "--json",
        *extra,
    ]


def test_second_writer_is_refused_naming_the_holder(tmp_path, model_dir, photos, oracle):
    index_dir = tmp_path / "index"
    writer = CliProcess(
        index_args(photos, index_dir, model_dir, "--workers", 0), tmp_path / "writer.txt", pause_before="img_010.png"
    )
    writer.wait_until_paused()

    # Another process, started like a user would (python -m imgsearch), is refused at once.
    second = subprocess.run(
        [sys.executable, "-m", "imgsearch", *map(str, index_args(photos, index_dir, model_dir, "--workers", 0))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 1, second.stderr
    assert f"Error: index {index_dir} is being written by pid {writer.pid}" in second.stderr
    assert f"`imgsearch index {photos}" in second.stderr  # the holder's command line
    assert "Traceback" not in second.stderr
    # The library says the same with a typed error; the store is untouched by both attempts.
    with open_index(index_dir) as index:
        with pytest.raises(IndexLocked, match=f"pid {writer.pid}"):
            index.add([photos], workers=0)
        assert index.info()["images"] == 10
        check_consistent(index)

    writer.resume()
    assert writer.wait() == 0, writer.text()
    with open_index(index_dir) as index:
        check_consistent(index)
        assert_rows_match(rows_of(index), oracle[0])


def test_a_killed_writers_lock_blocks_nobody(tmp_path, model_dir, photos, oracle):
    index_dir = tmp_path / "index"
    writer = CliProcess(
        index_args(photos, index_dir, model_dir, "--workers", 1), tmp_path / "writer.txt", pause_before="img_005.png"
    )
    writer.wait_until_paused()  # the decode worker waits at img_005.png...
    wait_for_rows(index_dir / "index.db", 5)  # ...once the main process has committed the 5 before it
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    writer.resume()  # lets the orphaned decode worker run on, and exit when it finds its parent gone
    assert json.loads((index_dir / "write.lock").read_text())["pid"] == writer.pid  # stale details stay

    with open_index(index_dir) as index:
        summary = index.add([photos], workers=0)  # not blocked, and finishes the job
        assert (summary.unchanged, summary.added) == (5, COUNT - 5)
        check_consistent(index)
        assert_rows_match(rows_of(index), oracle[0])


def test_readers_see_a_consistent_snapshot_while_a_writer_runs(tmp_path, model_dir, photos, oracle):
    index_dir = tmp_path / "index"
    writer = CliProcess(
        index_args(photos, index_dir, model_dir, "--workers", 0), tmp_path / "writer.txt", pause_before="img_010.png"
    )
    writer.wait_until_paused()
    # Batches before the pause are stored by the writer thread while the next ones are read
    # (on the CPU ONNX Runtime encodes asynchronously): wait until it has stored those 10.
    wait_for_rows(index_dir / "index.db", 10)
    first_ten = {f"{photos}/img_{i:03d}.png" for i in range(10)}

    saved = (index_dir / "vectors.faiss").read_bytes()  # the writer saves it only at the end
    with open_index(index_dir) as reader:  # opened mid-run: sees the 10 committed images
        check_consistent(reader)
        assert (index_dir / "vectors.faiss").read_bytes() == saved  # rebuilt in memory, not written
        assert reader.info()["images"] == 10
        results = reader.search("a red circle", 100, candidates=100)
        assert {r.path for r in results} == first_ten
        writer.resume()
        assert writer.wait() == 0, writer.text()
        # Still the same snapshot after the writer committed everything...
        assert reader.info()["images"] == 10
        assert [(r.path, r.score) for r in reader.search("a red circle", 100, candidates=100)] == [
            (r.path, r.score) for r in results
        ]
        # ...until it refreshes.
        reader.refresh()
        check_consistent(reader)
        assert reader.info()["images"] == COUNT
        assert_same_results(search_results(reader, QUERIES), oracle[1])

        # A writer now replaces every image (new content, new row ids) and is paused half-way.
        for i in range(COUNT):
            draw_image(100 + i).save(photos / f"img_{i:03d}.png")
        before = search_results(reader, QUERIES)
        rewriter = CliProcess(
            index_args(photos, index_dir, model_dir, "--workers", 0),
            tmp_path / "rewriter.txt",
            pause_before="img_012.png",
        )
        rewriter.wait_until_paused()
        old_contents = tuple({row.sha256 for row in oracle[0].values()})
        wait_for_rows(index_dir / "index.db", 12, where_not_in=old_contents)  # its writer thread's batches
        # The reader's rows are being deleted under it, but its snapshot still has them.
        assert search_results(reader, QUERIES) == before
        with open_index(index_dir) as late_reader:  # a reader opened now sees the half-way state
            check_consistent(late_reader)
            assert late_reader.info()["images"] == COUNT
            rows = rows_of(late_reader)
            assert sum(row.sha256 != oracle[0][path].sha256 for path, row in rows.items()) == 12
        rewriter.resume()
        assert rewriter.wait() == 0, rewriter.text()
        assert json.loads(rewriter.text())["updated"] == COUNT


@pytest.mark.parametrize("workers", [0, 1])
def test_sigint_stops_after_the_current_batch_and_keeps_it(tmp_path, model_dir, photos, oracle, workers):
    index_dir = tmp_path / "index"
    writer = CliProcess(
        index_args(photos, index_dir, model_dir, "--workers", workers),
        tmp_path / "writer.txt",
        pause_before="img_010.png",
    )
    writer.wait_until_paused()
    os.kill(writer.pid, signal.SIGINT)  # Ctrl-C while img_010.png is being read
    writer.resume()
    assert writer.wait() == 130, writer.text()
    output = writer.text()
    assert "stopping after the current batch" in output and "interrupted" in output
    assert "Traceback" not in output
    summary = json.loads(output[output.index("{") : output.rindex("}") + 1])
    assert summary["interrupted"] is True
    kept = summary["added"]
    if workers == 0:
        assert kept == 11  # the batch in flight (img_010.png) was finished, nothing after it
    else:  # the main process was at most at img_010.png when Ctrl-C came; the worker decodes ahead
        assert 0 < kept <= 11

    with open_index(index_dir) as index:
        check_consistent(index)
        rows = rows_of(index)
        assert set(rows) == {f"{photos}/img_{i:03d}.png" for i in range(kept)}  # all it reported, no more
        assert_rows_match(rows, oracle[0], subset=True)
        summary = index.add([photos], workers=0)  # the next run finishes the job
        assert (summary.unchanged, summary.added, summary.interrupted) == (kept, COUNT - kept, False)
        assert_rows_match(rows_of(index), oracle[0])
        assert_same_results(search_results(index, QUERIES), oracle[1])
