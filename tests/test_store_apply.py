"""Store.apply against a naive oracle: the change-by-change writer it replaced (a SELECT and a
DELETE per path, a content check per Put, every vector read back), run on a second store with
the same random batches. Rows, ids, contents and what FAISS is told must come out the same."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from imgsearch.ground.errors import StoreCorrupt
from imgsearch.images.decode import ImageRecord
from imgsearch.storage import store as store_module
from imgsearch.storage.store import Fail, Move, Put, Store, Touch

DIM, REGIONS = 8, 4


def naive_apply(store: Store, changes) -> store_module.Applied:
    """The oracle: each change in order, one statement at a time."""
    db = store.db
    now = "2026-01-01T00:00:00+00:00"
    removed: list[int] = []
    added: list[int] = []

    def delete_path(path: str) -> list[int]:
        old = db.execute("SELECT id, status FROM images WHERE path = ?", [path]).fetchone()
        if old is None:
            return []
        db.execute("DELETE FROM images WHERE id = ?", [old[0]])
        return [old[0]] if old[1] == "ok" else []

    def forget_added(gone: list[int]) -> list[int]:
        """A row added earlier in the batch and replaced in it was never searchable."""
        for image_id in gone:
            if image_id in added:
                added.remove(image_id)
                return []
        return gone

    db.execute("BEGIN IMMEDIATE")
    for change in changes:
        if isinstance(change, Put) and change.global_ is not None:
            db.execute(
                "INSERT OR IGNORE INTO embeddings (sha256, global, regions, labels) VALUES (?, ?, ?, ?)",
                [
                    change.record.sha256,
                    np.asarray(change.global_, np.float32).tobytes(),
                    np.asarray(change.regions, np.float16).tobytes(),
                    store_module._labels_json(change.labels),
                ],
            )
    for change in changes:
        record = change.record
        if isinstance(change, Touch):
            db.execute(
                "UPDATE images SET size = ?, mtime = ?, ctime = ?, indexed_at = ? WHERE id = ?",
                [record.size, record.mtime, record.ctime, now, change.id],
            )
        elif isinstance(change, Move):
            db.execute(
                "UPDATE images SET path = ?, size = ?, mtime = ?, ctime = ?, indexed_at = ? WHERE id = ?",
                [record.path, record.size, record.mtime, record.ctime, now, change.id],
            )
        elif isinstance(change, Put):
            removed += forget_added(delete_path(record.path))
            if db.execute("SELECT 1 FROM embeddings WHERE sha256 = ?", [record.sha256]).fetchone() is None:
                db.conn.rollback()
                raise StoreCorrupt("no stored vectors")
            cursor = db.execute(store_module._INSERT_OK, [*store_module.record_values(record).values(), now])
            added.append(cursor.lastrowid)
        else:
            removed += forget_added(delete_path(record.path))
            db.execute(
                "INSERT INTO images (path, size, mtime, ctime, sha256, status, error, indexed_at) "
                "VALUES (?, ?, ?, ?, ?, 'error', ?, ?)",
                [record.path, record.size, record.mtime, record.ctime, record.sha256, record.error, now],
            )
    vectors = np.zeros((len(added), DIM), np.float32)
    for row, image_id in enumerate(added):
        blob = db.execute(
            "SELECT embeddings.global FROM images JOIN embeddings USING (sha256) WHERE images.id = ?", [image_id]
        ).fetchone()[0]
        vectors[row] = np.frombuffer(blob, np.float32)
    db.conn.commit()
    return store_module.Applied(removed, np.array(added, np.int64), vectors)


def content(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def random_batch(rng: random.Random, nprng: np.random.Generator, stored: dict[str, tuple[int, str | None]]):
    """A batch mixing every kind of change over a small set of paths and contents, repeats and
    moves included; `stored` is path --> (id, sha256) as the store has it now."""
    changes = []
    for _ in range(rng.randint(1, 12)):
        path = f"/p/{rng.randint(0, 15)}.jpg"
        sha = content(rng.randint(0, 10))
        record = ImageRecord(path=path, size=rng.randint(1, 99), mtime=1.0, ctime=1.0, sha256=sha, width=4, height=3)
        kind = rng.random()
        if kind < 0.15 and stored:
            old_path, (image_id, old_sha) = rng.choice(sorted(stored.items()))
            changes.append(Touch(image_id, ImageRecord(path=old_path, size=5, mtime=2.0, ctime=2.0, sha256=old_sha)))
        elif kind < 0.3 and stored:
            _, (image_id, old_sha) = rng.choice(sorted(stored.items()))
            new_path = f"/moved/{rng.randint(0, 10**9)}.jpg"
            changes.append(Move(image_id, ImageRecord(path=new_path, size=5, mtime=2.0, ctime=2.0, sha256=old_sha)))
        elif kind < 0.45:
            changes.append(Fail(ImageRecord(path=path, size=1, mtime=1.0, ctime=1.0, sha256=None, error="bad")))
        elif kind < 0.7:
            changes.append(Put(record))  # reuses stored content (or, if none is stored, is refused)
        else:
            changes.append(
                Put(
                    record,
                    nprng.standard_normal(DIM).astype(np.float32),
                    nprng.standard_normal((REGIONS, DIM)).astype(np.float16),
                    [("tabby", 0.5)] if rng.random() < 0.5 else None,
                )
            )
    return changes


def table(store: Store, sql: str) -> list[tuple]:
    return [tuple(row) for row in store.db.execute(sql)]


def test_apply_matches_the_change_by_change_oracle(tmp_path):
    fast = Store(tmp_path / "fast.db", DIM, REGIONS)
    naive = Store(tmp_path / "naive.db", DIM, REGIONS)
    rng, nprng = random.Random(0), np.random.default_rng(0)
    kinds_refused = 0
    for _ in range(300):
        stored = {r[0]: (r[1], r[2]) for r in table(fast, "SELECT path, id, sha256 FROM images WHERE status = 'ok'")}
        batch = random_batch(rng, nprng, stored)
        outcomes = []
        for store, apply in ((fast, Store.apply), (naive, naive_apply)):
            try:
                outcomes.append(apply(store, batch))
            except StoreCorrupt:
                outcomes.append("refused")
            except Exception as exc:  # e.g. a Move onto a path another row holds: both must refuse
                outcomes.append(type(exc).__name__)
                if store.db.conn.in_transaction:
                    store.db.conn.rollback()
        got, want = outcomes
        if isinstance(want, str):
            assert got == want
            kinds_refused += 1
            continue
        assert got.removed_ids == want.removed_ids
        np.testing.assert_array_equal(got.added_ids, want.added_ids)
        np.testing.assert_array_equal(got.added_vectors, want.added_vectors)
        columns = "id, path, size, mtime, ctime, sha256, status, error"  # indexed_at: the clock
        assert table(fast, f"SELECT {columns} FROM images ORDER BY id") == table(
            naive, f"SELECT {columns} FROM images ORDER BY id"
        )
        assert table(fast, "SELECT * FROM embeddings ORDER BY sha256") == table(
            naive, "SELECT * FROM embeddings ORDER BY sha256"
        )
    assert 0 < kinds_refused < 300  # both paths exercised
    assert len(table(fast, "SELECT id FROM images")) > 5


def test_a_new_image_costs_no_delete(tmp_path):
    store = Store(tmp_path / "index.db", DIM, REGIONS)
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    puts = [
        Put(
            ImageRecord(path=f"/p/{i}.jpg", size=1, mtime=1.0, ctime=1.0, sha256=content(i), width=4, height=3),
            np.ones(DIM, np.float32),
            np.ones((REGIONS, DIM), np.float16),
        )
        for i in range(50)
    ]
    applied = store.apply(puts)
    assert len(applied.added_ids) == 50
    assert not [s for s in statements if s.lstrip().upper().startswith("DELETE")]
    # one INSERT per row and per content, and a handful of batch-wide statements
    assert len(statements) <= 2 * 50 + 10


@pytest.mark.parametrize("repeat", [False, True])
def test_a_path_twice_in_one_batch_keeps_the_later(tmp_path, repeat):
    store = Store(tmp_path / "index.db", DIM, REGIONS)
    first = ImageRecord(path="/p/a.jpg", size=1, mtime=1.0, ctime=1.0, sha256=content(1), width=4, height=3)
    vectors = (np.ones(DIM, np.float32), np.ones((REGIONS, DIM), np.float16))
    store.apply([Put(first, *vectors)])
    later = ImageRecord(path="/p/a.jpg", size=2, mtime=2.0, ctime=2.0, sha256=content(2), width=4, height=3)
    batch = [Put(later, *vectors)] + (
        [Fail(ImageRecord(path="/p/a.jpg", size=3, mtime=3.0, ctime=3.0, error="bad"))] if repeat else []
    )
    store.apply(batch)
    rows = table(store, "SELECT path, size, status FROM images")
    assert rows == ([("/p/a.jpg", 3, "error")] if repeat else [("/p/a.jpg", 2, "ok")])
