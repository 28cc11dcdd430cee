"""Training and forward throughput of candidate backbones on this machine's CPU.

Used to choose the from-scratch configuration for Flickr8k: the run must fit
in about 70 minutes of training on 2 cores, so the backbone must see the
6,000 training images many times over.   Usage: python bench/backbone_speed.py
"""

import os
import platform
import time

import torch

from indexer.backbone import BackboneConfig, VGGBackbone

CANDIDATES = {
    "vgg16 @224 (reference)": BackboneConfig(name="vgg16", weights=None, image_size=224, global_pool="mean"),
    "small @128 (8x8 grid)": BackboneConfig(name="vgg", weights=None, batch_norm=True, image_size=128, global_pool="mean",
                                            layers=(32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256)),
    "small @96 (6x6 grid)": BackboneConfig(name="vgg", weights=None, batch_norm=True, image_size=96, global_pool="mean",
                                           layers=(32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256)),
    "small @64 (4x4 grid)": BackboneConfig(name="vgg", weights=None, batch_norm=True, image_size=64, global_pool="mean",
                                           layers=(32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256)),
    "scenes @64 (4x4 grid)": BackboneConfig(name="vgg", weights=None, batch_norm=True, image_size=64, global_pool="mean",
                                            layers=(32, "M", 64, "M", 128, "M", 128, "M")),
}


def measure(config: BackboneConfig, batch: int, train: bool, seconds: float = 6.0) -> float:
    model = VGGBackbone(config).train(train)
    x = torch.randn(batch, 3, config.image_size, config.image_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    done, start = 0, None
    while True:
        if train:
            regions, pooled = model(x)
            (regions.mean() + pooled.mean()).backward()
            optimizer.step()
            optimizer.zero_grad()
        else:
            with torch.inference_mode():
                model(x)
        if start is None:  # first step is warm-up
            start = time.perf_counter()
            continue
        done += batch
        if time.perf_counter() - start > seconds:
            return done / (time.perf_counter() - start)


print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
print(f"{'backbone':28s} {'forward img/s':>14s} {'train img/s':>12s} {'epoch of 6000 (s)':>18s}")
for name, config in CANDIDATES.items():
    forward = measure(config, 16 if config.image_size > 128 else 64, train=False)
    trained = measure(config, 8 if config.image_size > 128 else 64, train=True)
    print(f"{name:28s} {forward:14.1f} {trained:12.1f} {6000 / trained:18.0f}")
