"""Stage 4 of indexing: the SQLite store, the source of truth of an index.

Tables (schema version in PRAGMA user_version, upgraded by numbered migrations):
- images: one row per file path, with size, mtime, sha256, width, height and
  status 'ok' or 'error' (with the reason). Row ids are never reused
  (AUTOINCREMENT) and are the FAISS ids, so a FAISS file can be checked
  against this table by its id set alone.
- embeddings: one row per distinct content (sha256): the projected global
  vector (float32) and projected region features (float16, R x d), which
  re-ranking reads. Identical files under several paths share one row.
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlite_utils

from indexer.errors import StoreCorrupt

__all__ = ["Store", "StoredImage", "EmbeddedImage", "FailedImage", "SCHEMA_VERSION"]


def _migration_1(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE images (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            path TEXT NOT NULL UNIQUE,
            size INTEGER,
            mtime REAL,
            sha256 TEXT,
            width INTEGER,
            height INTEGER,
            status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
            error TEXT,
            indexed_at TEXT NOT NULL
        );
        CREATE INDEX images_sha256 ON images (sha256);
        CREATE INDEX images_status ON images (status);
        CREATE TABLE embeddings (
            sha256 TEXT PRIMARY KEY,
            global BLOB NOT NULL,
            regions BLOB NOT NULL
        );
        """
    )


# Migration N upgrades a store from version N-1 to N. Append; never edit a released one.
MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (_migration_1,)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass
class StoredImage:
    id: int
    path: str
    size: int | None
    mtime: float | None
    sha256: str | None
    width: int | None
    height: int | None
    status: str
    error: str | None


@dataclass
class EmbeddedImage:
    path: str
    size: int
    mtime: float
    sha256: str
    width: int
    height: int
    global_: np.ndarray  # (d,) float32, L2-normalised
    regions: np.ndarray  # (R, d) float16


@dataclass
class FailedImage:
    path: str
    error: str
    size: int | None = None
    mtime: float | None = None
    sha256: str | None = None


class Store:
    def __init__(self, path: str | os.PathLike, embed_dim: int, num_regions: int) -> None:
        self.path = Path(path)
        self.embed_dim = embed_dim
        self.num_regions = num_regions
        try:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
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
        for number in range(version + 1, SCHEMA_VERSION + 1):
            with self.db.conn:
                MIGRATIONS[number - 1](self.db)
                self.db.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        self.db.conn.close()

    # ---- reads -------------------------------------------------------------

    def get(self, path: str) -> StoredImage | None:
        rows = list(self.db.query("SELECT * FROM images WHERE path = ?", [path]))
        return StoredImage(**{k: rows[0][k] for k in StoredImage.__dataclass_fields__}) if rows else None

    def images(self, ids: Sequence[int]) -> dict[int, StoredImage]:
        found: dict[int, StoredImage] = {}
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            for row in self.db.query(f"SELECT * FROM images WHERE id IN ({marks})", chunk):
                found[row["id"]] = StoredImage(**{k: row[k] for k in StoredImage.__dataclass_fields__})
        return found

    def ok_ids(self) -> np.ndarray:
        rows = self.db.execute("SELECT id FROM images WHERE status = 'ok' ORDER BY id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

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

    def counts(self) -> dict[str, int]:
        counts = {"ok": 0, "error": 0}
        counts.update(dict(self.db.execute("SELECT status, count(*) FROM images GROUP BY status").fetchall()))
        counts["distinct_contents"] = self.db.execute("SELECT count(*) FROM embeddings").fetchone()[0]
        return counts

    def failures(self) -> list[StoredImage]:
        rows = self.db.query("SELECT * FROM images WHERE status = 'error' ORDER BY path")
        return [StoredImage(**{k: r[k] for k in StoredImage.__dataclass_fields__}) for r in rows]

    # ---- writes ------------------------------------------------------------

    def write_batch(
        self, embedded: Sequence[EmbeddedImage], failed: Sequence[FailedImage]
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Store one batch in a single transaction.

        A path already in the store is replaced by a new row (a new id).
        Returns (ids removed from the vector index, [(new id, row in `embedded`)]).
        """
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        removed: list[int] = []
        added: list[tuple[int, int]] = []
        replaced_contents: set[str] = set()
        with self.db.conn:
            for item in list(embedded) + list(failed):
                old = self.db.execute(
                    "SELECT id, status, sha256 FROM images WHERE path = ?", [item.path]
                ).fetchone()
                if old is not None:
                    self.db.execute("DELETE FROM images WHERE id = ?", [old[0]])
                    if old[1] == "ok":
                        removed.append(old[0])
                        replaced_contents.add(old[2])
            for row, item in enumerate(embedded):
                self.db.execute(
                    "INSERT OR IGNORE INTO embeddings (sha256, global, regions) VALUES (?, ?, ?)",
                    [item.sha256, _blob(item.global_, np.float32, (self.embed_dim,)),
                     _blob(item.regions, np.float16, (self.num_regions, self.embed_dim))],
                )
                cursor = self.db.execute(
                    "INSERT INTO images (path, size, mtime, sha256, width, height, status, error, indexed_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'ok', NULL, ?)",
                    [item.path, item.size, item.mtime, item.sha256, item.width, item.height, now],
                )
                added.append((cursor.lastrowid, row))
            for item in failed:
                self.db.execute(
                    "INSERT INTO images (path, size, mtime, sha256, status, error, indexed_at) "
                    "VALUES (?, ?, ?, ?, 'error', ?, ?)",
                    [item.path, item.size, item.mtime, item.sha256, item.error, now],
                )
            self._drop_unreferenced(replaced_contents)
        return removed, added

    def _drop_unreferenced(self, contents: set[str]) -> None:
        for sha256 in contents:
            self.db.execute(
                "DELETE FROM embeddings WHERE sha256 = ? AND NOT EXISTS "
                "(SELECT 1 FROM images WHERE sha256 = ? AND status = 'ok')",
                [sha256, sha256],
            )


def _blob(array: np.ndarray, dtype: type, shape: tuple[int, ...]) -> bytes:
    array = np.ascontiguousarray(array, dtype=dtype)
    if array.shape != shape:
        raise ValueError(f"expected an array of shape {shape}, got {array.shape}")
    return array.tobytes()


def _chunks(items: list, size: int = 500):
    for start in range(0, len(items), size):
        yield items[start : start + size]
