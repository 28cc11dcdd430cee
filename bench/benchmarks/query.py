"""Query latency and approximate-search recall at 10k, 100k and 1M indexed images.

    python bench/benchmarks/query.py EMBEDDINGS.npz MODEL_DIR [--sizes 10000,100000,1000000] [--store-rows 20000]

Vectors: the real model's global vectors of the Flickr8k images (bench/benchmarks/flickr8k_embeddings.py),
then synthetic ones: a real image vector plus Gaussian noise with the real vectors'
covariance (scale 0.5, which gives the same nearest-neighbour cosines as the real set at
equal size), L2-normalised. Queries: real Flickr8k dev captions through the real text
encoder (text against image vectors). Recall@10 and @100 of the index choose_spec picks,
against exact search. Whole-query stages: text encoding, FAISS top-100, fetching the 100
candidates' region features (and the top-10 rows) from a real SQLite store, re-ranking.
The store holds --store-rows real images' features (float16, as indexed); beyond that,
candidate ids are folded onto its rows (id mod rows), so fetch time at 100k and 1M is
measured on the smaller store (warm page cache). Everything runs on one thread (see
README: on a shared 2-core machine, two threads were slower).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from bench.benchmarks.machine import describe, percentiles_ms
from imgsearch.ground.threads import QUERY_THREADS, use_threads
from imgsearch.images.decode import ImageRecord
from imgsearch.model.alignment import AlignmentModel
from imgsearch.search.rerank import rerank_scores
from imgsearch.storage.store import Put, Store
from imgsearch.storage.vectors import IndexSpec, VectorIndex

NOISE_SCALE = 0.5
CANDIDATES = 100


def synthetic_vectors(real: np.ndarray, count: int, seed: int) -> np.ndarray:
    """(count, d) unit vectors: real[random] + NOISE_SCALE * N(0, cov(real)), in chunks."""
    rng = np.random.default_rng(seed)
    centred = real - real.mean(0)
    eigenvalues, basis = np.linalg.eigh(np.cov(centred.T))  # (d,), (d, d)
    shape = basis * np.sqrt(np.clip(eigenvalues, 0, None))  # (d, d): z @ shape.T ~ N(0, cov)
    out = np.empty((count, real.shape[1]), np.float32)
    for start in range(0, count, 100_000):
        n = min(100_000, count - start)
        noise = rng.standard_normal((n, real.shape[1])).astype(np.float32) @ shape.T.astype(np.float32)
        block = real[rng.integers(0, len(real), n)] + NOISE_SCALE * noise  # (n, d)
        out[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def build_store(path: Path, regions: np.ndarray, global_: np.ndarray, rows: int) -> Store:
    """A real SQLite store of `rows` images, cycling through the real region features."""
    count, num_regions, dim = regions.shape
    store = Store(path, dim, num_regions)
    for start in range(0, rows, 2000):
        batch = []
        for i in range(start, min(rows, start + 2000)):
            sha = hashlib.sha256(str(i).encode()).hexdigest()  # distinct contents: one embeddings row each
            record = ImageRecord(
                path=f"/synthetic/{i:08d}.jpg", size=20_000, mtime=0.0, ctime=0.0, sha256=sha, width=500, height=375
            )
            batch.append(Put(record, global_[i % count], regions[i % count].astype(np.float16)))
        store.apply(batch)
    return store


def recall(found: list[np.ndarray], truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def time_searches(index: VectorIndex, queries: np.ndarray, k: int) -> tuple[list[np.ndarray], list[float]]:
    found, seconds = [], []
    for q in queries:
        started = time.perf_counter()
        _, ids = index.search(q, k)
        seconds.append(time.perf_counter() - started)
        found.append(ids)
    return found, seconds


def index_bytes(index: VectorIndex) -> int:
    """Serialized size: for flat and IVF indexes this is the RAM they hold, within a few KB."""
    return int(faiss.serialize_index(index.index).nbytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("embeddings")
    parser.add_argument("model")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200, help="timed whole queries per size")
    parser.add_argument("--recall-queries", type=int, default=1000)
    parser.add_argument("--store-rows", type=int, default=20_000)
    parser.add_argument("--sweep", default="32,64,128,256", help="nprobe values tried at the largest size")
    parser.add_argument("--report", default="bench/RESULTS.md")
    args = parser.parse_args()
    use_threads(QUERY_THREADS)  # as `imgsearch search` runs
    machine_before = describe()

    data = np.load(args.embeddings)
    real = data["image_global"].astype(np.float32)  # (Ni, d)
    captions = [str(c) for c in data["captions"]]
    caption_vectors = data["caption_global"].astype(np.float32)  # (Nc, d)
    rng = np.random.default_rng(1)
    recall_rows = rng.choice(len(captions), min(args.recall_queries, len(captions)), replace=False)
    timed_rows = recall_rows[: args.queries]
    sizes = [int(s) for s in args.sizes.split(",")]
    largest = max(sizes)
    everything = np.concatenate([real, synthetic_vectors(real, max(0, largest - len(real)), seed=0)])  # (N, d)
    ids_all = np.arange(1, len(everything) + 1, dtype=np.int64)

    model = AlignmentModel.from_pretrained(args.model, device="cpu")
    work = Path(tempfile.mkdtemp(prefix="imgsearch-query-bench-"))
    store_rows = min(args.store_rows, largest)
    started = time.perf_counter()
    store = build_store(work / "index.db", data["image_regions"], real, store_rows)
    store_build = time.perf_counter() - started
    # Into the main file first: the build's 2,000-image transactions leave a WAL file that
    # large, which an index written in batches of 32 never has.
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db_bytes = sum(p.stat().st_size for p in work.iterdir() if p.name.startswith("index.db"))

    lines = []
    sweep_lines = []
    for size in sizes:
        vectors, ids = everything[:size], ids_all[:size]
        queries = caption_vectors[recall_rows]
        _, truth = faiss.knn(queries, vectors, CANDIDATES, metric=faiss.METRIC_INNER_PRODUCT)  # exact, (Q, 100) rows
        truth = ids[truth]
        started = time.perf_counter()
        index = VectorIndex.build(ids, vectors, vectors.shape[1])
        build_s = time.perf_counter() - started
        spec = index.spec
        found, faiss_seconds = time_searches(index, queries, CANDIDATES)
        exact_p50 = (
            percentiles_ms(
                time_searches(
                    VectorIndex.build(ids, vectors, vectors.shape[1], IndexSpec("flat")), queries[:100], CANDIDATES
                )[1]
            )[0]
            if spec.kind != "flat"
            else None
        )
        row = {
            "size": size,
            "spec": spec,
            "build_s": build_s,
            "recall10": recall(found, truth, 10),
            "recall100": recall(found, truth, CANDIDATES),
            "faiss": percentiles_ms(faiss_seconds),
            "exact_p50": exact_p50,
            "ram_per_image": index_bytes(index) / size,
        }
        faiss_path = work / "vectors.faiss"
        index.save(faiss_path)
        row["faiss_disk_per_image"] = faiss_path.stat().st_size / size
        # whole queries
        stages = {"encode": [], "faiss": [], "fetch": [], "rerank_reference": [], "rerank_fp32": [], "rerank_bf16": []}
        for r in timed_rows:
            t0 = time.perf_counter()
            with torch.inference_mode():
                query = model.text.encode([captions[r]])
            t1 = time.perf_counter()
            scores, cand = index.search(query.global_[0].numpy(), CANDIDATES)
            t2 = time.perf_counter()
            rows_in_store = ((cand - 1) % store_rows + 1).tolist()
            regions = store.regions(rows_in_store)  # (100, R, d) float16
            t3 = time.perf_counter()
            for name, dtype in (("rerank_fp32", torch.float32), ("rerank_bf16", torch.bfloat16)):
                s = time.perf_counter()
                final = rerank_scores(
                    model.scorer,
                    query.tokens[0],
                    query.mask[0],
                    regions,
                    scores,
                    model.config.fusion_weight,
                    compute_dtype=dtype,
                )
                top = np.argsort(-final, kind="stable")[:10]
                stages[name].append(time.perf_counter() - s)
            s = time.perf_counter()
            with torch.inference_mode():  # the reference: CrossAttentionScorer called as a module
                model.scorer.score_candidates(query.tokens[0], query.mask[0], torch.from_numpy(regions).float())
            stages["rerank_reference"].append(time.perf_counter() - s)
            s = time.perf_counter()
            store.images([rows_in_store[i] for i in top])  # the result rows
            stages["fetch"].append(t3 - t2 + time.perf_counter() - s)
            stages["encode"].append(t1 - t0)
            stages["faiss"].append(t2 - t1)
        base = np.array(stages["encode"]) + np.array(stages["faiss"]) + np.array(stages["fetch"])
        row["stages"] = {name: percentiles_ms(v) for name, v in stages.items()}
        row["total_fp32"] = percentiles_ms(base + np.array(stages["rerank_fp32"]))
        row["total_bf16"] = percentiles_ms(base + np.array(stages["rerank_bf16"]))
        row["load"] = os.getloadavg()[0]
        lines.append(row)
        print(
            f"size {size}: {spec}, recall@10 {row['recall10']:.3f}, faiss p50 {row['faiss'][0]:.2f} ms, "
            f"total p50 fp32 {row['total_fp32'][0]:.1f} / bf16 {row['total_bf16'][0]:.1f} ms",
            file=sys.stderr,
        )
        if size == largest and spec.kind != "flat":
            for nprobe in [int(n) for n in args.sweep.split(",")]:
                faiss.extract_index_ivf(index.index).nprobe = nprobe
                f, secs = time_searches(index, queries, CANDIDATES)
                sweep_lines.append(
                    (spec.kind, nprobe, recall(f, truth, 10), recall(f, truth, CANDIDATES), percentiles_ms(secs)[0])
                )
            sq8 = IndexSpec("ivf_sq8", spec.nlist, spec.nprobe)
            started = time.perf_counter()
            small = VectorIndex.build(ids, vectors, vectors.shape[1], sq8)
            sq8_build = time.perf_counter() - started
            for nprobe in [int(n) for n in args.sweep.split(",")]:
                faiss.extract_index_ivf(small.index).nprobe = nprobe
                f, secs = time_searches(small, queries, CANDIDATES)
                sweep_lines.append(
                    ("ivf_sq8", nprobe, recall(f, truth, 10), recall(f, truth, CANDIDATES), percentiles_ms(secs)[0])
                )
            sq8_bytes = index_bytes(small) / size
            del small
    store.close()
    report = format_report(
        args,
        lines,
        sweep_lines,
        machine_before,
        store_rows,
        store_build,
        db_bytes,
        locals().get("sq8_bytes"),
        locals().get("sq8_build"),
        len(real),
    )
    print(report)
    with open(args.report, "a") as f:
        f.write(report)
    print(f"appended to {args.report}", file=sys.stderr)
    for p in work.iterdir():
        p.unlink()
    work.rmdir()


def format_report(
    args, lines, sweep_lines, machine, store_rows, store_build, db_bytes, sq8_bytes, sq8_build, real_count
) -> str:
    import datetime as dt

    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    out = [
        f"\n## Query latency and ANN recall, {stamp} (bench/benchmarks/query.sh)\n",
        f"Machine: {machine}. One thread (torch and FAISS).",
        f"Vectors: {real_count} real Flickr8k image vectors from {args.model}, the rest synthetic "
        f"(real vector + {NOISE_SCALE} x Gaussian noise with the real covariance). Queries: "
        f"{args.recall_queries} real dev captions for recall, {args.queries} of them timed end to end. "
        f"Store: {store_rows} real images' features (float16) in SQLite, built in {store_build:.0f} s; "
        f"larger sizes fetch from it by id mod {store_rows} (warm page cache).\n",
        "| images | index | build s | recall@10 | recall@100 | FAISS p50 / p95 / p99 ms | exact p50 ms | "
        "encode p50 | fetch p50 | re-rank reference module p50 | re-rank fp32 p50 | re-rank bf16 p50 | "
        "whole query fp32 p50 / p95 / p99 | "
        "whole query bf16 p50 / p95 / p99 | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in lines:
        s = r["spec"]
        name = "flat (exact)" if s.kind == "flat" else f"{s.kind} nlist {s.nlist} nprobe {s.nprobe}"
        st = r["stages"]
        exact = f"{r['exact_p50']:.2f}" if r["exact_p50"] is not None else "-"
        out.append(
            f"| {r['size']:,} | {name} | {r['build_s']:.1f} | {r['recall10']:.3f} | {r['recall100']:.3f} | "
            f"{r['faiss'][0]:.2f} / {r['faiss'][1]:.2f} / {r['faiss'][2]:.2f} | {exact} | "
            f"{st['encode'][0]:.1f} | {st['fetch'][0]:.1f} | {st['rerank_reference'][0]:.1f} | "
            f"{st['rerank_fp32'][0]:.1f} | {st['rerank_bf16'][0]:.1f} | "
            f"{r['total_fp32'][0]:.1f} / {r['total_fp32'][1]:.1f} / {r['total_fp32'][2]:.1f} | "
            f"{r['total_bf16'][0]:.1f} / {r['total_bf16'][1]:.1f} / {r['total_bf16'][2]:.1f} | {r['load']:.2f} |"
        )
    if sweep_lines:
        out += [
            "",
            f"nprobe sweep at {max(r['size'] for r in lines):,} images (same queries):",
            "",
            "| index | nprobe | recall@10 | recall@100 | FAISS p50 ms |",
            "|---|---|---|---|---|",
        ]
        out += [f"| {k} | {n} | {r10:.3f} | {r100:.3f} | {p:.2f} |" for k, n, r10, r100, p in sweep_lines]
    out += ["", "Bytes per indexed image:", ""]
    out.append(f"- SQLite on disk: {db_bytes / store_rows:,.0f} B (region features float16 + global float32 + row)")
    for r in lines:
        out.append(
            f"- FAISS at {r['size']:,}: {r['ram_per_image']:.0f} B in RAM, {r['faiss_disk_per_image']:.0f} B on disk"
        )
    if sq8_bytes:
        out.append(
            f"- ivf_sq8 at {max(r['size'] for r in lines):,}: {sq8_bytes:.0f} B in RAM (built in {sq8_build:.0f} s)"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
