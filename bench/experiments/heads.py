"""First-stage experiments on cached features (bench/experiments/features.py): one factor at a time.

    python bench/experiments/heads.py --backbone efficientnet_lite0-224 [--webcaps] [--multi-positive]
        [--text-attnpool] [--epochs 8] [--seeds 0 1 2] [--hubness 0.5]

Trains tanh projection heads (as model/projection.py) on frozen pooled image features and
mean-pooled MiniLM states with symmetric InfoNCE (cosine decay, no warm-up: the trainer's
frozen-backbone recipe) and prints Flickr8k dev t2i / i2t recall, plain and with the hubness
correction cos(q, i) - beta * r(i), r(i) the mean of image i's `--hub-k` highest cosines with
the training captions (the bank the model directory would carry).
--webcaps: every batch is half Flickr8k, half webcaps (--mix-share; an epoch is one pass over Flickr8k).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imgsearch.training.evaluate import i2t_ranks, recall_at_k, t2i_ranks

FEATURES = Path(__file__).parents[1] / "out" / "features"


def load(backbone: str, data: str, split: str) -> dict:
    image = torch.load(FEATURES / f"{backbone}-{data}-{split}.pt", weights_only=True)
    text = torch.load(FEATURES / f"text-{data}-{split}.pt", weights_only=True)
    assert image["names"] == text["names"], "image and text caches list different images"
    mask = text["mask"].unsqueeze(-1).float()  # (Nc, T, 1)
    return {
        "pooled": image["pooled"].float(),
        "states": text["states"],
        "mask": text["mask"],
        "mean": (text["states"].float() * mask).sum(1) / mask.sum(1),  # (Nc, h)
        "image_of": text["image_of"],
        "captions_of": text["captions_of"],
    }


class TextHead(torch.nn.Module):
    """tanh(W x + b) of the mean of the token states, or (attnpool) of a learned softmax pool
    over them that starts as the mean."""

    def __init__(self, hidden: int, dim: int, attnpool: bool) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden, dim)
        self.score = torch.nn.Linear(hidden, 1) if attnpool else None
        if self.score is not None:
            torch.nn.init.zeros_(self.score.weight)
            torch.nn.init.zeros_(self.score.bias)

    def forward(self, split: dict, rows: torch.Tensor) -> torch.Tensor:
        if self.score is None:
            return torch.tanh(self.linear(split["mean"][rows]))
        states, mask = split["states"][rows].float(), split["mask"][rows]  # (B, T, h), (B, T)
        weights = self.score(states).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(1)  # (B, T)
        return torch.tanh(self.linear((weights.unsqueeze(-1) * states).sum(1)))  # (B, h) --> (B, d)


def batches(split: dict, size: int, multi: bool, rng: np.random.Generator):
    """(image rows, caption rows) per batch: one random caption per image, or (multi) all of them."""
    order = rng.permutation(len(split["captions_of"]))
    for start in range(0, len(order), size):
        images = order[start : start + size]
        if multi:
            caps = [split["captions_of"][i] for i in images]
            yield (
                torch.from_numpy(images),
                torch.tensor([c for cs in caps for c in cs]),
                torch.tensor([n for n, cs in enumerate(caps) for _ in cs]),
            )
        else:
            caps = [split["captions_of"][i][rng.integers(len(split["captions_of"][i]))] for i in images]
            yield torch.from_numpy(images), torch.tensor(caps), torch.arange(len(images))


def loss_of(gi, gt, owner, scale):
    """Symmetric InfoNCE; gt rows belong to gi rows `owner`; i2t spreads over all own captions."""
    logits = scale.exp().clamp(max=100) * gt @ gi.T  # (Nt, Ni)
    positives = (owner[:, None] == torch.arange(len(gi))[None, :]).float()  # (Nt, Ni)
    t2i = -(positives * logits.log_softmax(1)).sum(1).mean()
    target = positives.T / positives.T.sum(1, keepdim=True)  # (Ni, Nt)
    return (t2i - (target * logits.T.log_softmax(1)).sum(1).mean()) / 2


def hub_scores(image_vectors: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """(Ni,) mean of each image's k highest cosines with the caption bank."""
    out = []
    for start in range(0, len(image_vectors), 1024):
        out.append((image_vectors[start : start + 1024] @ bank.T).topk(k, dim=1).values.mean(1))
    return torch.cat(out)


def run(args, seed: int) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    flickr, dev = load(args.backbone, "flickr8k", "train"), load(args.backbone, "flickr8k", "dev")
    webcaps = load(args.backbone, "webcaps", "train") if args.webcaps else None
    hi = torch.nn.Sequential(torch.nn.Linear(flickr["pooled"].shape[1], args.dim), torch.nn.Tanh())
    ht = TextHead(flickr["mean"].shape[1], args.dim, args.text_attnpool)
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = list(hi.parameters()) + list(ht.parameters()) + [scale]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    per_epoch = math.ceil(len(flickr["captions_of"]) / args.batch)
    steps = args.epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    half = args.batch - round(args.batch * args.mix_share) if webcaps is not None else args.batch
    for _ in range(args.epochs):
        flickr_batches = batches(flickr, half, args.multi_positive, rng)
        web_batches = batches(webcaps, args.batch - half, False, rng) if webcaps is not None else None
        for images, caps, owner in flickr_batches:
            gi = F.normalize(hi(flickr["pooled"][images]), dim=-1)
            gt = F.normalize(ht(flickr, caps), dim=-1)
            if web_batches is not None:
                w = next(web_batches, None)
                if w is None:
                    web_batches = batches(webcaps, args.batch - half, False, rng)
                    w = next(web_batches)
                wi = F.normalize(hi(webcaps["pooled"][w[0]]), dim=-1)
                wt = F.normalize(ht(webcaps, w[1]), dim=-1)
                owner = torch.cat([owner, w[2] + len(gi)])
                gi, gt = torch.cat([gi, wi]), torch.cat([gt, wt])
            loss = loss_of(gi, gt, owner, scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        ht.eval()
        di = F.normalize(hi(dev["pooled"]), dim=-1)
        dt = F.normalize(ht(dev, torch.arange(len(dev["mean"]))), dim=-1)
        bank = F.normalize(ht(flickr, torch.arange(len(flickr["mean"]))), dim=-1)
        if webcaps is not None and args.bank == "both":
            bank = torch.cat([bank, F.normalize(ht(webcaps, torch.arange(len(webcaps["mean"]))), dim=-1)])
        hubs = hub_scores(di, bank, args.hub_k)
    out = {}
    for beta in [0.0, *args.hubness]:
        sim = (dt @ di.T - beta * hubs[None, :]).numpy()
        out[beta] = {
            "t2i": recall_at_k(t2i_ranks(sim, dev["image_of"].numpy())),
            "i2t": recall_at_k(i2t_ranks(sim, dev["captions_of"])),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="efficientnet_lite0-224")
    p.add_argument("--webcaps", action="store_true")
    p.add_argument("--mix-share", type=float, default=0.5, help="share of each batch from webcaps")
    p.add_argument("--multi-positive", action="store_true")
    p.add_argument("--text-attnpool", action="store_true")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--hubness", type=float, nargs="*", default=[0.3, 0.5, 0.7])
    p.add_argument("--hub-k", type=int, default=10)
    p.add_argument("--bank", default="flickr", choices=["flickr", "both"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = [run(args, seed) for seed in args.seeds]
    for beta in results[0]:
        t = [r[beta]["t2i"] for r in results]
        i = [r[beta]["i2t"] for r in results]
        mean = {k: float(np.mean([x[k] for x in t])) for k in t[0]}
        r1 = " / ".join(f"{x['R@1']:.2f}" for x in t)
        r10 = " / ".join(f"{x['R@10']:.2f}" for x in t)
        print(
            f"beta {beta:.2f}: t2i R@1 {r1} (mean {mean['R@1']:.2f}) R@5 {mean['R@5']:.2f} "
            f"R@10 {r10} (mean {mean['R@10']:.2f}); i2t R@1 mean {np.mean([x['R@1'] for x in i]):.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
