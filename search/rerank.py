"""Search, re-rank stage: score the FAISS candidates with the model's cross-attention scorer."""

from __future__ import annotations

import numpy as np
import torch

from imgsearch.model.fast_scorer import score_candidates_fast
from imgsearch.model.scorer import CrossAttentionScorer

__all__ = ["rerank_scores"]


def rerank_scores(
    scorer: CrossAttentionScorer,
    query_tokens: torch.Tensor,
    query_mask: torch.Tensor,
    regions: np.ndarray,
    first_stage: np.ndarray,
    fusion_weight: float = 0.0,
    chunk: int = 256,
    compute_dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """Final scores of C candidates: scorer logit + fusion_weight * first-stage cosine.

    query_tokens (T, d), query_mask (T,), regions (C, R, d) float16, first_stage (C,)
    --> (C,) float32. Candidates are scored in batches of `chunk`, never one by one.
    compute_dtype: of the scorer's matrix products; float32 gives the reference
    scores, bfloat16 is about 4x faster where the hardware runs it natively
    (model/fast_scorer.py, default_compute_dtype).
    """
    device = query_tokens.device
    logits = []
    with torch.inference_mode():
        for start in range(0, len(regions), chunk):
            block = torch.from_numpy(regions[start : start + chunk]).to(device, torch.float32)  # (c, R, d)
            logits.append(score_candidates_fast(scorer, query_tokens, query_mask, block, compute_dtype).float().cpu())
    scores = torch.cat(logits).numpy() if logits else np.zeros(0, np.float32)
    return scores + np.float32(fusion_weight) * first_stage.astype(np.float32)
