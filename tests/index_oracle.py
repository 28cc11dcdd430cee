"""Read an index directory back as plain data, to compare it with an oracle index.

The oracle is an index built by one uninterrupted run over the same files: an
interrupted, resumed, incremental or concurrent run must end up equal to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgsearch.index import Index

ATOL = 1e-5  # float32 vectors from different batch sizes differ in the last bits only


@dataclass
class Row:
    status: str
    sha256: str | None
    error: str | None
    vector: np.ndarray | None  # (d,) float32 for ok rows


def rows_of(index: Index) -> dict[str, Row]:
    """Every stored path with its status, content and global vector."""
    store = index.store
    ids, vectors = store.global_vectors()
    vector_of = dict(zip(ids.tolist(), vectors))
    paths = [r[0] for r in store.db.execute("SELECT path FROM images")]
    assert len(paths) == len(set(paths)), "a path is stored twice"
    out = {}
    for row in store.db.query("SELECT * FROM images"):
        out[row["path"]] = Row(row["status"], row["sha256"], row["error"], vector_of.get(row["id"]))
    return out


def check_consistent(index: Index) -> None:
    """The invariants every store must meet, finished or not: FAISS ids are the ok ids,
    every ok row has its vectors, and no stored vectors are missing or malformed."""
    ok_ids = index.store.ok_ids()
    np.testing.assert_array_equal(index.vectors.ids(), ok_ids)
    regions = index.store.regions(ok_ids.tolist())  # raises if any are missing
    assert regions.shape == (len(ok_ids), index.manifest.num_regions, index.manifest.embed_dim)
    assert index.store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    missing = index.store.db.execute(
        "SELECT count(*) FROM images LEFT JOIN embeddings USING (sha256) "
        "WHERE images.status = 'ok' AND embeddings.sha256 IS NULL"
    ).fetchone()[0]
    assert missing == 0


def assert_rows_match(actual: dict[str, Row], expected: dict[str, Row], *, subset: bool = False) -> None:
    """Each stored row equals the oracle's row for that path (all of them unless `subset`)."""
    if subset:
        assert set(actual) <= set(expected), set(actual) - set(expected)
    else:
        assert set(actual) == set(expected), set(actual) ^ set(expected)
    for path, row in actual.items():
        want = expected[path]
        assert (row.status, row.sha256) == (want.status, want.sha256), path
        if row.status == "ok":
            np.testing.assert_allclose(row.vector, want.vector, atol=ATOL, err_msg=path)
        else:
            assert row.error == want.error, path


def search_results(index: Index, queries: list[str], k: int = 1000) -> dict[str, list[tuple[str, float]]]:
    """(path, score) of every image for each query, first stage and re-ranked."""
    out = {}
    for query in queries:
        for rerank in (False, True):
            # every image: which of two byte copies stands for both would follow ids, not content
            results = index.search(query, k, candidates=k, rerank=rerank, collapse_duplicates=False)
            out[f"{query} rerank={rerank}"] = [(r.path, r.score) for r in results]
    return out


def assert_same_results(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        got, want = actual[key], expected[key]
        assert len(got) == len(want), key
        # Scores equal rank by rank; paths equal as sets of equal-scoring groups (copies tie).
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-4, err_msg=key)
        assert dict(got).keys() == dict(want).keys(), key
        for path, score in got:
            assert abs(dict(want)[path] - score) <= 1e-4, (key, path)


def open_index(directory: Path) -> Index:
    return Index.open(directory, device="cpu")
