"""Indexing throughput from JPEG files to stored vectors, next to the backbone's forward-only
throughput (the practical ceiling), measured in one run on the same machine.

    python bench/benchmarks/indexing.py IMAGES_DIR [--configs photo,fast,vgg16,small,scenes]
                             [--images-per-config 600,600,64,1200,2400]

For each configuration ("photo" and "fast": the packaged models, EfficientNet-Lite0 and
MobileNetV2 at 224px, with their real weights; the others random-init weights, timing only:
the product never indexes with random weights): forward-only images/s of the encoder (backbone + projection heads) on
pixels already in memory, on the runtime indexing uses (on the CPU the backbone on ONNX Runtime,
model/onnx_encoder.py; --torch-backbone keeps it, and indexing, on torch), then indexing images/s through
imgsearch.indexer.pipeline.index_files (decode workers, encoder, SQLite store, FAISS), then
forward-only again; the ratio is end-to-end over the mean of the two forward-only runs (the
sandwich evens out load changes from other jobs on a shared machine). Also forward-only on
torch (channels-last), to show what the runtime buys; and on the CPU, the ceiling
that decoding leaves: decoding alone on one core (D images/s, the indexer's own decode and
resize) costs 1/D core-seconds per image that forward-only never pays, so on C cores end to
end can reach at most C / (C/F + 1/D) images/s, a ratio of 1 / (1 + F/(C*D)) (store and
bookkeeping left out: the true ceiling is lower still).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.benchmarks.machine import describe
from imgsearch.indexer.embed_worker import DecodeDataset
from imgsearch.indexer.pipeline import default_workers, index_files
from imgsearch.model.allocator import heap_block_limit, keep_freed_memory
from imgsearch.model.backbone import BackboneConfig
from imgsearch.model.device import resolve_device
from imgsearch.model.image_encoder import ImageEncoder
from imgsearch.model.packaged import packaged_model_dir
from imgsearch.storage.store import Store
from imgsearch.storage.vectors import VectorIndex
from imgsearch.training.presets import PRESETS

CONFIGS = {
    "photo": None,  # the packaged photo model (data/photo-model), loaded with its weights
    "fast": None,  # the packaged fast model (data/photo-model-fast), loaded with its weights
    "vgg16": (BackboneConfig(name="vgg16", weights=None), 256),  # 224px, 7x7 grid, fc7 global
    "small": (PRESETS["small"][0].backbone, PRESETS["small"][0].embed_dim),  # 96px, 6x6
    "scenes": (PRESETS["scenes"][0].backbone, PRESETS["scenes"][0].embed_dim),  # 64px, 8x8
}


def forward_only(
    encoder: ImageEncoder, count: int, batch_size: int, device: torch.device, channels_last: bool = True
) -> float:
    """Images/s of normalise + encoder forward + copy of the outputs to the CPU, from uint8 pixels in memory."""
    size = encoder.image_size
    pixels = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)  # (B, 3, S, S)
    if device.type == "cuda":
        pixels = pixels.pin_memory()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    encoder.to(memory_format=memory_format)
    cuda = device.type == "cuda"

    def step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            out = encoder.encode(pixels.to(device, non_blocking=cuda), memory_format)  # as the pipeline runs it
            out.regions.to(torch.float16).cpu(), out.global_.float().cpu()

    step()  # warm-up: kernel choice, allocations
    batches = max(1, count // batch_size)
    started = time.perf_counter()
    for _ in range(batches):
        step()
    if cuda:
        torch.cuda.synchronize()
    return batches * batch_size / (time.perf_counter() - started)


def best_forward_only(encoder, count: int, batch_size: int, device: torch.device) -> tuple[float, int]:
    """The ceiling: forward-only images/s with the best thread count (1 up to all cores), and that count."""
    if device.type != "cpu":
        return forward_only(encoder, count, batch_size, device), 0
    default = torch.get_num_threads()
    best = (0.0, 0)
    for threads in sorted({1, default}):
        torch.set_num_threads(threads)
        best = max(best, (forward_only(encoder, count, batch_size, device), threads))
    torch.set_num_threads(default)
    return best


def decode_one_core(files: list[Path], image_size: int) -> float:
    """Images/s of the indexer's decoding (read, hash, decode, resize) on one core, in this process."""
    dataset = DecodeDataset(files, image_size)
    started = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - started)


def end_to_end(encoder: ImageEncoder, files: list[Path], batch_size: int, workers: int) -> float:
    with tempfile.TemporaryDirectory(prefix="imgsearch-index-bench-") as work:
        store = Store(Path(work) / "index.db", encoder.embed_dim, encoder.num_regions)
        vectors = VectorIndex.empty(encoder.embed_dim)
        summary = index_files(files, store, vectors, encoder, batch_size=batch_size, workers=workers)
        store.close()
    if summary.failed or summary.added != len(files):
        raise RuntimeError(f"indexing failed: {summary.to_dict()}")
    return summary.images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", type=Path, help="a folder of JPEG files")
    parser.add_argument("--configs", default="photo,fast,vgg16,small,scenes")
    parser.add_argument("--images-per-config", default="600,600,64,1200,2400", help="images indexed, per config")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="decode workers (default: one per spare core)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--report", default="bench/RESULTS.md")
    parser.add_argument(
        "--torch-backbone",
        action="store_true",
        help="run the encoder on torch on the CPU, forward-only and indexing (not ONNX Runtime)",
    )
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's malloc as it is (`imgsearch index` keeps freed memory: model/allocator.py)",
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu" and not args.default_allocator:
        keep_freed_memory()  # what `imgsearch index` does; set before any forward pass, for both columns
    workers = default_workers() if args.workers is None else args.workers
    all_files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    machine = describe()
    rows = []
    for name, count in zip(args.configs.split(","), [int(c) for c in args.images_per_config.split(",")]):
        if CONFIGS[name] is None:
            encoder = ImageEncoder.from_pretrained(packaged_model_dir(name), device=device)
            backbone = encoder.backbone_config
        else:
            backbone, embed_dim = CONFIGS[name]
            torch.manual_seed(0)
            encoder = ImageEncoder(backbone, embed_dim).eval().to(device)
        on_torch = forward_only(encoder, count, args.batch_size, device)  # before the backbone moves to ONNX Runtime
        runtime = "torch"
        if args.torch_backbone:
            encoder.use_torch_runtime()  # indexing too
        elif device.type == "cpu" and encoder.use_onnx_runtime():
            runtime = "ONNX Runtime"  # as indexing runs it; exported (or read from the cache) before timing
        files = all_files[:count]
        if len(files) < count:
            raise SystemExit(f"Error: {args.images} has {len(files)} JPEG files; {count} are needed for {name}.")
        before = best_forward_only(encoder, count, args.batch_size, device)
        e2e = end_to_end(encoder, files, args.batch_size, workers)
        after = best_forward_only(encoder, count, args.batch_size, device)
        ceiling = (before[0] + after[0]) / 2
        bound = None
        if device.type == "cpu":
            cores = os.cpu_count() or 1
            bound = 1 / (1 + ceiling / (cores * decode_one_core(files, backbone.image_size)))
        rows.append(
            (
                name,
                backbone.image_size,
                backbone.grid_side,
                count,
                runtime,
                on_torch,
                before,
                e2e,
                after,
                e2e / ceiling,
                bound,
                os.getloadavg()[0],
            )
        )
        print(
            f"{name}: forward-only {before[0]:.1f} / {after[0]:.1f} img/s, end to end {e2e:.1f} img/s "
            f"({100 * e2e / ceiling:.0f}%)",
            file=sys.stderr,
        )
    report = format_report(rows, machine, device, workers, args)
    print(report)
    with open(args.report, "a") as f:
        f.write(report)
    print(f"appended to {args.report}", file=sys.stderr)


def format_report(rows, machine, device, workers, args) -> str:
    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    out = [
        f"\n## Indexing throughput, {stamp} (bench/benchmarks/indexing.sh)\n",
        f"Machine: {machine}. Device: {device}; {workers} decode worker(s); batch {args.batch_size}; "
        f"torch threads: forward-only at the faster of 1 and {torch.get_num_threads()} (shown in brackets), "
        f"end to end at all of torch's threads beside the decode workers. Allocator: "
        f"{'glibc default' if heap_block_limit() is None else 'freed memory kept (model/allocator.py)'}. "
        f"Files: JPEGs from {args.images} (photo: the "
        "packaged model's weights; the others random-init weights, timing only). "
        "Forward-only = normalise + encoder + outputs to CPU from pixels in memory, on the backbone runtime "
        "indexing uses (on the CPU ONNX Runtime, model/onnx_encoder.py, at torch's default thread count "
        "whatever the bracket says; torch channels-last elsewhere), measured before and after the end-to-end "
        "run; and on torch alone for comparison.\n",
        "| config | input | grid | images | backbone runtime | forward-only on torch img/s | "
        "forward-only before (threads) | end to end img/s | forward-only after | end to end / forward-only | "
        "ceiling decoding leaves (CPU) | "
        "load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, size, grid, count, runtime, on_torch, before, e2e, after, ratio, bound, load in rows:
        out.append(
            f"| {name} | {size}px | {grid}x{grid} | {count} | {runtime} | {on_torch:.1f} | "
            f"{before[0]:.1f} ({before[1]}) | "
            f"{e2e:.1f} | {after[0]:.1f} ({after[1]}) | {100 * ratio:.0f}% | "
            f"{'-' if bound is None else f'{100 * bound:.0f}%'} | {load:.2f} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
