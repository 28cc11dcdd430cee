"""An open index used from several threads at once (what a server does): the store's reads
and Index.search give what one thread alone gets (the oracle)."""

from __future__ import annotations

import os
import random
import threading

import numpy as np
import pytest

from conftest import make_photos
from imgsearch import Index

THREADS = 4
ROUNDS = 60


def run_together(work, threads: int = THREADS) -> list:
    """Run work(i) on `threads` threads started together; the errors they raised, if any."""
    start = threading.Barrier(threads)
    errors = []

    def one(i):
        start.wait()
        try:
            work(i)
        except BaseException as exc:  # reported to the test
            errors.append(exc)

    pool = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return errors


@pytest.fixture
def index(tmp_path, model_dir):
    photos = make_photos(tmp_path / "photos", range(30))
    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        index.add([photos], workers=0)
        index.refresh()
        yield index


def test_store_reads_from_several_threads_equal_one_thread_alone(index):
    store = index.store
    ids = [int(i) for i in store.ok_ids()]
    want_rows = store.images(ids)
    want_regions = store.regions(ids)
    want_vectors = store.global_vectors()

    def reader(seed):
        rng = random.Random(seed)
        for _ in range(ROUNDS):
            chosen = rng.sample(ids, 7)
            assert store.images(chosen) == {i: want_rows[i] for i in chosen}
            np.testing.assert_array_equal(store.regions(chosen), want_regions[[ids.index(i) for i in chosen]])
            got_ids, got_vectors = store.global_vectors()
            np.testing.assert_array_equal(got_ids, want_vectors[0])
            np.testing.assert_array_equal(got_vectors, want_vectors[1])
            if seed == 0:
                store.begin_snapshot()  # a refresh in the middle of the others' reads

    assert run_together(reader) == []


def test_searches_from_several_threads_equal_sequential_searches(index):
    queries = ["a red circle", "green", "a blue square on white", "something yellow"]
    want = {q: [(r.id, round(r.score, 5)) for r in index.search(q, k=5, candidates=12)] for q in queries}

    def searcher(i):
        for round_ in range(4):
            query = queries[(i + round_) % len(queries)]
            got = [(r.id, round(r.score, 5)) for r in index.search(query, k=5, candidates=12)]
            assert got == want[query], query

    assert run_together(searcher) == []


def test_a_search_leaves_the_thread_counts_alone(index, monkeypatch):
    import faiss
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("torch", n)))
    monkeypatch.setattr(faiss, "omp_set_num_threads", lambda n: calls.append(("faiss", n)))
    index.search("a red circle", k=3, candidates=8)
    assert calls == []  # set once per process (imgsearch.ground.threads), never flipped per query


def test_use_threads_sets_torch_faiss_and_blas_once(monkeypatch):
    import faiss
    import torch
    from threadpoolctl import threadpool_info

    from imgsearch.ground.threads import _THREAD_VARIABLES, use_threads

    for name in _THREAD_VARIABLES:  # restored (unset, if they were) after the test
        monkeypatch.setenv(name, os.environ.get(name, "0"))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # not 1 already (make test runs each worker on one thread)
        faiss.omp_set_num_threads(2)
        use_threads(1)
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (1, 1)
        blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(pool["num_threads"] == 1 for pool in blas)  # numpy's OpenBLAS among them
        assert all(os.environ[name] == "1" for name in _THREAD_VARIABLES)  # for libraries loaded later
        with pytest.raises(ValueError, match="at least 1"):
            use_threads(0)
    finally:
        use_threads(before)


def test_explain_of_an_indexed_image_while_a_refresh_waits_finishes(tmp_path, mobilenet_model_dir, monkeypatch):
    """Explaining an indexed image with a classifier model reads its file again, and so its
    path, inside the search's read of the snapshot. A refresh that starts waiting meanwhile
    (writers are preferred: it holds back new readers) must not be waited for by that read,
    which it is itself waiting for."""
    import imgsearch.search.session as session

    photos = make_photos(tmp_path / "photos", range(3))
    with Index.create(tmp_path / "index", mobilenet_model_dir, device="cpu") as index:
        index.add([photos], workers=0)
        image_id = int(index.store.ok_ids()[0])
        lock = index._searcher._snapshot_lock
        real = session.encode_text_query

        def encode_then_let_a_refresh_queue(model, text):
            encoded = real(model, text)  # in explain, under the read lock
            threading.Thread(target=index.refresh, daemon=True).start()
            while not lock._writers_waiting:
                threading.Event().wait(0.01)
            return encoded

        monkeypatch.setattr(session, "encode_text_query", encode_then_let_a_refresh_queue)
        done = []
        explaining = threading.Thread(target=lambda: done.append(index.explain("a red circle", image_id)), daemon=True)
        explaining.start()
        explaining.join(timeout=60)
        assert done and done[0].method == "classes", "explain waited for a refresh that waited for it"
