"""Zero-shot ImageNet evidence for search's FAISS candidates: how well the query matches the image's labels.

zero_shot(query, image) = sum over the image's stored top classes c (indexer: top 5,
background left out) of p(c | image) * match(query, c), where
- match(query, c) = cos(s(query), s(text of c)), or with the model's zero_shot_temperature
  T > 0, softmax over all classes c' of cos(s(query), s(text of c')) / T: how specifically
  the query names c among the 1,000 classes ("a man" matches no class much; "a dragonfly"
  matches the dragonfly almost alone);
- s() is the frozen text encoder's mean-pooled, L2-normalised sentence vector
  (all-MiniLM-L6-v2 for the packaged models);
- the text of c is its name as the model's labels give it (zero_shot_texts "names":
  "dragonfly, darning needle, devil's darning needle, ...") or its first name and WordNet
  parent ("wordnet": "dragonfly, odonate", "macaw, parrot"; imagenet_class_texts.tsv, made
  by bench/recipes/imagenet_class_texts.py).
It needs no training and knows the 1,000 ImageNet classes, which Flickr8k's captions (mostly
people and dogs) rarely name: a dragonfly, an owl, a hot dog. score_pool (search/searcher.py)
adds zero_shot_weight * zero_shot to each candidate's first-stage cosine
(bench/experiments/labels.py measured the variants on Flickr8k dev and the sample photos).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgsearch.ground.durable import replace_durably
from imgsearch.ground.locations import default_cache_dir

if TYPE_CHECKING:  # no torch here: the numpy query runtime (model/numpy_query.py) uses this module too
    from imgsearch.model.alignment import AlignmentModel
    from imgsearch.model.numpy_query import NumpyQueryModel

__all__ = [
    "zero_shot_scores",
    "class_matches",
    "class_name_vectors",
    "class_texts",
    "sentence_vectors",
    "wordnet_texts",
]

# zero_shot_texts "wordnet": ImageNet class name --> first name and WordNet parent
CLASS_TEXTS_FILE = Path(__file__).with_name("imagenet_class_texts.tsv")

log = logging.getLogger(__name__)

# class_name_vectors' answers, per model object, for as long as that model lives: the model
# itself is left as it is (nothing is stored on it), and a model that is dropped takes its
# entry with it. The lock makes threads that ask for the same model at once (a server's
# requests) encode its names once.
_NAME_VECTORS: weakref.WeakKeyDictionary[AlignmentModel | NumpyQueryModel, _ClassTable] = weakref.WeakKeyDictionary()
_NAME_VECTORS_LOCK = threading.Lock()


def sentence_vectors(model: AlignmentModel | NumpyQueryModel, texts: list[str]) -> np.ndarray:
    """Mean-pooled, L2-normalised states of the model's (frozen) BERT: (N, h) float32. A torch
    model (model/text_encoder.py) and the numpy query runtime (model/numpy_query.py) give the same."""
    return model.text.sentence_vectors(texts)


class _ClassTable:
    """A model's classes (sorted, unique) and the sentence vectors of their texts, (C, h) float32."""

    def __init__(self, names: list[str], vectors: np.ndarray) -> None:
        self.names, self.vectors = names, vectors
        self.row = {name: i for i, name in enumerate(names)}
        self.by_name = {name: vectors[i] for i, name in enumerate(names)}


def class_texts(model: AlignmentModel | NumpyQueryModel) -> dict[str, str]:
    """Each class name of the model's classifier --> the text its zero-shot match compares a
    query with (the model's zero_shot_texts; module docstring)."""
    names = sorted(set(model.config.image_labels or ()))
    if model.config.zero_shot_texts == "wordnet":
        table = wordnet_texts()
        return {name: table.get(name, name.split(",")[0].strip()) for name in names}
    return {name: name for name in names}


@functools.cache
def wordnet_texts() -> dict[str, str]:
    """imagenet_class_texts.tsv: lines "class name<TAB>text"; lines starting with # are notes."""
    lines = CLASS_TEXTS_FILE.read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t", 1) for line in lines if line and not line.startswith("#"))


def class_name_vectors(model: AlignmentModel | NumpyQueryModel) -> dict[str, np.ndarray]:
    """Sentence vector of each class's text (class_texts), by class name: computed once per
    model and text encoder, then read from the per-user cache (encoding the 1,000 ImageNet
    names took about 10 s of every `imgsearch search` on a 2-core machine; reading them,
    milliseconds), and kept in memory for as long as `model` lives."""
    return _class_table(model).by_name


def class_matches(model: AlignmentModel | NumpyQueryModel, query_sentences: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The model's class names and match(query, c) (module docstring) of each L2-normalised
    query sentence vector (n, h) with each class: (n, C) float32."""
    table = _class_table(model)
    if not table.names:
        return [], np.zeros((len(query_sentences), 0), np.float32)
    cosines = np.asarray(query_sentences, np.float32) @ table.vectors.T  # (n, h) x (h, C) --> (n, C)
    temperature = model.config.zero_shot_temperature
    if not temperature:
        return table.names, cosines
    logits = (cosines - cosines.max(axis=1, keepdims=True)) / np.float32(temperature)
    weights = np.exp(logits)
    return table.names, (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _class_table(model: AlignmentModel | NumpyQueryModel) -> _ClassTable:
    with _NAME_VECTORS_LOCK:
        table = _NAME_VECTORS.get(model)
        if table is None:
            table = _NAME_VECTORS[model] = _encode_class_texts(model)
    return table


def _encode_class_texts(model: AlignmentModel | NumpyQueryModel) -> _ClassTable:
    texts_of = class_texts(model)
    names, texts = list(texts_of), list(texts_of.values())
    vectors: np.ndarray = np.zeros((0, 0), np.float32)
    if names:
        path = default_cache_dir() / f"class-names-{_cache_key(model, texts)}.npz"
        cached = _read_cached(path, texts)
        if cached is None:
            cached = sentence_vectors(model, texts)  # (C, h)
            _write_cached(path, texts, cached)
        vectors = cached
    return _ClassTable(names, vectors)


def _cache_key(model: AlignmentModel | NumpyQueryModel, names: list[str]) -> str:
    """What the vectors depend on: the texts encoded (`names`), the tokenizer's settings and every weight of the
    text encoder's BERT (hashed exactly: about 0.1 s for MiniLM's 90 MB). Both runtimes give the same key."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([names, model.text.config.max_length]).encode())
    for key, data in model.text.bert_weight_bytes():
        digest.update(key.encode())
        digest.update(data)
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
    model: AlignmentModel | NumpyQueryModel, query_sentence: np.ndarray, labels: list[list[tuple[str, float]]]
) -> np.ndarray:
    """query_sentence (h,) L2-normalised, per candidate its [(class name, prob), ...] --> (C,) float32.

    A candidate without stored labels (or a name the model does not know) scores 0 for it."""
    names, matches = class_matches(model, query_sentence[None])
    row = _class_table(model).row
    match = matches[0]  # (classes,)
    scores = np.zeros(len(labels), dtype=np.float32)
    for i, image_labels in enumerate(labels):
        for name, prob in image_labels:
            c = row.get(name)
            if c is not None:
                scores[i] += np.float32(prob) * float(match[c])
    return scores
