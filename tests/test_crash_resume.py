"""Crash safety: SIGKILL a real indexing process at many points; every resumed run ends
equal to one uninterrupted run, and the store is sound after every kill."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

from cli_process import CliProcess
from conftest import draw_image
from imgsearch.index import Index
from index_oracle import assert_rows_match, assert_same_results, check_consistent, open_index, rows_of, search_results

QUERIES = ["a red circle", "a small blue square on the left"]


def make_collection(root: Path, count: int = 40) -> int:
    """`count` distinct images, two copies of earlier ones and two bad files; returns the number of files."""
    root.mkdir()
    for i in range(count):
        draw_image(i).save(root / f"img_{i:03d}.png")
    shutil.copyfile(root / "img_005.png", root / "img_005_copy.png")
    shutil.copyfile(root / "img_017.png", root / "img_017_copy.png")
    (root / "img_010_bad.jpg").write_text("not a JPEG")
    (root / "img_030_empty.png").write_bytes(b"")
    return count + 4


def stored_rows(db_path: Path, connection: list) -> int:
    """How many images rows are committed now (0 before the store exists)."""
    if not connection:
        if not db_path.exists():
            return 0
        try:
            connection.append(sqlite3.connect(db_path, timeout=5))
        except sqlite3.Error:
            return 0
    try:
        return connection[0].execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.Error:  # the table is not made yet
        return 0


def kill_when(child: CliProcess, db_path: Path, *, rows: int | None = None, seconds: float | None = None) -> int | None:
    """SIGKILL the child once `rows` rows are committed, or `seconds` after its start.
    Returns the rows committed at the kill, or None if the child finished first."""
    connection: list = []
    started = time.monotonic()
    try:
        while child.process.is_alive():
            if seconds is not None and time.monotonic() - started >= seconds:
                break
            if rows is not None and stored_rows(db_path, connection) >= rows:
                break
            time.sleep(0.001)
        if child.process.is_alive():
            os.kill(child.pid, signal.SIGKILL)
        code = child.wait()
        if code == 0:  # it finished before the kill landed
            return None
        assert code == -signal.SIGKILL, child.text()
        return stored_rows(db_path, connection)
    finally:
        for c in connection:
            c.close()


def test_sigkill_at_many_points_then_resume_equals_an_uninterrupted_run(tmp_path, model_dir):
    folder = tmp_path / "photos"
    total = make_collection(folder)
    with Index.create(tmp_path / "oracle", model_dir, device="cpu") as oracle:
        summary = oracle.add([folder], workers=0, batch_size=4)
        assert (summary.added, summary.failed, summary.embedded) == (total - 2, 2, total - 4)
        expected = rows_of(oracle)
        expected_results = search_results(oracle, QUERIES)

    index_dir = tmp_path / "index"
    db_path = index_dir / "index.db"
    args = [
        "index",
        folder,
        "--index",
        index_dir,
        "--model",
        model_dir,
        "--device",
        "cpu",
        "--workers",
        0,
        "--batch-size",
        1,
        "-q",
        "--json",
    ]
    # Kill points: three during start-up (by time, each into a new index: on an idle
    # machine the whole run can finish within 0.1 s, which would leave no rows to spread
    # the later kills over), then at rows spread over the whole run, then twice once every
    # row is in (while vectors.faiss is saved, or later).
    for n, seconds in enumerate((0.0, 0.03, 0.1)):
        startup_dir = tmp_path / f"startup{n}"
        startup_args = [startup_dir if a == index_dir else a for a in args]
        child = CliProcess(startup_args, tmp_path / f"startup{n}.txt")
        if (
            kill_when(child, startup_dir / "index.db", seconds=seconds) is not None
            and (startup_dir / "manifest.json").exists()
        ):
            with open_index(startup_dir) as index:  # opens cleanly, whatever the kill interrupted
                check_consistent(index)
                assert_rows_match(rows_of(index), expected, subset=True)
    points = [{"rows": 0}]  # as soon as the child runs: before or while the index is created
    points += [{"rows": round(j * total / 20)} for j in range(1, 20)]
    points += [{"rows": total}, {"rows": total}]
    killed_at: list[int] = []
    for n, point in enumerate(points):
        child = CliProcess(args, tmp_path / f"run{n}.txt")
        rows_at_kill = kill_when(child, db_path, **point)
        if rows_at_kill is None:  # it finished before the kill point: not a kill
            assert child.process.exitcode == 0, child.text()
            continue
        killed_at.append(rows_at_kill)
        if not (index_dir / "manifest.json").exists():
            assert not killed_at[:-1] or max(killed_at[:-1]) == 0  # only killed during creation so far
            continue
        with open_index(index_dir) as index:  # opens cleanly, whatever the kill interrupted
            check_consistent(index)
            rows = rows_of(index)
            assert_rows_match(rows, expected, subset=True)  # every row stored is right
            assert len(rows) >= max(killed_at[:-1], default=0)  # and nothing committed was lost

    assert len(killed_at) >= 20, killed_at
    assert len(set(killed_at)) >= 12, killed_at  # the kills landed all over the run
    assert min(killed_at) == 0 and max(killed_at) >= total - 2, killed_at

    code, output = CliProcess(args, tmp_path / "final.txt").wait(), (tmp_path / "final.txt").read_text()
    assert code == 0, output
    with open_index(index_dir) as index:
        check_consistent(index)
        assert_rows_match(rows_of(index), expected)  # no image missing, none twice, same vectors
        assert index.info()["distinct_contents"] == total - 4
        assert_same_results(search_results(index, QUERIES), expected_results)
