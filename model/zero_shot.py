"""Zero-shot ImageNet evidence for search's FAISS candidates: how well the query matches the image's labels.

zero_shot(query, image) = sum over the image's stored top classes c (indexer: top 5,
background left out) of p(c | image) * cos(s(query), s(name of c)), where s() is the
frozen text encoder's mean-pooled, L2-normalised sentence vector (all-MiniLM-L6-v2 for
the photo model). It needs no training and knows the 1,000 ImageNet classes, which
Flickr8k's captions (mostly people and dogs) rarely name: a dragonfly, an owl, a hot dog.
search() adds zero_shot_weight * zero_shot to each candidate's first-stage cosine
(bench/experiments/zero_shot.py measured the weight on Flickr8k dev and on the sample photos).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import weakref
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from imgsearch.durable import replace_durably
from imgsearch.locations import default_cache_dir
from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.text_encoder import mean_pool

__all__ = ["zero_shot_scores", "class_name_vectors", "sentence_vectors"]

log = logging.getLogger(__name__)

# class_name_vectors' answers, per model object, for as long as that model lives: the model
# itself is left as it is (nothing is stored on it), and a model that is dropped takes its
# entry with it. The lock makes threads that ask for the same model at once (a server's
# requests) encode its names once.
_NAME_VECTORS: weakref.WeakKeyDictionary[AlignmentModel, dict[str, np.ndarray]] = weakref.WeakKeyDictionary()
_NAME_VECTORS_LOCK = threading.Lock()


def sentence_vectors(model: AlignmentModel, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """Mean-pooled, L2-normalised states of the model's (frozen) BERT: (N, h) float32."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch, _ = model.text.tokenize(texts[start : start + batch_size], model.device)
            states = model.text.bert(**batch).last_hidden_state  # (b, T, h)
            out.append(F.normalize(mean_pool(states, batch["attention_mask"]), dim=-1).float().cpu())  # (b, h)
    return torch.cat(out)


def class_name_vectors(model: AlignmentModel) -> dict[str, np.ndarray]:
    """Sentence vector of each class name of the model's classifier: computed once per model
    and text encoder, then read from the per-user cache (encoding the 1,000 ImageNet names
    took about 10 s of every `imgsearch search` on a 2-core machine; reading them, milliseconds),
    and kept in memory for as long as `model` lives."""
    with _NAME_VECTORS_LOCK:
        cached = _NAME_VECTORS.get(model)
        if cached is None:
            cached = _NAME_VECTORS[model] = _class_name_vectors(model)
    return cached


def _class_name_vectors(model: AlignmentModel) -> dict[str, np.ndarray]:
    names = sorted(set(model.config.image_labels or ()))
    vectors = np.zeros((0, 0), np.float32)
    if names:
        path = default_cache_dir() / f"class-names-{_cache_key(model, names)}.npz"
        vectors = _read_cached(path, names)
        if vectors is None:
            vectors = sentence_vectors(model, names).numpy()  # (N, h)
            _write_cached(path, names, vectors)
    return {name: vectors[i] for i, name in enumerate(names)}


def _cache_key(model: AlignmentModel, names: list[str]) -> str:
    """What the vectors depend on: the names, the tokenizer's settings and every weight of the
    text encoder's BERT (hashed exactly: about 0.1 s for MiniLM's 90 MB)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([names, model.text.config.max_length]).encode())
    for key, tensor in sorted(model.text.bert.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _read_cached(path: Path, names: list[str]) -> np.ndarray | None:
    """The cached vectors (N, h) float32 of exactly `names`, or None (absent, unreadable, other names)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if data["names"].tolist() == names and data["vectors"].shape[0] == len(names):
                return data["vectors"].astype(np.float32)
    except (OSError, ValueError, KeyError) as exc:
        if path.exists():
            log.info("class-name cache %s is unreadable (%s); encoding the names again", path, exc)
    return None


def _write_cached(path: Path, names: list[str], vectors: np.ndarray) -> None:
    """Keep the vectors for the next process; a cache that cannot be written only costs time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(path.name + f".{os.getpid()}.tmp")
        with open(temp, "wb") as handle:
            np.savez(handle, names=np.array(names), vectors=vectors)
        replace_durably(temp, path)
    except OSError as exc:
        log.info("could not cache class-name vectors in %s (%s)", path, exc)


def zero_shot_scores(
    model: AlignmentModel, query_sentence: np.ndarray, labels: list[list[tuple[str, float]]]
) -> np.ndarray:
    """query_sentence (h,) L2-normalised, per candidate its [(class name, prob), ...] --> (C,) float32.

    A candidate without stored labels (or a name the model does not know) scores 0 for it."""
    names = class_name_vectors(model)
    scores = np.zeros(len(labels), dtype=np.float32)
    for i, image_labels in enumerate(labels):
        for name, prob in image_labels:
            vector = names.get(name)
            if vector is not None:
                scores[i] += np.float32(prob) * float(vector @ query_sentence)
    return scores
