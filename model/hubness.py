"""Hubness correction (model core; search's first-stage score): some images sit close to almost
every query and crowd the top of every list. Each image gets a hub score

    r(i) = mean of image i's k highest cosines with a bank of training captions

and the first stage ranks by cos(q, i) - weight * r(i) (CSLS from word translation, QB-Norm's
idea in retrieval). The bank (projected caption vectors, float16) travels in the model
directory; r(i) depends on the image alone, so an index can compute it once per image.
"""

from __future__ import annotations

import torch
from torch import nn

from imgsearch.model.config import HubnessConfig  # defined with the other configs (no torch there)

__all__ = ["HubnessConfig", "HubnessCorrection"]


class HubnessCorrection(nn.Module):
    def __init__(self, config: HubnessConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        bank = torch.zeros(config.bank_size, embed_dim, dtype=torch.float16)  # (Nb, d)
        if config.bank_size:
            self.register_buffer("bank", bank)
        else:
            self.bank = bank  # no correction: nothing to save or load

    def scores(self, image_vectors: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """L2-normalised image vectors (n, d) --> hub scores r (n,) float32 (zeros without a bank)."""
        if not len(self.bank) or not len(image_vectors):
            return torch.zeros(len(image_vectors))
        bank = self.bank.float().to(image_vectors.device)
        k = min(self.config.k, len(bank))
        out = []
        for start in range(0, len(image_vectors), chunk):
            cosines = image_vectors[start : start + chunk].float() @ bank.T  # (c, d) x (d, Nb) --> (c, Nb)
            out.append(cosines.topk(k, dim=1).values.mean(dim=1).cpu())  # (c,)
        return torch.cat(out)

    def set_bank(self, caption_vectors: torch.Tensor) -> None:
        """Keep these projected, L2-normalised caption vectors (Nb, d) as the bank."""
        self.bank = caption_vectors.detach().to(torch.float16).cpu().contiguous()
