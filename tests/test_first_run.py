"""What a new user meets first: the README's library example, "~" in paths, and a first
`index` run that fails (it must leave no index behind; a later failure keeps everything)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from conftest import make_photos
from imgsearch.cli import cli
from imgsearch.index import Index

ROOT = Path(__file__).parents[1]


def readme_library_example() -> str:
    """The README's first Python block that uses the library."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return next(block for block in blocks if "from imgsearch import Index" in block)


def test_the_readmes_library_example_runs_as_written_twice(tmp_path):
    home = tmp_path / "home"
    shutil.copytree(ROOT / "data" / "photos", home / "Pictures", ignore=shutil.ignore_patterns("LICENSE", "*.md"))
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("XDG_DATA_HOME", None)
    example = readme_library_example()
    runs = [
        subprocess.run(
            [sys.executable, "-c", example], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip(), "the example prints its results"
    # the second run found the index the first one made, and the same results
    assert runs[0].stdout == runs[1].stdout
    photos = {p.name for p in (home / "Pictures").iterdir()}
    assert any(name in runs[0].stdout for name in photos)


def test_library_paths_expand_the_home_folder(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    make_photos(tmp_path / "Pictures", range(3))
    with Index.open_or_create("~/my-index", model_dir, device="cpu") as index:
        summary = index.add(["~/Pictures"], workers=0)
        assert summary.added == 3
        assert {r.path for r in index.search("a red circle", k=3)} == {
            str(p) for p in (tmp_path / "Pictures").iterdir()
        }
    assert (tmp_path / "my-index" / "manifest.json").is_file()
    with Index.open("~/my-index") as index:  # and once more, opened by the same "~" path
        assert index.info()["images"] == 3


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_a_first_index_of_a_missing_folder_leaves_nothing(tmp_path, model_dir):
    result = run("index", tmp_path / "no-such-folder", "--index", tmp_path / "new" / "ix", "--model", model_dir)
    assert result.exit_code == 1 and "does not exist" in result.output
    assert not (tmp_path / "new").exists()


def test_a_first_index_that_fails_after_creating_the_index_leaves_nothing(tmp_path, model_dir):
    broken = tmp_path / "broken-model"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # the index is made; loading the encoder fails
    (tmp_path / "ix").mkdir()  # a folder the user made: it stays, empty
    photos = make_photos(tmp_path / "photos", range(2))
    result = run("index", photos, "--index", tmp_path / "ix", "--model", broken, "--workers", 0)
    assert result.exit_code == 1, result.output
    assert list((tmp_path / "ix").iterdir()) == []


def test_a_failed_run_on_an_index_that_holds_images_keeps_them(tmp_path, model_dir):
    photos = make_photos(tmp_path / "photos", range(3))
    assert run("index", photos, "--index", tmp_path / "ix", "--model", model_dir, "--workers", 0).exit_code == 0
    before = sorted(p.name for p in (tmp_path / "ix").iterdir())
    result = run("index", tmp_path / "gone", "--index", tmp_path / "ix")
    assert result.exit_code == 1 and "does not exist" in result.output
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == before
    with Index.open(tmp_path / "ix") as index:
        assert index.info()["images"] == 3


def test_discard_never_touches_an_index_that_was_opened_or_holds_anything(tmp_path, model_dir):
    photos = make_photos(tmp_path / "photos", range(2))
    with Index.create(tmp_path / "ix", model_dir, device="cpu") as index:
        index.add([photos], workers=0)
        assert index.discard_if_empty() is False
    with Index.open(tmp_path / "ix") as index:
        assert index.discard_if_empty() is False
    assert (tmp_path / "ix" / "manifest.json").is_file()
    with Index.create(tmp_path / "empty", model_dir, device="cpu") as index:
        assert index.discard_if_empty() is True
    assert not (tmp_path / "empty").exists()
