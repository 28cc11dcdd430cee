"""The packaged photo model: found through the installed imgsearch package, shipped in the wheel.

data/photo-model/ is mapped to the data-only package imgsearch.photo_model
(pyproject.toml); imgsearch.model.packaged.default_model_dir() finds it in an editable
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

from imgsearch.ground.errors import ModelNotFound
from imgsearch.model import packaged as models
from imgsearch.model.model_files import LEGACY_FINGERPRINTS_NAME, fingerprinted_files
from imgsearch.model.packaged import PACKAGED_MODELS, PHOTO_MODEL_PACKAGE, PHOTO_MODEL_SOURCE, default_model_dir

ROOT = Path(__file__).parents[1]
# two models: photo (EfficientNet-Lite0, 26 MB) and fast (MobileNetV2, 17 MB), compressed to about
# 31 MB together; the code is well under 1 MB
WHEEL_LIMIT = 40 * 2**20


def test_default_model_dir_is_the_checkouts_photo_model_in_an_editable_install():
    directory = default_model_dir()
    assert directory == (ROOT / "data" / "photo-model").resolve()
    assert (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


def test_a_missing_packaged_model_is_model_not_found(tmp_path, monkeypatch):
    (tmp_path / "photo_model").mkdir()
    (tmp_path / "photo_model" / "config.json").write_text("{}")  # incomplete: no weights
    monkeypatch.setattr(models, "_candidates", lambda package: [tmp_path / "photo_model"])
    with pytest.raises(ModelNotFound, match="--model") as raised:
        default_model_dir()
    assert str(tmp_path / "photo_model") in str(raised.value)
    monkeypatch.setattr(models, "_candidates", lambda package: [])
    with pytest.raises(ModelNotFound, match="packaged"):
        default_model_dir()


def test_pyproject_maps_the_package_to_the_folder_models_py_knows():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert PHOTO_MODEL_PACKAGE in setuptools["packages"]
    assert setuptools["package-dir"][PHOTO_MODEL_PACKAGE] == PHOTO_MODEL_SOURCE.as_posix()
    for package, source in PACKAGED_MODELS.values():
        assert setuptools["package-dir"][package] == source.as_posix()
        # every file of the model (config.json, labels.txt, model.safetensors) and its earlier fingerprints
        needed = {path.name for path in fingerprinted_files(ROOT / source)} | {LEGACY_FINGERPRINTS_NAME}
        assert {"config.json", "labels.txt", "model.safetensors"} <= needed <= set(setuptools["package-data"][package])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline from a copy of the sources (so the checkout gets no build/ folder)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "photos", "*.tmp")
    for name in ("imgsearch", "ground", "images", "storage", "indexer", "search", "model", "training", "data"):
        shutil.copytree(ROOT / name, source / name, ignore=skip)
    out = work / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=work,
    )
    (built,) = out.glob("imgsearch_offline-*.whl")
    return built


def test_wheel_ships_the_photo_model_but_not_the_photos(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("photo_model", "photo_model_fast"):
        assert {
            f"imgsearch/{package}/{name}"
            for name in (
                "config.json",
                "model.safetensors",
                "labels.txt",
                "legacy-fingerprints.txt",
                "calibration.json",
                "LICENSE",
            )
        } <= names
    assert "imgsearch/model/packaged.py" in names
    assert not [n for n in names if n.lower().endswith((".jpg", ".jpeg", ".png"))]
    assert not [n for n in names if "demo-model" in n or "demo_model" in n or n.endswith("scenes.py")]
    assert wheel.stat().st_size < WHEEL_LIMIT
    with zipfile.ZipFile(wheel) as archive:
        assert (
            archive.read("imgsearch/photo_model/model.safetensors")
            == (ROOT / "data" / "photo-model" / "model.safetensors").read_bytes()
        )


def test_installed_wheel_finds_its_photo_model(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    # Run from elsewhere with the installed copy first on the path: not this checkout.
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    code = (
        "import imgsearch, imgsearch.model.packaged as m; from imgsearch.model.config import read_model_config; "
        "print(imgsearch.__file__); print(m.default_model_dir()); "
        "print(len(read_model_config(m.packaged_model_dir('fast')).image_labels))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    )
    package_file, model, labels = result.stdout.splitlines()[-3:]
    assert Path(package_file).is_relative_to(site)
    assert Path(model) == (site / "imgsearch" / "photo_model").resolve()
    assert labels == "1001"  # the fast model's labels file came with it


def test_the_wheel_installs_only_the_imgsearch_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"imgsearch"}
    for package in (
        "ground",
        "images",
        "storage",
        "indexer",
        "search",
        "model",
        "training",
    ):  # each top-level folder, mapped inside
        assert f"imgsearch/{package}/__init__.py" in names


SHADOWING_PROBE = """
import sys
import imgsearch.cli
from imgsearch import Index
import imgsearch.search.searcher, imgsearch.indexer.pipeline, imgsearch.training.trainer, imgsearch.model.alignment
import imgsearch.ground.errors, imgsearch.images.decode, imgsearch.storage.store
mine = {name: getattr(module, "__file__", None) for name, module in sys.modules.items()
        if name.split(".")[0] in ("ground", "images", "storage", "search", "indexer", "training", "model")}
print(Index.__module__, sorted(mine))
"""


def _plant_shadows(folder: Path) -> None:
    """What a user may well have in the folder they run from: scripts and data folders named
    like the repository's top-level folders. Importing any of them would fail loudly."""
    for name in ("ground", "images", "storage", "search", "indexer", "model"):
        (folder / f"{name}.py").write_text(f"raise SystemExit('the user's {name}.py was imported')\n")
    (folder / "training").mkdir()
    (folder / "training" / "__init__.py").write_text("raise SystemExit('the user's training/ was imported')\n")


def test_user_files_named_like_the_folders_change_nothing_in_a_wheel_install(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    work = tmp_path / "work"
    work.mkdir()
    _plant_shadows(work)
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", SHADOWING_PROBE], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["imgsearch.index", "[]"]


def test_user_files_named_like_the_folders_change_nothing_in_this_checkout(tmp_path):
    _plant_shadows(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", SHADOWING_PROBE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["imgsearch.index", "[]"]
