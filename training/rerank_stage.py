"""Training, second stage (re-ranker): the cross-attention scorer, on the frozen dual encoder.

Once the dual encoder has learned the shared space, the backbone's outputs and
BERT's states are fixed inputs; only the region and token heads and the
cross-attention scorer learn, which costs seconds per epoch instead of minutes.
Negatives are mined over the whole training set from the frozen first stage:
for each caption, the images it ranks highest but that it does not describe,
and for each image, its highest-ranked foreign captions. These are exactly the
candidates the re-ranker faces at query time. A share of uniform negatives
keeps a learning signal while the hardest ones are still indistinguishable.

The loss is listwise: each caption's true image must outscore `negatives`
drawn negatives (softmax cross-entropy), and each image's caption likewise.
This trains the ordering the re-ranker is used for; with a pointwise
(binary ITM) loss, the easy negatives dominated and the hard ones plateaued.

(Training the scorer jointly with the encoders, as ALBEF does, was measured
here first: on the synthetic scenes its ITM accuracy stayed near the
constant-prediction level for hundreds of steps while the features moved.)
"""

from __future__ import annotations

import logging
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from imgsearch.model.alignment import AlignmentModel
from imgsearch.training.data import CaptionBank

__all__ = ["train_scorer", "mine_negatives"]

log = logging.getLogger(__name__)


def mine_negatives(sim: torch.Tensor, is_match, depth: int) -> list[list[int]]:
    """For each row of sim (queries x gallery), up to `depth` highest-scoring gallery
    indices j with not is_match(row, j), best first."""
    extra = min(sim.shape[1], depth * 2 + 8)
    top = torch.topk(sim, extra, dim=1).indices.tolist()  # (Q, extra)
    return [[j for j in row if not is_match(q, j)][:depth] for q, row in enumerate(top)]


def _frozen_inputs(
    model: AlignmentModel,
    pixels: torch.Tensor,
    bank: CaptionBank,
    batch_size: int = 128,
    backbone_features: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """Backbone regions (N, R, C) float16, image vectors (N, d), caption vectors (Nc, d).

    `backbone_features`: the backbone's (regions (N, R, C), global (N, G)) for `pixels`, when a
    frozen backbone's outputs are cached already; else the backbone runs here."""
    assert bank.states is not None and bank.mask is not None  # cached: the re-ranker stage's text encoder is frozen
    device = model.device
    raw_regions, image_global, text_global = [], [], []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            if backbone_features is not None:
                regions = backbone_features[0][start : start + batch_size].float().to(device)
                global_features = backbone_features[1][start : start + batch_size].float().to(device)
            else:
                regions, global_features = model.image.backbone_features(pixels[start : start + batch_size].to(device))
            raw_regions.append(regions.to(torch.float16).cpu())
            image_global.append(model.image.project(regions, global_features).global_.float().cpu())
        for start in range(0, len(bank.captions), 1024):
            states = bank.states[start : start + 1024].float().to(device)
            text_global.append(model.text.project(states, bank.mask[start : start + 1024].to(device))[1].float().cpu())
    return torch.cat(raw_regions), torch.cat(image_global), torch.cat(text_global)


def train_scorer(
    model: AlignmentModel,
    pixels: torch.Tensor,
    bank: CaptionBank,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    mine_depth: int,
    hard_share: float,
    seed: int,
    negatives: int = 3,
    heads_from_global: bool = True,
    on_epoch=None,
    backbone_features: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    assert bank.states is not None and bank.mask is not None  # cached: the re-ranker stage's text encoder is frozen
    rng = random.Random(seed)
    model.eval()
    started = time.perf_counter()
    raw_regions, image_global, text_global = _frozen_inputs(model, pixels, bank, backbone_features=backbone_features)
    caption_sets = [set(bank.captions[c] for c in own) for own in bank.captions_of]

    def describes(caption: int, image: int) -> bool:
        return bank.captions[caption] in caption_sets[image]

    hard_images = mine_negatives(text_global @ image_global.T, describes, mine_depth)  # per caption
    hard_captions = mine_negatives(image_global @ text_global.T, lambda i, c: describes(c, i), mine_depth)
    log.info("re-ranker stage: mined negatives in %.0fs", time.perf_counter() - started)

    # Start the region and token heads from the trained global heads: they read the
    # same inputs (backbone channels, BERT states), so token-region cosines begin in
    # the learned shared space instead of a random one.
    # (Unless the first stage trained them already, through the alignment term.)
    if heads_from_global:
        model.image.region_head.load_state_dict(model.image.global_head.state_dict())
        model.text.token_head.load_state_dict(model.text.global_head.state_dict())
    heads = [model.image.region_head, model.text.token_head, model.scorer]
    params = [p for module in heads for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    device = model.device
    num_images, num_captions = len(bank.captions_of), len(bank.captions)
    for epoch in range(epochs):
        for module in heads:
            module.train()
        order = list(range(num_images))
        rng.shuffle(order)
        losses, correct, seen = [], 0, 0
        for start in range(0, num_images - 1, batch_size):
            images = order[start : start + batch_size]
            captions = [rng.choice(bank.captions_of[i]) for i in images]
            b = len(images)
            # text->image lists: [true image, n negatives] per caption; image->text likewise.
            image_lists = [
                [i]
                + [
                    _draw(hard_images[c], rng, hard_share, num_images, lambda j, c=c: describes(c, j))
                    for _ in range(negatives)
                ]
                for i, c in zip(images, captions)
            ]
            caption_lists = [
                [c]
                + [
                    _draw(hard_captions[i], rng, hard_share, num_captions, lambda k, i=i: describes(k, i))
                    for _ in range(negatives)
                ]
                for i, c in zip(images, captions)
            ]
            n = negatives + 1
            region_index = [j for row in image_lists for j in row] + [i for i in images for _ in range(n)]  # (2*B*n,)
            caption_index = [c for c in captions for _ in range(n)] + [k for row in caption_lists for k in row]
            regions = model.image.region_head(raw_regions[region_index].float().to(device))  # (2Bn, R, d)
            tokens = model.text.token_head(bank.states[caption_index].float().to(device))  # (2Bn, T, d)
            mask = bank.mask[caption_index].to(device)  # (2Bn, T)
            logits = model.scorer(tokens, mask, regions).view(2 * b, n)  # (2Bn,) --> (2B, n): column 0 is the match
            loss = F.cross_entropy(logits, torch.zeros(2 * b, dtype=torch.long, device=device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            losses.append(loss.item())
            correct += int((logits.argmax(1) == 0).sum())
            seen += 2 * b
        model.eval()
        log.info(
            "re-ranker epoch %d/%d: listwise loss %.3f, match ranked first in %.3f of lists of %d",
            epoch + 1,
            epochs,
            np.mean(losses),
            correct / max(seen, 1),
            negatives + 1,
        )
        if on_epoch is not None:
            on_epoch(epoch)


def _draw(hard: list[int], rng: random.Random, hard_share: float, population: int, is_match) -> int:
    """A hard negative with probability hard_share (uniform among the mined ones), else a random non-match."""
    if hard and rng.random() < hard_share:
        return rng.choice(hard)
    for _ in range(100):
        candidate = rng.randrange(population)
        if not is_match(candidate):
            return candidate
    return hard[0] if hard else rng.randrange(population)
