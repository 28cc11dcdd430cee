"""Schema migrations: a store written by an earlier release (schema 1: no ctime; schema 2: no
labels; schema 3: no EXIF dates, no folders) opens and is upgraded in place with nothing lost,
and a migration that fails half-way leaves the old schema intact."""

from __future__ import annotations

import sqlite3

import pytest
import sqlite_utils

import imgsearch.storage.store
from conftest import draw_image, make_photos
from imgsearch.index import Index
from index_oracle import assert_rows_match, check_consistent, rows_of


def downgrade_to_schema_3(db_path) -> None:
    """What schema 3 stores hold: no exif_taken_at column, no folders table, user_version 3."""
    conn = sqlite3.connect(db_path)
    conn.execute("ALTER TABLE images DROP COLUMN exif_taken_at")
    conn.execute("DROP TABLE folders")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()


def downgrade_to_schema_2(db_path) -> None:
    """What schema 2 stores hold: no labels column in embeddings, user_version 2."""
    downgrade_to_schema_3(db_path)
    conn = sqlite3.connect(db_path)
    conn.execute("ALTER TABLE embeddings DROP COLUMN labels")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()


def downgrade_to_schema_1(db_path) -> None:
    """What the first release wrote: no ctime column (and no labels), user_version 1."""
    downgrade_to_schema_2(db_path)
    conn = sqlite3.connect(db_path)
    conn.execute("ALTER TABLE images DROP COLUMN ctime")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def columns(db_path, table: str = "images") -> set[str]:
    conn = sqlite3.connect(db_path)
    try:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    finally:
        conn.close()


def schema_of(conn: sqlite3.Connection) -> dict:
    """Every table's columns (name, type, not null, default, primary key), its indexes, and user_version."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return {
        "user_version": conn.execute("PRAGMA user_version").fetchone()[0],
        "tables": {t: [tuple(r[1:]) for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables},
        "indexes": sorted(r[:2] for r in conn.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'")),
    }


@pytest.mark.parametrize(
    "version, downgrade", [(1, downgrade_to_schema_1), (2, downgrade_to_schema_2), (3, downgrade_to_schema_3)]
)
def test_a_downgraded_store_has_the_schema_of_the_earlier_migrations(tmp_path, version, downgrade):
    """The downgrade helpers below stand for stores written by earlier releases: check them against
    a store made by the first `version` migrations alone."""
    old = sqlite3.connect(tmp_path / "old.db")
    for migration in imgsearch.storage.store.MIGRATIONS[:version]:
        migration(sqlite_utils.Database(old))
    old.execute(f"PRAGMA user_version = {version}")
    imgsearch.storage.store.Store(tmp_path / "new.db", embed_dim=4, num_regions=1).close()
    current = sqlite3.connect(tmp_path / "new.db")
    at_current = schema_of(current)
    current.close()
    downgrade(tmp_path / "new.db")
    new = sqlite3.connect(tmp_path / "new.db")
    assert schema_of(new) == schema_of(old) != at_current
    old.close()
    new.close()


@pytest.fixture
def schema_1_index(tmp_path, model_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        draw_image(i).save(photos / f"img_{i}.png")
    (photos / "bad.png").write_text("not a PNG")
    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        index.add([photos], workers=0)
        before = rows_of(index)
    downgrade_to_schema_1(tmp_path / "index" / "index.db")
    return tmp_path / "index", photos, before


def test_a_schema_1_store_is_upgraded_in_place(schema_1_index):
    index_dir, photos, before = schema_1_index
    assert "ctime" not in columns(index_dir / "index.db")
    with Index.open(index_dir, device="cpu") as index:
        assert index.store.db.execute("PRAGMA user_version").fetchone()[0] == imgsearch.storage.store.SCHEMA_VERSION
        check_consistent(index)
        assert_rows_match(rows_of(index), before)
        # A failure recorded without a ctime is retried once, then left alone while unchanged.
        first = index.add([photos], workers=0)
        assert (first.unchanged, first.failed) == (4, 1)
        second = index.add([photos], workers=0)
        assert (second.unchanged, second.failed) == (5, 0)


def test_a_migration_that_fails_half_way_leaves_the_old_schema(schema_1_index, monkeypatch):
    index_dir, _, before = schema_1_index

    def half_done(db):
        db.execute("ALTER TABLE images ADD COLUMN ctime REAL")
        raise sqlite3.OperationalError("simulated crash during the migration")

    monkeypatch.setattr(imgsearch.storage.store, "MIGRATIONS", (imgsearch.storage.store.MIGRATIONS[0], half_done))
    with pytest.raises(Exception, match="simulated crash"):
        Index.open(index_dir)
    assert "ctime" not in columns(index_dir / "index.db")  # the ALTER was rolled back with it
    monkeypatch.undo()
    with Index.open(index_dir, device="cpu") as index:
        assert_rows_match(rows_of(index), before)


def page_size(db_path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()


def test_a_new_store_uses_large_pages_and_an_old_one_keeps_its_own(tmp_path, model_dir):
    photos = make_photos(tmp_path / "photos", range(6))
    with Index.create(tmp_path / "new", model_dir, device="cpu") as index:
        index.add([photos], workers=0)
        expected = rows_of(index)
    assert page_size(tmp_path / "new" / "index.db") == imgsearch.storage.store.PAGE_SIZE

    old_dir = tmp_path / "old"  # a store written with SQLite's default 4 KiB pages, as before
    old_dir.mkdir()
    conn = sqlite3.connect(old_dir / "index.db")
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("VACUUM")
    conn.close()
    with Index.create(old_dir, model_dir, device="cpu") as index:
        index.add([photos], workers=0)
        check_consistent(index)
        assert_rows_match(rows_of(index), expected)
    assert page_size(old_dir / "index.db") == 4096


@pytest.fixture
def schema_2_index(tmp_path, mobilenet_model_dir):
    """An index made with a classifier model, then taken back to schema 2 (no labels column)."""
    photos = make_photos(tmp_path / "photos", range(5))
    with Index.create(tmp_path / "index", mobilenet_model_dir, device="cpu") as index:
        index.add([photos], workers=0)
        before = rows_of(index)
        assert all(labels for labels in index.store.labels(index.store.ok_ids().tolist()).values())
    downgrade_to_schema_2(tmp_path / "index" / "index.db")
    return tmp_path / "index", photos, before


def test_a_schema_2_store_is_upgraded_and_its_images_have_no_labels(schema_2_index):
    index_dir, photos, before = schema_2_index
    assert "labels" not in columns(index_dir / "index.db", "embeddings")
    with Index.open(index_dir, device="cpu") as index:
        assert (
            index.store.db.execute("PRAGMA user_version").fetchone()[0] == imgsearch.storage.store.SCHEMA_VERSION == 4
        )
        assert "labels" in columns(index_dir / "index.db", "embeddings")
        check_consistent(index)
        assert_rows_match(rows_of(index), before)
        results = index.search("a red circle", k=10, candidates=10)
        assert len(results) == 5 and all(r.labels == [] for r in results)
        assert index.info()["labels"] == {"labeled_images": 0, "top1": []}

        # Stored contents keep no labels (nothing is re-embedded); a new image gets its labels.
        draw_image(99).save(photos / "new.png")
        summary = index.add([photos], workers=0)
        assert (summary.added, summary.unchanged, summary.embedded) == (1, 5, 1)
        ids = {row.path: row.id for row in index.store.all_images().values()}
        labels = index.store.labels(list(ids.values()))
        assert len(labels[ids[str(photos / "new.png")]]) == 5
        assert all(labels[ids[path]] == [] for path in before)
        info = index.info()["labels"]
        assert info["labeled_images"] == 1
        assert info["top1"] == [{"label": labels[ids[str(photos / "new.png")]][0][0], "images": 1}]
