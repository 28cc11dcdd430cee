"""The packaged models by name, and an index made with the earlier default (MobileNetV2, which
lived in data/photo-model before EfficientNet-Lite0 took its place) keeps working: it finds
its model among the packaged ones by fingerprint."""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from conftest import make_photos
from imgsearch import Index
from imgsearch.cli import cli
from imgsearch.ground.errors import ModelMismatch
from imgsearch.model.model_files import fingerprint
from imgsearch.model.packaged import PACKAGED_MODELS, default_model_dir, packaged_model_dir
from imgsearch.storage.manifest import Manifest


def test_each_packaged_model_is_found_and_they_differ():
    dirs = {name: packaged_model_dir(name) for name in PACKAGED_MODELS}
    assert dirs["photo"] == default_model_dir()
    assert len({fingerprint(d) for d in dirs.values()}) == len(dirs)
    backbones = {
        name: json.loads((d / "config.json").read_text())["image"]["backbone"]["name"] for name, d in dirs.items()
    }
    assert backbones == {"photo": "efficientnet_lite0", "fast": "mobilenet_v2"}


def test_an_index_of_the_earlier_default_finds_its_model_by_fingerprint(tmp_path):
    photos = make_photos(tmp_path / "photos", range(3))
    with Index.create(tmp_path / "ix", "fast", device="cpu") as index:
        index.add([photos], workers=0)
        expected = [(r.path, r.score) for r in index.search("a red shape", k=3)]
    # as the earlier release wrote it: the fast model's fingerprint, at the default model's path
    manifest = Manifest.read(tmp_path / "ix")
    moved = dataclasses.replace(manifest, model=dataclasses.replace(manifest.model, path=str(default_model_dir())))
    moved.write(tmp_path / "ix")
    with Index.open(tmp_path / "ix", device="cpu") as index:
        assert [(r.path, r.score) for r in index.search("a red shape", k=3)] == expected
        assert index.model_dir == packaged_model_dir("fast")
    with pytest.raises(ModelMismatch):  # naming the new default for it is still refused
        Index.open(tmp_path / "ix", "photo", device="cpu")


def test_model_names_on_the_command_line(tmp_path):
    photos = make_photos(tmp_path / "photos", range(2))
    result = CliRunner().invoke(
        cli, ["index", str(photos), "--index", str(tmp_path / "ix"), "--model", "fast", "--workers", "0", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    info = CliRunner().invoke(cli, ["info", "--index", str(tmp_path / "ix")])
    assert "the packaged fast model" in info.output and "mobilenet_v2" in info.output
    bad = CliRunner().invoke(cli, ["index", str(photos), "--index", str(tmp_path / "ix2"), "--model", "fastest"])
    assert bad.exit_code == 2 and "fastest" in bad.output
