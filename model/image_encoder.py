"""Image encoder (model core; indexing's encode stage): pixels --> backbone --> projection into the shared space.

ImageEncoder is the image half of an alignment model. The indexer loads only
this half from a model directory (the config's image side, "image.*" tensors).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from imgsearch.model.allocator import heap_block_limit
from imgsearch.model.backbone import IMAGENET_MEAN, IMAGENET_STD, BackboneConfig, VGGBackbone, build_backbone
from imgsearch.model.checkpoint import load_module_state, read_tensors
from imgsearch.model.config import read_model_config
from imgsearch.model.device import resolve_device
from imgsearch.model.onnx_encoder import OnnxEncoder, onnx_encoder
from imgsearch.model.projection import ProjectionHead, l2_normalize

__all__ = ["ImageEncoder", "ImageEmbedding", "preprocess", "resize_uint8", "normalize_pixels"]


@dataclass
class ImageEmbedding:
    regions: torch.Tensor  # (B, R, d): projected region features, tanh-bounded
    global_: torch.Tensor  # (B, d): projected global vector, L2-normalised
    # (B, num_classes): the backbone's ImageNet class posteriors, when it has a classifier
    class_probs: torch.Tensor | None = None

    @staticmethod
    def cat(parts: list[ImageEmbedding]) -> ImageEmbedding:
        """Embeddings of consecutive chunks of a batch --> the batch's embedding."""
        if len(parts) == 1:
            return parts[0]
        probs = [p.class_probs for p in parts if p.class_probs is not None]
        assert len(probs) in (0, len(parts)), "class_probs in some parts only"
        return ImageEmbedding(
            regions=torch.cat([p.regions for p in parts]),
            global_=torch.cat([p.global_ for p in parts]),
            class_probs=torch.cat(probs) if probs else None,
        )


class ImageEncoder(nn.Module):
    def __init__(self, backbone: BackboneConfig, embed_dim: int, labels: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.backbone_config = backbone
        self.embed_dim = embed_dim
        # Names of the backbone classifier's classes (index-aligned with class_probs), when it has one.
        self.labels = labels
        self.backbone = build_backbone(backbone)
        self.region_head = ProjectionHead(backbone.region_dim, embed_dim)
        self.global_head = ProjectionHead(backbone.global_dim, embed_dim)
        self._activation_bytes: int | None = None  # largest activation per image, measured on the first CPU batch
        self._onnx: OnnxEncoder | None = None  # this encoder on ONNX Runtime, for CPU batches (use_onnx_runtime)
        self._onnx_tried = False

    @property
    def image_size(self) -> int:
        return self.backbone_config.image_size

    @property
    def num_regions(self) -> int:
        return self.backbone_config.grid_side**2

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) --> float32 (B, 3, S, S), normalised as this backbone expects."""
        config = self.backbone_config
        return normalize_pixels(pixels, config.pixel_mean, config.pixel_std)

    def forward(self, pixels: torch.Tensor) -> ImageEmbedding:
        regions, global_features = self.backbone(pixels)  # (B, R, C), (B, global_dim)
        embedding = self.project(regions, global_features)
        if self.backbone_config.has_classifier:
            assert not isinstance(self.backbone, VGGBackbone)  # the VGG stacks have no classifier
            logits = self.backbone.classify(global_features)  # (B, global_dim) --> (B, num_classes)
            embedding.class_probs = logits.float().softmax(dim=-1)
        return embedding

    def use_onnx_runtime(self, threads: int | None = None) -> bool:
        """Run encode() of CPU batches on ONNX Runtime from now on (model/onnx_encoder.py: the same
        outputs to about 1e-5, 1.2-2x as fast), on `threads` threads (default: torch's count),
        exported from the weights as they are now. False, and torch runs it as before, where
        onnxruntime is missing or the export fails."""
        if not self._onnx_tried:
            self._onnx_tried = True
            self._onnx = onnx_encoder(self, threads or torch.get_num_threads())
        return self._onnx is not None

    def encode_later(self, pixels: torch.Tensor) -> Callable[[], ImageEmbedding] | None:
        """encode(pixels) of uint8 CPU pixels (B, 3, S, S) started on ONNX Runtime's threads, the
        function returned waiting for it; None where this encoder is not on ONNX Runtime."""
        if self._onnx is None:
            return None
        outputs = self._onnx.submit(pixels)
        return lambda: ImageEmbedding(*outputs())

    def use_torch_runtime(self) -> None:
        """Run encode() on torch from now on, also where indexing would move it to ONNX Runtime
        (bench/benchmarks/indexing.py --torch-backbone compares the two)."""
        self._onnx_tried, self._onnx = True, None

    def encode(self, pixels: torch.Tensor, memory_format: torch.memory_format = torch.channels_last) -> ImageEmbedding:
        """Inference on uint8 pixels (B, 3, S, S): normalise, run channels-last (by default), embed.

        On the CPU after use_onnx_runtime(), ONNX Runtime runs it (in chunks of its own; its own
        memory arena: no chunking for the allocator). Otherwise torch does. On the CPU, once
        the process keeps freed memory (model/allocator.py: the command line
        and the server ask for it, a program may call keep_freed_memory(); encode never does),
        it runs the batch in chunks whose largest activation fits under the allocator's heap
        block limit (6 images for the photo model at 224px): larger blocks would be mapped and
        unmapped on every pass, at the cost of a page fault per 4 KiB (2.6x slower,
        bench/RESULTS-archive.md). Otherwise it runs the batch whole.
        """
        if self._onnx is not None and pixels.device.type == "cpu" and len(pixels):
            return ImageEmbedding(*self._onnx(pixels))
        return ImageEmbedding.cat(self._in_chunks(pixels, memory_format, self))

    def backbone_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference on uint8 pixels (B, 3, S, S) --> the backbone's regions (B, R, C) and global
        features (B, global_dim), before projection (what training caches), in chunks as encode() runs."""
        outputs = self._in_chunks(pixels, torch.channels_last, self.backbone)
        return torch.cat([r for r, _ in outputs]), torch.cat([g for _, g in outputs])

    def _in_chunks(self, pixels: torch.Tensor, memory_format: torch.memory_format, run: Callable) -> list:
        """run(normalised chunk) for consecutive chunks (b, 3, S, S) of uint8 pixels (B, 3, S, S),
        b sized for the allocator on the CPU where the process keeps freed memory (the whole batch
        elsewhere). The first such call runs one image alone and measures its largest activation,
        which sizes the chunks after it."""
        limit = heap_block_limit() if pixels.device.type == "cpu" else None
        if limit is None or len(pixels) == 0:
            return [run(self.normalize(pixels).contiguous(memory_format=memory_format))]
        outputs, start = [], 0
        if self._activation_bytes is None:
            with self._measuring_activations():
                outputs.append(run(self.normalize(pixels[:1]).contiguous(memory_format=memory_format)))
            start = 1
        assert self._activation_bytes is not None  # measured on the first such call
        chunk = max(1, limit // self._activation_bytes)
        for part in pixels[start:].split(chunk):
            outputs.append(run(self.normalize(part).contiguous(memory_format=memory_format)))
        return outputs

    @contextmanager
    def _measuring_activations(self) -> Iterator[None]:
        """Record in self._activation_bytes the largest tensor any layer takes or gives in the
        forward pass run inside (of one image: bytes per image)."""
        largest = 0

        def watch(_module, inputs, output):
            nonlocal largest
            for t in (*inputs, output):
                if isinstance(t, torch.Tensor):
                    largest = max(largest, t.numel() * t.element_size())

        hooks = [m.register_forward_hook(watch) for m in self.modules() if not list(m.children())]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
        self._activation_bytes = max(1, largest)

    def project(self, regions: torch.Tensor, global_features: torch.Tensor) -> ImageEmbedding:
        """Backbone outputs --> the shared space (used directly when backbone features are cached)."""
        return ImageEmbedding(
            regions=self.region_head(regions),  # (B, R, C) --> (B, R, d)
            global_=l2_normalize(self.global_head(global_features)),  # (B, d)
        )

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load "image.*" tensors (prefix removed); pretrained backbone weights
        come from torchvision when the checkpoint does not carry them."""
        carries_backbone = any(k.startswith("backbone.") for k in tensors)
        if not carries_backbone:
            if self.backbone_config.name != "vgg16":
                load_module_state(self, tensors)  # reports the missing backbone keys
            self.backbone.load_pretrained()
        load_module_state(self, tensors, provided_elsewhere=() if carries_backbone else ("backbone.",))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "auto") -> ImageEncoder:
        config = read_model_config(directory)
        encoder = cls(config.backbone, config.embed_dim, config.image_labels)
        encoder.load_weights(read_tensors(Path(directory), "image."))
        return encoder.eval().to(resolve_device(device))


def resize_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """RGB image --> (3, size, size) uint8, resized whole (no crop).

    The whole frame is kept, so that every part of the photo lands in the region grid.
    Decode workers send these (4x smaller than float pixels); normalize_pixels runs on
    the whole batch where the model runs.
    """
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1).copy())  # (S, S, 3) --> (3, S, S)


def normalize_pixels(
    pixels: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 (B, 3, S, S) --> float32 (B, 3, S, S), normalised with per-channel mean and std
    (in [0, 1] pixel units; ImageNet's by default), on the pixels' device."""
    mean_t = torch.tensor(mean, device=pixels.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    std_t = torch.tensor(std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean_t) / std_t


def preprocess(image: Image.Image, size: int, config: BackboneConfig | None = None) -> torch.Tensor:
    """RGB image --> (3, size, size) float tensor, resized whole and normalised for the
    backbone `config` describes (ImageNet mean and std when None)."""
    pixels = resize_uint8(image, size)[None]
    if config is None:
        return normalize_pixels(pixels)[0]
    return normalize_pixels(pixels, config.pixel_mean, config.pixel_std)[0]
