"""What a training run does (`imgsearch train`'s options): TrainConfig, the one place its
defaults live. No heavy imports, so that the command line's options take their defaults from
here without loading torch (`imgsearch train -h`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["TrainConfig", "BackboneMode"]

BackboneMode = Literal["scratch", "finetune", "frozen"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 96
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # Linear warm-up steps before the cosine decay. None: 100 when the backbone trains, none
    # when it is frozen (only fresh heads learn; 100 warm-up steps of the photo recipe's 360
    # cost 0.5 dev t2i R@1, bench/RESULTS-archive.md).
    warmup_steps: int | None = None
    loss: Literal["infonce", "vsepp"] = "infonce"
    # Weight of an ITM loss trained jointly with the encoders (ALBEF-style); 0 leaves
    # the scorer to the second stage (training/rerank_stage.py), which measured better.
    itm_weight: float = 0.0
    # Weight of a contrastive loss on the scorer's token-region alignment term over all
    # in-batch pairs: trains the region and token heads (and, from scratch, the backbone's
    # grid) for the re-ranker in the first stage. 0: the heads start in the second stage.
    local_weight: float = 0.0
    # "scratch": train the backbone from its random init; "finetune": train it at
    # lr * backbone_lr_scale; "frozen": keep it fixed and cache its features once.
    backbone_mode: BackboneMode = "scratch"
    backbone_lr_scale: float = 0.1
    scorer_lr_scale: float = 0.5  # the transformer scorer trains stably at a lower rate
    augment: bool = True  # random resized crops (no flips: captions say left and right)
    seed: int = 0
    workers: int = 0  # decoding processes while loading images
    time_limit_s: float | None = None  # stop (and save) after this much training time
    val_fraction: float = 0.05  # share of training images held out to choose fusion_weight
    rerank_depth: int = 20
    fusion_grid: tuple[float, ...] = (0.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0)
    log_every: int = 20
    # Second stage: the re-ranker on the frozen dual encoder.
    scorer_epochs: int = 20
    scorer_lr: float = 5e-4
    mine_depth: int = 20  # mined hard negatives per caption and per image
    hard_share: float = 0.5  # share of mined (vs uniform) negatives
    # First stage: every caption of each batch image joins the batch (an image's captions are
    # all its positives), instead of one drawn at random.
    multi_positive: bool = False
    # Share of each first-stage batch drawn from the second data set (train(mix=...)), e.g.
    # webcaps beside Flickr8k: half and half kept Flickr8k dev quality and broadened the
    # model; one shuffled pool of both lowered dev R@1 by 1.5 (issue 20). An epoch is one pass
    # over the first data set; the second is cycled through.
    mix_share: float = 0.5
    # Hubness correction (model/hubness.py): weight (0: none) and the caption bank's size,
    # drawn from the training captions after the first stage.
    hubness_weight: float = 0.0
    hubness_bank: int = 8192
