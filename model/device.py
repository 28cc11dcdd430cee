"""Device selection: "auto" picks CUDA when present, else the CPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from imgsearch.ground.errors import ModelConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device", "runs_on_cpu"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ModelConfigError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelConfigError("device 'cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'.")
    return resolved


def runs_on_cpu(device: object) -> bool:
    """Whether `device` surely resolves to the CPU, answered without importing torch: "cpu", or
    "auto" on a machine without an NVIDIA driver (or with CUDA_VISIBLE_DEVICES empty). False
    when only torch can tell (a GPU may be there)."""
    if device == "cpu":
        return True
    if device != "auto":
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return True
    return not (Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*")))
