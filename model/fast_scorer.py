"""The re-ranking hot path: CrossAttentionScorer's forward for one query against C candidates,
with the same parameters and math, minus work that does not depend on the candidate.

What differs from calling the module (model/scorer.py stays the reference):
- The first layer's token self-attention and its cross-attention queries depend only on
  the query, so they are computed once, not C times.
- Attention runs on plain tensors (no nn.MultiheadAttention expand/copy overhead).
- The matrix products can run in bfloat16 (`compute_dtype`), which is 4x faster than
  float32 on CPUs with AVX512-BF16 and on GPUs; layer norms, softmax and the
  residual stream stay float32. tests/test_fast_scorer.py holds it to the reference.
"""

from __future__ import annotations

import functools
import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from imgsearch.model.scorer import CrossAttentionScorer, _FusionLayer

__all__ = ["score_candidates_fast", "default_compute_dtype"]


def score_candidates_fast(
    scorer: CrossAttentionScorer,
    query_tokens: torch.Tensor,
    query_mask: torch.Tensor,
    regions: torch.Tensor,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One query against C candidates: (T, d), (T,) bool, (C, R, d) --> logits (C,) float32.

    Equal to scorer.score_candidates(...) in eval mode (dropout off)."""
    if scorer.training:
        raise ValueError("score_candidates_fast is for inference; call scorer.eval() first.")
    count, num_regions, dim = regions.shape
    if num_regions > scorer.config.max_regions:
        raise ValueError(f"{num_regions} regions, but the scorer knows {scorer.config.max_regions} positions")
    tokens = query_tokens.float()  # (T, d)
    mask = query_mask.bool()  # (T,)
    positioned = regions.float() + scorer.region_position[:num_regions]  # (C, R, d) + (R, d)
    alignment = _alignment_one_query(tokens, mask, positioned)  # (C,)
    keys = scorer.region_norm(positioned)  # (C, R, d)
    state = tokens.unsqueeze(0)  # (1, T, d): shared by every candidate until the first cross-attention
    for layer in scorer.layers:  # (1 or C, T, d) --> (C, T, d)
        state = _fusion_layer(cast(_FusionLayer, layer), state, mask, keys, compute_dtype)
    state = scorer.out_norm(state)
    weights = mask.to(state.dtype)[None, :, None]  # (1, T, 1)
    pooled = (state * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (C, T, d) --> (C, d)
    return scorer.head(pooled).squeeze(-1) + scorer.alignment_scale * alignment  # (C,)


def _alignment_one_query(tokens: torch.Tensor, mask: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """CrossAttentionScorer.alignment_score with one token set: (T, d), (T,), (C, R, d) --> (C,)."""
    eps = 1e-6
    t = tokens / tokens.norm(dim=-1, keepdim=True).clamp_min(eps)  # (T, d)
    r = regions / regions.norm(dim=-1, keepdim=True).clamp_min(eps)  # (C, R, d)
    best = torch.einsum("td,crd->ctr", t, r).amax(dim=-1)  # (T, d) x (C, R, d) --> (C, T, R) --> (C, T)
    weights = mask.to(best.dtype)  # (T,)
    return (best * weights).sum(1) / weights.sum().clamp_min(1.0)  # (C,)


def _fusion_layer(
    layer: _FusionLayer, tokens: torch.Tensor, mask: torch.Tensor, regions: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """_FusionLayer.forward; tokens (B, T, d) with B = 1 (shared) or C, regions (C, R, d) --> (C, T, d)."""
    x = layer.norm_self(tokens)
    tokens = tokens + _self_attention(layer.self_attention, x, mask, dtype)  # (B, T, d)
    x = layer.norm_cross(tokens)
    tokens = tokens + _cross_attention(layer.cross_attention, x, regions, dtype)  # (C, T, d)
    first, last = cast(nn.Linear, layer.ffn[0]), cast(nn.Linear, layer.ffn[3])  # ffn[2] is dropout
    hidden = F.gelu(_linear(first, layer.norm_ffn(tokens), dtype))  # (C, T, m*d)
    return tokens + _linear(last, hidden, dtype)  # (C, T, d)


def _self_attention(attention, x: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Token self-attention, padding keys masked: x (B, T, d) --> (B, T, d)."""
    heads = attention.num_heads
    batch, length, dim = x.shape
    qkv = F.linear(x.to(dtype), attention.in_proj_weight.to(dtype), attention.in_proj_bias.to(dtype))  # (B, T, 3d)
    q, k, v = qkv.view(batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, d/H)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None, None, :])  # (B, H, T, d/H)
    out = out.transpose(1, 2).reshape(batch, length, dim)  # (B, T, d)
    return _linear(attention.out_proj, out, dtype)


def _cross_attention(attention, x: torch.Tensor, regions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Tokens (B, T, d), B = 1 or C, attend over every candidate's regions (C, R, d) --> (C, T, d)."""
    heads = attention.num_heads
    batch, length, dim = x.shape
    count, num_regions, _ = regions.shape
    head_dim = dim // heads
    w, b = attention.in_proj_weight.to(dtype), attention.in_proj_bias.to(dtype)  # (3d, d), (3d,)
    q = F.linear(x.to(dtype), w[:dim], b[:dim]).view(batch, length, heads, head_dim).transpose(1, 2)  # (B, H, T, d/H)
    kv = F.linear(regions.to(dtype), w[dim:], b[dim:])  # (C, R, d) --> (C, R, 2d)
    k, v = kv.view(count, num_regions, 2, heads, head_dim).permute(2, 0, 3, 1, 4)  # 2 x (C, H, R, d/H)
    scores = torch.matmul(q, k.transpose(-1, -2))  # (B|C, H, T, d/H) x (C, H, d/H, R) --> (C, H, T, R)
    weights = (scores.float() / math.sqrt(head_dim)).softmax(dim=-1).to(dtype)
    out = torch.matmul(weights, v)  # (C, H, T, R) x (C, H, R, d/H) --> (C, H, T, d/H)
    out = out.transpose(1, 2).reshape(count, length, dim)  # (C, T, d)
    return _linear(attention.out_proj, out, dtype)


def _linear(module: torch.nn.Linear, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """nn.Linear in `dtype`, result float32 (the residual stream stays float32)."""
    return F.linear(x.to(dtype), module.weight.to(dtype), module.bias.to(dtype)).float()


def default_compute_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where matrix products run natively in it (CUDA, CPUs with AVX512-BF16 or
    AMX), float32 elsewhere: emulated bfloat16 is slower than float32."""
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if _cpu_has_native_bf16() else torch.float32


@functools.cache
def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:  # not Linux: stay with float32
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))
