"""The model that ships with imgsearch: the packaged photo model, the default for a new index.

The repository keeps it in data/photo-model/. pyproject.toml maps that folder to the
package `imgsearch.photo_model` (setuptools package-dir and package-data; its
__init__.py holds no code), so a wheel installs it as imgsearch/photo_model/ and an
editable install maps it to the checkout's folder: either way the import system finds it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from imgsearch.model.model_files import CONFIG_NAME, WEIGHTS_NAME
from imgsearch.errors import ModelNotFound

__all__ = ["PHOTO_MODEL_PACKAGE", "PHOTO_MODEL_SOURCE", "default_model_dir"]

PHOTO_MODEL_PACKAGE = "imgsearch.photo_model"
# Where the package's files live in the project (pyproject.toml's package-dir says the same).
PHOTO_MODEL_SOURCE = Path("data", "photo-model")


def default_model_dir() -> Path:
    """The packaged photo model's directory (config.json and model.safetensors).

    Raises ModelNotFound, saying where it looked, if the installed package has none.
    """
    looked = []
    for candidate in _candidates():
        if all((candidate / name).is_file() for name in (CONFIG_NAME, WEIGHTS_NAME)):
            return candidate.resolve()
        looked.append(str(candidate))
    where = f" (looked in {', '.join(looked)})" if looked else ""
    raise ModelNotFound(
        f"the photo model packaged with imgsearch is missing{where}. Reinstall imgsearch "
        "(pip install .), or pass a model directory with --model DIR or IMGSEARCH_MODEL."
    )


def _candidates() -> list[Path]:
    """The folders the import system has for the photo-model package."""
    try:
        spec = importlib.util.find_spec(PHOTO_MODEL_PACKAGE)
    except ImportError:
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) for p in spec.submodule_search_locations]
