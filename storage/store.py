"""The SQLite store, the source of truth of an index.

Tables (schema version in PRAGMA user_version, upgraded by numbered migrations, migrations.py):
- images: one row per file path, with size, mtime, sha256, width, height and
  status 'ok' or 'error' (with the reason): a column for each field of the image's
  ImageRecord (images/decode.py), read back as a StoredImage. Row ids are never reused
  (AUTOINCREMENT) and are the FAISS ids, so a FAISS file can be checked
  against this table by its id set alone.
- embeddings: one row per distinct content (sha256): the projected global
  vector (float32) and projected region features (float16, R x d), which
  re-ranking reads, and the backbone classifier's top classes ("labels", JSON
  [[name, prob], ...], best first; NULL when the model has no classifier or the
  content was stored before schema 3). Identical files under several paths share one row.
- images.exif_taken_at (schema 4): the photo's EXIF DateTimeOriginal as ISO text, NULL when it
  has none (a record's taken_at). The date filters compare DATE_SQL: that, else the file's mtime.
- folders (schema 4): every file and folder an `index` run was given (absolute, as given):
  the originals the service may serve lie inside them.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from imgsearch.ground.errors import StoreCorrupt, StoreWriteFailed
from imgsearch.images.decode import RECORD_FIELDS, ImageRecord, record_values
from imgsearch.storage.migrations import MIGRATIONS, SCHEMA_VERSION

__all__ = ["Store", "StoredImage", "Touch", "Move", "Put", "Fail", "Change", "Applied", "SCHEMA_VERSION"]


PAGE_SIZE = 8192  # bytes, for new stores
# The date the date filters compare: the photo's EXIF date when it has one (taken_at), else its
# file's mtime in local time (decode.file_date); ISO text, so that comparing the text compares the times.
DATE_SQL = "COALESCE(exif_taken_at, strftime('%Y-%m-%dT%H:%M:%S', mtime, 'unixepoch', 'localtime'))"


# The images table's column of each ImageRecord field: a column of its name, but taken_at's,
# exif_taken_at. A Put
# writes every field; a field added to the record needs only a migration that adds its column.
_COLUMNS = {name: "exif_taken_at" if name == "taken_at" else name for name in RECORD_FIELDS}
_INSERT_OK = (
    f"INSERT INTO images ({', '.join(_COLUMNS.values())}, status, indexed_at) "
    f"VALUES ({', '.join('?' * len(_COLUMNS))}, 'ok', ?)"
)


@dataclass(frozen=True, kw_only=True)
class StoredImage(ImageRecord):
    """A row of the images table: the image's record as stored, with the row's id and status
    ('ok', or 'error' with the reason)."""

    id: int
    status: str


# ---- the changes one indexing batch makes; Store.apply writes them in one transaction ----


@dataclass
class Touch:
    """Same path, same content, new size/mtime/ctime (e.g. `touch`): only the file facts change."""

    id: int
    record: ImageRecord  # the file as found now


@dataclass
class Move:
    """A stored image found under a new path (moved or renamed): the row keeps its id and vectors."""

    id: int
    record: ImageRecord  # the file as found now, under its new path


@dataclass
class Put:
    """A path with good content, new or changed: its record is stored whole. `global_`/`regions`
    are None when the content is already in the store (a copy, or content seen earlier):
    nothing is embedded."""

    record: ImageRecord  # error None
    global_: np.ndarray | None = None  # (d,) float32, L2-normalised
    regions: np.ndarray | None = None  # (R, d) float16
    # The classifier's top classes, best first: [(name, prob rounded to 4 decimals), ...];
    # None when the model has no classifier (stored as NULL). Written with the vectors.
    labels: list[tuple[str, float]] | None = None


@dataclass
class Fail:
    """A path that could not be read or decoded: its file facts (path, size, mtime, ctime,
    sha256) are stored with the reason, record.error."""

    record: ImageRecord  # error set


Change = Touch | Move | Put | Fail


@dataclass
class Applied:
    """What a write did to the set of searchable images, for mirroring into FAISS."""

    removed_ids: list[int]
    added_ids: np.ndarray  # (n,) int64
    added_vectors: np.ndarray  # (n, d) float32


def _serialized(method):
    """Run a Store method under the store's lock: one connection, one caller at a time."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class Store:
    """One SQLite connection, shared by the threads of a process (the indexer's store writer,
    a server's request threads): every public method runs under one lock and returns
    materialised results, so calls never interleave on the connection, and all of them read
    the one snapshot begin_snapshot() took (SQLite keeps a snapshot per connection)."""

    def __init__(self, path: str | os.PathLike, embed_dim: int, num_regions: int) -> None:
        self._lock = threading.RLock()
        self.path = Path(path)
        self.embed_dim = embed_dim
        self.num_regions = num_regions
        self.closed = False
        try:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self.db = sqlite_utils.Database(conn)
            # 8 KiB pages in a new store (an existing one keeps its own: the pragma is then a
            # no-op): each image's 18-25 KB of fp16 regions spans 3-4 overflow pages instead of
            # 5-7, which made writing a batch 20-28% cheaper at the same size on disk on a 2-core
            # EPYC (bench/benchmarks/store_write.py; no change measured on the H200 machine's Xeon).
            self.db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            self.db.execute("PRAGMA journal_mode = WAL")
            # FULL: each commit (one batch) is on disk before it returns, so a power cut loses
            # at most the batch in flight. WAL with NORMAL would stay consistent but could lose
            # every batch committed since the last checkpoint. The cost is one fsync a batch.
            self.db.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(
                f"{self.path} is not a readable imgsearch database ({exc}). "
                "Move it aside and re-index into a new directory."
            ) from exc

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreCorrupt(
                f"{self.path} has schema version {version}, newer than this imgsearch "
                f"({SCHEMA_VERSION}); upgrade imgsearch to open it."
            )
        while version < SCHEMA_VERSION:
            # Each migration is one transaction (SQLite DDL is transactional): a crash
            # leaves the store at the old version or the new one, never half-way.
            with self._write_transaction():
                version = self.db.execute("PRAGMA user_version").fetchone()[0]  # another process may have
                if version < SCHEMA_VERSION:  # migrated meanwhile
                    MIGRATIONS[version](self.db)
                    version += 1
                    self.db.execute(f"PRAGMA user_version = {version}")

    @_serialized
    def close(self) -> None:
        self.end_snapshot()
        self.db.conn.close()
        self.closed = True

    # ---- reads -------------------------------------------------------------

    @_serialized
    def get(self, path: str) -> StoredImage | None:
        rows = list(self.db.query("SELECT * FROM images WHERE path = ?", [path]))
        return _stored(rows[0]) if rows else None

    @_serialized
    def images(self, ids: Sequence[int]) -> dict[int, StoredImage]:
        found: dict[int, StoredImage] = {}
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            for row in self.db.query(f"SELECT * FROM images WHERE id IN ({marks})", chunk):
                found[row["id"]] = _stored(row)
        return found

    @_serialized
    def copies_of(self, image_id: int) -> list[int]:
        """The other indexed images with the same content (sha256) as `image_id`: byte-identical copies."""
        rows = self.db.execute(
            "SELECT id FROM images WHERE status = 'ok' AND id != ? AND sha256 = "
            "(SELECT sha256 FROM images WHERE id = ?) ORDER BY id",
            [image_id, image_id],
        ).fetchall()
        return [r[0] for r in rows]

    @_serialized
    def ok_ids(self) -> np.ndarray:
        rows = self.db.execute("SELECT id FROM images WHERE status = 'ok' ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    @_serialized
    def global_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """ids (N,) int64 and vectors (N, d) float32 of every indexed image, by id."""
        cursor = self.db.execute(
            "SELECT images.id, embeddings.global FROM images JOIN embeddings USING (sha256) "
            "WHERE images.status = 'ok' ORDER BY images.id"
        )
        ids, vectors = [], []
        for image_id, blob in cursor:
            ids.append(image_id)
            vectors.append(np.frombuffer(blob, dtype=np.float32))
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, self.embed_dim), np.float32)
        return np.array(ids, dtype=np.int64), np.stack(vectors)

    @_serialized
    def global_vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        """Global vectors of indexed images `ids`, in that order: (n, d) float32."""
        return self._global_vectors_of(list(ids))[1]

    @_serialized
    def filtered_ids(
        self, *, under: str | None = None, taken_after: str | None = None, taken_before: str | None = None
    ) -> np.ndarray:
        """Ids (sorted, int64) of the indexed images inside folder `under` (a path as stored,
        path_to_text), dated (DATE_SQL: taken, else the file's date) at or after `taken_after` and
        at or before `taken_before` (ISO text)."""
        where, args = _filter_sql(under, taken_after, taken_before)
        rows = self.db.execute(f"SELECT id FROM images WHERE {where} ORDER BY id", args).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    @_serialized
    def newest_ids(
        self,
        limit: int,
        offset: int = 0,
        *,
        under: str | None = None,
        taken_after: str | None = None,
        taken_before: str | None = None,
    ) -> list[int]:
        """Ids of indexed images, newest first, as a photo library lists them: by date (DATE_SQL:
        taken, else the file's date), then the row added last; `limit` of them from `offset`,
        filtered as filtered_ids filters."""
        where, args = _filter_sql(under, taken_after, taken_before)
        rows = self.db.execute(
            f"SELECT id FROM images WHERE {where} ORDER BY {DATE_SQL} DESC, id DESC LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        return [r[0] for r in rows]

    @_serialized
    def folders(self) -> list[str]:
        """The files and folders `index` runs were given (paths as stored), sorted."""
        return [r[0] for r in self.db.execute("SELECT path FROM folders ORDER BY path")]

    @_serialized
    def record_folders(self, paths: Sequence[str]) -> None:
        """Remember files and folders an `index` run was given (paths as stored)."""
        with self._write_transaction():
            for path in paths:
                self.db.execute("INSERT OR IGNORE INTO folders (path) VALUES (?)", [path])

    @_serialized
    def regions(self, ids: Sequence[int]) -> np.ndarray:
        """Region features of `ids`, in that order: (C, R, d) float16."""
        by_id: dict[int, bytes] = {}
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            cursor = self.db.execute(
                "SELECT images.id, embeddings.regions FROM images JOIN embeddings USING (sha256) "
                f"WHERE images.id IN ({marks})",
                chunk,
            )
            by_id.update(cursor.fetchall())
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise StoreCorrupt(f"region features missing for image ids {missing[:5]}; re-index them.")
        out = np.empty((len(ids), self.num_regions, self.embed_dim), dtype=np.float16)
        for row, image_id in enumerate(ids):
            out[row] = np.frombuffer(by_id[image_id], dtype=np.float16).reshape(self.num_regions, self.embed_dim)
        return out

    @_serialized
    def labels(self, ids: Sequence[int]) -> dict[int, list[tuple[str, float]]]:
        """Stored classifier labels of `ids`: [(name, prob), ...] best first; [] when none are stored."""
        found: dict[int, list[tuple[str, float]]] = {}
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            cursor = self.db.execute(
                "SELECT images.id, embeddings.labels FROM images JOIN embeddings USING (sha256) "
                f"WHERE images.id IN ({marks})",
                chunk,
            )
            for image_id, text in cursor:
                found[image_id] = [(str(name), float(prob)) for name, prob in json.loads(text)] if text else []
        return {image_id: found.get(image_id, []) for image_id in ids}

    @_serialized
    def top_label_counts(self, limit: int = 10) -> tuple[int, list[tuple[str, int]]]:
        """How many indexed images have stored labels, and the `limit` most frequent top-1
        labels among them with their image counts (most first, then by name)."""
        labeled = self.db.execute(
            "SELECT count(*) FROM images JOIN embeddings USING (sha256) "
            "WHERE images.status = 'ok' AND embeddings.labels IS NOT NULL"
        ).fetchone()[0]
        rows = self.db.execute(
            "SELECT top, count(*) AS n FROM (SELECT json_extract(embeddings.labels, '$[0][0]') AS top "
            "FROM images JOIN embeddings USING (sha256) "
            "WHERE images.status = 'ok' AND embeddings.labels IS NOT NULL) "
            "WHERE top IS NOT NULL GROUP BY top ORDER BY n DESC, top LIMIT ?",
            [limit],
        ).fetchall()
        return labeled, [(str(name), int(n)) for name, n in rows]

    @_serialized
    def counts(self) -> dict[str, int]:
        counts = {"ok": 0, "error": 0}
        counts.update(dict(self.db.execute("SELECT status, count(*) FROM images GROUP BY status").fetchall()))
        counts["distinct_contents"] = self.db.execute("SELECT count(*) FROM embeddings").fetchone()[0]
        return counts

    @_serialized
    def failures(self) -> list[StoredImage]:
        rows = self.db.query("SELECT * FROM images WHERE status = 'error' ORDER BY path")
        return [_stored(r) for r in rows]

    # ---- snapshots --------------------------------------------------------------

    @_serialized
    def begin_snapshot(self) -> None:
        """Start a read transaction: every read until end_snapshot() sees the store as it
        is now, whatever a concurrent writer commits meanwhile (SQLite WAL)."""
        self.end_snapshot()
        self.db.execute("BEGIN")
        self.db.execute("SELECT count(*) FROM images").fetchone()  # BEGIN alone takes no snapshot

    @_serialized
    def end_snapshot(self) -> None:
        if not self.closed and self.db.conn.in_transaction:
            self.db.conn.rollback()

    # ---- writes ------------------------------------------------------------

    @contextmanager
    def _write_transaction(self) -> Iterator[None]:
        """One transaction: all of it is stored, or (error, crash, power cut) none of it."""
        self.end_snapshot()
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.conn.rollback()
                raise
            self.db.conn.commit()
        except sqlite3.OperationalError as exc:  # disk full, read-only file, busy for too long
            if self.db.conn.in_transaction:
                self.db.conn.rollback()
            raise StoreWriteFailed(
                f"cannot write to {self.path} ({exc}); everything stored before is kept. "
                "Free disk space or fix the permissions, then run the same command again."
            ) from exc

    @_serialized
    def all_images(self) -> dict[str, StoredImage]:
        """Every row, by path."""
        rows = self.db.query("SELECT * FROM images")
        return {r["path"]: _stored(r) for r in rows}

    @_serialized
    def content_hashes(self) -> set[str]:
        """sha256 of every stored content (vectors kept, whether or not a row uses them now)."""
        return {row[0] for row in self.db.execute("SELECT sha256 FROM embeddings")}

    @_serialized
    def has_content(self, sha256: str) -> bool:
        return self.db.execute("SELECT 1 FROM embeddings WHERE sha256 = ?", [sha256]).fetchone() is not None

    @_serialized
    def apply(self, changes: Sequence[Change]) -> Applied:
        """Write one batch of changes in a single transaction: all of it, or (on a crash) none.

        A Put or Fail for a path already stored replaces that row with a new id. The batch's
        lookups (rows stored under its paths, contents it reuses) are one query each per 500
        paths, and a new path costs no delete: about one statement per image in all.
        """
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        removed: list[int] = []
        added: list[int] = []
        added_vectors: dict[int, np.ndarray] = {}  # id --> (d,), for rows of contents new to the store
        with self._write_transaction():
            # (Put, global (d,), regions (R, d)) of each Put that carries its content's vectors
            carried = [(c, c.global_, _regions_of(c)) for c in changes if isinstance(c, Put) and c.global_ is not None]
            # A content's first vectors are kept (INSERT OR IGNORE) and FAISS mirrors them: those
            # this batch stores are not read back, those stored before are.
            stored_before = self._stored_contents({c.record.sha256 for c, _, _ in carried})
            fresh: dict[str | None, np.ndarray] = {}
            for c, global_, _ in carried:
                if c.record.sha256 not in stored_before:
                    fresh.setdefault(c.record.sha256, global_)
            self.db.conn.executemany(  # contents first, so that any row of the batch may use them
                "INSERT OR IGNORE INTO embeddings (sha256, global, regions, labels) VALUES (?, ?, ?, ?)",
                [
                    (
                        c.record.sha256,
                        _blob(global_, np.float32, (self.embed_dim,)),
                        _blob(regions, np.float16, (self.num_regions, self.embed_dim)),
                        _labels_json(c.labels),
                    )
                    for c, global_, regions in carried
                ],
            )
            replaced = [c.record.path for c in changes if isinstance(c, Put | Fail)]
            stored_at = self._rows_at(replaced)  # path --> (id, status) stored before this batch
            path_of = {row[0]: path for path, row in stored_at.items()}
            reused = {c.record.sha256 for c in changes if isinstance(c, Put) and c.global_ is None}
            known = {c.record.sha256 for c, _, _ in carried} | self._stored_contents(reused)
            written: set[str] = set()  # paths given a row by this batch (a path twice: the later wins)
            for change in changes:
                record = change.record
                if isinstance(change, Touch):
                    self.db.execute(
                        "UPDATE images SET size = ?, mtime = ?, ctime = ?, indexed_at = ? WHERE id = ?",
                        [record.size, record.mtime, record.ctime, now, change.id],
                    )
                    continue
                if isinstance(change, Move):
                    self.db.execute(
                        "UPDATE images SET path = ?, size = ?, mtime = ?, ctime = ?, indexed_at = ? WHERE id = ?",
                        [record.path, record.size, record.mtime, record.ctime, now, change.id],
                    )
                    if (old_path := path_of.pop(change.id, None)) is not None:
                        stored_at.pop(old_path, None)  # that path no longer holds this row
                    written.add(record.path)
                    continue
                if record.path in written:  # a row this batch wrote: FAISS never hears of it
                    gone = self._delete_path(record.path)
                    removed += [i for i in gone if i not in added]
                    added = [i for i in added if i not in gone]
                elif (old := stored_at.pop(record.path, None)) is not None:
                    self.db.execute("DELETE FROM images WHERE id = ?", [old[0]])
                    removed += [old[0]] if old[1] == "ok" else []
                written.add(record.path)
                if isinstance(change, Put):
                    if record.sha256 not in known:
                        raise StoreCorrupt(f"no stored vectors for content {str(record.sha256)[:12]} of {record.path}")
                    cursor = self.db.execute(_INSERT_OK, [*record_values(record).values(), now])  # every field
                    assert cursor.lastrowid is not None  # set by the INSERT
                    added.append(cursor.lastrowid)
                    if record.sha256 in fresh:
                        added_vectors[cursor.lastrowid] = fresh[record.sha256]
                else:
                    self.db.execute(
                        "INSERT INTO images (path, size, mtime, ctime, sha256, status, error, indexed_at) "
                        "VALUES (?, ?, ?, ?, ?, 'error', ?, ?)",
                        [record.path, record.size, record.mtime, record.ctime, record.sha256, record.error, now],
                    )
            ids, vectors = self._global_vectors_of(added, added_vectors)
        return Applied(removed, ids, vectors)

    @_serialized
    def remove(self, ids: Sequence[int]) -> list[int]:
        """Delete rows (files gone from disk) in one transaction; returns the ids that were searchable."""
        removed: list[int] = []
        with self._write_transaction():
            for chunk in _chunks(list(ids)):
                marks = ",".join("?" * len(chunk))
                removed += [
                    r[0]
                    for r in self.db.execute(f"SELECT id FROM images WHERE status = 'ok' AND id IN ({marks})", chunk)
                ]
                self.db.execute(f"DELETE FROM images WHERE id IN ({marks})", chunk)
        return removed

    @_serialized
    def drop_unused_contents(self) -> int:
        """Delete stored vectors that no indexed image uses any more; returns how many.

        Done once at the end of a run, not when a row goes: content replaced early in
        a run may come back under another path later in it, and is then not re-embedded.
        """
        with self._write_transaction():
            cursor = self.db.execute(
                "DELETE FROM embeddings WHERE sha256 NOT IN "
                "(SELECT sha256 FROM images WHERE status = 'ok' AND sha256 IS NOT NULL)"
            )
        return cursor.rowcount

    def _delete_path(self, path: str) -> list[int]:
        old = self.db.execute("SELECT id, status FROM images WHERE path = ?", [path]).fetchone()
        if old is None:
            return []
        self.db.execute("DELETE FROM images WHERE id = ?", [old[0]])
        return [old[0]] if old[1] == "ok" else []

    def _rows_at(self, paths: list[str]) -> dict[str, tuple[int, str]]:
        """The stored rows under `paths`: path --> (id, status)."""
        rows: dict[str, tuple[int, str]] = {}
        for chunk in _chunks(paths):
            marks = ",".join("?" * len(chunk))
            for image_id, status, path in self.db.execute(
                f"SELECT id, status, path FROM images WHERE path IN ({marks})", chunk
            ):
                rows[path] = (image_id, status)
        return rows

    def _stored_contents(self, hashes: set[str | None]) -> set[str | None]:
        """The contents among `hashes` whose vectors are stored."""
        found: set[str | None] = set()
        for chunk in _chunks(sorted(h for h in hashes if h is not None)):
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0] for r in self.db.execute(f"SELECT sha256 FROM embeddings WHERE sha256 IN ({marks})", chunk)
            )
        return found

    def _global_vectors_of(
        self, ids: list[int], known: dict[int, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """ids (n,) int64 and their global vectors (n, d) float32, in the order given; those in
        `known` (id --> vector, as just written) are not read back."""
        known = known or {}
        by_id: dict[int, bytes] = {}
        for chunk in _chunks([i for i in ids if i not in known]):
            marks = ",".join("?" * len(chunk))
            by_id.update(
                self.db.execute(
                    "SELECT images.id, embeddings.global FROM images JOIN embeddings USING (sha256) "
                    f"WHERE images.id IN ({marks})",
                    chunk,
                ).fetchall()
            )
        vectors = np.zeros((len(ids), self.embed_dim), np.float32)
        for row, image_id in enumerate(ids):
            if image_id in known:
                vectors[row] = known[image_id]
            else:
                vectors[row] = np.frombuffer(by_id[image_id], dtype=np.float32)
        return np.array(ids, dtype=np.int64), vectors


def _filter_sql(under: str | None, taken_after: str | None, taken_before: str | None) -> tuple[str, list]:
    """The WHERE clause (and its arguments) of the indexed images inside folder `under` (text as
    stored), dated (DATE_SQL) within the inclusive ISO bounds."""
    where, args = ["status = 'ok'"], []
    if under is not None:
        prefix = under.rstrip("/") + "/"
        where.append("substr(path, 1, ?) = ?")
        args += [len(prefix), prefix]
    if taken_after is not None:
        where.append(f"{DATE_SQL} >= ?")
        args.append(taken_after)
    if taken_before is not None:
        where.append(f"{DATE_SQL} <= ?")
        args.append(taken_before)
    return " AND ".join(where), args


def _stored(row: dict) -> StoredImage:
    fields: dict[str, Any] = {k: row.get(_COLUMNS.get(k, k)) for k in StoredImage.__dataclass_fields__}
    return StoredImage(**fields)


def _regions_of(put: Put) -> np.ndarray:
    if put.regions is None:
        raise ValueError(f"a Put of {put.record.path} carries a global vector without its regions")
    return put.regions


def _labels_json(labels: Sequence[tuple[str, float]] | None) -> str | None:
    """[(name, prob), ...] --> JSON [[name, prob], ...] (prob rounded to 4 decimals); None stays NULL."""
    if labels is None:
        return None
    return json.dumps([[str(name), round(float(prob), 4)] for name, prob in labels], ensure_ascii=False)


def _blob(array: np.ndarray, dtype: type, shape: tuple[int, ...]) -> bytes:
    array = np.ascontiguousarray(array, dtype=dtype)
    if array.shape != shape:
        raise ValueError(f"expected an array of shape {shape}, got {array.shape}")
    return array.tobytes()


def _chunks(items: list, size: int = 500):
    for start in range(0, len(items), size):
        yield items[start : start + size]
