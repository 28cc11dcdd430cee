"""Training, first stage objectives: contrastive alignment of the dual encoder, ITM for the scorer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imgsearch.model.scorer import CrossAttentionScorer

__all__ = ["infonce_loss", "multi_positive_infonce_loss", "vsepp_loss", "itm_loss", "alignment_matrix"]


def infonce_loss(sim: torch.Tensor, logit_scale: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) over a batch.

    sim (B_img, B_txt) cosine similarities; positives (B_img, B_txt) bool, True where the
    caption describes the image. Row i's target is caption i (the batch pairs image i with
    caption i); other true matches are removed from the denominators.
    """
    logits = sim * logit_scale.exp().clamp(max=100.0)  # (B, B)
    off_diagonal_matches = positives & ~torch.eye(len(sim), dtype=torch.bool, device=sim.device)
    logits = logits.masked_fill(off_diagonal_matches, float("-inf"))
    target = torch.arange(len(sim), device=sim.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def multi_positive_infonce_loss(
    sim: torch.Tensor, logit_scale: torch.Tensor, owner: torch.Tensor, positives: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE when each image brings several captions (all of its own) to the batch.

    sim (B_img, B_txt) cosines; owner (B_txt,) the image row each caption came with;
    positives (B_img, B_txt) bool, True where the caption describes the image (its text is
    one of the image's). Text->image: each caption's target is its image. Image->text: the
    target spreads evenly over the image's own captions. True matches of other images are
    removed from the denominators, as in infonce_loss.
    """
    logits = sim * logit_scale.exp().clamp(max=100.0)  # (B_img, B_txt)
    own = owner[None, :] == torch.arange(len(sim), device=sim.device)[:, None]  # (B_img, B_txt)
    logits = logits.masked_fill(positives & ~own, float("-inf"))
    text_to_image = F.cross_entropy(logits.T, owner)  # (B_txt, B_img) rows, target: the owner
    log_probs = logits.log_softmax(dim=1)  # (B_img, B_txt)
    target = own.to(sim.dtype) / own.sum(1, keepdim=True).clamp_min(1)  # (B_img, B_txt)
    image_to_text = -torch.where(own, target * log_probs, torch.zeros_like(log_probs)).sum(1).mean()
    return (text_to_image + image_to_text) / 2


def alignment_matrix(tokens: torch.Tensor, token_mask: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """The scorer's token-region alignment term for every image-caption pair of a batch.

    tokens (B_txt, T, d), token_mask (B_txt, T) bool, regions (B_img, R, d) -->
    (B_img, B_txt): for each pair, the mean over the caption's tokens of the token's
    best cosine with a region, as CrossAttentionScorer.alignment_score gives for one
    pair. Padding columns that no caption in the batch uses are dropped first.
    """
    used = token_mask.any(0)  # (T,)
    tokens, token_mask = tokens[:, used], token_mask[:, used]  # (B_txt, T', d), (B_txt, T')
    t = F.normalize(tokens, dim=-1, eps=1e-6)
    r = F.normalize(regions, dim=-1, eps=1e-6)
    best = torch.einsum("ctd,ird->ictr", t, r).amax(dim=-1)  # (B_img, B_txt, T', R) --> (B_img, B_txt, T')
    mask = token_mask.to(best.dtype)  # (B_txt, T')
    return (best * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)  # (B_img, B_txt)


def vsepp_loss(sim: torch.Tensor, positives: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """VSE++ hinge on the hardest negative in each direction (Faghri et al., 2018)."""
    diagonal = sim.diag()  # (B,)
    negatives = sim.masked_fill(positives, float("-inf"))
    hardest_caption = negatives.max(dim=1).values  # (B,) per image
    hardest_image = negatives.max(dim=0).values  # (B,) per caption
    cost = (margin + hardest_caption - diagonal).clamp(min=0) + (margin + hardest_image - diagonal).clamp(min=0)
    return cost.mean()


def itm_loss(
    scorer: CrossAttentionScorer,
    regions: torch.Tensor,
    tokens: torch.Tensor,
    token_mask: torch.Tensor,
    sim: torch.Tensor,
    positives: torch.Tensor,
    generator: torch.Generator | None = None,
    hard_share: float = 0.5,
) -> tuple[torch.Tensor, float]:
    """Image-text matching with hard negatives mined from the dual encoder (ALBEF).

    regions (B, R, d), tokens (B, T, d), token_mask (B, T), sim (B, B) image x caption,
    positives (B, B) bool. Each image gets one negative caption and each caption one
    negative image: with probability `hard_share` drawn in proportion to softmax(similarity)
    among the non-matches (the negatives the first stage finds hardest), otherwise uniformly.
    The uniform share keeps a learning signal while the hard negatives are still
    indistinguishable to the scorer (e.g. attribute swaps early in training).
    Returns (loss, accuracy on the 3B pairs).
    """
    batch = len(sim)
    with torch.no_grad():
        weights_i2t = _negative_weights(sim, positives, hard_share)  # (B, B)
        weights_t2i = _negative_weights(sim.T, positives.T, hard_share)
        negative_caption = torch.multinomial(weights_i2t, 1, generator=generator).squeeze(1)  # (B,)
        negative_image = torch.multinomial(weights_t2i, 1, generator=generator).squeeze(1)  # (B,)
    all_regions = torch.cat([regions, regions, regions[negative_image]])  # (3B, R, d)
    all_tokens = torch.cat([tokens, tokens[negative_caption], tokens])  # (3B, T, d)
    all_masks = torch.cat([token_mask, token_mask[negative_caption], token_mask])  # (3B, T)
    labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).to(sim.device)  # (3B,)
    logits = scorer(all_tokens, all_masks, all_regions)  # (3B,)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    accuracy = ((logits > 0).float() == labels).float().mean().item()
    return loss, accuracy


def _negative_weights(sim: torch.Tensor, positives: torch.Tensor, hard_share: float) -> torch.Tensor:
    """Row-stochastic sampling weights over non-matches: hard (softmax) and uniform mixed."""
    negatives = (~positives).float()  # (B, B)
    hard = F.softmax(sim.float() * 20, dim=1) * negatives
    hard = hard / hard.sum(1, keepdim=True).clamp_min(1e-12)
    uniform = negatives / negatives.sum(1, keepdim=True).clamp_min(1.0)
    return hard_share * hard + (1 - hard_share) * uniform
