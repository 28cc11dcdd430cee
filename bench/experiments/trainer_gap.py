"""Trainer vs bench/experiments/photo_heads.py: the trainer's own first stage on the cached Flickr8k features.

    python bench/experiments/trainer_gap.py [--warmup N] [--clip C|0] [--val-fraction F] [--global-fp32] ...
    python bench/experiments/trainer_gap.py --eval-model DIR   # a saved model, scored on the cached dev features

Runs training/trainer.py's _first_stage and _train_first_stage (the code `imgsearch train`
runs, with the photo script's settings) on bench/out/photo-features-224.pt (bench/experiments/photo_features.py),
so that one factor at a time can be made to agree with bench/experiments/photo_heads.py; prints dev t2i/i2t
recall of the first stage, scored as photo_heads.py scores it (cached float16 MiniLM states).

It reaches into the trainer's private stage (_Data, _first_stage, _train_first_stage): there is
no public way to run the first stage alone on cached features. Written against the trainer of
2026-11-30 (bench/RESULTS-archive.md, "the trainer-vs-harness gap"); the trainer has changed
since (_Data now also takes `primary`, the count of the first data set's images), so it needs
updating before it runs again.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parents[2]))

from imgsearch.model.alignment import AlignmentModel
from imgsearch.training import trainer
from imgsearch.training.captions import read_captions
from imgsearch.training.data import CaptionBank, ImageBank
from imgsearch.training.evaluate import i2t_ranks, recall_at_k, t2i_ranks
from imgsearch.training.run import build_model

BENCH = Path(__file__).parents[1]


def dev_recall(model: AlignmentModel, dev: dict) -> dict:
    """First-stage recall on the cached dev features (as photo_heads.py scores it)."""
    with torch.no_grad():
        image = model.image.project(dev["regions"][:, :1].float(), dev["pooled"].float())
        _, text = model.text.project(dev["states"].float(), dev["mask"])
    sim = (F.normalize(text, dim=-1) @ F.normalize(image.global_, dim=-1).T).numpy()  # (Nc, Ni)
    return {
        "t2i": recall_at_k(t2i_ranks(sim, dev["image_of"].numpy())),
        "i2t": recall_at_k(i2t_ranks(sim, dev["captions_of"])),
    }


def soft_infonce(sim: torch.Tensor, logit_scale: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """photo_heads.py's loss: soft targets over every positive of the row (same image)."""
    logits = sim * logit_scale.exp().clamp(max=100.0)  # (B, B)
    target = positives.float() / positives.float().sum(1, keepdim=True)
    target_t = positives.T.float() / positives.T.float().sum(1, keepdim=True)
    return (-(target * logits.log_softmax(1)).sum(1).mean() - (target_t * logits.T.log_softmax(1)).sum(1).mean()) / 2


def train_split(cache: dict, data_dir: Path, fraction: float, seed: int):
    """The trainer's split (split_validation on the items read as `imgsearch train --only train.txt`
    reads them), as indices into the cached train split."""
    names = set(cache["names"])
    items = read_captions(data_dir / "captions.tsv", data_dir / "images", only=names)
    train_items, _ = trainer.split_validation(items, fraction, seed)
    index = {name: i for i, name in enumerate(cache["names"])}
    return train_items, [index[item.path.name] for item in train_items]


def build_data(cache: dict, keep: list[int], train_items, global_fp16: bool) -> trainer._Data:
    """The trainer's _Data from the cached features of the kept images (no validation split)."""
    captions, image_of, captions_of, rows = [], [], [], []
    for new, old in enumerate(keep):
        own = cache["captions_of"][old]
        captions_of.append(list(range(len(captions), len(captions) + len(own))))
        captions += [cache["captions"][c] for c in own]
        image_of += [new] * len(own)
        rows += own
    bank = CaptionBank(captions, np.array(image_of), captions_of, cache["states"][rows], cache["mask"][rows])
    pooled = cache["pooled"][keep]
    cached = (cache["regions"][keep][:, :1], pooled.half() if global_fp16 else pooled)  # regions unused: local weight 0
    images = ImageBank(train_items, torch.empty(0), [])
    return trainer._Data(images, bank, None, None, cached)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="../shared/data/flickr8k")
    p.add_argument("--weights", default=str(BENCH / "out" / "mobilenet_v2.safetensors"))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--wd", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip", type=float, default=5.0, help="per-group gradient-norm clip; 0: none")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--global-fp32", action="store_true", help="cached pooled features in float32 (trainer: float16)")
    p.add_argument("--soft-loss", action="store_true", help="photo_heads.py's soft-target InfoNCE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-model", help="only score this saved model on the cached dev features")
    args = p.parse_args()
    torch.set_num_threads(1)
    cache = torch.load(BENCH / "out" / "photo-features-224.pt", weights_only=True)
    if args.eval_model:
        model = AlignmentModel.from_pretrained(args.eval_model, device="cpu")
        print(f"{args.eval_model}: {dev_recall(model, cache['dev'])}")
        return
    model, mode = build_model("mobilenet_v2", backbone_weights=args.weights, seed=args.seed)
    config = trainer.TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch,
        lr=args.lr,
        weight_decay=args.wd,
        warmup_steps=args.warmup,
        backbone_mode=mode,
        seed=args.seed,
        val_fraction=args.val_fraction,
        local_weight=0.0,
        scorer_epochs=0,
    )
    if hasattr(config, "grad_clip"):
        config = trainer.dataclasses.replace(config, grad_clip=args.clip or None)
    elif args.clip != 5.0:  # before the trainer had the option: its hard-coded 5.0, replaced
        clip = torch.nn.utils.clip_grad_norm_
        torch.nn.utils.clip_grad_norm_ = (
            (lambda params, norm, **kw: clip(params, args.clip, **kw)) if args.clip else (lambda *a, **kw: None)
        )
    if args.soft_loss:
        trainer.infonce_loss = soft_infonce
    torch.manual_seed(config.seed)  # as train() does
    rng = random.Random(config.seed)
    train_items, keep = train_split(cache["train"], Path(args.data), args.val_fraction, args.seed)
    data = build_data(cache["train"], keep, train_items, not args.global_fp32)
    model.image.backbone.requires_grad_(False)
    model.text.bert.requires_grad_(False)
    stage = trainer._first_stage(model, data, config)
    with tempfile.TemporaryDirectory() as tmp:
        trainer._train_first_stage(model, data, stage, rng, Path(tmp) / trainer.STATE_NAME, config)
    model.eval()
    r = dev_recall(model, cache["dev"])
    print(
        f"{len(keep)} images, {stage.step} steps, temp {1 / stage.logit_scale.exp().item():.4f}: "
        f"t2i {r['t2i']}  i2t {r['i2t']}",
        flush=True,
    )


if __name__ == "__main__":
    main()
