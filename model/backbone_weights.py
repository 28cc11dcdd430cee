"""Pretrained backbone weights given as a file: a TFLite MobileNetV2 (converted here)
or a .safetensors state dict (e.g. written by `python -m imgsearch.model.convert_mobilenet_v2`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from imgsearch.ground.errors import WeightsMissing

__all__ = ["load_backbone_weights"]


def load_backbone_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The backbone state dict in `path` (.tflite or .safetensors), keys as the backbone module's."""
    path = Path(path)
    if not path.is_file():
        raise WeightsMissing(f"backbone weights {path} not found; give a .tflite or .safetensors file.")
    if path.suffix == ".tflite":
        from imgsearch.model.convert_mobilenet_v2 import convert

        try:
            state = convert(path)
        except ImportError as exc:  # the converter's parser is an optional extra
            raise WeightsMissing(
                f"reading {path} needs the tflite package: pip install 'imgsearch-offline[convert]' ({exc})."
            ) from exc
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        raise WeightsMissing(f"backbone weights {path}: expected a .tflite or .safetensors file.")
    # The backbone module holds the network as `net` (imgsearch.model.backbone.MobileNetV2Backbone).
    return {k if k.startswith("net.") else f"net.{k}": v for k, v in state.items()}
