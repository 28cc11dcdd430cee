"""Search, explain stage: why an image matched a text query, word by word.

Every scorer has the token-region alignment term (model/scorer.py, alignment_score): each
query token's best cosine with a region (positions included). Its explanation is the
softmax over regions of those cosines, sharpened as SCAN's text-to-image attention is, per
token; the tokens of one word (WordPiece pieces) are averaged. The grid is the backbone's
last feature map over the whole frame (images are resized whole, never cropped), so region
(r, c) covers rows r/rows .. (r+1)/rows and columns c/cols .. (c+1)/cols of the photo.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.text_encoder import TextEmbedding

__all__ = ["Explanation", "explain_regions", "overlay_png", "SHARPNESS"]

# Inverse temperature of the softmax over regions (SCAN's lambda for text-to-image attention is 9-10).
SHARPNESS = 10.0


@dataclass
class Explanation:
    query: str
    words: list[dict]  # [{"word": text, "weights": [float] * rows*cols, row-major, summing to 1}]
    grid: tuple[int, int]  # (rows, cols)
    image_id: int | None  # None for a file that is not in the index
    path: str

    def to_dict(self) -> dict:
        return asdict(self)


def explain_regions(model: AlignmentModel, query: TextEmbedding, text: str, regions: np.ndarray) -> list[dict]:
    """Per word of `text`, the weight of each region: query is text's embedding (one row),
    regions (R, d) float16 as stored --> [{"word", "weights": R floats summing to 1}]."""
    scorer = model.scorer
    with torch.inference_mode():
        tokens = query.tokens[0].float()  # (T, d)
        region_t = torch.from_numpy(regions.astype(np.float32)).to(tokens.device)  # (R, d)
        positioned = region_t + scorer.region_position[: len(region_t)]  # (R, d), as the scorer sees them
        t = tokens / tokens.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        r = positioned / positioned.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        per_token = (SHARPNESS * (t @ r.T)).softmax(dim=-1).cpu().numpy()  # (T, d) x (d, R) --> (T, R)
    words = []
    for word, positions in _words(model, text, int(query.mask[0].sum())):
        weights = per_token[positions].mean(axis=0)  # (R,)
        words.append({"word": word, "weights": [round(float(w), 6) for w in weights / weights.sum()]})
    return words


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


def overlay_png(image: Image.Image, weights: list[float] | np.ndarray, grid: tuple[int, int], max_side: int = 640) -> bytes:
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
