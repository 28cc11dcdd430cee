"""Indexing, embed stage: a list of files --> a Shard (decode, hash, embed each new content once).

A worker knows no store, no FAISS and no engine: it is given files and the contents not
to embed (already stored), and hands back a shard.Shard that merge.ShardWriter writes (a Ray
actor: embed_shard). The local run (pipeline.LocalEmbedder) hands the run the same pieces one
DataLoader batch at a time (embed_batches): DecodeDataset and collate decode in worker
processes (uint8 pixels, 4x less to ship than floats), start_embedding starts the encoder on
the new contents of a batch (on a GPU asynchronously, under float16 autocast), and
PendingShard.result() waits for the vectors and gives the batch's Shard.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from imgsearch.images.decode import DecodeResult, ImageRecord, decode_file, record_of
from imgsearch.indexer.shard import Shard, shard_id_of
from imgsearch.model.image_encoder import ImageEmbedding, ImageEncoder, resize_uint8
from imgsearch.model.labels import best_classes
from imgsearch.storage.lock import close_inherited_locks

__all__ = [
    "embed_shard",
    "embed_batches",
    "DecodeDataset",
    "DecodedBatch",
    "collate",
    "init_worker",
    "decode_loader",
    "start_embedding",
    "start_encoding",
    "host_outputs",
    "PendingShard",
    "Started",
    "cudnn_autotuned",
]

Decode = Callable[..., DecodeResult]  # decode.decode_file, or a stand-in with its signature


def embed_shard(
    paths: Sequence[str | os.PathLike],
    encoder: ImageEncoder,
    *,
    known_contents: Collection[str] = (),
    batch_size: int = 32,
    workers: int = 0,
) -> Shard:
    """Decode (in `workers` processes when > 0), hash and embed `paths`: each content not in
    `known_contents` is run through the encoder once, however many of the files hold it.

    `known_contents` must be contents the index will hold when this shard is merged (those
    stored when the run started): a file whose content is there is only recorded.
    """
    known = set(known_contents)  # grows with the contents embedded in this shard
    pending = list(embed_batches([Path(p) for p in paths], encoder, known, batch_size=batch_size, workers=workers))
    return _concatenated([part.result() for part in pending], encoder)


def embed_batches(
    paths: Sequence[Path],
    encoder: ImageEncoder,
    known_contents: set[str],
    *,
    batch_size: int = 32,
    workers: int = 0,
    decode: Decode = decode_file,
) -> Iterator[PendingShard]:
    """Decode `paths` in batches of `batch_size` (in `workers` processes when > 0, with `decode`)
    and start embedding each batch's contents that are not in `known_contents` (adding them
    to it): batch after batch, its shard maybe still on its way (GPU). The encoder runs
    channels-last, with cuDNN picking its fastest algorithms on a GPU while batches are asked for;
    on the CPU the encoder runs on ONNX Runtime where it can (start_embedding)."""
    device = next(encoder.parameters()).device
    encoder.to(memory_format=torch.channels_last)
    loader = decode_loader(DecodeDataset(paths, encoder.image_size, decode), batch_size, workers)
    with cudnn_autotuned(device):
        for batch in loader:
            yield start_embedding(batch, encoder, device, known_contents)


def _concatenated(parts: list[Shard], encoder: ImageEncoder) -> Shard:
    """One shard of the batches' shards, in order."""
    records = [record for part in parts for record in part.records]
    filled = [part for part in parts if part.contents]
    if filled:
        global_ = np.concatenate([part.global_ for part in filled])  # (n, d)
        regions = np.concatenate([part.regions for part in filled])  # (n, R, d)
    else:
        global_ = np.zeros((0, encoder.embed_dim), np.float32)
        regions = np.zeros((0, encoder.num_regions, encoder.embed_dim), np.float16)
    labels = None  # one encoder: every batch with contents has labels, or none has
    if filled and all(part.labels is not None for part in filled):
        labels = [row for part in filled if part.labels is not None for row in part.labels]
    return Shard(
        shard_id_of([record.path for record in records]),
        records,
        [sha for part in filled for sha in part.contents],
        global_,
        regions,
        labels,
    )


# ---- decode: files --> records and uint8 pixels, in DataLoader worker processes -------------------


class DecodeDataset(Dataset):
    """File i --> (its ImageRecord, its pixels (3, S, S) uint8, or None when it failed)."""

    def __init__(self, paths: Sequence[Path], image_size: int, decode: Decode = decode_file) -> None:
        self.paths = paths
        self.image_size = image_size
        self.decode = decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[ImageRecord, torch.Tensor | None]:
        result = self.decode(self.paths[i], min_size=self.image_size)  # JPEGs at a reduced scale
        # Plain values, no image: unpickling a batch costs the main process little.
        record = record_of(result)
        pixels = None
        if result.image is not None:
            try:
                pixels = resize_uint8(result.image, self.image_size)  # (3, S, S) uint8
            except Exception as exc:  # a decoder may defer errors until pixels are read
                record = replace(record, error=f"cannot decode image: {exc}")
        return record, pixels


@dataclass
class DecodedBatch:
    """What a decode worker hands over: every file's record, and the good ones' pixels stacked."""

    records: list[ImageRecord]
    pixels: torch.Tensor | None  # (B_good, 3, S, S) uint8, in the order of the good records

    def __len__(self) -> int:
        return len(self.records)


def collate(items: list[tuple[ImageRecord, torch.Tensor | None]]) -> DecodedBatch:
    good = [pixels for record, pixels in items if record.error is None]
    stacked = torch.stack(cast("list[torch.Tensor]", good)) if good else None  # a good record has its pixels
    return DecodedBatch([record for record, _ in items], stacked)


def init_worker(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; the main process decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    close_inherited_locks()


def decode_loader(dataset: DecodeDataset, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=init_worker if workers else None,
        # No pinned memory, also on a GPU: the pinning thread's extra copy of every batch cost
        # more than the asynchronous copy saved (H200, VGG16 224px: 3,531 against 3,067 images/s
        # at batch 32, and slower pinned at each of 32, 64, 128 and 256; bench/RESULTS.md).
        pin_memory=False,
        prefetch_factor=4 if workers else None,  # batches decoded ahead, per worker
    )


# ---- embed: a decoded batch --> its shard, the vectors maybe still on their way (GPU) -------------


class Started(NamedTuple):
    """What start_encoding hands back: host tensors, filled once `ready` fires (GPU; None on the CPU)."""

    global_: torch.Tensor  # (n, d) float32
    regions: torch.Tensor  # (n, R, d) float16
    ready: torch.cuda.Event | None
    top_probs: torch.Tensor | None = None  # (n, TOP_LABELS) float32, best first; None without a classifier
    top_classes: torch.Tensor | None = None  # (n, TOP_LABELS) int64 class indices (never "background")


@dataclass
class PendingShard:
    """A batch's shard whose vectors the encoder may still be computing.

    On a GPU the forward pass and the copies back to (pinned) host memory are queued
    asynchronously; result() waits for them. On the CPU they are done already.
    """

    records: list[ImageRecord]
    contents: list[str]  # sha256 of each content being embedded, in the encoder's row order
    global_: torch.Tensor | None = None  # (n, d) float32, host memory
    regions: torch.Tensor | None = None  # (n, R, d) float16, host memory
    ready: torch.cuda.Event | None = None  # fires when global_, regions and the top classes are filled (GPU)
    # On the CPU on ONNX Runtime: waits for the encoder's threads and gives what start_encoding would
    # have (result() calls it); the batch after this one is decoded and started meanwhile.
    finish: Callable[[], Started] | None = None
    # With a classifier: each row's top classes, best first, in host memory, and the class names.
    top_probs: torch.Tensor | None = None  # (n, TOP_LABELS) float32
    top_classes: torch.Tensor | None = None  # (n, TOP_LABELS) int64, indices into label_names
    label_names: tuple[str, ...] | None = None
    embed_dim: int = 0  # for the empty arrays of a batch with nothing to embed
    num_regions: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def _take(self, started: Started) -> None:
        self.global_, self.regions, self.ready = started.global_, started.regions, started.ready
        if started.top_probs is not None:
            self.top_probs, self.top_classes = started.top_probs, started.top_classes

    @property
    def asynchronous(self) -> bool:
        """True while result() may still wait for the encoder (a GPU's, or ONNX Runtime's threads)."""
        return self.ready is not None or self.finish is not None

    def result(self) -> Shard:
        if self.finish is not None:
            self._take(self.finish())
            self.finish = None
        if self.ready is not None:
            self.ready.synchronize()
        labels = None
        if self.contents:
            assert self.global_ is not None and self.regions is not None  # set with the contents
            global_, regions = self.global_.numpy(), self.regions.numpy()  # (n, d), (n, R, d)
            if self.top_probs is not None:
                names = self.label_names
                assert self.top_classes is not None and names is not None  # set with top_probs
                probs, classes = self.top_probs.tolist(), self.top_classes.tolist()  # (n, TOP_LABELS) each
                labels = [
                    [(names[c], round(p, 4)) for c, p in zip(row_classes, row_probs)]
                    for row_classes, row_probs in zip(classes, probs)
                ]
        else:
            global_ = np.zeros((0, self.embed_dim), np.float32)
            regions = np.zeros((0, self.num_regions, self.embed_dim), np.float16)
        return Shard(
            shard_id_of([record.path for record in self.records]), self.records, self.contents, global_, regions, labels
        )


def start_embedding(
    batch: DecodedBatch,
    encoder: ImageEncoder,
    device: torch.device,
    known_contents: set[str],
) -> PendingShard:
    """Start embedding each good file's content that is not in `known_contents` (once per
    content), and add those to it."""
    rows: list[int] = []  # rows of batch.pixels to embed
    contents: list[str] = []
    good_row = -1  # row of the current record in batch.pixels
    for record in batch.records:
        if record.error is not None:
            continue
        good_row += 1
        assert record.sha256 is not None  # a good file's record has it
        if record.sha256 not in known_contents:
            known_contents.add(record.sha256)
            rows.append(good_row)
            contents.append(record.sha256)
    pending = PendingShard(batch.records, contents, embed_dim=encoder.embed_dim, num_regions=encoder.num_regions)
    if contents:
        assert batch.pixels is not None  # the good records' pixels
        pending.label_names = encoder.labels  # what the top classes index, with a classifier
        # On the CPU the encoder runs on ONNX Runtime where it can (model/onnx_encoder.py: 1.4-2x
        # faster end to end), from the first batch with something to embed on, asynchronously.
        later = None
        if device.type == "cpu" and encoder.use_onnx_runtime():
            later = encoder.encode_later(batch.pixels[torch.tensor(rows)])
        if later is not None:
            pending.finish = lambda: host_outputs(later(), encoder)
        else:
            pending._take(start_encoding(batch.pixels, torch.tensor(rows), encoder, device))
    return pending


def start_encoding(pixels: torch.Tensor, rows: torch.Tensor, encoder: ImageEncoder, device: torch.device) -> Started:
    """uint8 images (B, 3, S, S), rows to embed (n,) --> global vectors (n, d) float32,
    regions (n, R, d) float16 and, with a classifier, the top classes, in host memory,
    and on a GPU the event that says they are there."""
    cuda = device.type == "cuda"
    with torch.inference_mode():
        batch = pixels.to(device)[rows.to(device)]  # (n, 3, S, S) uint8
        with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
            out = encoder.encode(batch)
        started = host_outputs(out, encoder)
        if not cuda:
            return started
        global_, regions, _, top_probs, top_classes = started
        regions_host = torch.empty(regions.shape, dtype=torch.float16, pin_memory=True)
        global_host = torch.empty(global_.shape, dtype=torch.float32, pin_memory=True)
        regions_host.copy_(regions, non_blocking=True)
        global_host.copy_(global_, non_blocking=True)
        if top_probs is not None and top_classes is not None:  # both, with a classifier
            probs_host = torch.empty(top_probs.shape, dtype=torch.float32, pin_memory=True)
            classes_host = torch.empty(top_classes.shape, dtype=torch.int64, pin_memory=True)
            probs_host.copy_(top_probs, non_blocking=True)
            classes_host.copy_(top_classes, non_blocking=True)
            top_probs, top_classes = probs_host, classes_host
        ready = torch.cuda.Event()
        ready.record()
    return Started(global_host, regions_host, ready, top_probs, top_classes)


def host_outputs(out: ImageEmbedding, encoder: ImageEncoder) -> Started:
    """The encoder's outputs as they are stored: global (n, d) float32, regions (n, R, d) float16
    and, with a classifier, the top classes (on the outputs' device; no event)."""
    top_probs = top_classes = None
    if out.class_probs is not None and encoder.labels is not None:
        top_probs, top_classes = best_classes(out.class_probs, encoder.labels)  # (n, k), (n, k)
    return Started(out.global_.float(), out.regions.to(torch.float16), None, top_probs, top_classes)


@contextmanager
def cudnn_autotuned(device: torch.device) -> Iterator[None]:
    """On a GPU, let cuDNN pick its fastest convolution algorithms: every batch has the same shape."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
