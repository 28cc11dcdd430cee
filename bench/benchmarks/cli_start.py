"""How fast the command line answers --help, --version and CMD -h, next to the cost of
loading the library itself (what every command that opens an index pays), in one run.

    python bench/benchmarks/cli_start.py [--repeat 5] [--report bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import subprocess
import sys
import time

from bench.benchmarks.machine import describe

CASES = [
    ("imgsearch --help", ["--help"]),
    ("imgsearch --version", ["--version"]),
    ("imgsearch search -h", ["search", "-h"]),
    ("imgsearch index -h", ["index", "-h"]),
    ("imgsearch train -h", ["train", "-h"]),
]


def seconds(command: list[str], repeat: int) -> float:
    """Median wall seconds of `command` over `repeat` runs (after one unmeasured run)."""
    subprocess.run(command, check=True, capture_output=True)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--report", default="bench/RESULTS.md")
    args = parser.parse_args()
    entry = shutil.which("imgsearch") or sys.exit("Error: the imgsearch command is not on PATH (make setup).")
    rows = [(name, seconds([entry, *argv], args.repeat)) for name, argv in CASES]
    rows.append(("python -c 'import imgsearch.index' (the library, torch included)",
                 seconds([sys.executable, "-c", "import imgsearch.index"], args.repeat)))
    stamp = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    out = [f"\n## Command line start, {stamp} (bench/benchmarks/cli_start.py)\n",
           f"Machine: {describe()}. Median wall time of {args.repeat} runs each (target: under 0.5 s for "
           "help and version).\n", "| command | seconds |", "|---|---|"]
    out += [f"| {name} | {value:.3f} |" for name, value in rows]
    report = "\n".join(out) + "\n"
    print(report)
    with open(args.report, "a") as f:
        f.write(report)


if __name__ == "__main__":
    main()
