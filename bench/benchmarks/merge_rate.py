"""The one writer's merge rate, and FAISS add rates and memory per vector, at the photo model's shapes.

    python -m bench.benchmarks.merge_rate [--shards 40] [--shard-size 256] [--faiss-vectors 200000]
                                          [--report bench/RESULTS.md]

1. SQLite: a new store in --folder receives --shards shards of --shard-size new images
   through merge.ShardWriter.merge (what `imgsearch index --ray` does with each shard): a
   global vector (256 float32), 49 regions (256 float16, 25 KB) and 5 labels per image,
   random values, one transaction (synchronous=FULL: one fsync) per shard, mirrored into an
   exact FAISS index. Reported: rows/s (first 3 shards left out) and bytes on disk per image;
   and, in the same run, the disk's rate for fsync'd appends of a shard's bytes, the ceiling
   of a writer that wrote each row once (SQLite's WAL writes it twice: the log, then the
   checkpoint into the database).
2. FAISS: IVF-flat, IVF-SQ8 and IVF-PQ (32 sub-quantizers x 8 bits, 32 B a vector) with
   --nlist lists, trained on a sample (64 points a list), then --faiss-vectors L2-normalised
   random vectors added in chunks of 65,536: vectors/s of add, and bytes per vector (the
   serialised index's growth over the trained empty one, ids included).
Random vectors cost the same to write and add as real ones; they say nothing of recall.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from bench.benchmarks.machine import describe
from imgsearch.images.decode import ImageRecord
from imgsearch.indexer.merge import AddSummary, ShardWriter
from imgsearch.indexer.plan import RunPlan
from imgsearch.indexer.shard import Shard, shard_id_of
from imgsearch.storage.store import Store
from imgsearch.storage.vectors import VectorIndex

EMBED_DIM = 256  # the photo model's
NUM_REGIONS = 49  # 7 x 7
LABELS = [("tabby", 0.4), ("Egyptian cat", 0.3), ("tiger cat", 0.1), ("lynx", 0.05), ("carton", 0.01)]


def random_shard(number: int, size: int, rng: np.random.Generator) -> Shard:
    texts = [f"/photos/{number:06d}/{i:05d}.jpg" for i in range(size)]
    contents = [hashlib.sha256(text.encode()).hexdigest() for text in texts]
    records = [
        ImageRecord(path=text, size=2_500_000, mtime=1.7e9, ctime=1.7e9, sha256=sha, width=4000, height=3000)
        for text, sha in zip(texts, contents)
    ]
    global_ = rng.standard_normal((size, EMBED_DIM)).astype(np.float32)  # (n, d)
    global_ /= np.linalg.norm(global_, axis=1, keepdims=True)
    regions = rng.standard_normal((size, NUM_REGIONS, EMBED_DIM)).astype(np.float16)  # (n, R, d)
    return Shard(shard_id_of(texts), records, contents, global_, regions, [LABELS] * size)


def sqlite_merge_rate(shards: int, shard_size: int, folder: str) -> tuple[float, float, float]:
    """rows/s through ShardWriter.merge, p50 ms per shard, bytes on disk per image."""
    rng = np.random.default_rng(0)
    prepared = [random_shard(n, shard_size, rng) for n in range(shards)]
    with tempfile.TemporaryDirectory(dir=folder, prefix="imgsearch-merge-bench-") as work:
        store = Store(Path(work) / "index.db", EMBED_DIM, NUM_REGIONS)
        writer = ShardWriter(
            store, VectorIndex.empty(EMBED_DIM), RunPlan(stored={}, todo=[], unchanged=0), AddSummary()
        )
        seconds = []
        for shard in prepared:
            started = time.perf_counter()
            writer.merge(shard)
            seconds.append(time.perf_counter() - started)
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        disk = (Path(work) / "index.db").stat().st_size / (shards * shard_size)
        store.close()
    kept = seconds[3:]
    return shard_size * len(kept) / sum(kept), float(np.median(kept) * 1e3), disk


def disk_append_rate(folder: str, chunk_bytes: int, chunks: int = 40) -> float:
    """MB/s of fsync'd appends of `chunk_bytes` to a new file in `folder`: what this disk gives a
    writer that writes each byte once and syncs once a shard, the ceiling of any store format."""
    buffer = np.random.default_rng(2).bytes(chunk_bytes)
    with tempfile.TemporaryDirectory(dir=folder, prefix="imgsearch-disk-bench-") as work:
        fd = os.open(Path(work) / "append", os.O_WRONLY | os.O_CREAT)
        try:
            started = time.perf_counter()
            for _ in range(chunks):
                os.write(fd, buffer)
                os.fsync(fd)
            seconds = time.perf_counter() - started
        finally:
            os.close(fd)
    return chunk_bytes * chunks / seconds / 1e6


def ivf_index(kind: str, nlist: int) -> faiss.Index:
    quantizer = faiss.IndexFlatIP(EMBED_DIM)
    if kind == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, EMBED_DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf_sq8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, EMBED_DIM, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    else:  # ivf_pq: 32 sub-vectors of 8 dimensions, one byte each
        index = faiss.IndexIVFPQ(quantizer, EMBED_DIM, nlist, 32, 8, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    return index


def serialized_bytes(index: faiss.Index) -> int:
    return len(faiss.serialize_index(index))


def faiss_add_rate(kind: str, nlist: int, count: int) -> tuple[float, float, float]:
    """Training seconds, vectors/s of add, bytes per vector."""
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((count, EMBED_DIM)).astype(np.float32)  # (N, d)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = ivf_index(kind, nlist)
    sample = vectors[: max(nlist * 64, 256 * 64)]  # (S, d): 64 points a list, and a PQ codebook's 256 centroids
    started = time.perf_counter()
    index.train(sample)
    trained = time.perf_counter() - started
    empty = serialized_bytes(index)
    ids = np.arange(count, dtype=np.int64)
    started = time.perf_counter()
    for start in range(0, count, 65_536):
        index.add_with_ids(vectors[start : start + 65_536], ids[start : start + 65_536])
    added = time.perf_counter() - started
    return trained, count / added, (serialized_bytes(index) - empty) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--faiss-vectors", type=int, default=200_000)
    parser.add_argument("--nlist", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--folder", default=tempfile.gettempdir())
    parser.add_argument("--report", default=None, help="append the tables to this file (bench/RESULTS.md)")
    args = parser.parse_args()
    lines = [
        f"Machine: {describe()}. Threads: faiss {faiss.omp_get_max_threads()}. Store in {args.folder}.",
        "",
        "| writer: ShardWriter.merge | shards x images | rows/s | p50 ms per shard | MB/s of regions | "
        "bytes on disk per image |",
        "|---|---|---|---|---|---|",
    ]
    ceilings = []
    for shard_size in sorted({args.shard_size, 1024}):
        shards = max(8, args.shards * args.shard_size // shard_size)
        rate, p50, disk = sqlite_merge_rate(shards, shard_size, args.folder)
        ceilings.append((shard_size, disk, disk_append_rate(args.folder, int(disk * shard_size)), rate))
        lines.append(
            f"| 256-d global, 49 x 256 fp16 regions, 5 labels | {shards} x {shard_size} | {rate:,.0f} | "
            f"{p50:.0f} | {rate * NUM_REGIONS * EMBED_DIM * 2 / 1e6:.0f} | {disk:,.0f} |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "| the disk, in the same run: fsync'd appends of one shard's bytes | MB/s | rows/s if each row were written "
        "once | the writer's share of that |",
        "|---|---|---|---|",
    ]
    for shard_size, row_bytes, mb_per_s, rate in ceilings:
        ceiling = mb_per_s * 1e6 / row_bytes
        lines.append(
            f"| {shard_size} rows x {row_bytes:,.0f} B | {mb_per_s:,.0f} | {ceiling:,.0f} | {rate / ceiling:.0%} |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        f"| FAISS index (256-d, inner product) | nlist | train s (max(64 x nlist, 16,384) points) | add: vectors/s "
        f"({args.faiss_vectors:,}) | bytes per vector | GB per 100M vectors |",
        "|---|---|---|---|---|---|",
    ]
    for nlist in args.nlist:
        for kind in ("ivf_flat", "ivf_sq8", "ivf_pq"):
            trained, rate, per_vector = faiss_add_rate(kind, nlist, args.faiss_vectors)
            name = {"ivf_flat": "IVF-flat", "ivf_sq8": "IVF-SQ8", "ivf_pq": "IVF-PQ32x8"}[kind]
            lines.append(
                f"| {name} | {nlist} | {trained:.1f} | {rate:,.0f} | {per_vector:.1f} | {per_vector * 1e8 / 1e9:.1f} |"
            )
            print(lines[-1], flush=True)
    if args.report:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with open(args.report, "a") as f:
            f.write(
                f"\n## The writer's merge rate and FAISS add rates, {stamp} (bench/benchmarks/merge_rate.py)\n\n"
                + "\n".join(lines)
                + "\n"
            )


if __name__ == "__main__":
    main()
