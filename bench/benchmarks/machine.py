"""One line that says where a benchmark ran: CPU model, cores, GPU, library versions, load, commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import faiss
import numpy as np
import torch
import torchvision


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def commit() -> str:
    """The commit of the checkout the benchmark runs from (short hash), "+ changes" when files
    outside bench/ differ from it; "not recorded" outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not recorded"
    return f"{head} + changes" if changed else head


def describe() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu_model()} ({platform.machine()}, {os.cpu_count()} cores), {gpu}; torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, faiss {faiss.__version__}, numpy {np.__version__}; "
        f"load average {load_average()}; commit {commit()}"
    )


def percentiles_ms(seconds: list[float]) -> tuple[float, float, float]:
    """p50, p95, p99 in milliseconds."""
    p = np.percentile(np.asarray(seconds) * 1e3, [50, 95, 99])
    return float(p[0]), float(p[1]), float(p[2])


def append_report(report: str, path: str) -> None:
    """Print a benchmark's section and append it to the results file (bench/RESULTS.md)."""
    print(report)
    with open(path, "a") as f:
        f.write(report)
