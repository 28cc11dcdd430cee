"""Queries: empty or unreadable ones are clear errors, long ones are truncated with a
warning (and rank exactly like their truncated text), any Unicode works. Progress: a bar
with files, images/s and ETA on a terminal only, never with --quiet."""

from __future__ import annotations

import io
import json
import logging
import os
import pty

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli_process import CliProcess
from conftest import draw_image
from imgsearch.cli import cli
from imgsearch.ground.errors import InvalidQuery
from imgsearch.index import Index
from imgsearch.progress import ProgressBar


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("queries")
    photos = root / "photos"
    photos.mkdir()
    for i in range(8):
        draw_image(i).save(photos / f"img_{i}.png")
    with Index.create(root / "index", model_dir, device="cpu") as index:
        index.add([photos], workers=0)
    return root / "index"


@pytest.fixture(scope="module")
def index(index_dir):
    with Index.open(index_dir, device="cpu") as index:
        yield index


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("query", ["", " ", "\t\n ", "\u3000", "\u200b\u200b", "\x00\x07"])
def test_empty_or_unreadable_queries_are_clear_errors(index, index_dir, query):
    with pytest.raises(InvalidQuery, match="empty|no characters"):
        index.search(query)
    result = run("search", query, "--index", index_dir)
    assert result.exit_code == 1 and "Error:" in result.stderr and "Traceback" not in result.output


UNICODE = [
    "café crème",
    "日本の赤い丸",
    "🐶🏖️ on a beach",
    "مرحبا بالعالم",
    "e\u0301 combining",
    "Ωμέγα",
    "\U0001f600",
    "tab\tand\nnewline",
    "photo \udce9 from a Latin-1 terminal",
]


@pytest.mark.parametrize("query", UNICODE)
def test_any_unicode_query_works(index, query):
    """The query reaches the text encoder as written (a lone surrogate, from undecodable terminal
    bytes, as U+FFFD): its first stage equals brute force with the encoder's own vector for it."""
    as_encoded = query.replace("\udce9", "\ufffd")
    with torch.inference_mode():
        vector = index.model.text.encode([as_encoded]).global_[0].numpy()  # (d,)
    ids, stored = index.store.global_vectors()  # (N,), (N, d)
    cosines = stored @ vector  # (N, d) x (d,) --> (N,)
    expected = sorted(zip(-cosines, ids.tolist()))[:3]

    results = index.search(query, 3, rerank=False)

    np.testing.assert_allclose([r.score for r in results], [-score for score, _ in expected], atol=1e-5)
    assert {r.id for r in results} == {image_id for _, image_id in expected}  # no near-ties among 8 images
    assert len(index.search(query, 3, candidates=8)) == 3  # the re-ranker takes it too


@pytest.mark.parametrize("query", [UNICODE[2], UNICODE[-1]])  # each CLI call loads the model: two suffice
def test_any_unicode_query_works_on_the_command_line(index, index_dir, query):
    out = json.loads(run("search", query, "--index", index_dir, "-k", 3, "--json").stdout)
    assert [r["path"] for r in out["results"]] == [r.path for r in index.search(query, 3, candidates=8)]


def test_long_query_is_truncated_with_a_warning_and_ranks_as_its_first_tokens(index, caplog):
    limit = index.model.text.config.max_length - 2  # [CLS] and [SEP] take two
    words = ["red", "blue", "circle", "square"] * 50  # one token each
    with caplog.at_level(logging.WARNING, logger="imgsearch"):
        long_results = index.search(" ".join(words), 8, candidates=8)
    assert "longer than the text encoder's" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imgsearch"):
        short_results = index.search(" ".join(words[:limit]), 8, candidates=8)
    assert caplog.text == ""  # exactly at the limit: no warning
    assert [r.path for r in long_results] == [r.path for r in short_results]
    np.testing.assert_allclose([r.score for r in long_results], [r.score for r in short_results], atol=1e-6)


def test_the_cli_prints_the_truncation_warning_on_stderr(tmp_path, index_dir):
    child = CliProcess(
        ["search", "red " * 300, "--index", index_dir, "--device", "cpu", "-k", 2, "--json"], tmp_path / "search.txt"
    )
    assert child.wait() == 0, child.text()
    assert "WARNING: the query is longer than the text encoder's 24 tokens" in child.text()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_files_rate_and_eta_on_a_terminal(monkeypatch):
    clock = iter([100.0, 102.0, 104.0, 106.0])
    monkeypatch.setattr("imgsearch.progress.time.perf_counter", lambda: next(clock))
    stream = FakeTerminal()
    bar = ProgressBar(stream)
    for done in (10, 30, 50, 70):  # 20 files every 2 s after the first report: 10 images/s
        bar(done, 100)
    bar.finish()
    text = stream.getvalue()
    assert "indexing" in text and "30/100" in text and "70/100" in text
    assert "10.0 images/s, ETA 0:00:07" in text  # 70 files left at 10/s
    assert "10.0 images/s, ETA 0:00:03" in text  # 30 left


@pytest.mark.parametrize("stream, quiet", [(io.StringIO(), False), (FakeTerminal(), True)])
def test_no_progress_bar_off_a_terminal_or_with_quiet(stream, quiet):
    bar = ProgressBar(stream, quiet=quiet)
    bar(5, 10)
    bar(10, 10)
    bar.finish()
    assert stream.getvalue() == ""


def test_index_writes_no_bar_when_stderr_is_not_a_terminal(tmp_path, model_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    draw_image(0).save(photos / "a.png")
    result = run("index", photos, "--index", tmp_path / "index", "--model", model_dir, "--workers", 0)
    assert result.exit_code == 0
    assert "indexing" not in result.stderr and "images/s" not in result.stderr


def read_terminal(master: int) -> str:
    os.set_blocking(master, False)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except (BlockingIOError, OSError):  # drained (EIO once the other side is closed)
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("quiet", [False, True])
def test_index_on_a_real_terminal_draws_the_bar_unless_quiet(tmp_path, model_dir, quiet):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(12):
        draw_image(i).save(photos / f"img_{i:02d}.png")
    try:
        master, terminal = pty.openpty()
    except OSError as exc:
        pytest.skip(f"needs a pseudo-terminal (/dev/ptmx): {exc}")
    try:
        args = [
            "index",
            photos,
            "--index",
            tmp_path / "index",
            "--model",
            model_dir,
            "--device",
            "cpu",
            "--workers",
            0,
            "--batch-size",
            4,
            *(["--quiet"] if quiet else []),
        ]
        child = CliProcess(args, tmp_path / "out.txt", stderr_to=os.ttyname(terminal))
        assert child.wait() == 0, child.text()
        os.close(terminal)
        terminal = None
        shown = read_terminal(master)
    finally:
        if terminal is not None:
            os.close(terminal)
        os.close(master)
    assert "added 12" in child.text() and "indexing" not in child.text()  # stdout: the summary only
    if quiet:
        assert "indexing" not in shown and "images/s" not in shown
    else:
        assert "indexing" in shown and "12/12" in shown and "images/s, ETA" in shown
