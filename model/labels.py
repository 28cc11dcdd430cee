"""The backbone classifier's top labels per image: the TOP_LABELS most probable classes, best
first, "background" left out. The indexer stores them with each content's vectors; a query
photo and evaluation compute them the same way."""

from __future__ import annotations

import torch

from imgsearch.ground.errors import ModelConfigError
from imgsearch.model.backbone import first_real_class

__all__ = ["TOP_LABELS", "top_labels", "best_classes"]

TOP_LABELS = 5  # classifier classes stored per content, best first


def top_labels(class_probs: torch.Tensor, labels: tuple[str, ...]) -> list[list[tuple[str, float]]]:
    """Posteriors (n, C) --> per image its TOP_LABELS classes, best first, as the store keeps
    them: [(name, prob rounded to 4 decimals), ...]."""
    probs, classes = best_classes(class_probs, labels)  # (n, k), (n, k)
    return [
        [(labels[c], round(p, 4)) for c, p in zip(row_classes, row_probs)]
        for row_classes, row_probs in zip(classes.tolist(), probs.tolist())
    ]


def best_classes(class_probs: torch.Tensor, labels: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax posteriors (n, C) --> the TOP_LABELS most probable classes, TFLite's "background"
    (class 0 of MobileNetV2's) left out, best first: probabilities (n, k) float32 and class
    indices (n, k) int64."""
    if class_probs.shape[1] != len(labels):
        raise ModelConfigError(
            f"the model's classifier has {class_probs.shape[1]} classes but its config names "
            f"{len(labels)} labels; fix image.labels in its config.json."
        )
    first = first_real_class(labels)
    probs, classes = class_probs[:, first:].float().topk(min(TOP_LABELS, class_probs.shape[1] - first), dim=1)
    return probs, classes + first  # back to indices into `labels`
