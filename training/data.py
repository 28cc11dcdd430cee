"""Training, images/caption states stage: decoded images as uint8 tensors, cached BERT states, batches.

Images are decoded once, resized to the backbone's input size and kept as
uint8 (N, 3, S, S). With a frozen text encoder its states are computed once
per caption. Batches keep images of one `group` together, so that hard
negatives (e.g. the attribute and relation swaps of the synthetic scenes)
meet in the same batch, where the ITM loss mines them.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from imgsearch.ground.errors import CaptionFileError
from imgsearch.images.decode import decode_file
from imgsearch.model.image_encoder import resize_uint8
from imgsearch.model.text_encoder import TextEncoder
from imgsearch.training.captions import CaptionedImage

__all__ = ["ImageBank", "CaptionBank", "load_images", "encode_captions", "group_batches"]

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 30.0  # at most one "encoding captions" line this often


@dataclass
class ImageBank:
    items: list[CaptionedImage]  # the images that decoded
    pixels: torch.Tensor  # (N, 3, S, S) uint8
    failures: list[tuple[str, str]]  # (path, reason) of images left out

    def concat(self, other: ImageBank) -> ImageBank:
        """This bank's images, then `other`'s (same pixel size)."""
        return ImageBank(
            self.items + other.items, torch.cat([self.pixels, other.pixels]), self.failures + other.failures
        )


class _ResizeDataset(Dataset):
    def __init__(self, items: list[CaptionedImage], size: int) -> None:
        self.items, self.size = items, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        result = decode_file(self.items[i].path, min_size=self.size)  # as the indexer decodes
        if result.image is None:
            return i, None, result.error
        return i, resize_uint8(result.image, self.size), None  # (3, S, S) uint8, as the indexer resizes


def load_images(items: list[CaptionedImage], size: int, workers: int = 0) -> ImageBank:
    loader = DataLoader(_ResizeDataset(items, size), batch_size=64, num_workers=workers, collate_fn=list)
    kept, tensors, failures = [], [], []
    for batch in loader:
        for i, pixels, error in batch:
            if pixels is None:
                failures.append((str(items[i].path), error))
            else:
                kept.append(items[i])
                tensors.append(pixels)
    if not tensors:
        raise CaptionFileError(
            f"none of the {len(items)} images named by the captions file could be read "
            f"(first: {failures[0][0]}: {failures[0][1]}); check --images."
        )
    return ImageBank(kept, torch.stack(tensors), failures)


@dataclass
class CaptionBank:
    captions: list[str]  # every caption, flattened
    image_of: np.ndarray  # (Nc,) index of each caption's image in the ImageBank
    captions_of: list[list[int]]  # per image, indices into `captions`
    states: torch.Tensor | None  # (Nc, T, h) float16 BERT states, when the encoder is frozen
    mask: torch.Tensor | None  # (Nc, T) bool


def encode_captions(
    text: TextEncoder, items: list[CaptionedImage], *, cache_states: bool, batch_size: int = 256
) -> CaptionBank:
    captions: list[str] = []
    image_of: list[int] = []
    captions_of: list[list[int]] = []
    for i, item in enumerate(items):
        captions_of.append(list(range(len(captions), len(captions) + len(item.captions))))
        captions += item.captions
        image_of += [i] * len(item.captions)
    states = mask = None
    if cache_states:
        states, mask = _bert_states(text, captions, batch_size)
    return CaptionBank(captions, np.array(image_of), captions_of, states, mask)


def _bert_states(text: TextEncoder, captions: list[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen BERT's last states (Nc, T, h) float16 of every caption and their mask (Nc, T),
    T the longest caption's length. Captions run in batches of similar length, each padded only
    to its own longest (Flickr8k's captions average a third of the longest: 2-3x less work than
    padding every batch to T); a real token's state does not depend on the padding after it."""
    batch, _ = text.tokenize(captions)
    ids, attention = batch["input_ids"], batch["attention_mask"]  # (Nc, T)
    lengths = attention.sum(1)  # (Nc,)
    order = torch.argsort(lengths, stable=True)
    bert_config: Any = text.bert.config  # a transformers config
    states = torch.zeros(*ids.shape, bert_config.hidden_size, dtype=torch.float16)  # (Nc, T, h)
    started = last = time.perf_counter()
    log.info("encoding %d captions with the text encoder", len(captions))
    with torch.inference_mode():
        for start in range(0, len(captions), batch_size):
            rows = order[start : start + batch_size]
            width = int(lengths[rows].max())
            out = text.bert(input_ids=ids[rows, :width], attention_mask=attention[rows, :width])
            states[rows, :width] = out.last_hidden_state.to(torch.float16)  # (b, width, h)
            if time.perf_counter() - last >= PROGRESS_EVERY_S:
                last = time.perf_counter()
                log.info("encoding captions %d/%d", min(start + batch_size, len(captions)), len(captions))
    log.info("encoded %d captions in %.0fs", len(captions), time.perf_counter() - started)
    return states, attention.bool()


def group_batches(items: list[CaptionedImage], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle groups (an ungrouped image is its own group) and pack them into batches of
    at most batch_size images; a group is never split unless it alone exceeds batch_size."""
    groups: dict[object, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.group if item.group is not None else ("image", i), []).append(i)
    order = list(groups.values())
    rng.shuffle(order)
    batches: list[list[int]] = []
    current: list[int] = []
    alone: list[int] = []

    def close(batch: list[int]) -> None:
        if len(batch) > 1:
            batches.append(batch)
        else:
            alone.extend(batch)  # a batch of one has no negatives (and breaks ITM's negative sampling)

    for members in order:
        if current and len(current) + len(members) > batch_size:
            close(current)
            current = []
        current.extend(members)
        while len(current) > batch_size:
            close(current[:batch_size])
            current = current[batch_size:]
    close(current)
    leftover: list[int] = []
    for i in alone:  # a lone image joins a batch with room, else the other lone ones
        room = next((b for b in batches if len(b) < batch_size), None)
        (room if room is not None else leftover).append(i)
    chunks = (leftover[start : start + batch_size] for start in range(0, len(leftover), batch_size))
    batches += [chunk for chunk in chunks if len(chunk) > 1]  # at most one image sits the epoch out
    return batches
