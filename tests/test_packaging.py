"""The packaged photo model: found through the installed imgsearch package, shipped in the wheel.

data/photo-model/ is mapped to the data-only package imgsearch.photo_model
(pyproject.toml); imgsearch.models.default_model_dir() finds it in an editable
install (this checkout's .venv) and in an installed wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from imgsearch import models
from imgsearch.models import PHOTO_MODEL_PACKAGE, PHOTO_MODEL_SOURCE, default_model_dir
from indexer.errors import ModelNotFound

ROOT = Path(__file__).parents[1]
WHEEL_LIMIT = 30 * 2**20  # the model is under 20 MB, the code well under 1 MB


def test_default_model_dir_is_the_checkouts_photo_model_in_an_editable_install():
    directory = default_model_dir()
    assert directory == (ROOT / "data" / "photo-model").resolve()
    assert (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def test_a_missing_packaged_model_is_model_not_found(tmp_path, monkeypatch):
    (tmp_path / "photo_model").mkdir()
    (tmp_path / "photo_model" / "config.json").write_text("{}")  # incomplete: no weights
    monkeypatch.setattr(models, "_candidates", lambda: [tmp_path / "photo_model"])
    with pytest.raises(ModelNotFound, match="--model") as raised:
        default_model_dir()
    assert str(tmp_path / "photo_model") in str(raised.value)
    monkeypatch.setattr(models, "_candidates", lambda: [])
    with pytest.raises(ModelNotFound, match="packaged"):
        default_model_dir()


def test_pyproject_maps_the_package_to_the_folder_models_py_knows():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert PHOTO_MODEL_PACKAGE in setuptools["packages"]
    assert setuptools["package-dir"][PHOTO_MODEL_PACKAGE] == PHOTO_MODEL_SOURCE.as_posix()
    assert {"config.json", "model.safetensors"} <= set(setuptools["package-data"][PHOTO_MODEL_PACKAGE])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline from a copy of the sources (so the checkout gets no build/ folder)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "photos", "*.tmp")
    for name in ("imgsearch", "indexer", "search", "training", "data"):
        shutil.copytree(ROOT / name, source / name, ignore=skip)
    out = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(source)],
        check=True, capture_output=True, text=True, cwd=work,
    )
    (built,) = out.glob("imgsearch-*.whl")
    return built


def test_wheel_ships_the_photo_model_but_not_the_photos(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"imgsearch/photo_model/config.json", "imgsearch/photo_model/model.safetensors",
            "imgsearch/photo_model/LICENSE"} <= names
    assert "imgsearch/models.py" in names
    assert not [n for n in names if n.lower().endswith((".jpg", ".jpeg", ".png"))]
    assert not [n for n in names if "demo-model" in n or "demo_model" in n or n.endswith("scenes.py")]
    assert wheel.stat().st_size < WHEEL_LIMIT
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("imgsearch/photo_model/model.safetensors") == (
            ROOT / "data" / "photo-model" / "model.safetensors").read_bytes()


def test_installed_wheel_finds_its_photo_model(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, text=True)
    # Run from elsewhere with the installed copy first on the path: not this checkout.
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    code = ("import imgsearch, imgsearch.models as m; "
            "print(imgsearch.__file__); print(m.default_model_dir())")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                            capture_output=True, text=True)
    package_file, model = result.stdout.splitlines()[-2:]
    assert Path(package_file).is_relative_to(site)
    assert Path(model) == (site / "imgsearch" / "photo_model").resolve()
