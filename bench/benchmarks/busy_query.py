"""Index.search latency on a quiet and on a busy machine, in one run: the library's text query
(encode, FAISS, label and hub scores, re-ranking of 100 candidates) on a 1,000-image index with
the default model, per query runtime (numpy: what a CPU search uses now; torch: the model loaded,
as every search ran before), with two CPU-bound processes beside it or none.

    python bench/benchmarks/busy_query.py [--index DIR] [--queries 60] [--report bench/RESULTS.md]

The index: as bench/benchmarks/cli_start.py makes it (1,000 Flickr8k dev images, default model).
Queries: Flickr8k dev captions. Threads: one per query, as `imgsearch search` and the server run
(imgsearch.ground.threads.use_threads; ground/threads.py says why); the last row leaves the thread
counts as a program that never calls use_threads gets them. Target (issue 22): p50 at most
100 ms busy, and the quiet numpy figure no slower than the quiet torch one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.benchmarks.cli_start import DEFAULT_INDEX, FLICKR8K, make_index
from bench.benchmarks.machine import append_report, describe


def burn() -> None:
    """A CPU-bound process: what "a busy machine" means here."""
    while True:
        pass


def captions(count: int) -> list[str]:
    lines = (FLICKR8K / "captions.tsv").read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[-1] for line in lines[1 : 1 + 5 * count : 5]]


def timed(index_dir: Path, runtime: str, queries: list[str], threads: bool, busy: int) -> dict:
    """p50/p90 ms of index.search over `queries` in a fresh process (its own thread settings)."""
    script = f"""
import json, sys, time
{"from imgsearch.ground.threads import use_threads; use_threads(1)" if threads else ""}
from imgsearch import Index
queries = json.loads(sys.stdin.read())
with Index.open({str(index_dir)!r}, device="cpu") as index:
    if {runtime == "torch"!r}:
        index.model  # loaded: text queries go through the torch model
    index.search(queries[0], k=10)  # warm: the model, the class table
    times = []
    for q in queries[1:]:
        t = time.perf_counter(); index.search(q, k=10); times.append((time.perf_counter() - t) * 1000)
print(json.dumps(times))
"""
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(busy)]
    for process in burners:
        process.start()
    try:
        out = subprocess.run(
            [sys.executable, "-c", script], input=json.dumps(queries), capture_output=True, text=True, check=True
        ).stdout
    finally:
        for process in burners:
            process.terminate()
    times = sorted(json.loads(out))
    return {"p50": statistics.median(times), "p90": times[int(0.9 * (len(times) - 1))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--report", default="bench/RESULTS.md")
    args = parser.parse_args()
    entry = shutil.which("imgsearch") or sys.exit("Error: the imgsearch command is not on PATH (make setup).")
    make_index(args.index, entry)
    queries = captions(args.queries + 1)
    rows = []
    for runtime, threads, busy in [
        ("numpy", True, 0),
        ("torch", True, 0),
        ("numpy", True, 2),
        ("torch", True, 2),
        ("numpy", False, 2),
    ]:
        started = time.perf_counter()
        result = timed(args.index, runtime, queries, threads, busy)
        rows.append((runtime, "1 (use_threads)" if threads else "library defaults", busy, result))
        print(runtime, threads, busy, result, f"{time.perf_counter() - started:.0f} s", flush=True)
    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    out = [
        f"\n## Index.search on a quiet and a busy machine, {stamp} (bench/benchmarks/busy_query.py)\n",
        f"Machine: {describe()}. {args.queries} Flickr8k dev captions, k=10, 100 candidates re-ranked, "
        "1,000-image index, default model.\n",
        "| query runtime | threads | CPU-bound processes beside it | p50 ms | p90 ms |",
        "|---|---|---|---|---|",
    ]
    out += [f"| {r} | {t} | {b} | {x['p50']:.1f} | {x['p90']:.1f} |" for r, t, b, x in rows]
    report = "\n".join(out) + "\n"
    append_report(report, args.report)


if __name__ == "__main__":
    main()
