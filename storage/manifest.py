"""manifest.json: what an index directory holds and exactly which model made its vectors."""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imgsearch.ground.durable import write_text_durably
from imgsearch.ground.errors import IndexNotFound, StoreCorrupt
from imgsearch.ground.locations import default_index_dir

__all__ = ["Manifest", "ModelRecord", "MANIFEST_NAME", "read_index_manifest"]

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ModelRecord:
    fingerprint: str  # sha256 of the model's config.json + model.safetensors
    path: str  # where the model was when the index was created (a hint, not an identity)
    backbone: str  # e.g. "torchvision vgg16 VGG16_Weights.IMAGENET1K_V1"
    text_encoder: str


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    embed_dim: int
    num_regions: int
    model: ModelRecord
    metric: str = "inner_product"  # on L2-normalised vectors: cosine similarity
    normalized: bool = True
    region_dtype: str = "float16"
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    def write(self, directory: str | os.PathLike) -> None:
        write_text_durably(Path(directory) / MANIFEST_NAME, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, directory: str | os.PathLike) -> Manifest:
        path = Path(directory) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
            data["model"] = ModelRecord(**data["model"])
            return cls(**data)
        except FileNotFoundError:
            raise
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise StoreCorrupt(f"{path} is unreadable ({exc}); re-index into a new directory.") from exc


def read_index_manifest(directory: Path) -> Manifest:
    """The manifest of the index in `directory`. Raises IndexNotFound, saying how to make one,
    when there is none (light: the command line asks before it loads anything heavier)."""
    try:
        return Manifest.read(directory)
    except FileNotFoundError:
        where = "" if directory == default_index_dir() else f" --index {directory}"
        raise IndexNotFound(f"no index at {directory}; create one with `imgsearch index PHOTOS{where}`.") from None
