"""The store's schema as numbered migrations: migration N upgrades a store from version N-1
to N (PRAGMA user_version); Store (store.py) runs each in one transaction. Append; never
edit a released one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import sqlite_utils
from PIL import Image

from imgsearch.ground.paths import path_to_text, text_to_path
from imgsearch.images.decode import exif_taken_at

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]


def _migration_1(db: sqlite_utils.Database) -> None:
    # One statement per execute(): executescript() would COMMIT first and break the
    # migration's transaction (a crash half-way must leave the store at version 0).
    for statement in (
        """CREATE TABLE images (
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
        )""",
        "CREATE INDEX images_sha256 ON images (sha256)",
        "CREATE INDEX images_status ON images (status)",
        """CREATE TABLE embeddings (
            sha256 TEXT PRIMARY KEY,
            global BLOB NOT NULL,
            regions BLOB NOT NULL
        )""",
    ):
        db.execute(statement)


def _migration_2(db: sqlite_utils.Database) -> None:
    # ctime lets a file that failed (e.g. for its permissions) be retried once chmod changes it.
    db.execute("ALTER TABLE images ADD COLUMN ctime REAL")


def _migration_3(db: sqlite_utils.Database) -> None:
    # The backbone classifier's top classes per content, JSON [[name, prob], ...] best first.
    # Rows stored before, and models without a classifier, keep NULL: no labels.
    db.execute("ALTER TABLE embeddings ADD COLUMN labels TEXT")


def _migration_4(db: sqlite_utils.Database) -> None:
    # When each photo was taken (EXIF), and the folders that were indexed. Both are filled for
    # the rows already stored: the EXIF dates read from the files (one file per content; a file
    # that is gone keeps NULL, i.e. its mtime), the folders as the ones holding indexed images.
    db.execute("ALTER TABLE images ADD COLUMN exif_taken_at TEXT")
    db.execute("CREATE TABLE folders (path TEXT PRIMARY KEY)")
    rows = db.execute("SELECT id, path FROM images WHERE status = 'ok'").fetchall()
    for image_id, text in rows:
        taken = _read_exif_taken_at(text_to_path(text))
        if taken is not None:
            db.execute("UPDATE images SET exif_taken_at = ? WHERE id = ?", [taken, image_id])
    for folder in _covering_folders(text_to_path(text).parent for _, text in rows):
        db.execute("INSERT OR IGNORE INTO folders (path) VALUES (?)", [path_to_text(folder)])


def _read_exif_taken_at(path: Path) -> str | None:
    """The EXIF DateTimeOriginal of the image file at `path` (ISO text), or None (none, or unreadable)."""
    try:
        with Image.open(path) as image:
            return exif_taken_at(image)
    except Exception:  # a file gone or damaged since it was indexed keeps its mtime as its date
        return None


def _covering_folders(folders: Iterable[Path]) -> list[Path]:
    """The fewest folders that hold all of `folders`: each one not inside another."""
    kept: list[Path] = []
    for folder in sorted(set(folders), key=lambda f: len(f.parts)):
        if not any(folder.is_relative_to(outer) for outer in kept):
            kept.append(folder)
    return sorted(kept)


# Migration N upgrades a store from version N-1 to N. Append; never edit a released one.
MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
)
SCHEMA_VERSION = len(MIGRATIONS)
