"""`imgsearch index` from the command line, as a user runs it: images/s from JPEG files on disk.

    python bench/benchmarks/cli_index.py [--images 20000] [--text DIR] [--device auto] [--batch-size 32]

Writes --images synthetic 224px JPEGs (bench/benchmarks/gpu_check.py's), a VGG16 model directory with
random-init weights (timing only; fc7 global vectors, 7x7 regions, embed 256) whose text half
is --text (default: the packaged MiniLM), then runs `python -m imgsearch index` in a child
process and reports the run's own images/s (its --json summary) and the command's wall time,
model loading and start-up included. Prints one table row (also OUT/cli_index.md with $OUT).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.benchmarks.gpu_check import make_jpegs
from bench.benchmarks.machine import describe
from imgsearch.model.alignment import AlignmentConfig, AlignmentModel
from imgsearch.model.backbone import BackboneConfig
from imgsearch.model.text_encoder import PACKAGED_MINILM, TextEncoderConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--text", default=PACKAGED_MINILM, help="text encoder for the model directory")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the CLI's own")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgsearch-cli-bench-") as work:
        work = Path(work)
        photos = work / "photos"
        photos.mkdir()
        make_jpegs(photos, args.images)
        torch.manual_seed(0)
        config = AlignmentConfig(
            embed_dim=256,
            backbone=BackboneConfig(name="vgg16", weights=None),
            text=TextEncoderConfig(name_or_path=args.text),
        )
        AlignmentModel.initialize(config).save_pretrained(work / "model")
        command = [
            sys.executable,
            "-m",
            "imgsearch",
            "index",
            str(photos),
            "--index",
            str(work / "index"),
            "--model",
            str(work / "model"),
            "--device",
            args.device,
            "--json",
            "-q",
        ]
        if args.batch_size:
            command += ["--batch-size", str(args.batch_size)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"imgsearch index failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout)
    if summary["embedded"] != args.images or summary["failed"]:
        sys.exit(f"imgsearch index did not embed every image: {summary}")
    batch = args.batch_size or "CLI default"
    lines = [
        f"Machine: {describe()}",
        "",
        "| `imgsearch index`, VGG16 224px | images | batch | run's images/s | command wall s |",
        "|---|---|---|---|---|",
        f"| {args.device} | {args.images} | {batch} | {summary['images_per_second']:.0f} | {wall:.1f} |",
    ]
    print("\n".join(lines))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "cli_index.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
