"""Schema migrations: a store written by the previous release (schema 1) opens and is upgraded
in place with nothing lost, and a migration that fails half-way leaves the old schema intact."""

from __future__ import annotations

import sqlite3

import pytest

import indexer.store
from conftest import draw_image, make_photos
from imgsearch.index import Index
from index_oracle import assert_rows_match, check_consistent, rows_of


def downgrade_to_schema_1(db_path) -> None:
    """What the previous release wrote: no ctime column, user_version 1."""
    conn = sqlite3.connect(db_path)
    conn.execute("ALTER TABLE images DROP COLUMN ctime")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def columns(db_path) -> set[str]:
    conn = sqlite3.connect(db_path)
    try:
        return {row[1] for row in conn.execute("PRAGMA table_info(images)")}
    finally:
        conn.close()


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
        assert index.store.db.execute("PRAGMA user_version").fetchone()[0] == indexer.store.SCHEMA_VERSION
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

    monkeypatch.setattr(indexer.store, "MIGRATIONS", (indexer.store.MIGRATIONS[0], half_done))
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
    assert page_size(tmp_path / "new" / "index.db") == indexer.store.PAGE_SIZE

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
