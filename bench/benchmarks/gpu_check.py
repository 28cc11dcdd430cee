"""The GPU benchmarks in one run (bench/benchmarks/gpu_check.sh): the default model's backbone
(EfficientNet-Lite0) and VGG16, at 224px, random init (timing only).

    python bench/benchmarks/gpu_check.py [--images 20000] [--batch-size 256] [--device auto] [--out DIR]
                                         [--backbones efficientnet_lite0,vgg16]

1. Writes --images synthetic 224x224 JPEGs (smooth colour fields with shapes and noise,
   15-25 KB each, like photos) into a temp folder, in parallel.
2. Forward-only images/s (uint8 pixels already on the device; normalise, channels-last,
   float16 autocast, outputs copied back), and the same in float32.
3. The decode workers alone (index_files' DataLoader, no model): the CPU side's ceiling.
4. End to end through imgsearch.indexer.pipeline.index_files (CPU decode workers, the GPU encoder,
   SQLite store, FAISS): images/s from the JPEG files to stored vectors; also with the
   writer thread off (each batch waited for, then stored on the main thread); at batch 32
   (the CLI's default), 64 and 128; with --profile, one more run under cProfile
   (OUT/index_profile.txt); and Store.apply alone for a batch of new images (SQLite's share).
   Then a check that the stored vectors are the right ones: each of 256 files' stored
   global vector against a float32 forward pass of the same file, as cosine similarity.
5. GPU JPEG decoding (torchvision.io.decode_jpeg on the device, workers only read bytes),
   then resize, normalise and forward: images/s. Not the product path: its resize differs
   from the indexer's Pillow resize, so it shows what GPU decoding would give.
6. Re-ranking K=100 candidates (49 regions x 256, 2 layers) on the device: the reference
   scorer and the fast path in float32 and bfloat16, p50 ms.
Steps 2-5 run for each of --backbones (steps 2 and 4 only after the first). One more end-to-end run
uses an instant encoder (constant vectors, no network): what indexing does when the model costs
nothing, to compare with the decode workers alone (is the rest of the pipeline ever the limit?).
Prints a short table; with --out (or $OUT) each line also goes to OUT/gpu_check.md as soon as
it is measured, so a run cut short keeps what it measured.
On a machine without a GPU it runs the same code paths on the CPU (use small sizes).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import hashlib
import os
import pstats
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, ImageDraw, ImageFilter

from bench.benchmarks.machine import describe, percentiles_ms
from imgsearch.images.decode import ImageRecord, decode_file
from imgsearch.indexer.embed_worker import DecodeDataset, decode_loader
from imgsearch.indexer.pipeline import LocalEmbedder, default_workers
from imgsearch.indexer.run import Finished, run_indexing
from imgsearch.model.allocator import keep_freed_memory
from imgsearch.model.backbone import BackboneConfig
from imgsearch.model.device import resolve_device
from imgsearch.model.fast_scorer import score_candidates_fast
from imgsearch.model.image_encoder import ImageEmbedding, ImageEncoder, resize_uint8
from imgsearch.model.scorer import CrossAttentionScorer, ScorerConfig
from imgsearch.storage.store import Put, Store
from imgsearch.storage.vectors import VectorIndex

SIZE = 224


def write_jpeg(args: tuple[Path, int]) -> int:
    path, seed = args
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # a coarse colour field, smoothly upscaled
    image = Image.fromarray(field).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y, w = (int(v) for v in rng.integers(0, SIZE - 40, 3))
        draw.ellipse((x, y, x + 20 + w // 4, y + 20 + w // 4), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noisy = np.asarray(image.filter(ImageFilter.SMOOTH), dtype=np.int16) + rng.integers(-12, 12, (SIZE, SIZE, 3))
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path.stat().st_size


def make_jpegs(folder: Path, count: int) -> tuple[list[Path], float]:
    paths = [folder / f"{i:06d}.jpg" for i in range(count)]
    with Pool(max(1, os.cpu_count() or 1)) as pool:
        sizes = pool.map(write_jpeg, [(p, i) for i, p in enumerate(paths)], chunksize=64)
    return paths, float(np.mean(sizes))


def forward_only(encoder: ImageEncoder, device: torch.device, count: int, batch_size: int, half: bool) -> float:
    pixels = torch.randint(0, 256, (batch_size, 3, SIZE, SIZE), dtype=torch.uint8, device=device)
    encoder.to(memory_format=torch.channels_last)

    def step():
        x = encoder.normalize(pixels).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=half):
            out = encoder(x)
            return out.regions.to(torch.float16).cpu(), out.global_.float().cpu()

    for _ in range(2):
        step()
    batches = max(1, count // batch_size)
    started = time.perf_counter()
    for _ in range(batches):
        step()
    _sync(device)
    return batches * batch_size / (time.perf_counter() - started)


class InstantEncoder(ImageEncoder):
    """An encoder whose forward costs nothing: the same unit global vector and zero regions for
    every image. Indexing with it is bound by everything but the model (decoding, storing)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__(BackboneConfig(name="vgg", weights=None, global_pool="mean"), embed_dim)  # never run

    def encode(self, pixels: torch.Tensor, memory_format: torch.memory_format = torch.channels_last) -> ImageEmbedding:
        count = len(pixels)
        global_ = torch.zeros(count, self.embed_dim, device=pixels.device)
        global_[:, 0] = 1.0
        return ImageEmbedding(torch.zeros(count, self.num_regions, self.embed_dim, device=pixels.device), global_)


def decode_only(files: list[Path], image_size: int, batch_size: int, workers: int) -> float:
    """index_files' decode workers with nothing downstream: images/s the CPU side can feed."""
    loader = decode_loader(DecodeDataset(files, image_size), batch_size, workers)
    started = time.perf_counter()
    count = sum(len(batch) for batch in loader)
    return count / (time.perf_counter() - started)


def end_to_end(
    encoder: ImageEncoder,
    files: list[Path],
    batch_size: int,
    workers: int,
    *,
    writer_thread: bool = True,
    profile: Path | None = None,
    check_vectors: int = 0,
) -> float | tuple[float, float]:
    """Images/s through the indexing run with the local embedder (index_files, the product path).
    Variants for finding the bottleneck: writer_thread=False waits for each batch's vectors and
    stores it on the main thread (WaitedEmbedder); `profile` writes the main thread's cProfile
    statistics there. With check_vectors=N, also returns the lowest cosine similarity between the
    stored and a float32 forward pass, over the first N files."""
    embedder = LocalEmbedder(encoder, batch_size=batch_size, workers=workers)
    if not writer_thread:
        embedder = WaitedEmbedder(embedder)
    profiler = cProfile.Profile() if profile else None
    with tempfile.TemporaryDirectory(prefix="imgsearch-gpu-index-") as work:
        store = Store(Path(work) / "index.db", encoder.embed_dim, encoder.num_regions)
        if profiler:
            profiler.enable()
        summary = run_indexing(files, store, VectorIndex.empty(encoder.embed_dim), embedder)
        if profiler:
            profiler.disable()
        lowest = stored_against_forward(store, encoder, files[:check_vectors]) if check_vectors else None
        store.close()
    if summary.failed or summary.added != len(files):
        raise RuntimeError(f"indexing failed: {summary.to_dict()}")
    if profiler:
        with profile.open("w") as f:
            pstats.Stats(profiler, stream=f).sort_stats("tottime").print_stats(40)
    return summary.images_per_second if lowest is None else (summary.images_per_second, lowest)


class WaitedEmbedder:
    """The local embedder with each batch's vectors waited for as it is handed over: the run then
    stores every batch on its main thread (no writer thread overlaps SQLite with the GPU)."""

    def __init__(self, local: LocalEmbedder) -> None:
        self.local = local

    def embed(self, paths, known_contents):
        batches = self.local.embed(paths, known_contents)
        try:
            for pending in batches:
                yield Finished(pending.result())  # result() waits for the GPU
        finally:
            batches.close()


def store_apply_ms(batch_size: int, embed_dim: int, num_regions: int, batches: int = 20) -> float:
    """Median ms of Store.apply for a batch of new images with VGG16's vectors (SQLite alone)."""
    rng = np.random.default_rng(0)
    global_ = rng.standard_normal((batch_size, embed_dim)).astype(np.float32)
    regions = rng.standard_normal((batch_size, num_regions, embed_dim)).astype(np.float16)
    seconds = []
    with tempfile.TemporaryDirectory(prefix="imgsearch-gpu-store-") as work:
        store = Store(Path(work) / "index.db", embed_dim, num_regions)
        for b in range(batches):
            puts = [
                Put(
                    ImageRecord(
                        path=f"/photos/{b}/{i}.jpg",
                        size=20_000,
                        mtime=1.0,
                        ctime=1.0,
                        sha256=hashlib.sha256(f"{b}/{i}".encode()).hexdigest(),
                        width=SIZE,
                        height=SIZE,
                    ),
                    global_[i],
                    regions[i],
                )
                for i in range(batch_size)
            ]
            started = time.perf_counter()
            store.apply(puts)
            seconds.append(time.perf_counter() - started)
        store.close()
    return float(np.median(seconds[2:]) * 1e3)


def stored_against_forward(store: Store, encoder: ImageEncoder, files: list[Path]) -> float:
    """Lowest cosine similarity between each file's stored global vector and a float32
    forward pass of the same file, one image at a time (a row mix-up gives about 0)."""
    device = next(encoder.parameters()).device
    ids, vectors = store.global_vectors()  # (N,), (N, d)
    row_of = {int(i): row for row, i in enumerate(ids)}
    lowest = 1.0
    with torch.inference_mode():
        for path in files:
            image = decode_file(path, min_size=encoder.image_size).image
            pixels = resize_uint8(image, encoder.image_size)[None].to(device)  # (1, 3, S, S) uint8
            expected = encoder(encoder.normalize(pixels)).global_[0].float().cpu().numpy()  # (d,)
            stored = vectors[row_of[store.get(str(path)).id]]
            cosine = float(expected @ stored / (np.linalg.norm(expected) * np.linalg.norm(stored)))
            lowest = min(lowest, cosine)
    return lowest


class _Bytes(torch.utils.data.Dataset):
    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.frombuffer(bytearray(self.files[i].read_bytes()), dtype=torch.uint8)  # (n_bytes,)


def gpu_decode(encoder: ImageEncoder, files: list[Path], device: torch.device, batch_size: int, workers: int) -> float:
    loader = torch.utils.data.DataLoader(
        _Bytes(files),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        prefetch_factor=4 if workers else None,
    )
    half = device.type == "cuda"
    started = time.perf_counter()
    count = 0
    for data in loader:
        images = torchvision.io.decode_jpeg(data, device=device)  # list of (3, H, W) uint8
        batch = torch.stack(
            [
                F.interpolate(
                    im[None].float(), size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False
                )[0]
                for im in images
            ]
        )  # (B, 3, S, S)
        x = encoder.normalize(batch.round().clamp(0, 255).to(torch.uint8)).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=half):
            out = encoder(x)
            out.regions.to(torch.float16).cpu(), out.global_.float().cpu()
        count += len(images)
    _sync(device)
    return count / (time.perf_counter() - started)


def rerank_latency(device: torch.device, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    scorer = CrossAttentionScorer(ScorerConfig(max_regions=49), 256).eval().to(device)
    tokens, mask = torch.randn(14, 256, device=device), torch.ones(14, dtype=torch.bool, device=device)
    regions = torch.tanh(torch.randn(100, 49, 256, device=device))  # (K, R, d)
    runs = {
        "reference": lambda: scorer.score_candidates(tokens, mask, regions),
        "fast float32": lambda: score_candidates_fast(scorer, tokens, mask, regions, torch.float32),
        "fast bfloat16": lambda: score_candidates_fast(scorer, tokens, mask, regions, torch.bfloat16),
    }
    out = {}
    with torch.inference_mode():
        for name, run in runs.items():
            run()
            seconds = []
            for _ in range(repeats):
                started = time.perf_counter()
                run().float().cpu()
                seconds.append(time.perf_counter() - started)
            out[name] = percentiles_ms(seconds)[0]
    return out


class Table:
    """Lines of the report; each is also appended to OUT/gpu_check.md as soon as it is added."""

    def __init__(self, out: str | None) -> None:
        self.file = None
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            self.file = Path(out) / "gpu_check.md"
            self.file.write_text("")

    def add(self, *lines: str) -> None:
        print("\n".join(lines), flush=True)
        if self.file is not None:
            with self.file.open("a") as f:
                f.write("".join(line + "\n" for line in lines))


def run_rows(table: Table, title: str, runs: list, only: str | None) -> None:
    """A table of images/s, one row per (name, run) whose name holds a part of `only` (all
    without it); a run that fails gets its error in its row instead of ending the benchmark."""
    table.add(f"| {title} | images/s |", "|---|---|")
    for name, run in runs:
        if only and not any(part in name for part in only.split(",")):
            continue
        print(f"{title}: {name} ...", file=sys.stderr, flush=True)
        try:
            table.add(f"| {name} | {run():.0f} |")
        except Exception as exc:  # one broken stage must not cost the others' numbers
            table.add(f"| {name} | failed: {type(exc).__name__}: {exc} |")
    table.add("")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    parser.add_argument("--profile", action="store_true", help="one more end-to-end run under cProfile")
    parser.add_argument(
        "--backbones",
        default="efficientnet_lite0,vgg16",
        help="comma-separated backbone names (model/backbone.py), random init; the first is the default model's",
    )
    parser.add_argument(
        "--only", default=None, help="comma-separated parts of run names: only the runs of the table that contain one"
    )
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        keep_freed_memory()  # as `imgsearch index` does on the CPU (the library leaves malloc alone)
    workers = default_workers() if args.workers is None else args.workers
    torch.backends.cudnn.benchmark = True
    table = Table(args.out)
    table.add(
        f"Machine: {describe()}",
        f"Device: {device}; {workers} decode workers; batch {args.batch_size}; {args.images} synthetic {SIZE}px JPEGs",
        "",
    )
    with tempfile.TemporaryDirectory(prefix="imgsearch-gpu-jpegs-") as folder:
        started = time.perf_counter()
        files, mean_bytes = make_jpegs(Path(folder), args.images)
        table.add(f"JPEGs written in {time.perf_counter() - started:.1f} s, {mean_bytes / 1024:.1f} KB each", "")
        half = device.type == "cuda"
        short = min(args.images, 8 * args.batch_size)
        instant = InstantEncoder(256).eval().to(device)
        run_rows(
            table,
            "no model",
            [
                ("decode workers alone", lambda: decode_only(files, SIZE, args.batch_size, workers)),
                (
                    "end to end, instant encoder (no network)",
                    lambda: end_to_end(instant, files, args.batch_size, workers),
                ),
            ],
            args.only,
        )
        for number, backbone in enumerate(args.backbones.split(",")):
            torch.manual_seed(0)
            pool = "fc7" if backbone == "vgg16" else "mean"  # as each backbone's models pool
            encoder = ImageEncoder(BackboneConfig(name=backbone, weights=None, global_pool=pool), 256).eval().to(device)
            runs = [
                (
                    "forward-only, float16 autocast" if half else "forward-only, float32",
                    lambda encoder=encoder: forward_only(encoder, device, args.images, args.batch_size, half),
                ),
                (
                    "end to end (index_files, the product path)",
                    lambda encoder=encoder: end_to_end(encoder, files, args.batch_size, workers),
                ),
            ]
            if number == 0:  # the finer variants for the default model's backbone alone
                runs += [
                    (
                        "end to end, writer thread off (wait for the GPU, store on the main thread)",
                        lambda encoder=encoder: end_to_end(
                            encoder, files, args.batch_size, workers, writer_thread=False
                        ),
                    ),
                ]
                runs += [
                    (
                        f"end to end, batch {batch_size}",
                        functools.partial(end_to_end, encoder, files, batch_size, workers),
                    )
                    for batch_size in (32, 64, 128)
                ]
                runs += [
                    (
                        "GPU JPEG decode + forward (not the product path)",
                        lambda encoder=encoder: gpu_decode(encoder, files, device, args.batch_size, workers),
                    ),
                ]
                if half:
                    runs.insert(
                        1,
                        (
                            "forward-only, float32",
                            lambda encoder=encoder: forward_only(encoder, device, short, args.batch_size, False),
                        ),
                    )
            run_rows(table, f"{backbone} 224px", runs, args.only)
        table.add(
            "",
            f"Store.apply of {args.batch_size} new images (49 x 256 fp16 regions each), median: "
            f"{store_apply_ms(args.batch_size, encoder.embed_dim, encoder.num_regions):.1f} ms",
        )
        try:
            checked = min(256, short)
            _, lowest = end_to_end(encoder, files[:short], args.batch_size, workers, check_vectors=checked)
            table.add(
                "",
                f"Stored global vectors against a float32 forward pass of the same file, "
                f"{checked} files: lowest cosine similarity {lowest:.4f}",
            )
        except Exception as exc:
            table.add("", f"Stored-vector check failed: {type(exc).__name__}: {exc}")
    table.add("", "| re-rank K=100, 49 regions x 256 | p50 ms |", "|---|---|")
    table.add(*[f"| {name} | {ms:.2f} |" for name, ms in rerank_latency(device, 50).items()])
    print(
        "targets (issue 22): end to end >= 8,000 images/s with the default model's backbone, >= 6,000 with VGG16",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
