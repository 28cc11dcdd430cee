"""Indexing on Ray (indexer/ray_engine.py): a local Ray cluster on 127.0.0.1, two CPUs, no dashboard.

Every index built through Ray must equal one local, uninterrupted run over the same files
(tests/index_oracle.py), also when an embed worker is killed inside a shard (the shard is
retried, nothing is stored twice) and when the writer (the `imgsearch index --ray` process)
is killed after its first merged shard (the next run finishes the job).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import draw_image
from imgsearch.cli import cli
from imgsearch.index import Index
from index_oracle import assert_rows_match, assert_same_results, check_consistent, open_index, rows_of, search_results

# Ray reads this when first imported: its local clusters then listen on 127.0.0.1 alone, and
# take that as the node's address (no lookup of the outward one). The processes it starts inherit it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
try:
    import ray
except ImportError as exc:  # `make test` installs imgsearch-offline[ray]; only where that failed
    ray = None
    RAY_MISSING = f"Ray cannot be imported ({exc}); install it with pip install 'imgsearch-offline[ray]'"
else:
    RAY_MISSING = ""

needs_ray = pytest.mark.skipif(ray is None, reason=RAY_MISSING)
QUERIES = ["a red circle", "a small blue square on the left"]


def make_collection(root: Path, count: int) -> tuple[int, int]:
    """`count` distinct images, two copies of earlier ones and a file that does not decode;
    returns (files, distinct contents)."""
    root.mkdir(parents=True)
    for i in range(count):
        draw_image(i).save(root / f"img_{i:03d}.png")
    shutil.copyfile(root / "img_001.png", root / "img_001_copy.png")
    shutil.copyfile(root / f"img_{count - 1:03d}.png", root / "copy_of_last.png")
    (root / "img_002_bad.jpg").write_text("not a JPEG")
    return count + 3, count


def local_oracle(folder: Path, directory: Path, model_dir: Path) -> tuple[dict, dict]:
    """Rows and search results of one uninterrupted local run over `folder`."""
    with Index.create(directory, model_dir, device="cpu") as oracle:
        oracle.add([folder], workers=0, batch_size=4)
        return rows_of(oracle), search_results(oracle, QUERIES)


def assert_equals_oracle(directory: Path, expected: dict, expected_results: dict | None = None) -> None:
    with open_index(directory) as index:  # read back from disk: index.db and vectors.faiss
        check_consistent(index)  # FAISS ids are the ok rows, every ok row has its vectors
        assert_rows_match(rows_of(index), expected)  # no path missing or twice, same vectors
        contents = {row.sha256 for row in expected.values() if row.status == "ok"}
        assert index.info()["distinct_contents"] == len(contents)  # no content stored twice
        if expected_results is not None:
            assert_same_results(search_results(index, QUERIES), expected_results)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray for this module, this process connected to it; its GCS address."""
    if ray is None:
        pytest.skip(RAY_MISSING)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:"), address
        yield address
    finally:
        ray.shutdown()


@needs_ray
def test_ray_run_equals_a_local_run_and_later_runs_stay_incremental(tmp_path, model_dir, ray_cluster):
    folder = tmp_path / "photos"
    files, distinct = make_collection(folder, 14)
    expected, expected_results = local_oracle(folder, tmp_path / "oracle", model_dir)

    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        progress: list[tuple[int, int]] = []
        summary = index.add([folder], ray=True, shard_size=3, batch_size=2, progress=lambda *p: progress.append(p))
    assert (summary.added, summary.updated, summary.failed, summary.unchanged) == (files - 1, 0, 1, 0)
    assert distinct <= summary.embedded <= distinct + 2  # a copy in another shard may be embedded there too
    assert progress[-1] == (files, files) and len(progress) == -(-files // 3)  # one step per merged shard
    assert_equals_oracle(tmp_path / "index", expected, expected_results)

    with open_index(tmp_path / "index") as index:  # nothing changed: nothing to embed
        again = index.add([folder], ray=True, shard_size=3)
    assert (again.added, again.updated, again.moved, again.removed, again.embedded) == (0, 0, 0, 0, 0)
    assert again.unchanged == files  # the file that failed too: it is read again once it changes
    assert_equals_oracle(tmp_path / "index", expected, expected_results)

    # A move, a deletion, a new file and a changed one: the same as a fresh local run of the folder.
    (folder / "img_003.png").rename(folder / "moved_003.png")
    (folder / "img_004.png").unlink()
    draw_image(100).save(folder / "img_100.png")
    draw_image(101).save(folder / "img_005.png")
    with open_index(tmp_path / "index") as index:
        changed = index.add([folder], ray=True, shard_size=3)
    assert (changed.added, changed.updated, changed.moved, changed.removed) == (1, 1, 1, 1)
    expected, expected_results = local_oracle(folder, tmp_path / "oracle2", model_dir)
    assert_equals_oracle(tmp_path / "index", expected, expected_results)


@needs_ray
def test_a_worker_killed_inside_a_shard_is_retried_and_nothing_is_stored_twice(tmp_path, model_dir, ray_cluster):
    from imgsearch.indexer import ray_engine

    folder = tmp_path / "photos"
    make_collection(folder, 9)  # 12 files: 4 shards of 3 on 2 actors
    expected, _ = local_oracle(folder, tmp_path / "oracle", model_dir)
    markers = tmp_path / "markers"
    markers.mkdir()

    class PausingActor(ray_engine.EmbedActor):
        """Says which shard it starts, in which process, then pauses: killed there, it is mid-shard."""

        def embed(self, paths, batch_size):
            (markers / f"{Path(paths[0]).name}.{os.getpid()}").touch()
            time.sleep(1.5)
            return super().embed(paths, batch_size)

    outcome: dict = {}

    def run() -> None:
        try:
            with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
                embedder = ray_engine.RayEmbedder(model_dir, shard_size=3, actor_class=PausingActor)
                outcome["summary"] = index.add([folder], embedder=embedder)
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while not any(markers.iterdir()):
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.01)
    killed = next(markers.iterdir())
    first_file, pid = killed.name.rsplit(".", 1)
    os.kill(int(pid), signal.SIGKILL)  # a real Ray worker process, inside the shard
    thread.join(240)
    assert not thread.is_alive(), "the run did not finish"
    assert "error" not in outcome, outcome.get("error")
    assert not outcome["summary"].interrupted
    starts = [m.name.rsplit(".", 1) for m in markers.iterdir()]
    retries = {p for name, p in starts if name == first_file}
    assert len(retries) >= 2 and pid in retries, starts  # the killed shard ran again, in another process
    assert_equals_oracle(tmp_path / "index", expected)


def committed_rows(db_path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.Error:  # not made yet
        return 0


def cli_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


@needs_ray
def test_the_writer_killed_after_a_shard_then_run_again_equals_a_local_run(tmp_path, model_dir, ray_cluster):
    folder = tmp_path / "photos"
    files, _ = make_collection(folder, 37)  # 40 files: 20 shards of 2
    expected, expected_results = local_oracle(folder, tmp_path / "oracle", model_dir)
    for attempt in range(3):
        index_dir = tmp_path / f"index{attempt}"
        args = [
            sys.executable,
            "-m",
            "imgsearch",
            "index",
            str(folder),
            "--ray",
            "--index",
            str(index_dir),
            "--model",
            str(model_dir),
            "--shard-size",
            "2",
            "--batch-size",
            "2",
            "-q",
            "--json",
        ]
        # Its own session: once it is killed, what is left of the local Ray it started is killed too.
        child = subprocess.Popen(
            args, env=cli_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 180
            while child.poll() is None and committed_rows(index_dir / "index.db") == 0:
                assert time.monotonic() < deadline, "no shard was merged in time"
                time.sleep(0.002)
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)  # the writer, after its first merged shard
        finally:
            child.wait(60)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # Ray's agents outlive a killed driver
        output = child.stdout.read().decode(errors="replace")
        at_kill = committed_rows(index_dir / "index.db")
        if child.returncode == -signal.SIGKILL and at_kill < files:
            break
        assert child.returncode in (0, -signal.SIGKILL), output  # finished before the kill landed: again
    else:
        pytest.fail("the run finished before it could be killed, three times")
    with open_index(index_dir) as index:  # sound after the kill, and what is stored is right
        check_consistent(index)
        assert_rows_match(rows_of(index), expected, subset=True)
        assert len(rows_of(index)) == at_kill > 0

    # Run again, this time on the test's cluster by its address: it finishes the job.
    again = subprocess.run(
        [*args[:5], f"--ray={ray_cluster}", *args[6:]], env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert '"added": ' in again.stdout
    assert_equals_oracle(index_dir, expected, expected_results)


def test_without_ray_the_index_command_says_what_to_install(tmp_path, monkeypatch, image_folder):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as where it is not installed
    result = CliRunner().invoke(cli, ["index", str(image_folder), "--ray", "--index", str(tmp_path / "index")])
    assert result.exit_code == 1, result.output
    assert "pip install 'imgsearch-offline[ray]'" in result.output
    assert not (tmp_path / "index").exists()  # no index made
