"""Training, second stage: choose the re-ranker on held-out images (which epoch to keep, its fusion weight).

The re-ranker is trained on images the first stage has already fitted, so its
training loss says little about how it ranks new images: on Flickr8k, second-stage
epochs lowered held-out recall while the training loss fell. Every candidate
(the scorer before the second stage, then after each of its epochs) is therefore
scored on the validation captions' top-`depth` first-stage candidates, every
fusion weight of the grid is tried on those scores, and the best pair by
text->image R@1 is kept (on ties, the earlier epoch and the smaller weight).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from imgsearch.model.alignment import AlignmentModel
from imgsearch.training.data import CaptionBank
from imgsearch.training.evaluate import embed_captions, embed_images, fused_t2i_ranks, recall_at_k, t2i_candidate_scores

__all__ = ["RerankerChoice", "RerankerSelection"]


@dataclass(frozen=True)
class RerankerChoice:
    epoch: int  # second-stage epochs trained; 0: the scorer as the first stage left it
    fusion_weight: float
    t2i_r1: float  # validation text->image R@1 after re-ranking, in percent

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "fusion_weight": self.fusion_weight, "val_t2i_R@1": self.t2i_r1}


class RerankerSelection:
    """Keeps the best (epoch, fusion weight) seen so far and a copy of the parts the
    second stage trains (the scorer and the region and token heads)."""

    def __init__(self, pixels: torch.Tensor, bank: CaptionBank, depth: int, fusion_grid: tuple[float, ...]) -> None:
        if not fusion_grid:
            raise ValueError("fusion_grid is empty")
        self.pixels, self.bank, self.depth, self.fusion_grid = pixels, bank, depth, tuple(fusion_grid)
        self.history: list[RerankerChoice] = []  # the best weight of every candidate, in order
        self.best: RerankerChoice | None = None
        self._best_state: dict[str, dict[str, torch.Tensor]] | None = None

    def consider(self, model: AlignmentModel, epoch: int) -> RerankerChoice:
        """Score the model's current re-ranker on validation; remember it if it is the best so far."""
        model.eval()
        image_global, regions = embed_images(model, self.pixels)  # (Ni, d), (Ni, R, d)
        text_global, tokens, mask = embed_captions(model, self.bank.captions)  # (Nc, d), (Nc, T, d), (Nc, T)
        sim = text_global @ image_global.T  # (Nc, Ni)
        top, scores = t2i_candidate_scores(model, sim, tokens, mask, regions, self.depth)
        choice = None
        for weight in self.fusion_grid:
            r1 = recall_at_k(fused_t2i_ranks(sim, self.bank.image_of, top, scores, weight))["R@1"]
            if choice is None or r1 > choice.t2i_r1:
                choice = RerankerChoice(epoch, weight, r1)
        assert choice is not None  # fusion_grid is not empty
        self.history.append(choice)
        if self.best is None or choice.t2i_r1 > self.best.t2i_r1:
            self.best = choice
            self._best_state = {name: copy.deepcopy(part.state_dict()) for name, part in _trained_parts(model).items()}
        return choice

    def restore(self, model: AlignmentModel) -> RerankerChoice:
        """Put the best candidate's weights back into the model; returns its choice."""
        if self.best is None:
            raise RuntimeError("no candidate was considered")
        assert self._best_state is not None  # kept with self.best
        for name, part in _trained_parts(model).items():
            part.load_state_dict(self._best_state[name])
        return self.best


def _trained_parts(model: AlignmentModel) -> dict[str, torch.nn.Module]:
    return {"scorer": model.scorer, "region_head": model.image.region_head, "token_head": model.text.token_head}
