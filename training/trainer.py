"""Training, first stage (dual encoder), and the run from images/caption states to the model directory.

One first-stage step: a batch of images (groups kept together) each with one of
its captions drawn at random; image and caption pass through their encoders and
projection heads; the contrastive loss aligns the global vectors (optionally also
the re-ranker's token-region alignment term, --local-weight, and image-text
matching on hard negatives mined from the batch, --itm-weight). BERT is frozen and
its states are computed once. Then the second stage trains the re-ranker
(rerank_stage.py), selection.py keeps its best epoch, and the model directory is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from imgsearch.ground.durable import replace_durably
from imgsearch.ground.errors import ImgsearchError
from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.hubness import HubnessConfig, HubnessCorrection
from imgsearch.model.scorer import CrossAttentionScorer
from imgsearch.training.captions import CaptionedImage
from imgsearch.training.config import TrainConfig  # the run's settings; `imgsearch train` takes its defaults
from imgsearch.training.data import CaptionBank, ImageBank, encode_captions, group_batches, load_images
from imgsearch.training.evaluate import evaluate, format_table
from imgsearch.training.losses import alignment_matrix, infonce_loss, itm_loss, multi_positive_infonce_loss, vsepp_loss
from imgsearch.training.rerank_stage import train_scorer
from imgsearch.training.selection import RerankerSelection

__all__ = ["TrainConfig", "train", "split_validation", "warmup_steps"]

log = logging.getLogger(__name__)

STATE_NAME = "training-state.pt"


def split_validation(items: list[CaptionedImage], fraction: float, seed: int):
    """Hold out whole groups: (train, validation)."""
    groups: dict[object, list[CaptionedImage]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.group if item.group is not None else ("image", i), []).append(item)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    count = int(round(len(keys) * fraction))
    held = set(range(count))
    val = [it for n, k in enumerate(keys) if n in held for it in groups[k]]
    train = [it for n, k in enumerate(keys) if n not in held for it in groups[k]]
    return train, val


def warmup_steps(config: TrainConfig) -> int:
    """The first stage's warm-up length: config.warmup_steps, or by default 100 steps when the
    backbone trains and none when it is frozen."""
    if config.warmup_steps is not None:
        return config.warmup_steps
    return 0 if config.backbone_mode == "frozen" else 100


def _positives(bank: CaptionBank, images: list[int], captions: list[int]) -> torch.Tensor:
    """(B_img, B_txt) bool: caption j (its text) is one of image i's captions."""
    texts = [set(bank.captions[c] for c in bank.captions_of[i]) for i in images]
    return torch.tensor([[bank.captions[c] in own for c in captions] for own in texts])


@dataclass
class _Data:
    """What training reads: the images (uint8 pixels) and their captions' BERT states, split
    into training and validation, and with a frozen backbone its cached features."""

    train_images: ImageBank
    bank: CaptionBank
    val_images: ImageBank | None
    val_bank: CaptionBank | None
    cached: tuple[torch.Tensor, torch.Tensor] | None  # (N, R, C), (N, G) float16, frozen backbone only
    primary: int  # train_images' first `primary` images are the first data set's; the rest are mixed in


@dataclass
class _FirstStage:
    """The first stage's trainable state beside the model, and how far it has come."""

    groups: list[dict]  # optimizer parameter groups, each clipped on its own
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    logit_scale: torch.nn.Parameter  # log inverse temperature of the contrastive loss
    local_scale: torch.nn.Parameter  # the same, of the alignment-term loss
    total_steps: int
    clock: dict  # {"elapsed": training seconds so far}, read by the schedule
    epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    history: list = dataclasses.field(default_factory=list)
    stopped_early: bool = False


def train(
    model: AlignmentModel,
    items: list[CaptionedImage],
    out_dir: str | os.PathLike,
    config: TrainConfig = TrainConfig(),
    *,
    resume: bool = False,
    mix: list[CaptionedImage] | None = None,
) -> dict:
    """Train `model` on captioned images and write it to `out_dir`; returns the summary that
    is also written there as training.json. Stages: data --> first stage (dual encoder, a
    checkpoint after every epoch) --> hubness bank --> second stage (re-ranker) --> model
    directory. `mix`: a second data set that fills config.mix_share of each first-stage
    batch (never held out for validation)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    data = _load_data(model, items, out_dir, config, mix or [])
    stage = _first_stage(model, data, config)
    state_path = out_dir / STATE_NAME
    if resume and state_path.exists():
        _resume(model, stage, rng, state_path, config)
    _train_first_stage(model, data, stage, rng, state_path, config)
    _fill_hubness_bank(model, data, config)
    scorer_started = time.perf_counter()
    kept, selection, scorer_history = _train_second_stage(model, data, stage, config)
    stage.elapsed += time.perf_counter() - scorer_started
    return _write_model(model, out_dir, data, stage, config, kept, selection, scorer_history)


def _load_data(
    model: AlignmentModel, items: list[CaptionedImage], out_dir: Path, config: TrainConfig, mix: list[CaptionedImage]
) -> _Data:
    """Images decoded and resized once (the mixed-in set's after the first set's), captions
    through the frozen BERT once, and with a frozen backbone its features once (cached on disk)."""
    train_items, val_items = split_validation(items, config.val_fraction, config.seed)
    size = model.config.backbone.image_size
    mixed = f" (and {len(mix)} mixed in)" if mix else ""
    log.info("loading %d training%s and %d validation images at %dpx", len(train_items), mixed, len(val_items), size)
    train_images = load_images(train_items, size, config.workers)
    primary = len(train_images.items)
    if mix:
        train_images = train_images.concat(load_images(mix, size, config.workers))
    val_images = load_images(val_items, size, config.workers) if val_items else None
    for path, error in train_images.failures:
        log.warning("skipped %s: %s", path, error)
    bank = encode_captions(model.text, train_images.items, cache_states=True)
    val_bank = encode_captions(model.text, val_images.items, cache_states=False) if val_images else None
    model.text.bert.requires_grad_(False)
    frozen = config.backbone_mode == "frozen"
    cached = _backbone_features(model, train_images.pixels, out_dir) if frozen else None
    model.image.backbone.requires_grad_(not frozen)
    return _Data(train_images, bank, val_images, val_bank, cached, primary)


def _epoch_batches(data: _Data, config: TrainConfig, rng: random.Random) -> list[list[int]]:
    """One epoch's batches of image indices: group_batches over the first data set, and with a
    mixed-in set, config.mix_share of each batch drawn from it (cycled, reshuffled each pass)."""
    mixed = len(data.train_images.items) - data.primary
    if not mixed:
        return group_batches(data.train_images.items, config.batch_size, rng)
    share = min(mixed, max(1, round(config.batch_size * config.mix_share)))
    batches = group_batches(data.train_images.items[: data.primary], config.batch_size - share, rng)
    order: list[int] = []
    for batch in batches:
        if len(order) < share:  # a new pass; what the last one left over comes first, none twice in a batch
            fresh = rng.sample(range(data.primary, data.primary + mixed), mixed)
            left = set(order)
            order += [i for i in fresh if i not in left] + [i for i in fresh if i in left]
        batch += order[:share]
        del order[:share]
    return batches


def _fill_hubness_bank(model: AlignmentModel, data: _Data, config: TrainConfig) -> None:
    """With config.hubness_weight, the hubness bank (model/hubness.py): the trained text head's
    vectors of up to config.hubness_bank training captions of the first data set, a seeded sample."""
    if not config.hubness_weight:
        return
    assert data.bank.states is not None and data.bank.mask is not None  # cached: training's text encoder is frozen
    primary_captions = [c for i in range(data.primary) for c in data.bank.captions_of[i]]
    chosen = sorted(
        random.Random(config.seed).sample(primary_captions, min(config.hubness_bank, len(primary_captions)))
    )
    with torch.inference_mode():
        vectors = torch.cat(
            [
                model.text.project(
                    data.bank.states[part].float().to(model.device), data.bank.mask[part].to(model.device)
                )[1]
                for part in torch.tensor(chosen).split(1024)
            ]
        )  # (Nb, d), L2-normalised
    hubness = HubnessConfig(weight=config.hubness_weight, k=model.config.hubness.k, bank_size=len(chosen))
    model.config = dataclasses.replace(model.config, hubness=hubness)
    model.hubness = HubnessCorrection(hubness, model.config.embed_dim).to(model.device)
    model.hubness.set_bank(vectors)
    log.info("hubness bank: %d training captions, weight %g", len(chosen), config.hubness_weight)


def _first_stage(model: AlignmentModel, data: _Data, config: TrainConfig) -> _FirstStage:
    """The optimizer (a parameter group per part, see below), the warm-up (warmup_steps()) +
    cosine schedule and the temperatures, before the first step."""
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    local_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))  # temperature of the alignment-term loss
    backbone_params = list(model.image.backbone.parameters())
    scorer_params = list(model.scorer.parameters())
    # The region and token heads (the re-ranker's inputs) are clipped apart from the global
    # heads, so that the alignment loss's gradients do not shrink the global heads' steps.
    local_params = list(model.image.region_head.parameters()) + list(model.text.token_head.parameters())
    special = {id(p) for p in backbone_params + scorer_params + local_params}
    head_params = [p for p in model.parameters() if p.requires_grad and id(p) not in special] + [logit_scale]
    if config.local_weight > 0:
        local_params.append(local_scale)
    groups = [
        {"params": head_params, "lr": config.lr},
        {"params": local_params, "lr": config.lr},
        {"params": scorer_params, "lr": config.lr * config.scorer_lr_scale},
    ]
    if config.backbone_mode != "frozen":
        scale = config.backbone_lr_scale if config.backbone_mode == "finetune" else 1.0
        groups.append({"params": backbone_params, "lr": config.lr * scale})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    steps_per_epoch = len(_epoch_batches(data, config, random.Random(0)))
    total_steps = max(1, steps_per_epoch * config.epochs)
    clock = {"elapsed": 0.0}  # training seconds so far, updated every step

    def progress(step_number: int) -> float:
        """Fraction of the run done: by steps, or by the time limit when it comes first."""
        done = step_number / total_steps
        if config.time_limit_s:
            done = max(done, clock["elapsed"] / config.time_limit_s)
        return min(done, 1.0)

    warmup = warmup_steps(config)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to 0
        optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * progress(s)))
    )
    return _FirstStage(groups, optimizer, schedule, logit_scale, local_scale, total_steps, clock)


def _resume(
    model: AlignmentModel, stage: _FirstStage, rng: random.Random, state_path: Path, config: TrainConfig
) -> None:
    """Continue from the checkpoint the last finished epoch wrote."""
    state = _load_state(state_path)
    model.load_state_dict(state["model"], strict=False)
    if state["epoch"] < config.epochs:  # the first stage goes on: its optimizer state is needed
        try:
            stage.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise ImgsearchError(
                f"{state_path} was written by a different model or version ({exc}); "
                "start again in a new --out directory."
            ) from exc
        stage.schedule.load_state_dict(state["schedule"])
    stage.logit_scale.data.copy_(state["logit_scale"])
    stage.local_scale.data.copy_(state.get("local_scale", stage.local_scale.detach()))
    stage.epoch, stage.step, stage.elapsed, stage.history = (
        state["epoch"],
        state["step"],
        state["elapsed"],
        state["history"],
    )
    rng.setstate(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    log.info("resumed from %s at epoch %d, step %d", state_path, stage.epoch, stage.step)


def _train_first_stage(
    model: AlignmentModel, data: _Data, stage: _FirstStage, rng: random.Random, state_path: Path, config: TrainConfig
) -> None:
    """The dual encoder's epochs, from stage.epoch on: steps, then validation and a checkpoint
    after each epoch; stops early at the time limit."""
    size = model.config.backbone.image_size
    crop = v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.85, 1.18), antialias=True)
    for epoch in range(stage.epoch, config.epochs):
        model.train()
        model.text.bert.eval()
        if data.cached is not None:
            model.image.backbone.eval()
        epoch_start = time.perf_counter()
        batches = _epoch_batches(data, config, rng)
        for batch_number, images in enumerate(batches):
            if config.multi_positive:  # every caption of each image; owner: its image's row
                captions = [c for i in images for c in data.bank.captions_of[i]]
                owner = [row for row, i in enumerate(images) for _ in data.bank.captions_of[i]]
            else:
                captions = [rng.choice(data.bank.captions_of[i]) for i in images]
                owner = None
            losses = _first_stage_losses(model, data, stage, config, images, captions, crop, owner)
            stage.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            for group in stage.groups:  # per group, so large encoder gradients do not shrink the scorer's
                torch.nn.utils.clip_grad_norm_(group["params"], 5.0)
            stage.optimizer.step()
            stage.clock["elapsed"] = stage.elapsed + time.perf_counter() - epoch_start
            stage.schedule.step()
            stage.step += 1
            if stage.step % config.log_every == 0:
                rate = (batch_number + 1) * config.batch_size / (time.perf_counter() - epoch_start)
                log.info(
                    "epoch %d step %d/%d: contrastive %.3f local %.3f itm %.3f (acc %.2f) temp %.3f %.0f img/s",
                    epoch + 1,
                    stage.step,
                    stage.total_steps,
                    losses["contrastive"].item(),
                    losses["local"].item(),
                    losses["matching"].item(),
                    losses["accuracy"],
                    1 / stage.logit_scale.exp().item(),
                    rate,
                )
            if (
                config.time_limit_s is not None
                and stage.elapsed + time.perf_counter() - epoch_start > config.time_limit_s
            ):
                stage.stopped_early = True
                break
        stage.elapsed += time.perf_counter() - epoch_start
        record: dict[str, Any] = {"epoch": epoch + 1, "step": stage.step, "elapsed_s": round(stage.elapsed, 1)}
        if data.val_images is not None and data.val_bank is not None:
            result = evaluate(
                model, data.val_images.pixels, data.val_bank, config.rerank_depth, rerank=config.itm_weight > 0
            )
            record["val"] = {"first_stage": result["first_stage"], "reranked": result["reranked"]}
            log.info("epoch %d validation (%.0fs):\n%s", epoch + 1, stage.elapsed, format_table(result))
        stage.history.append(record)
        _save_state(model, stage, rng, epoch + 1, state_path)
        if stage.stopped_early:
            log.info("time limit reached after %.0fs, in epoch %d", stage.elapsed, epoch + 1)
            break


def _first_stage_losses(
    model: AlignmentModel,
    data: _Data,
    stage: _FirstStage,
    config: TrainConfig,
    images: list[int],
    captions: list[int],
    crop,
    owner: list[int] | None = None,
) -> dict:
    """One batch's first-stage loss ("loss") and its parts, for the log. Caption j belongs to
    image owner[j] of the batch (None: to image j, one caption each)."""
    assert data.bank.states is not None and data.bank.mask is not None  # cached: training's text encoder is frozen
    device = model.device
    if data.cached is not None:
        regions_raw, global_raw = data.cached[0][images].float(), data.cached[1][images].float()
        image = model.image.project(regions_raw.to(device), global_raw.to(device))
    else:
        pixels = data.train_images.pixels[images]  # (B, 3, S, S) uint8
        if config.augment:
            pixels = torch.stack([crop(p) for p in pixels])
        image = model.image(model.image.normalize(pixels.to(device)))
    states = data.bank.states[captions].float().to(device)  # (B, T, h)
    mask = data.bank.mask[captions].to(device)  # (B, T)
    tokens, text_global = model.text.project(states, mask)
    sim = image.global_ @ text_global.T  # (B, d) x (d, B) --> (B, B)
    positives = _positives(data.bank, images, captions).to(device)
    owners = None if owner is None else torch.tensor(owner, device=device)

    def contrast(matrix: torch.Tensor, scale: torch.nn.Parameter) -> torch.Tensor:
        if owners is not None:
            return multi_positive_infonce_loss(matrix, scale, owners, positives)
        return infonce_loss(matrix, scale, positives)

    if config.loss == "infonce":
        contrastive = contrast(sim, stage.logit_scale)
    else:
        if owners is not None:
            raise ImgsearchError("multi_positive needs the infonce loss.")
        contrastive = vsepp_loss(sim, positives)
    loss, matching, accuracy, local = contrastive, torch.zeros(()), float("nan"), torch.zeros(())
    if config.local_weight > 0:
        positioned = image.regions + model.scorer.region_position[: image.regions.shape[1]]  # (B, R, d)
        # One caption per image (with multi_positive, each image's first in the batch): the
        # alignment matrix costs B_img x B_txt token-region comparisons, 5x more with all captions.
        first = (
            torch.arange(len(captions), device=device)
            if owner is None
            else torch.tensor([owner.index(row) for row in range(len(images))], device=device)
        )
        local = infonce_loss(
            alignment_matrix(tokens[first], mask[first], positioned), stage.local_scale, positives[:, first]
        )
        loss = loss + config.local_weight * local
    if config.itm_weight > 0:
        if owners is not None:
            raise ImgsearchError("multi_positive does not go with the joint ITM loss (itm_weight).")
        matching, accuracy = itm_loss(
            model.scorer, image.regions, tokens, mask, sim.detach(), positives, hard_share=config.hard_share
        )
        loss = contrastive + config.itm_weight * matching
    return {"loss": loss, "contrastive": contrastive, "local": local, "matching": matching, "accuracy": accuracy}


def _save_state(
    model: AlignmentModel, stage: _FirstStage, rng: random.Random, epochs_done: int, state_path: Path
) -> None:
    """The checkpoint --resume continues from (BERT left out: it is frozen and loads from its name)."""
    torch.save(
        {
            "model": {k: v for k, v in model.state_dict().items() if not k.startswith("text.bert.")},
            "optimizer": stage.optimizer.state_dict(),
            "schedule": stage.schedule.state_dict(),
            "logit_scale": stage.logit_scale.detach(),
            "local_scale": stage.local_scale.detach(),
            "epoch": epochs_done,
            "step": stage.step,
            "elapsed": stage.elapsed,
            "history": stage.history,
            "rng": rng.getstate(),
            "torch_rng": torch.get_rng_state(),
        },
        state_path.with_name(STATE_NAME + ".tmp"),
    )
    replace_durably(state_path.with_name(STATE_NAME + ".tmp"), state_path)


def _train_second_stage(model: AlignmentModel, data: _Data, stage: _FirstStage, config: TrainConfig):
    """The re-ranker on the frozen dual encoder (rerank_stage.py), validated after each epoch;
    the best epoch and fusion weight are kept (selection.py). Returns (the kept choice or None,
    the selection or None, the validation history)."""
    scorer_history: list[dict] = []  # validation during the re-ranker stage
    selection = (
        RerankerSelection(data.val_images.pixels, data.val_bank, config.rerank_depth, config.fusion_grid)
        if data.val_images is not None and data.val_bank is not None
        else None
    )

    def after_epoch(epoch: int) -> None:
        if selection is None:
            return
        assert data.val_images is not None and data.val_bank is not None  # as the selection has them
        choice = selection.consider(model, epoch + 1)
        log.info(
            "re-ranker epoch %d: validation t2i R@1 after re-ranking %.1f (fusion weight %g)",
            epoch + 1,
            choice.t2i_r1,
            choice.fusion_weight,
        )
        if (epoch + 1) % 5 == 0 or epoch + 1 == config.scorer_epochs:
            result = evaluate(model, data.val_images.pixels, data.val_bank, config.rerank_depth)
            scorer_history.append(
                {"epoch": epoch + 1, "val": {"first_stage": result["first_stage"], "reranked": result["reranked"]}}
            )
            log.info("%s", format_table(result))

    if config.itm_weight == 0 and (config.scorer_epochs > 0 or config.local_weight > 0):
        # The first stage did not train the scorer: start it fresh, seeded.
        trained_positions = model.scorer.region_position.detach().clone()
        torch.manual_seed(config.seed)
        model.scorer = CrossAttentionScorer(model.config.scorer, model.config.embed_dim).to(model.device)
        if config.local_weight > 0:  # keep what the alignment term learned in the first stage
            model.scorer.region_position.data.copy_(trained_positions)
            model.scorer.alignment_scale.data.fill_(stage.local_scale.exp().item())
            # A zero output head: the scorer starts as exactly its trained alignment term,
            # a re-ranker already (candidate "epoch 0"), and the attention layers add to it.
            torch.nn.init.zeros_(model.scorer.head.weight)
            torch.nn.init.zeros_(model.scorer.head.bias)
            if selection is not None:
                choice = selection.consider(model, 0)
                log.info(
                    "re-ranker before the second stage (its alignment term alone): validation t2i R@1 "
                    "after re-ranking %.1f (fusion weight %g)",
                    choice.t2i_r1,
                    choice.fusion_weight,
                )
    if config.scorer_epochs > 0:
        train_scorer(
            model,
            data.train_images.pixels,
            data.bank,
            epochs=config.scorer_epochs,
            lr=config.scorer_lr,
            heads_from_global=config.local_weight == 0,
            batch_size=config.batch_size,
            mine_depth=config.mine_depth,
            hard_share=config.hard_share,
            seed=config.seed,
            on_epoch=after_epoch,
            backbone_features=data.cached,
        )

    model.eval()
    # --local-weight trains the alignment term, which alone is a re-ranker (a zero output head).
    scorer_trained = config.scorer_epochs > 0 or config.itm_weight > 0 or config.local_weight > 0
    if not scorer_trained:
        log.warning("the re-ranker was not trained (--scorer-epochs 0): search this model with --no-rerank")
    kept = None
    if scorer_trained and selection is not None:
        if not selection.history:  # re-ranker trained jointly in the first stage (--itm-weight)
            selection.consider(model, 0)
        kept = selection.restore(model)
        log.info(
            "kept the re-ranker of second-stage epoch %d with fusion weight %g "
            "(validation t2i R@1 after re-ranking %.1f)",
            kept.epoch,
            kept.fusion_weight,
            kept.t2i_r1,
        )
    return kept, selection, scorer_history


def _write_model(
    model: AlignmentModel,
    out_dir: Path,
    data: _Data,
    stage: _FirstStage,
    config: TrainConfig,
    kept,
    selection,
    scorer_history: list[dict],
) -> dict:
    """The model directory (with the kept fusion weight) and training.json; returns the summary."""
    fusion = kept.fusion_weight if kept is not None else 0.0
    model.config = dataclasses.replace(model.config, fusion_weight=fusion)
    model.save_pretrained(out_dir)
    summary = {
        "train_images": len(data.train_images.items),
        "train_captions": len(data.bank.captions),
        "val_images": len(data.val_images.items) if data.val_images else 0,
        "steps": stage.step,
        "train_seconds": round(stage.elapsed, 1),
        "stopped_early": stage.stopped_early,
        "fusion_weight": fusion,
        "reranker_kept": kept.to_dict() if kept is not None else None,
        "reranker_candidates": [c.to_dict() for c in selection.history] if selection is not None else [],
        "config": {**dataclasses.asdict(config), "warmup_steps": warmup_steps(config)},
        "history": stage.history,
        "scorer_history": scorer_history,
    }
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _load_state(path: Path) -> dict:
    """The training state saved after an epoch: tensors and plain data only. weights_only=True
    (explicit: older torch versions default to False) refuses pickled objects, which could run
    code from a planted or shared --out folder."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ImgsearchError(
            f"{path} holds more than tensors and plain data, so it was not loaded (loading it could "
            "run code). Resume only from a state imgsearch wrote, or start again in a new --out directory."
        ) from exc


def _backbone_features(model: AlignmentModel, pixels: torch.Tensor, out_dir: Path):
    """Backbone outputs for every image, computed once and cached on disk:
    regions (N, R, C) float16 and global (N, G) float16."""
    digest = hashlib.sha256(json.dumps(model.config.backbone.to_dict()).encode())
    for tensor in model.image.backbone.state_dict().values():
        digest.update(tensor.cpu().numpy().tobytes())
    digest.update(pixels.numpy().tobytes())
    path = out_dir / f"backbone-features-{digest.hexdigest()[:16]}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    model.image.backbone.eval()
    regions, globals_ = [], []
    with torch.inference_mode():
        for start in range(0, len(pixels), 64):
            r, g = model.image.backbone_features(pixels[start : start + 64].to(model.device))
            regions.append(r.to(torch.float16).cpu())
            globals_.append(g.to(torch.float16).cpu())
    features = (torch.cat(regions), torch.cat(globals_))
    torch.save(features, path.with_name(path.name + ".tmp"))
    replace_durably(path.with_name(path.name + ".tmp"), path)
    return features
