"""MobileNetV2 1.0 (ImageNet, 1,001 classes) in plain torch, as the TFLite graph computes it.

The weights are not trained here: model/convert_mobilenet_v2.py dequantizes them
from the 8-bit TFLite file `mobilenet_v2_1.0_224_quant.tflite` (shared/models/
mobilenet_v2_imagenet/) into a state dict of this module, usually saved as safetensors.
That file comes from the public repository google-coral/test_data and is under the
Apache License 2.0 (see the model folder's README.md and LICENSE); weights converted
from it keep that license and need the notice and a line naming the source.

Differences from torchvision's MobileNetV2 (whose weights do not fit this module):
- batch norm is folded into every convolution: each conv has a bias, there is no BN;
- TensorFlow "SAME" padding: a stride-2 3x3 conv on an even size pads 0 before and
  1 after (torchvision pads 1 on both sides), so stride-2 layers use F.pad;
- input pixels are (q - 128) / 128 in [-1, 1], RGB, no ImageNet mean/std;
- the classifier is a 1x1 conv with 1,001 outputs; class 0 is "background".
Run time needs only torch; the module never imports TFLite.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MobileNetV2", "InvertedResidual", "BLOCKS", "FEATURE_DIM", "same_padding", "pixels_from_uint8"]

FEATURE_DIM = 1280  # channels of the last feature map (Conv_1)

# The paper's Table 2 (and TF-slim's mobilenet_v2.V2_DEF): expansion t, output
# channels c, repeats n, stride s of the first repeat. TFLite scopes: block 0 is
# "expanded_conv", block i > 0 is "expanded_conv_i".
BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    # t,   c, n, s
    (1, 16, 1, 1),  # 112 px
    (6, 24, 2, 2),  # 112 --> 56
    (6, 32, 3, 2),  # 56 --> 28
    (6, 64, 4, 2),  # 28 --> 14
    (6, 96, 3, 1),  # 14
    (6, 160, 3, 2),  # 14 --> 7
    (6, 320, 1, 1),  # 7
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) along one axis of length `size`."""
    out = -(-size // stride)  # ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2  # the odd pixel goes after


def _pad_same(x: Tensor, kernel: int, stride: int) -> Tensor:
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    return F.pad(x, (left, right, top, bottom))  # (B, C, H, W) --> (B, C, H+top+bottom, W+left+right)


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6, absent when t = 1), 3x3 depthwise (ReLU6), 1x1 linear project, + input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.stride = stride
        self.residual = stride == 1 and in_channels == out_channels
        self.expand = nn.Conv2d(in_channels, hidden, 1) if expansion != 1 else None
        # Stride 1: SAME is 1 pixel on every side; stride 2: padded in forward (asymmetric).
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride, padding=1 if stride == 1 else 0, groups=hidden)
        self.project = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if self.expand is not None:
            h = F.relu6(self.expand(h))  # (B, C_in, H, W) --> (B, t*C_in, H, W)
        if self.stride != 1:
            h = _pad_same(h, 3, self.stride)  # (B, t*C_in, H, W) --> (B, t*C_in, H+1, W+1) for even H, W
        h = F.relu6(self.depthwise(h))  # --> (B, t*C_in, H/s, W/s)
        h = self.project(h)  # (B, t*C_in, H/s, W/s) --> (B, C_out, H/s, W/s), no activation
        return x + h if self.residual else h


class MobileNetV2(nn.Module):
    """MobileNetV2 1.0 as the TFLite graph computes it, in float: folded-BN convs with bias, ReLU6,
    TF SAME padding, 17 inverted residual blocks, Conv_1 to 1280 channels, average pool, 1x1 classifier.

    Input: (B, 3, S, S) RGB with S divisible by 32, mapped to [-1, 1] as (q - 128) / 128.
    State-dict keys: stem.*, blocks.{0..16}.{expand,depthwise,project}.* (block 0 has no expand),
    head.* (TFLite Conv_1), classifier.* (Logits/Conv2d_1c_1x1); each with .weight and .bias.
    """

    def __init__(self, num_classes: int = 1001) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, stride=2)  # TFLite "Conv"; padded in features()
        blocks: list[InvertedResidual] = []
        channels = 32
        for expansion, out_channels, repeats, stride in BLOCKS:
            for i in range(repeats):
                blocks.append(InvertedResidual(channels, out_channels, stride if i == 0 else 1, expansion))
                channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(channels, FEATURE_DIM, 1)  # TFLite "Conv_1"
        self.classifier = nn.Conv2d(FEATURE_DIM, num_classes, 1)  # TFLite "Logits/Conv2d_1c_1x1"

    def features(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) in [-1, 1] --> (B, 1280, S/32, S/32), the output of Conv_1 + ReLU6."""
        x = F.relu6(self.stem(_pad_same(pixels, 3, 2)))  # (B, 3, 224, 224) --> (B, 32, 112, 112)
        for block in self.blocks:
            x = block(x)  # (B, 32, 112, 112) --> ... --> (B, 320, 7, 7)
        return F.relu6(self.head(x))  # (B, 320, 7, 7) --> (B, 1280, 7, 7)

    def classify(self, feature_map: Tensor) -> Tensor:
        """(B, 1280, G, G) --> logits (B, num_classes): global average pool, 1x1 conv; no softmax."""
        pooled = feature_map.mean(dim=(2, 3), keepdim=True)  # (B, 1280, G, G) --> (B, 1280, 1, 1)
        return self.classifier(pooled).flatten(1)  # (B, 1280, 1, 1) --> (B, num_classes)

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, S, S) --> (feature map (B, 1280, S/32, S/32), logits (B, num_classes))."""
        feature_map = self.features(pixels)
        return feature_map, self.classify(feature_map)


def pixels_from_uint8(images: Tensor) -> Tensor:
    """uint8 RGB (B, S, S, 3) as the TFLite input takes it --> float (B, 3, S, S) in [-1, 1]."""
    return (images.permute(0, 3, 1, 2).float() - 128.0) / 128.0  # (B, S, S, 3) --> (B, 3, S, S)
