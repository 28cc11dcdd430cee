"""First-stage head experiments on cached Flickr8k features (bench/experiments/photo_features.py).

    python bench/experiments/photo_heads.py [--size 224] [--head linear|tanh] [--lr ..] [--epochs ..] ...

Trains the image and text projection heads on frozen MobileNetV2 pooled features and
mean-pooled MiniLM states (symmetric InfoNCE) and prints dev t2i/i2t recall after each epoch.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parents[2]))

from imgsearch.training.evaluate import i2t_ranks, recall_at_k, t2i_ranks


def mean_states(split: dict) -> torch.Tensor:
    mask = split["mask"].unsqueeze(-1).float()  # (Nc, T, 1)
    return (split["states"].float() * mask).sum(1) / mask.sum(1)  # (Nc, h)


def recall(img: torch.Tensor, txt: torch.Tensor, split: dict) -> dict:
    sim = (F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).T).numpy()  # (Nc, Ni)
    t2i = recall_at_k(t2i_ranks(sim, split["image_of"].numpy()))
    i2t = recall_at_k(i2t_ranks(sim, split["captions_of"]))
    return {"t2i": t2i, "i2t": i2t}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--head", default="linear", choices=["linear", "tanh", "mlp"])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--wd", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--tta", action="store_true", help="average pooled features with the mirrored image")
    p.add_argument("--all-captions", action="store_true", help="an epoch visits every caption once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-share", type=float, default=1.0, help="train on this share of the train images")
    p.add_argument("--clip", type=float, default=None, help="clip the heads' gradient norm")
    p.add_argument("--temp", type=float, default=0.07)
    p.add_argument("--fixed-temp", action="store_true")
    p.add_argument("--standardize", action="store_true", help="inputs minus train mean, over train std")
    p.add_argument("--flip-aug", action="store_true", help="train on the mirrored image's features half the time")
    p.add_argument("--cosine", action="store_true", help="cosine learning-rate decay to 0")
    p.add_argument("--warmup", type=int, default=0, help="linear warm-up steps (times the cosine, as the trainer does)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--attnpool", action="store_true", help="image input: mean + learned attention pool of the regions")
    p.add_argument("--maxpool", action="store_true", help="append the max over regions to the image input")
    p.add_argument("--logits", action="store_true", help="append the ImageNet log-posteriors to the image input")
    p.add_argument(
        "--block320",
        action="store_true",
        help="append the mean-pooled 320-channel block output (bench/out/photo-block320-{size}.pt)",
    )
    p.add_argument(
        "--text-attnpool",
        action="store_true",
        help="text input: a learned attention pool over the MiniLM token states instead of the mean",
    )
    p.add_argument(
        "--multi-positive",
        action="store_true",
        help="every caption of each batch image in the batch; an image's 5 captions are all its positives",
    )
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cache = torch.load(Path(__file__).parents[1] / "out" / f"photo-features-{args.size}.pt", weights_only=True)
    train, dev = cache["train"], cache["dev"]

    def image_input(split):
        return (split["pooled"] + split["mirrored"]) / 2 if args.tta else split["pooled"]

    xi, xt = image_input(train), mean_states(train)
    di, dt = image_input(dev), mean_states(dev)
    xm = train["mirrored"]
    if args.maxpool:
        xi = torch.cat([xi, train["regions"].float().amax(1)], 1)
        di = torch.cat([di, dev["regions"].float().amax(1)], 1)
        xm = torch.cat([xm, train["regions"].float().amax(1)], 1)
    if args.logits:
        xi = torch.cat([xi, train["logits"].log_softmax(-1)], 1)
        di = torch.cat([di, dev["logits"].log_softmax(-1)], 1)
        xm = torch.cat([xm, train["logits"].log_softmax(-1)], 1)
    if args.block320:
        block = torch.load(Path(__file__).parents[1] / "out" / f"photo-block320-{args.size}.pt", weights_only=True)
        assert block["train"]["names"] == train["names"] and block["dev"]["names"] == dev["names"]
        xi = torch.cat([xi, block["train"]["pooled"]], 1)  # (N, 1280 + 320)
        di = torch.cat([di, block["dev"]["pooled"]], 1)
        xm = torch.cat([xm, block["train"]["pooled"]], 1)  # (not mirrored: --flip-aug untested with it)
    if args.standardize:
        mi, si = xi.mean(0), xi.std(0) + 1e-3
        mt, st = xt.mean(0), xt.std(0) + 1e-3
        xi, di, xm = (xi - mi) / si, (di - mi) / si, (xm - mi) / si
        xt, dt = (xt - mt) / st, (dt - mt) / st

    def make(n_in):
        if args.head == "mlp":
            return torch.nn.Sequential(torch.nn.Linear(n_in, 1024), torch.nn.GELU(), torch.nn.Linear(1024, args.dim))
        lin = torch.nn.Linear(n_in, args.dim)
        return lin if args.head == "linear" else torch.nn.Sequential(lin, torch.nn.Tanh())

    hi, ht = make(xi.shape[1] * (2 if args.attnpool else 1)), make(xt.shape[1])
    if args.text_attnpool:
        text_base = ht

        class TextAttnHead(torch.nn.Module):
            """Mean-pool at init (zero scores), then a learned softmax weighting of the tokens."""

            def __init__(self):
                super().__init__()
                self.score = torch.nn.Linear(xt.shape[1], 1)
                torch.nn.init.zeros_(self.score.weight)
                torch.nn.init.zeros_(self.score.bias)
                self.base = text_base

            def forward(self, rows):
                split = train if self.training else dev
                s_, m = split["states"][rows].float(), split["mask"][rows]  # (B, T, h), (B, T)
                a = self.score(s_).squeeze(-1).masked_fill(~m, float("-inf")).softmax(1)  # (B, T)
                return self.base((a.unsqueeze(-1) * s_).sum(1))  # (B, h)

        ht = TextAttnHead()
    if args.attnpool:
        score = torch.nn.Linear(1280, 1)
        torch.nn.init.zeros_(score.weight)
        torch.nn.init.zeros_(score.bias)
        base = hi
        train_regions, dev_regions = train["regions"], dev["regions"]

        class AttnHead(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.score, self.base = score, base
                self.regions = None

            def forward(self, pooled):
                r = self.regions.float()  # (B, R, C)
                a = self.score(r).softmax(1)  # (B, R, 1)
                return self.base(torch.cat([pooled, (a * r).sum(1)], 1))

        hi = AttnHead()
    scale = torch.nn.Parameter(torch.tensor(math.log(1 / args.temp)), requires_grad=not args.fixed_temp)
    opt = torch.optim.AdamW(list(hi.parameters()) + list(ht.parameters()) + [scale], lr=args.lr, weight_decay=args.wd)
    image_of = train["image_of"]
    captions_of = train["captions_of"]
    if args.train_share < 1.0:
        captions_of = captions_of[: int(len(captions_of) * args.train_share)]
    rng = np.random.default_rng(args.seed)
    steps = args.epochs * math.ceil((len(image_of) if args.all_captions else len(captions_of)) / args.batch)

    def rate(s):
        warm = min(1.0, (s + 1) / args.warmup) if args.warmup else 1.0
        return warm * (0.5 * (1 + math.cos(math.pi * s / steps)) if args.cosine else 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    for epoch in range(args.epochs):
        if args.multi_positive:
            order = torch.from_numpy(rng.permutation(len(captions_of)))
            pairs = []
            for s in range(0, len(order), args.batch):
                own = [torch.tensor(captions_of[i]) for i in order[s : s + args.batch].tolist()]
                pairs.append(
                    (
                        torch.cat([torch.full((len(c),), i) for i, c in zip(order[s : s + args.batch].tolist(), own)]),
                        torch.cat(own),
                    )
                )  # (5B,) image of each caption, (5B,) captions
        elif args.all_captions:
            order = torch.from_numpy(rng.permutation(len(image_of)))
            pairs = [
                (image_of[order[s : s + args.batch]], order[s : s + args.batch])
                for s in range(0, len(order), args.batch)
            ]
        else:
            imgs = torch.from_numpy(rng.permutation(len(captions_of)))
            caps = torch.tensor([captions_of[i][rng.integers(len(captions_of[i]))] for i in imgs.tolist()])
            pairs = [(imgs[s : s + args.batch], caps[s : s + args.batch]) for s in range(0, len(imgs), args.batch)]
        for images, captions in pairs:
            source = xi
            if args.flip_aug:
                flip = torch.from_numpy(rng.random(len(images)) < 0.5)[:, None]
                source_rows = torch.where(flip, xm[images], xi[images])
            else:
                source_rows = source[images]
            if args.attnpool:
                hi.regions = train_regions[images]
            if args.multi_positive:  # images (5B,) repeat each batch image per caption: embed each once
                images, inverse = images.unique_consecutive(return_inverse=True)
                source_rows = source[images]
            gi = F.normalize(hi(source_rows), dim=-1)
            gt = F.normalize(ht(captions if args.text_attnpool else xt[captions]), dim=-1)
            logits = scale.exp().clamp(max=100) * gt @ gi.T  # (B, B); multi-positive (5B, B)
            if args.multi_positive:  # t2i: its image; i2t: all its captions, equally
                positives = (inverse[:, None] == torch.arange(len(images))[None, :]).float()  # (5B, B)
                t2i = -(positives * logits.log_softmax(1)).sum(1).mean()
                i2t_target = positives.T / positives.T.sum(1, keepdim=True)  # (B, 5B)
                loss = (t2i - (i2t_target * logits.T.log_softmax(1)).sum(1).mean()) / 2
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                continue
            positives = (images[None, :] == images[:, None]).float()  # same image counts for both
            target = positives / positives.sum(1, keepdim=True)
            loss = (
                -(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.T.log_softmax(1)).sum(1).mean()
            ) / 2
            opt.zero_grad()
            loss.backward()
            if args.clip:
                torch.nn.utils.clip_grad_norm_(list(hi.parameters()) + list(ht.parameters()) + [scale], args.clip)
            opt.step()
            sched.step()
        with torch.no_grad():
            if args.attnpool:
                hi.regions = dev_regions
            ht.eval()
            r = recall(hi(di), ht(torch.arange(len(dt))) if args.text_attnpool else ht(dt), dev)
            ht.train()
        print(f"epoch {epoch + 1}: t2i {r['t2i']}  i2t {r['i2t']}  temp {1 / scale.exp().item():.3f}", flush=True)


if __name__ == "__main__":
    main()
