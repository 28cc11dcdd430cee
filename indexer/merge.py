"""Indexing, merge stage: the one writer. Shards --> the SQLite store, mirrored into FAISS.

Each file of a shard is reconciled against the run's plan (what was stored when the run
started, and which stored files vanished): same content as stored is a Touch, a new path
holding a vanished image's content is a Move (the row keeps its id and vectors), anything
else that decoded is a Put (with the shard's vectors when its content is new to the index),
and a file that failed is a Fail, recorded with the reason. A shard is written in one
SQLite transaction, then mirrored into the in-memory FAISS index, so a writer killed at
any moment leaves every merged shard stored and nothing half-written. A shard merged again
(a retried worker's) is skipped: nothing is stored twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imgsearch.images.decode import ImageRecord
from imgsearch.indexer.plan import RunPlan
from imgsearch.indexer.shard import Shard
from imgsearch.storage.store import Change, Fail, Move, Put, Store, StoredImage, Touch
from imgsearch.storage.vectors import VectorIndex

__all__ = ["AddSummary", "ShardWriter"]


@dataclass
class AddSummary:
    added: int = 0  # new paths (embedded, or reusing stored vectors of identical content)
    updated: int = 0  # stored paths whose content changed, or that failed before and now work
    unchanged: int = 0  # same size and mtime, or same content after a touch
    failed: int = 0  # files that could not be read or decoded in this run
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    seconds: float = 0.0
    # Fields added after the first release go below, so positional use keeps working.
    moved: int = 0  # stored images found under a new path (vectors kept, no backbone)
    removed: int = 0  # stored files gone from the folders indexed (pruned)
    embedded: int = 0  # distinct contents run through the backbone
    interrupted: bool = False  # stopped early (Ctrl-C); everything counted here is stored
    # Files that failed before and are unchanged since (counted in `unchanged`, not read again):
    # (path, reason). A re-run says they still fail instead of hiding them.
    still_failing: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "moved": self.moved,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "embedded": self.embedded,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "failures": [{"path": p, "error": e} for p, e in self.failures],
            "still_failing": [{"path": p, "error": e} for p, e in self.still_failing],
        }


@dataclass
class _Reconciled:
    """What one shard means for the store, and for the summary once it is stored."""

    changes: list[Change] = field(default_factory=list)
    moved_from: list[StoredImage] = field(default_factory=list)  # vanished rows claimed, given back on failure
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    moved: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


class ShardWriter:
    """Merges shards, in any order, into one index. The caller holds the writer lock, and
    calls finish() once the run's shards are merged (or it stops)."""

    def __init__(self, store: Store, vectors: VectorIndex, plan: RunPlan, summary: AddSummary) -> None:
        self.store, self.vectors, self.plan, self.summary = store, vectors, plan, summary
        self.merged: set[str] = set()  # ids of the shards stored

    def merge(self, shard: Shard) -> None:
        """Store one shard in one transaction and mirror it into FAISS; a shard merged before is skipped."""
        if shard.shard_id in self.merged:
            return
        reconciled = self._reconcile(shard)
        try:
            applied = self.store.apply(reconciled.changes)
        except BaseException:
            for row in reconciled.moved_from:  # rolled back: later shards may claim them
                self.plan.vanished.setdefault(row.sha256 or "", []).append(row)
            raise
        self.merged.add(shard.shard_id)
        self._count(reconciled, embedded=len(shard.contents))
        self.vectors.remove(applied.removed_ids)
        self.vectors.add(applied.added_ids, applied.added_vectors)  # (n,), (n, d)

    def finish(self, *, interrupted: bool) -> None:
        """Prune the stored files under the run's folders that vanished and were not moved
        (unless `interrupted`: later files may be their moves), then drop contents no image uses."""
        if interrupted:
            self.summary.interrupted = True
        else:
            gone = self.plan.remaining_vanished()
            self.vectors.remove(self.store.remove([row.id for row in gone]))
            self.summary.removed += len(gone)
            self.plan.vanished = {}
        self.store.drop_unused_contents()

    def _reconcile(self, shard: Shard) -> _Reconciled:
        """Decide what each file means for the store; one Put per content new to the store
        carries the shard's vectors."""
        out = _Reconciled()
        # contents whose vectors are still to hand over (a Put's record has its sha256)
        rows: dict[str | None, int] = {sha: row for row, sha in enumerate(shard.contents)}
        for record in shard.records:
            change = self._change(record, out)
            out.changes.append(change)
            if isinstance(change, Put) and (row := rows.pop(change.record.sha256, None)) is not None:
                change.global_, change.regions = shard.global_[row], shard.regions[row]  # (d,), (R, d)
                if shard.labels is not None:
                    change.labels = shard.labels[row]
        return out

    def _change(self, record: ImageRecord, out: _Reconciled) -> Change:
        if record.error is not None:
            out.failures.append((record.path, record.error))
            return Fail(record)
        assert record.sha256 is not None  # a good file's record has it
        stored = self.plan.stored.get(record.path)
        if stored is not None and stored.status == "ok" and stored.sha256 == record.sha256:
            out.unchanged += 1
            return Touch(stored.id, record)
        if stored is None and (source := self.plan.take_vanished(record.sha256)) is not None:
            out.moved += 1
            out.moved_from.append(source)
            return Move(source.id, record)
        if stored is None:
            out.added += 1
        else:
            out.updated += 1
        return Put(record)

    def _count(self, reconciled: _Reconciled, *, embedded: int) -> None:
        summary = self.summary
        summary.added += reconciled.added
        summary.updated += reconciled.updated
        summary.unchanged += reconciled.unchanged
        summary.moved += reconciled.moved
        summary.failed += len(reconciled.failures)
        summary.failures += reconciled.failures
        summary.embedded += embedded
