"""Indexing, shard stage: the unit of work between the embed workers and the one writer.

A shard is what a worker found in a list of files: each file's ImageRecord (its facts, or
why it failed; images/decode.py), and the vectors of each content it embedded, once per
content however many files of the shard hold it. It knows nothing of any store: the
writer (merge.ShardWriter) decides what each file means for the index. A shard file is one
safetensors file: the arrays as tensors ("global" (n, d) float32, "regions" (n, R, d)
float16) and everything else as JSON in the safetensors metadata (docs/index-format.md,
"Shards").
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from imgsearch.ground.durable import replace_durably
from imgsearch.ground.errors import StoreCorrupt
from imgsearch.images.decode import RECORD_FIELDS, ImageRecord

__all__ = ["Shard", "SHARD_FORMAT", "SHARD_VERSION", "shard_id_of"]

SHARD_FORMAT = "imgsearch-shard"  # the metadata's "format", so that another safetensors file is told apart
SHARD_VERSION = 1


def shard_id_of(texts: Sequence[str]) -> str:
    """A shard's id: sha256 of its path texts, in order (one per line), so that a retried
    worker's shard has the id of the first attempt's."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(eq=False)
class Shard:
    shard_id: str  # stable: shard_id_of(the records' texts)
    records: list[ImageRecord]  # every file of the shard, in the order given (paths as stored)
    contents: list[str]  # sha256 of each content embedded: the rows of the arrays
    global_: np.ndarray  # (n, d) float32, L2-normalised
    regions: np.ndarray  # (n, R, d) float16
    labels: list[list[tuple[str, float]]] | None  # per content, top classes best first; None without a classifier

    def __eq__(self, other: object) -> bool:
        """Equal field by field: the arrays by shape, dtype and every value."""
        if not isinstance(other, Shard):
            return NotImplemented
        return (self.shard_id, self.records, self.contents, self.labels) == (
            other.shard_id,
            other.records,
            other.contents,
            other.labels,
        ) and all(
            a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
            for a, b in ((self.global_, other.global_), (self.regions, other.regions))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable: unhashable

    def save(self, path: str | os.PathLike) -> None:
        """Write the shard to `path` as one file, atomically and durably (PATH.tmp, then renamed)."""
        self._check()
        metadata = {
            "format": SHARD_FORMAT,
            "version": str(SHARD_VERSION),
            "shard": json.dumps(
                {
                    "shard_id": self.shard_id,
                    "records": [[getattr(record, name) for name in RECORD_FIELDS] for record in self.records],
                    "record_fields": list(RECORD_FIELDS),
                    "contents": self.contents,
                    "labels": self.labels,
                },
                ensure_ascii=False,
            ),
        }
        data = save_safetensors(
            {
                "global": np.ascontiguousarray(self.global_, dtype=np.float32),  # (n, d)
                "regions": np.ascontiguousarray(self.regions, dtype=np.float16),  # (n, R, d)
            },
            metadata=metadata,
        )
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        replace_durably(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Shard:
        """Read a shard file; StoreCorrupt if it is damaged (truncated, garbled, not a shard)."""
        path = Path(path)
        data = path.read_bytes()
        try:
            metadata = _metadata(data)
            if metadata.get("format") != SHARD_FORMAT:
                raise ValueError("it is not an imgsearch shard file")
            if metadata.get("version") != str(SHARD_VERSION):
                raise ValueError(
                    f"shard format version {metadata.get('version')}, this imgsearch reads {SHARD_VERSION}"
                )
            arrays = load_safetensors(data)
            body = json.loads(metadata["shard"])
            fields = body["record_fields"]
            if fields != list(RECORD_FIELDS):
                raise ValueError(f"record fields {fields}, expected {list(RECORD_FIELDS)}")
            labels = body["labels"]
            shard = cls(
                shard_id=str(body["shard_id"]),
                records=[ImageRecord(**dict(zip(fields, values, strict=True))) for values in body["records"]],
                contents=[str(sha) for sha in body["contents"]],
                global_=arrays["global"],
                regions=arrays["regions"],
                labels=None if labels is None else [[(str(name), float(prob)) for name, prob in row] for row in labels],
            )
            shard._check()
        except (SafetensorError, ValueError, KeyError, TypeError) as exc:  # json's errors are ValueErrors
            raise StoreCorrupt(f"shard file {path} is damaged ({exc}); delete it and embed its files again.") from exc
        return shard

    def _check(self) -> None:
        """ValueError unless the arrays, contents, labels and records agree."""
        n = len(self.contents)
        if self.global_.ndim != 2 or self.global_.shape[0] != n:
            raise ValueError(f"global vectors of shape {self.global_.shape} for {n} contents")
        if self.regions.ndim != 3 or self.regions.shape[0] != n or self.regions.shape[2] != self.global_.shape[1]:
            raise ValueError(f"regions of shape {self.regions.shape} for global vectors {self.global_.shape}")
        if self.labels is not None and len(self.labels) != n:
            raise ValueError(f"{len(self.labels)} label lists for {n} contents")
        if len(set(self.contents)) != n:
            raise ValueError("a content is embedded twice in the shard")
        if self.shard_id != shard_id_of([record.path for record in self.records]):
            raise ValueError("the shard id does not match its files")
        good = {record.sha256 for record in self.records if record.error is None}
        if not set(self.contents) <= good:
            raise ValueError("a content embedded in the shard belongs to none of its files")


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's __metadata__ (an 8-byte little-endian length, then JSON)."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes, too short for a safetensors header")
    length = int.from_bytes(data[:8], "little")
    if length > len(data) - 8:
        raise ValueError(f"the header says {length} bytes, the file has {len(data) - 8} after it (truncated?)")
    header = json.loads(data[8 : 8 + length])
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise ValueError("no metadata in the safetensors header")
    return header["__metadata__"]
