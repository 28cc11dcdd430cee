"""How fast the command line answers, from a cold start (a new process each time): --help,
--version and CMD -h; a text search of a 1,000-image index with the default model, re-ranking
on; the errors that need no model; and the cost of importing the library with torch, in one run.

    python bench/benchmarks/cli_start.py [--repeat 5] [--index DIR] [--report bench/RESULTS.md]

The index: --index DIR, else bench/out/cli-start-index, made once from the first 1,000 images of
Flickr8k's dev split (../shared/data/flickr8k) with the packaged photo model. Targets (issue 22):
a search in at most 1.5 s, an error in at most 0.5 s, help in at most 0.5 s (median of --repeat).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.benchmarks.machine import append_report, describe

ROOT = Path(__file__).parents[2]
FLICKR8K = ROOT.parent / "shared" / "data" / "flickr8k"
DEFAULT_INDEX = ROOT / "bench" / "out" / "cli-start-index"


def cases(index: Path, missing: Path) -> list[tuple[str, list[str], int, float]]:
    """(name, arguments, expected exit code, target seconds)."""
    where = ["--index", str(index)]
    return [
        ("imgsearch --help", ["--help"], 0, 0.5),
        ("imgsearch --version", ["--version"], 0, 0.5),
        ("imgsearch search -h", ["search", "-h"], 0, 0.5),
        ("imgsearch index -h", ["index", "-h"], 0, 0.5),
        ("imgsearch train -h", ["train", "-h"], 0, 0.5),
        (
            'imgsearch search "a dog running on the beach" (1,000 images, re-ranked)',
            ["search", "a dog running on the beach", *where],
            0,
            1.5,
        ),
        ('imgsearch search "a dog" with no index there', ["search", "a dog", "--index", str(missing)], 1, 0.5),
        ('imgsearch search ""', ["search", "", *where], 1, 0.5),
        ("imgsearch search --image MISSING.jpg", ["search", "--image", str(missing / "a.jpg"), *where], 2, 0.5),
        ('imgsearch search "a dog" --after 01/06/2023', ["search", "a dog", "--after", "01/06/2023", *where], 2, 0.5),
        ("imgsearch index MISSING_FOLDER", ["index", str(missing / "photos"), *where], 1, 0.5),
    ]


def seconds(command: list[str], expected: int, repeat: int) -> float:
    """Median wall seconds of `command` over `repeat` runs (after one unmeasured run)."""
    times = []
    for run in range(repeat + 1):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if done.returncode != expected:
            sys.exit(f"Error: {' '.join(command)} exited {done.returncode}, expected {expected}:\n{done.stderr}")
        if run:
            times.append(elapsed)
    return statistics.median(times)


def make_index(directory: Path, entry: str) -> None:
    """The first 1,000 dev images of Flickr8k, indexed with the default model (once)."""
    if (directory / "manifest.json").exists():
        return
    if not (FLICKR8K / "dev.txt").exists():
        sys.exit(f"Error: {FLICKR8K} is missing; give an index with --index DIR.")
    names = (FLICKR8K / "dev.txt").read_text().split()[:1000]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:  # links: the index records these paths, the images stay in shared
            os.symlink(FLICKR8K / "images" / name, Path(tmp) / name)
        subprocess.run([entry, "index", tmp, "--index", str(directory)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--index", type=Path, default=DEFAULT_INDEX)
    parser.add_argument("--report", default="bench/RESULTS.md")
    args = parser.parse_args()
    entry = shutil.which("imgsearch") or sys.exit("Error: the imgsearch command is not on PATH (make setup).")
    make_index(args.index, entry)
    with tempfile.TemporaryDirectory() as missing:
        rows = [
            (name, seconds([entry, *argv], code, args.repeat), target)
            for name, argv, code, target in cases(args.index, Path(missing) / "nothing")
        ]
    rows.append(
        (
            "python -c 'import torch' (what a text search no longer loads)",
            seconds([sys.executable, "-c", "import torch"], 0, args.repeat),
            None,
        )
    )
    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    out = [
        f"\n## Command line start, {stamp} (bench/benchmarks/cli_start.py)\n",
        f"Machine: {describe()}. Median wall time of {args.repeat} cold runs each (a new process each).\n",
        "| command | seconds | target | met |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {name} | {value:.3f} | {'' if target is None else f'{target:g}'} | "
        f"{'' if target is None else 'yes' if value <= target else 'NO'} |"
        for name, value, target in rows
    ]
    report = "\n".join(out) + "\n"
    append_report(report, args.report)


if __name__ == "__main__":
    main()
