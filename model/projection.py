"""The projection head of the original design notes: tanh(W.F + b)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ProjectionHead", "l2_normalize"]


class ProjectionHead(nn.Module):
    """Maps features into the shared image-text space with tanh(W.F + b)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # (..., in_dim) --> (..., out_dim)
        return torch.tanh(self.linear(features))


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
