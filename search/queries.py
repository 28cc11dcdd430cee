"""Search, query stage for images: a photo given as the query, or an image to re-rank or
explain that is not in the index --> decoded (with the indexer's guards) --> encoded."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgsearch.ground.errors import InvalidImage
from imgsearch.images.decode import decode_image_bytes, to_rgb
from imgsearch.model.image_encoder import ImageEncoder, resize_uint8
from imgsearch.model.labels import top_labels

__all__ = ["ImageInput", "EncodedImage", "load_image", "encode_image"]

ImageInput = str | os.PathLike | bytes | Image.Image


@dataclass
class EncodedImage:
    global_: np.ndarray  # (d,) float32, L2-normalised
    regions: np.ndarray  # (R, d) float16, as the store keeps them
    labels: list[tuple[str, float]]  # the classifier's top classes; [] without a classifier


def load_image(image: ImageInput) -> Image.Image:
    """A file path, the bytes of an image file, or a PIL image --> an upright RGB image.
    Raises InvalidImage (not an image, too many pixels, truncated) or FileNotFoundError."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image_bytes(bytes(image))
    path = Path(os.path.expanduser(os.fspath(image)))
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise InvalidImage(f"{path} is a folder, not an image file.") from None
    except FileNotFoundError:
        raise InvalidImage(f"{path} does not exist; check the path.") from None
    except OSError as exc:
        raise InvalidImage(f"cannot read {path}: {exc.strerror or exc}.") from None
    return decode_image_bytes(data)


def encode_image(encoder: ImageEncoder, image: Image.Image) -> EncodedImage:
    """One RGB image --> its global vector, regions and labels, exactly as the indexer stores them."""
    pixels = resize_uint8(image, encoder.image_size)[None]  # (1, 3, S, S) uint8
    device = next(encoder.parameters()).device
    with torch.inference_mode():
        out = encoder.encode(pixels.to(device))
    labels: list[tuple[str, float]] = []
    if out.class_probs is not None and encoder.labels is not None:
        labels = top_labels(out.class_probs, encoder.labels)[0]
    return EncodedImage(
        out.global_[0].float().cpu().numpy(),  # (d,)
        out.regions[0].to(torch.float16).cpu().numpy(),  # (R, d)
        labels,
    )
