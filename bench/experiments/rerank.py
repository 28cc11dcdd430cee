"""Re-ranker experiments on cached features (bench/experiments/features.py): does a
cross-attention scorer trained on held-out first-stage candidates add to the first stage?

    python bench/experiments/rerank.py --backbone efficientnet_lite0-224 [--layers 2] [--folds 4]
        [--epochs 3] [--list 8] [--depth 20]

1. The first stage (tanh heads on pooled features and mean MiniLM states, InfoNCE; the
   heads.py recipe, Flickr8k only) is trained on all train images: it ranks dev captions.
2. For the re-ranker's training lists, the same first stage is trained --folds times, each
   time without one fold of the train images, and ranks that fold's captions among that
   fold's images: candidates as the re-ranker will meet them on unseen photos.
3. The scorer (model/scorer.py's CrossAttentionScorer) reads the first stage's heads applied to
   each region and each token state (frozen, as an index stores regions) and learns a listwise loss over
   [true image + (list-1) candidates] on top of the first-stage score:
   fused = scorer + w * cosine, w learned.
4. Dev: each caption's top --depth first-stage images re-ordered by the fused score.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from heads import load
from imgsearch.model.scorer import CrossAttentionScorer, ScorerConfig
from imgsearch.training.evaluate import recall_at_k, t2i_ranks


def first_stage(split: dict, images: np.ndarray, epochs: int, seed: int, dim: int = 256):
    """Heads trained on `images` of split (one random caption each per step)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    hi = torch.nn.Sequential(torch.nn.Linear(split["pooled"].shape[1], dim), torch.nn.Tanh())
    ht = torch.nn.Sequential(torch.nn.Linear(split["mean"].shape[1], dim), torch.nn.Tanh())
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    opt = torch.optim.AdamW(list(hi.parameters()) + list(ht.parameters()) + [scale], lr=1e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(images) / 128)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    for _ in range(epochs):
        order = rng.permutation(images)
        for start in range(0, len(order), 128):
            batch = order[start : start + 128]
            caps = [split["captions_of"][i][rng.integers(len(split["captions_of"][i]))] for i in batch]
            gi = F.normalize(hi(split["pooled"][torch.from_numpy(batch)]), dim=-1)
            gt = F.normalize(ht(split["mean"][torch.tensor(caps)]), dim=-1)
            logits = scale.exp().clamp(max=100) * gt @ gi.T
            target = torch.arange(len(batch))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return hi.eval(), ht.eval()


def candidates(hi, ht, split: dict, images: np.ndarray, depth: int):
    """For each caption of `images`: its top-`depth` images among `images` (global indices) and cosines."""
    caps = np.array([c for i in images for c in split["captions_of"][i]])
    with torch.no_grad():
        gi = F.normalize(hi(split["pooled"][torch.from_numpy(images)]), dim=-1)
        gt = F.normalize(ht(split["mean"][torch.from_numpy(caps)]), dim=-1)
        sim = gt @ gi.T  # (Nc, Ni)
        top = sim.topk(depth, dim=1)
    return caps, images[top.indices.numpy()], top.values.numpy(), sim.numpy()


class Reranker(torch.nn.Module):
    """Scorer over frozen inputs already in the shared space (the first stage's heads applied to
    each region and token, as the product's stored regions and token features are)."""

    def __init__(self, layers: int, dim: int = 256, no_alignment: bool = False) -> None:
        super().__init__()
        self.scorer = CrossAttentionScorer(ScorerConfig(num_layers=layers, num_heads=4, max_regions=49), dim)
        if no_alignment:
            self.scorer.alignment_scale.data.zero_()
            self.scorer.alignment_scale.requires_grad_(False)
        self.weight = torch.nn.Parameter(torch.tensor(20.0))  # of the first-stage cosine

    def forward(self, tokens, mask, regions, first):
        # tokens (P, T, d), mask (P, T), regions (P, R, d), first (P,) --> fused logits (P,)
        return self.scorer(tokens, mask, regions) + self.weight * first


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="efficientnet_lite0-224")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--heads-epochs", type=int, default=8)
    p.add_argument("--list", type=int, default=8)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--lists-per-epoch", type=int, default=None, help="train on this many lists an epoch (a random subset)"
    )
    p.add_argument("--no-alignment", action="store_true", help="the scorer without its token-region alignment term")
    p.add_argument(
        "--same-stage",
        action="store_true",
        help="mine the training lists with the first stage trained on all train images (not folds)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train, dev = load(args.backbone, "flickr8k", "train"), load(args.backbone, "flickr8k", "dev")
    for split in (train, dev):  # the raw regions, for the re-ranker
        name = "train" if split is train else "dev"
        split["regions"] = torch.load(
            Path(__file__).parents[1] / "out" / "features" / f"{args.backbone}-flickr8k-{name}.pt", weights_only=True
        )["regions"]
    n = len(train["captions_of"])
    hi, ht = first_stage(train, np.arange(n), args.heads_epochs, args.seed)
    with torch.no_grad():  # frozen scorer inputs: the trained heads on every region and token
        for split in (train, dev):
            split["region_features"] = torch.cat([hi(r.float()).half() for r in split["regions"].split(512)])
            split["token_features"] = torch.cat([ht(t.float()).half() for t in split["states"].split(2048)])
    dev_caps, dev_top, dev_first, dev_sim = candidates(hi, ht, dev, np.arange(len(dev["captions_of"])), args.depth)
    lists = []  # (caption, [candidate images], [cosines]) of train captions, mined on held-out folds
    folds = np.array_split(np.random.default_rng(args.seed).permutation(n), args.folds)
    for f, fold in enumerate(folds):
        rest = np.concatenate([g for k, g in enumerate(folds) if k != f])
        fhi, fht = (hi, ht) if args.same_stage else first_stage(train, rest, args.heads_epochs, args.seed + f + 1)
        caps, top, first, sim = candidates(fhi, fht, train, np.sort(fold), args.depth)
        position = {int(img): k for k, img in enumerate(np.sort(fold))}
        for row, c in enumerate(caps):
            own = int(train["image_of"][c])
            lists.append(
                (
                    int(c),
                    own,
                    float(sim[row, position[own]]),
                    [int(j) for j in top[row] if j != own],
                    [float(s) for j, s in zip(top[row], first[row]) if j != own],
                )
            )
    print(f"mined {len(lists)} lists in {time.perf_counter() - started:.0f}s", flush=True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = Reranker(args.layers, no_alignment=args.no_alignment)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * math.ceil(min(len(lists), args.lists_per_epoch or len(lists)) / args.batch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(lists))[: args.lists_per_epoch]
        losses = []
        for start in range(0, len(order), args.batch):
            rows = [lists[i] for i in order[start : start + args.batch]]
            caps, imgs, firsts = [], [], []
            for c, own, own_first, negs, neg_first in rows:
                pick = rng.choice(len(negs), size=args.list - 1, replace=False)
                caps += [c] * args.list
                imgs += [own] + [negs[k] for k in pick]
                firsts += [own_first] + [neg_first[k] for k in pick]
            width = int(train["mask"][caps].sum(1).max())  # the batch's longest caption
            logits = model(
                train["token_features"][caps, :width].float(),
                train["mask"][caps, :width],
                train["region_features"][imgs].float(),
                torch.tensor(firsts),
            ).view(len(rows), args.list)
            loss = F.cross_entropy(logits, torch.zeros(len(rows), dtype=torch.long))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
        model.eval()
        ranks_first = t2i_ranks(dev_sim, dev["image_of"].numpy()[dev_caps])
        ranks = ranks_first.copy()
        with torch.no_grad():
            for start in range(0, len(dev_caps), 64):
                rows = np.arange(start, min(start + 64, len(dev_caps)))
                caps = np.repeat(dev_caps[rows], args.depth)
                imgs = dev_top[rows].reshape(-1)
                width = int(dev["mask"][caps].sum(1).max())
                fused = (
                    model(
                        dev["token_features"][caps, :width].float(),
                        dev["mask"][caps, :width],
                        dev["region_features"][imgs].float(),
                        torch.from_numpy(dev_first[rows].reshape(-1)),
                    )
                    .view(len(rows), args.depth)
                    .numpy()
                )
                for k, row in enumerate(rows):
                    correct = dev_top[row] == dev["image_of"][dev_caps[row]].item()
                    if correct.any():
                        ranks[row] = int(np.argmax(correct[np.argsort(-fused[k], kind="stable")]))
        print(
            f"epoch {epoch + 1}: loss {np.mean(losses):.3f} w {model.weight.item():.1f}  dev t2i first stage "
            f"{recall_at_k(ranks_first)}  re-ranked {recall_at_k(ranks)}  ({time.perf_counter() - started:.0f}s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
