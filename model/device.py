"""Device selection: "auto" picks CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from imgsearch.errors import ModelConfigError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
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
