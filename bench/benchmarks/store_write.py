"""SQLite store cost by page size: writing batches of new images, and fetching re-rank candidates.

    python bench/benchmarks/store_write.py [--batches 40] [--batch-size 256] [--folder /tmp]

For each page size and region grid (VGG16's 7x7 and the small preset's 6x6, 256-d), a new
store in --folder receives --batches batches of new images (global 256 float32, regions
float16, random values); reported: the
mean Store.apply time per batch (first 3 left out), bytes on disk per image, and the median
time of Store.regions for 100 random stored images (the re-rank fetch), over 30 draws.
Appends a table to bench/RESULTS.md with --report.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

import imgsearch.storage.store
from bench.benchmarks.machine import describe
from imgsearch.images.decode import ImageRecord
from imgsearch.storage.store import Put, Store

EMBED_DIM = 256


def measure(page_size: int, num_regions: int, batches: int, batch_size: int, folder: str) -> tuple[float, float, float]:
    rng = np.random.default_rng(0)
    global_ = rng.standard_normal((batch_size, EMBED_DIM)).astype(np.float32)
    regions = rng.standard_normal((batch_size, num_regions, EMBED_DIM)).astype(np.float16)
    default, imgsearch.storage.store.PAGE_SIZE = imgsearch.storage.store.PAGE_SIZE, page_size
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix="imgsearch-store-bench-") as work:
            store = Store(Path(work) / "index.db", EMBED_DIM, num_regions)
            assert store.db.execute("PRAGMA page_size").fetchone()[0] == page_size
            seconds = []
            for b in range(batches):
                puts = [
                    Put(
                        ImageRecord(
                            path=f"/photos/{b}/{i}.jpg",
                            size=20_000,
                            mtime=1.0,
                            ctime=1.0,
                            sha256=hashlib.sha256(f"{b}/{i}".encode()).hexdigest(),
                            width=224,
                            height=224,
                        ),
                        global_[i],
                        regions[i],
                    )
                    for i in range(batch_size)
                ]
                started = time.perf_counter()
                store.apply(puts)
                seconds.append(time.perf_counter() - started)
            store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            disk = (Path(work) / "index.db").stat().st_size / (batches * batch_size)
            fetches = []
            stored_ids = store.ok_ids()
            for _ in range(30):
                ids = sorted(rng.choice(stored_ids, 100, replace=False).tolist())
                started = time.perf_counter()
                store.regions(ids)  # (100, R, d) float16
                fetches.append(time.perf_counter() - started)
            store.close()
    finally:
        imgsearch.storage.store.PAGE_SIZE = default
    return float(np.mean(seconds[3:]) * 1e3), disk, float(np.median(fetches) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--folder", default=tempfile.gettempdir())
    parser.add_argument("--report", default=None, help="append the table to this file (bench/RESULTS.md)")
    args = parser.parse_args()
    lines = [
        f"Machine: {describe()}. Store in {args.folder}; {args.batches} batches of {args.batch_size} new images.",
        "",
        "| regions x 256 fp16 | page size | Store.apply ms per batch | bytes on disk per image | "
        "fetch 100 candidates' regions, p50 ms |",
        "|---|---|---|---|---|",
    ]
    for num_regions in (49, 36):
        for page_size in (4096, 8192, 16384, 65536):
            apply_ms, disk, fetch_ms = measure(page_size, num_regions, args.batches, args.batch_size, args.folder)
            default = " (new stores)" if page_size == imgsearch.storage.store.PAGE_SIZE else ""
            lines.append(
                f"| {num_regions} ({num_regions * EMBED_DIM * 2:,} B) | {page_size}{default} | {apply_ms:.1f} | "
                f"{disk:,.0f} | {fetch_ms:.2f} |"
            )
            print(lines[-1], flush=True)
    if args.report:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open(args.report, "a") as f:
            f.write(f"\n## SQLite page size, {stamp} (bench/benchmarks/store_write.py)\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
