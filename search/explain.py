"""Search, explain stage: why an image matched a text query, word by word.

Two ways, by what the model has:
- "classes" (a backbone with an ImageNet classifier, e.g. the photo model): the label part of
  the first-stage score compares the query with the names of the classes the classifier sees.
  The classifier is linear over mean-pooled regions, so a class's logit is the mean of its
  logits on each region (a class activation map). Per word: the class names nearest to the
  word (softmax of their MiniLM cosines over CLASS_TEMPERATURE) weight the per-region class
  logits; the regions above their mean, by how much, make the map (as CAMs are shown: a
  softmax over regions lit one region where the object covers many). Each word also names its nearest classes
  when they are close to it (NAMED_CLASS_MIN), e.g. "guitar" ~ "electric guitar".
- "alignment" (any scorer, and whenever the image's pixels are not at hand): the re-ranker's
  token-region alignment term (model/scorer.py, alignment_score), each token's cosine with
  each region, positions included, as a softmax over regions sharpened as SCAN's
  text-to-image attention is.
Tokens of one word (WordPiece pieces) are averaged. The grid is the backbone's last feature
map over the whole frame (images are resized whole, never cropped), so region (r, c) covers
rows r/rows .. (r+1)/rows and columns c/cols .. (c+1)/cols of the photo.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.backbone import VGGBackbone, first_real_class
from imgsearch.model.image_encoder import resize_uint8
from imgsearch.model.numpy_query import QueryEmbedding
from imgsearch.model.words import is_content_word
from imgsearch.model.zero_shot import class_name_vectors

__all__ = [
    "Explanation",
    "explain_regions",
    "overlay_png",
    "SHARPNESS",
    "CLASS_TEMPERATURE",
    "SHOWN_CLASSES",
    "NAMED_CLASS_MIN",
]

# Inverse temperature of the softmax over regions (SCAN's lambda for text-to-image attention is 9-10).
SHARPNESS = 10.0
# Temperature of the softmax over class-name cosines that picks a word's classes.
CLASS_TEMPERATURE = 0.05
SHOWN_CLASSES = 3  # nearest class names listed per word
# A class is named for a word only when their MiniLM cosine reaches this. Measured on 15 photo
# queries' 38 content words with the photo model: at 0.55, 10 words named a class and 8 of them
# rightly ("guitar" ~ "electric guitar" 0.73, "parrot" ~ "macaw" 0.69, "cat" ~ "tabby" 0.59);
# below it sat the wrong ones ("man" ~ "mantis" 0.21, "children" ~ "papillon" 0.24, "red" ~ "red
# wine" 0.48, "rock" ~ "rock python" 0.49, "snow" ~ "snowplow" 0.50) with a few near misses
# ("beach" ~ "seashore" 0.51). Such a word's map is still shown, without a name.
NAMED_CLASS_MIN = 0.55


@dataclass
class Explanation:
    query: str
    # [{"word": text, "weights": [float] * rows*cols, row-major, summing to 1,
    #   "classes": [{"label", "similarity"}] nearest class names ("classes" method; else [])}]
    words: list[dict]
    grid: tuple[int, int]  # (rows, cols)
    image_id: int | None  # None for a file that is not in the index
    path: str
    method: str = "alignment"  # "classes" or "alignment" (see the module docstring)

    def to_dict(self) -> dict:
        return asdict(self)


def explain_regions(
    model: AlignmentModel, query: QueryEmbedding, text: str, regions: np.ndarray, image: Image.Image | None = None
) -> tuple[str, list[dict]]:
    """Per word of `text`, the weight of each region: query is text's embedding,
    regions (R, d) float16 as stored, image the picture itself (RGB) when at hand -->
    (method, [{"word", "weights": R floats summing to 1, "classes"}]). Only content words are
    explained ("a dog on the beach": "dog", "beach"; model/words.py), unless the query has none."""
    words = _content_words(_words(model, text, int(query.mask.sum())))
    if image is not None and model.config.image_labels and model.image.backbone_config.has_classifier:
        return "classes", _class_maps(model, text, words, image)
    per_token = _alignment_per_token(model, query, regions)  # (T, R)
    out = []
    for word, positions in words:
        weights = per_token[positions].mean(axis=0)  # (R,)
        out.append({"word": word, "weights": _rounded(weights / weights.sum()), "classes": []})
    return "alignment", out


def _alignment_per_token(model: AlignmentModel, query: QueryEmbedding, regions: np.ndarray) -> np.ndarray:
    """Softmax over regions of SHARPNESS * cosine(token, positioned region): (T, R)."""
    scorer = model.scorer
    with torch.inference_mode():
        tokens = torch.from_numpy(query.tokens).to(model.device)  # (T, d)
        region_t = torch.from_numpy(regions.astype(np.float32)).to(tokens.device)  # (R, d)
        positioned = region_t + scorer.region_position[: len(region_t)]  # (R, d), as the scorer sees them
        t = tokens / tokens.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        r = positioned / positioned.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return (SHARPNESS * (t @ r.T)).softmax(dim=-1).cpu().numpy()  # (T, d) x (d, R) --> (T, R)


def _class_maps(model: AlignmentModel, text: str, words: list[tuple[str, list[int]]], image: Image.Image) -> list[dict]:
    """The "classes" explanation (module docstring) of each word."""
    encoder = model.image
    assert model.config.image_labels is not None and not isinstance(encoder.backbone, VGGBackbone)  # a classifier's
    labels = list(model.config.image_labels)
    names = class_name_vectors(model)
    name_vectors = torch.from_numpy(np.stack([names[label] for label in labels]))  # (C, h)
    with torch.inference_mode():
        pixels = encoder.normalize(resize_uint8(image, encoder.image_size)[None].to(model.device))  # (1, 3, S, S)
        regions, _ = encoder.backbone(pixels)  # (1, R, C_feat)
        region_logits = encoder.backbone.classify(regions[0]).float().cpu()  # (R, C_feat) --> (R, C): a CAM per class
        batch, _ = model.text.tokenize([text], model.device)
        states = model.text.bert(**batch).last_hidden_state[0].float().cpu()  # (T, h)
    out = []
    for word, positions in words:
        word_vector = F.normalize(states[positions].mean(dim=0), dim=-1)  # (h,), as class names are pooled
        similarity = name_vectors @ word_vector  # (C,)
        similarity[: first_real_class(labels)] = -1.0  # TFLite's class 0, "background", names nothing
        class_weights = ((similarity - similarity.max()) / CLASS_TEMPERATURE).softmax(dim=0)  # (C,)
        region_scores = region_logits @ class_weights  # (R, C) x (C,) --> (R,)
        weights = (region_scores - region_scores.mean()).clamp_min(0).numpy()
        weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(weights), 1 / len(weights))
        nearest = [
            c for c in similarity.argsort(descending=True)[:SHOWN_CLASSES].tolist() if similarity[c] >= NAMED_CLASS_MIN
        ]
        out.append(
            {
                "word": word,
                "weights": _rounded(weights),
                "classes": [{"label": labels[c], "similarity": round(float(similarity[c]), 4)} for c in nearest],
            }
        )
    return out


def _rounded(weights: np.ndarray) -> list[float]:
    return [round(float(w), 6) for w in weights]


def _content_words(words: list[tuple[str, list[int]]]) -> list[tuple[str, list[int]]]:
    content = [(word, positions) for word, positions in words if is_content_word(word)]
    return content or words


def _words(model: AlignmentModel, text: str, length: int) -> list[tuple[str, list[int]]]:
    """The words of `text` as the tokenizer splits them, each with its token positions among the
    first `length` tokens (special tokens, e.g. [CLS] and [SEP], belong to no word)."""
    encoding = model.text.tokenizer(
        text, truncation=True, max_length=model.text.config.max_length, return_offsets_mapping=True
    )
    words: dict[int, list[int]] = {}
    spans: dict[int, tuple[int, int]] = {}
    for position, word_id in enumerate(encoding.word_ids()[:length]):
        if word_id is None:
            continue
        start, end = encoding["offset_mapping"][position]
        words.setdefault(word_id, []).append(position)
        first, last = spans.get(word_id, (start, end))
        spans[word_id] = (min(first, start), max(last, end))
    return [(text[spans[w][0] : spans[w][1]], positions) for w, positions in words.items()]


def overlay_png(
    image: Image.Image, weights: list[float] | np.ndarray, grid: tuple[int, int], max_side: int = 640
) -> bytes:
    """One word's region weights drawn over the image: the regions it matched lit in warm
    colours, the rest dimmed. image RGB, weights (rows*cols,) --> PNG bytes, longest side max_side."""
    rows, cols = grid
    heat = np.asarray(weights, np.float32).reshape(rows, cols)
    heat = heat / max(float(heat.max()), 1e-12)  # (rows, cols) in [0, 1]
    picture = image.convert("RGB")
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    width, height = picture.size
    smooth = Image.fromarray((heat * 255).astype(np.uint8), "L").resize((width, height), Image.Resampling.BICUBIC)
    h = np.asarray(smooth, np.float32)[..., None] / 255.0  # (H, W, 1)
    pixels = np.asarray(picture, np.float32)  # (H, W, 3)
    warm = np.concatenate([np.full_like(h, 255.0), 60 + 195 * h, np.full_like(h, 40.0)], axis=-1)  # orange to yellow
    shown = pixels * (0.35 + 0.65 * h) * (1 - 0.35 * h) + warm * 0.35 * h
    out = io.BytesIO()
    Image.fromarray(np.clip(shown, 0, 255).astype(np.uint8), "RGB").save(out, "PNG", optimize=False)
    return out.getvalue()
