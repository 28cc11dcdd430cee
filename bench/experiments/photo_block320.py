"""Cache the mean-pooled 320-channel block output of MobileNetV2 for Flickr8k
(bench/experiments/photo_heads.py --block320).

    python bench/experiments/photo_block320.py WEIGHTS.safetensors [DATA_DIR] [--size 224]

Writes bench/out/photo-block320-{size}.pt: per split (train, dev), the image names (in the
order of bench/experiments/photo_features.py's cache) and pooled (N, 320) float32, the mean over the 7x7
grid of the last inverted-residual block's output, before the 1x1 convolution to 1280.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[2]))

from bench.experiments.photo_features import mobilenet, parse_arguments, split_images
from imgsearch.model.image_encoder import normalize_pixels


def main() -> None:
    args = parse_arguments()
    data = Path(args.data)
    torch.set_num_threads(1)
    config, backbone = mobilenet(args.weights, args.size)
    grabbed = []
    backbone.net.head.register_forward_hook(lambda _m, inputs, _o: grabbed.append(inputs[0].mean((2, 3))))  # (B, 320)
    out = {}
    for split in ("train", "dev"):
        bank = split_images(data, split, args.size)
        grabbed.clear()
        with torch.inference_mode():
            for start in range(0, len(bank.pixels), 64):
                x = normalize_pixels(bank.pixels[start : start + 64], config.pixel_mean, config.pixel_std)
                backbone(x.contiguous(memory_format=torch.channels_last))
                print(f"\r{split}: {start + 64}/{len(bank.pixels)}", end="", file=sys.stderr)
        print(file=sys.stderr)
        out[split] = {"names": [item.path.name for item in bank.items], "pooled": torch.cat(grabbed).float()}
    path = Path(__file__).parents[1] / "out" / f"photo-block320-{args.size}.pt"
    torch.save(out, path)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
