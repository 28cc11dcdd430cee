"""The models that ship with imgsearch, by name: "photo" (the default for a new index) and "fast".

The repository keeps them in data/photo-model/ and data/photo-model-fast/. pyproject.toml
maps each folder to a package (`imgsearch.photo_model`, `imgsearch.photo_model_fast`;
setuptools package-dir and package-data; their __init__.py hold no code), so a wheel
installs them under imgsearch/ and an editable install maps them to the checkout's
folders: either way the import system finds them.

An index records the path and fingerprint of the model that made it. When a release
replaces the packaged photo model, an index made with the earlier one finds it again by
fingerprint among the packaged models (packaged_model_with_fingerprint).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from imgsearch.ground.errors import ModelNotFound
from imgsearch.model.model_files import CONFIG_NAME, WEIGHTS_NAME

__all__ = [
    "PHOTO_MODEL_PACKAGE",
    "PHOTO_MODEL_SOURCE",
    "PACKAGED_MODELS",
    "default_model_dir",
    "packaged_model_dir",
    "packaged_model_with_fingerprint",
]

# name --> (package, where its files live in the project; pyproject.toml's package-dir says the same)
PACKAGED_MODELS: dict[str, tuple[str, Path]] = {
    # EfficientNet-Lite0 + MiniLM, trained on Flickr8k and webcaps: the default.
    "photo": ("imgsearch.photo_model", Path("data", "photo-model")),
    # MobileNetV2 + MiniLM, trained on Flickr8k: indexes about 1.35x faster where torch runs the encoder.
    "fast": ("imgsearch.photo_model_fast", Path("data", "photo-model-fast")),
}
PHOTO_MODEL_PACKAGE, PHOTO_MODEL_SOURCE = PACKAGED_MODELS["photo"]


def default_model_dir() -> Path:
    """The packaged photo model's directory (config.json, model.safetensors, labels.txt).

    Raises ModelNotFound, saying where it looked, if the installed package has none.
    """
    return packaged_model_dir("photo")


def packaged_model_dir(name: str) -> Path:
    """The directory of the packaged model `name` (a key of PACKAGED_MODELS).

    Raises ModelNotFound, saying where it looked, if the installed package has none.
    """
    package = PACKAGED_MODELS[name][0]
    looked = []
    for candidate in _candidates(package):
        if all((candidate / file).is_file() for file in (CONFIG_NAME, WEIGHTS_NAME)):
            return candidate.resolve()
        looked.append(str(candidate))
    where = f" (looked in {', '.join(looked)})" if looked else ""
    raise ModelNotFound(
        f"the {name!r} model packaged with imgsearch is missing{where}. Reinstall imgsearch "
        "(pip install .), or pass a model directory with --model DIR or IMGSEARCH_MODEL."
    )


def packaged_model_with_fingerprint(fingerprint_hex: str) -> Path | None:
    """The packaged model whose fingerprint (model/model_files.py) is `fingerprint_hex`, now or in
    an earlier layout of its files (its legacy-fingerprints.txt), or None."""
    from imgsearch.model.model_files import answers_to_fingerprint

    for name in PACKAGED_MODELS:
        try:
            directory = packaged_model_dir(name)
        except ModelNotFound:
            continue
        if answers_to_fingerprint(directory, fingerprint_hex):
            return directory
    return None


def _candidates(package: str) -> list[Path]:
    """The folders the import system has for a packaged model's package."""
    try:
        spec = importlib.util.find_spec(package)
    except ImportError:
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]
