"""The cross-attention scorer (model core; search's re-rank stage): query tokens attend over a candidate's regions.

Each layer (as in ALBEF's fusion encoder) is token self-attention, then
cross-attention (queries: text tokens; keys/values: regions plus a learned
position embedding, so spatial relations are visible), then a feed-forward
block, all pre-norm with residuals. The masked mean of the token outputs gives
one image-text matching logit per candidate.
"""

from __future__ import annotations

import torch
from torch import nn

from imgsearch.model.config import ScorerConfig  # defined with the other configs (no torch there)

__all__ = ["ScorerConfig", "CrossAttentionScorer"]


class _FusionLayer(nn.Module):
    """Pre-norm block: token self-attention, cross-attention over regions, feed-forward.

    Self-attention lets tokens compare what they found (e.g. where "circle" and
    "square" sit) so relations and attribute binding can be checked.
    """

    def __init__(self, dim: int, config: ScorerConfig) -> None:
        super().__init__()
        heads, ffn_mult, dropout = config.num_heads, config.ffn_mult, config.dropout
        assert heads is not None and ffn_mult is not None and dropout is not None  # set when there are layers
        self.norm_self = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim * ffn_mult),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim * ffn_mult, dim),
        )

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        # tokens (C, T, d), padding (C, T) True on padding, regions (C, R, d) --> (C, T, d)
        x = self.norm_self(tokens)
        tokens = tokens + self.self_attention(x, x, x, key_padding_mask=padding, need_weights=False)[0]
        x = self.norm_cross(tokens)
        # (C, T, d) attend over (C, R, d): every region is real, so no key mask
        tokens = tokens + self.cross_attention(x, regions, regions, need_weights=False)[0]
        return tokens + self.ffn(self.norm_ffn(tokens))


class CrossAttentionScorer(nn.Module):
    def __init__(self, config: ScorerConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.region_position = nn.Parameter(_grid_positions(config.max_regions, embed_dim))  # (R_max, d)
        self.region_norm = nn.LayerNorm(embed_dim)
        self.layers = nn.ModuleList(_FusionLayer(embed_dim, config) for _ in range(config.num_layers))
        self.out_norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, 1)
        # Scale of the token-region alignment term (see alignment_score), learned.
        self.alignment_scale = nn.Parameter(torch.tensor(5.0))

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """tokens (C, T, d), token_mask (C, T) bool, regions (C, R, d) --> logits (C,)."""
        num_regions = regions.shape[1]
        if num_regions > self.config.max_regions:
            raise ValueError(f"{num_regions} regions, but the scorer knows {self.config.max_regions} positions")
        positioned = regions + self.region_position[:num_regions]  # (C, R, d) + (R, d)
        alignment = self.alignment_score(tokens, token_mask, positioned)  # (C,)
        regions = self.region_norm(positioned)
        padding = ~token_mask
        for layer in self.layers:
            tokens = layer(tokens, padding, regions)  # (C, T, d)
        tokens = self.out_norm(tokens)
        mask = token_mask.unsqueeze(-1).to(tokens.dtype)  # (C, T, 1)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (C, T, d) --> (C, d)
        return self.head(pooled).squeeze(-1) + self.alignment_scale * alignment  # (C, 1) --> (C,)

    @staticmethod
    def alignment_score(tokens: torch.Tensor, token_mask: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Mean over tokens of each token's best cosine with a region (SCAN-style).

        A direct matching signal the attention layers build on: every word must
        find a region that fits it, position included. tokens (C, T, d), token_mask
        (C, T), regions (C, R, d) --> (C,)
        """
        eps = 1e-6
        t = tokens / tokens.norm(dim=-1, keepdim=True).clamp_min(eps)
        r = regions / regions.norm(dim=-1, keepdim=True).clamp_min(eps)
        best = torch.einsum("ctd,crd->ctr", t, r).amax(dim=-1)  # (C, T, d) x (C, R, d) --> (C, T, R) --> (C, T)
        mask = token_mask.to(best.dtype)
        return (best * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (C,)

    def score_candidates(
        self, query_tokens: torch.Tensor, query_mask: torch.Tensor, regions: torch.Tensor
    ) -> torch.Tensor:
        """One query against C candidates in one batch: (T, d), (T,), (C, R, d) --> (C,)."""
        count = regions.shape[0]
        tokens = query_tokens.unsqueeze(0).expand(count, -1, -1)  # (T, d) --> (C, T, d)
        mask = query_mask.unsqueeze(0).expand(count, -1)  # (T,) --> (C, T)
        return self(tokens, mask, regions)


def _grid_positions(count: int, dim: int) -> torch.Tensor:
    """2-D sinusoidal start for the learned region positions, row-major over a square grid.

    Half the channels encode the row, half the column, with amplitude 0.5 (the scale of
    tanh region features), so where a region sits is visible from the first step;
    a small random init took many epochs to grow large enough to matter.
    """
    side = max(1, int(round(count**0.5)))
    index = torch.arange(count)
    rows, cols = (index // side).float(), (index % side).float()  # (R,), (R,)
    quarter = max(1, dim // 4)
    frequencies = 1.0 / (side ** (torch.arange(quarter).float() / quarter))  # (dim/4,)
    angles_r, angles_c = rows[:, None] * frequencies * torch.pi, cols[:, None] * frequencies * torch.pi  # (R, dim/4)
    table = torch.cat([angles_r.sin(), angles_r.cos(), angles_c.sin(), angles_c.cos()], dim=1)  # (R, 4*(dim/4))
    out = torch.zeros(count, dim)
    out[:, : table.shape[1]] = 0.5 * table[:, :dim]
    return out
