"""Calibrating the final score of a text search into the probability that the photo is the one
described, on Flickr8k dev, and the "good match" band that probability defines.

    python bench/experiments/calibration.py [--cache bench/out/labels-parts-photo-model-100.pt]

Reads the pools labels.py caches for the photo model (each dev caption's 100 candidates, their
first-stage score and re-rank term), adds the shipped label score (WordNet texts, T 0.05, weight
0.6) and fusion (30) as search does, and fits p(described | final score) = sigmoid(a * score + b)
by logistic regression (Newton's method) on the captions of half the dev images, labelled 1 for
the caption's own image and 0 for the other candidates. On the other half it reports the
calibration (predicted against observed, by decile) and, for thresholds on p, the precision and
recall of the "good" band: precision, the share of good-band results that are the caption's own
image; recall, the share of captions whose own image is in the band. Flickr8k labels one image
per caption, so another photo that fits the words counts as wrong: precision is a lower bound.
Then both halves swap, and the fit on all of dev is printed (what a model stores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from imgsearch.model.alignment import AlignmentModel
from labels import label_scorer


def fit(scores: np.ndarray, labels: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """Logistic regression of labels (0/1) on scores, 2 parameters, Newton's method."""
    x = np.stack([scores, np.ones_like(scores)], 1).astype(np.float64)
    w = np.zeros(2)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w)))
        gradient = x.T @ (labels - p)
        hessian = (x * (p * (1 - p))[:, None]).T @ x + 1e-9 * np.eye(2)
        w += np.linalg.solve(hessian, gradient)
    return float(w[0]), float(w[1])


def reliability(prob: np.ndarray, own: np.ndarray) -> None:
    """Print predicted p (by bin) against the observed share of results that are the described image."""
    print("| predicted p | results | observed share that is the described image |")
    print("|---|---|---|")
    edges = [0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0001]
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (prob >= lo) & (prob < hi)
        if inside.any():
            observed, predicted = own[inside].mean(), prob[inside].mean()
            print(f"| {lo:.2f}-{min(hi, 1):.2f} | {inside.sum():,} | {observed:.3f} (mean p {predicted:.3f}) |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="data/photo-model")
    p.add_argument("--cache", default="bench/out/labels-parts-photo-model-100.pt")
    args = p.parse_args()
    model = AlignmentModel.from_pretrained(args.model, device="cpu")
    config = model.config
    saved = torch.load(args.cache, weights_only=True)
    image_of = saved["image_of"].numpy()
    scorer = label_scorer(model, "wordnet", config.zero_shot_temperature)
    finals, owns, image_ids = [], [], []
    for n, (order, first, reranked, sentence, pool_labels) in enumerate(saved["parts"]):
        order, first, reranked = order.numpy(), first.numpy(), reranked.numpy()
        label = scorer(None, sentence.numpy(), pool_labels)
        final = reranked + np.float32(config.fusion_weight) * (first + np.float32(config.zero_shot_weight) * label)
        finals.append(final)
        owns.append(order[: len(final)] == image_of[n])
        image_ids.append(image_of[n])
    finals, owns, image_ids = np.stack(finals), np.stack(owns), np.array(image_ids)  # (N, C), (N, C), (N,)
    halves = [image_ids < 500, image_ids >= 500]
    print(
        f"{len(finals)} dev captions x {finals.shape[1]} candidates; own image in the pool for {owns.any(1).mean():.1%}"
    )
    for fit_on, test_on, name in ((0, 1, "fit on images 0-499, tested on 500-999"), (1, 0, "the other way")):
        a, b = fit(finals[halves[fit_on]].ravel(), owns[halves[fit_on]].ravel().astype(np.float64))
        prob = 1 / (1 + np.exp(-(a * finals[halves[test_on]] + b)))
        own = owns[halves[test_on]]
        print(f"\n{name}: a {a:.4f}, b {b:.3f}")
        reliability(prob, own)
        print("| good band: p at least | results in it per caption | precision | recall | captions with none |")
        print("|---|---|---|---|---|")
        for threshold in (0.2, 0.3, 0.4, 0.5, 0.6):
            good = prob >= threshold
            precision = own[good].sum() / max(good.sum(), 1)
            recall = (good & own).any(1).mean()
            print(
                f"| {threshold:.1f} | {good.sum(1).mean():.2f} | {precision:.3f} | {recall:.3f} | "
                f"{(~good.any(1)).mean():.1%} |"
            )
    a, b = fit(finals.ravel(), owns.ravel().astype(np.float64))
    print(f"\nfit on all of dev: a {a:.5f}, b {b:.4f}")

    # Relative instead of absolute: p = softmax over the query's pool of final / T, i.e. the
    # chance that this candidate is the described image, given that the pool holds it.
    def pool_softmax(x: np.ndarray, temperature: float) -> np.ndarray:
        z = (x - x.max(1, keepdims=True)) / temperature
        return np.exp(z) / np.exp(z).sum(1, keepdims=True)

    for fit_on, test_on in ((0, 1), (1, 0)):
        f, o = finals[halves[fit_on]], owns[halves[fit_on]]
        held = o.any(1)
        nll = {t: -np.log(pool_softmax(f[held], t)[o[held]] + 1e-12).mean() for t in (0.5, 1, 1.5, 2, 3, 4, 6, 8)}
        best = min(nll, key=nll.get)
        prob = pool_softmax(finals[halves[test_on]], best)
        own = owns[halves[test_on]]
        print(f"\npool softmax, T {best} fitted on half {fit_on}, tested on half {test_on}")
        reliability(prob, own)


if __name__ == "__main__":
    main()
