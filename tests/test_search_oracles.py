"""Search checked against oracles: brute-force numpy for FAISS, a naive per-candidate
loop for the batched re-ranker, and a reference computed straight from the model
for the whole Index. Also: the FAISS file is derived (rebuilt from SQLite), and
re-indexing is incremental."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import draw_image, make_model_dir, small_config
from imgsearch.index import VECTORS_NAME, Index
from imgsearch.model.scorer import CrossAttentionScorer, ScorerConfig
from imgsearch.search.rerank import rerank_scores
from imgsearch.storage.vectors import VectorIndex

ATOL = 1e-5


# ---- (1) FAISS against brute force --------------------------------------------------


def random_unit_vectors(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def assert_same_top_k(got_scores, got_ids, ids, vectors, query, k, atol=ATOL):
    """Tie-tolerant: the score sequence equals brute force, every returned id really has
    its returned score, and every id that beats the k-th score (by more than atol) is returned."""
    true = vectors @ query  # (N,)
    score_of = dict(zip(ids.tolist(), true.tolist()))
    expected = np.sort(true)[::-1][: min(k, len(ids))]
    assert len(got_ids) == len(expected)
    assert -1 not in got_ids.tolist()
    assert len(set(got_ids.tolist())) == len(got_ids), "an id came back twice"
    np.testing.assert_allclose(got_scores, expected, atol=atol)
    for image_id, score in zip(got_ids.tolist(), got_scores.tolist()):
        assert abs(score_of[image_id] - score) <= atol, image_id
    if len(expected):
        must = {i for i, s in score_of.items() if s > expected[-1] + atol}
        assert must <= set(got_ids.tolist())


@pytest.fixture
def random_index():
    rng = np.random.default_rng(7)
    n, d = 300, 24
    ids = rng.choice(10**12, size=n, replace=False).astype(np.int64) + 5  # not 0..N-1, beyond int32
    vectors = random_unit_vectors(rng, n, d)
    vectors[10] = vectors[11]  # an exact tie under two ids
    return rng, ids, vectors, VectorIndex.build(ids, vectors, d)


@pytest.mark.parametrize("k", [1, 5, 37, 300])
def test_faiss_search_equals_brute_force(random_index, k):
    rng, ids, vectors, index = random_index
    assert len(index) == len(ids) and index.dim == vectors.shape[1]
    assert np.array_equal(index.ids(), np.sort(ids))
    for query in list(random_unit_vectors(rng, 8, vectors.shape[1])) + [vectors[10], vectors[0]]:
        scores, found = index.search(query, k)
        assert found.dtype == np.int64
        assert_same_top_k(scores, found, ids, vectors, query, k)


def test_faiss_ties_return_both_ids(random_index):
    _, ids, vectors, index = random_index
    scores, found = index.search(vectors[10], 2)
    assert set(found.tolist()) == {ids[10], ids[11]}
    np.testing.assert_allclose(scores, [1.0, 1.0], atol=ATOL)


def test_faiss_remove_then_search(random_index):
    rng, ids, vectors, index = random_index
    gone = rng.choice(len(ids), size=60, replace=False)
    index.remove(ids[gone])
    index.remove([])  # no-op
    index.remove(np.array([3], dtype=np.int64))  # an id never added: no-op
    keep = np.setdiff1d(np.arange(len(ids)), gone)
    assert len(index) == len(keep)
    assert np.array_equal(index.ids(), np.sort(ids[keep]))
    for query in random_unit_vectors(rng, 6, vectors.shape[1]):
        scores, found = index.search(query, 20)
        assert not set(found.tolist()) & set(ids[gone].tolist())
        assert_same_top_k(scores, found, ids[keep], vectors[keep], query, 20)
    # A removed id can be added again.
    index.add(ids[gone[:1]], vectors[gone[:1]])
    scores, found = index.search(vectors[gone[0]], 1)
    assert found.tolist() == [ids[gone[0]]]


def test_faiss_k_larger_than_n_returns_n_without_padding():
    rng = np.random.default_rng(1)
    ids = np.array([42, 7, 1000], dtype=np.int64)
    vectors = random_unit_vectors(rng, 3, 8)
    index = VectorIndex.build(ids, vectors, 8)
    scores, found = index.search(vectors[1], 50)
    assert len(scores) == len(found) == 3
    assert found[0] == 7
    assert_same_top_k(scores, found, ids, vectors, vectors[1], 50)


def test_faiss_empty_index_returns_nothing():
    scores, found = VectorIndex.empty(8).search(np.ones(8, np.float32), 5)
    assert scores.shape == found.shape == (0,)


def test_faiss_save_and_load_round_trip(random_index, tmp_path):
    rng, ids, vectors, index = random_index
    index.save(tmp_path / "v.faiss")
    assert not (tmp_path / "v.faiss.tmp").exists()
    loaded = VectorIndex.load(tmp_path / "v.faiss")
    assert np.array_equal(loaded.ids(), index.ids())
    query = random_unit_vectors(rng, 1, vectors.shape[1])[0]
    for a, b in zip(loaded.search(query, 10), index.search(query, 10)):
        assert np.array_equal(a, b)


# ---- (2) batched re-ranking against a naive loop -------------------------------------


@pytest.fixture
def scorer():
    torch.manual_seed(3)
    config = ScorerConfig(num_layers=2, num_heads=4, ffn_mult=2, max_regions=16, dropout=0.3)
    scorer = CrossAttentionScorer(config, 32).eval()  # eval: dropout off
    with torch.no_grad():  # make the position table matter as much as the regions do
        scorer.region_position.normal_(0, 0.5)
    return scorer


def query_and_regions(count: int, seed: int = 0, tokens: int = 7, real: int = 5, regions: int = 16):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(tokens, 32, generator=g)
    mask = torch.arange(tokens) < real  # the last tokens are padding
    region_features = (torch.rand(count, regions, 32, generator=g) * 2 - 1).numpy().astype(np.float16)
    first_stage = torch.rand(count, generator=g).numpy()
    return query, mask, region_features, first_stage


def naive_scores(scorer, query, mask, regions) -> np.ndarray:
    """One candidate at a time, batch size 1, with only the real query tokens (no padding at all)."""
    real = query[mask]  # (T_real, d)
    out = []
    with torch.no_grad():
        for candidate in regions:
            block = torch.from_numpy(candidate.astype(np.float32))[None]  # (1, R, d)
            logit = scorer(real[None], torch.ones(1, len(real), dtype=torch.bool), block)  # (1,)
            out.append(float(logit[0]))
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("count, chunk", [(1, 256), (10, 256), (10, 3), (10, 1), (9, 9), (7, 4)])
@pytest.mark.parametrize("fusion_weight", [0.0, 0.75])
def test_batched_rerank_equals_naive_loop(scorer, count, chunk, fusion_weight):
    query, mask, regions, first_stage = query_and_regions(count)
    expected = naive_scores(scorer, query, mask, regions) + np.float32(fusion_weight) * first_stage

    got = rerank_scores(scorer, query, mask, regions, first_stage, fusion_weight, chunk=chunk)

    assert got.shape == (count,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    assert np.ptp(expected) > 1e-3 or count == 1  # candidates really score differently


def test_score_candidates_equals_naive_loop(scorer):
    query, mask, regions, _ = query_and_regions(6, seed=5)
    with torch.no_grad():
        batched = scorer.score_candidates(query, mask, torch.from_numpy(regions.astype(np.float32)))
    np.testing.assert_allclose(batched.numpy(), naive_scores(scorer, query, mask, regions), atol=ATOL, rtol=0)


def test_padding_tokens_do_not_change_scores(scorer):
    query, mask, regions, first_stage = query_and_regions(4, seed=9)
    changed = query.clone()
    changed[~mask] = 100.0  # garbage in the padded positions
    a = rerank_scores(scorer, query, mask, regions, first_stage)
    b = rerank_scores(scorer, changed, mask, regions, first_stage)
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)


def test_region_order_matters_to_the_scorer(scorer):
    # The position table makes the scorer see where a region is: a spatial relation is visible.
    query, mask, regions, first_stage = query_and_regions(1, seed=11)
    flipped = regions[:, ::-1].copy()
    a = rerank_scores(scorer, query, mask, regions, first_stage)
    b = rerank_scores(scorer, query, mask, flipped, first_stage)
    assert abs(float(a[0] - b[0])) > 1e-4


def test_rerank_of_no_candidates(scorer):
    query, mask, _, _ = query_and_regions(1)
    got = rerank_scores(scorer, query, mask, np.zeros((0, 16, 32), np.float16), np.zeros(0, np.float32), 0.5)
    assert got.shape == (0,)


def test_scorer_refuses_more_regions_than_positions(scorer):
    query, mask, regions, first_stage = query_and_regions(2, regions=17)
    with pytest.raises(ValueError, match="17 regions"):
        rerank_scores(scorer, query, mask, regions, first_stage)


# ---- (3) the Index end to end against a reference from the model --------------------


QUERIES = ["a red circle", "a blue square above a yellow circle", "green"]


def build_index(directory, model, folder, **add_options):
    index = Index.create(directory, model, device="cpu")
    summary = index.add([folder], workers=add_options.pop("workers", 0), **add_options)
    return index, summary


@pytest.fixture
def built(tmp_path, model_dir, image_folder):
    index, summary = build_index(tmp_path / "index", model_dir, image_folder)
    yield index, summary
    index.close()


def query_vector(model, text: str) -> np.ndarray:
    with torch.inference_mode():
        return model.text.encode([text]).global_[0].numpy()


def reference_first_stage(index, text):
    """ids and cosine scores of every indexed image, best first: numpy over the SQLite vectors."""
    ids, vectors = index.store.global_vectors()  # (N,), (N, d)
    scores = vectors @ query_vector(index.model, text)  # (N, d) x (d,) --> (N,)
    order = np.argsort(-scores, kind="stable")
    return ids[order], scores[order]


def assert_same_ids_unless_tied(got_ids, ref_ids, ref_scores, atol=ATOL):
    """Position by position, the ids agree wherever the reference score is not tied with a neighbour."""
    ref_scores = np.asarray(ref_scores)
    assert len(got_ids) == len(ref_ids)
    for i, (got, ref) in enumerate(zip(list(got_ids), list(ref_ids))):
        tied = (i > 0 and abs(ref_scores[i] - ref_scores[i - 1]) <= atol) or (
            i + 1 < len(ref_scores) and abs(ref_scores[i] - ref_scores[i + 1]) <= atol
        )
        if not tied:
            assert got == ref, (i, list(got_ids), list(ref_ids))


def reference_rerank(index, text, candidate_ids):
    """Scorer logit of each candidate, scored alone, from the query's tokens and the stored regions."""
    model = index.model
    with torch.inference_mode():
        query = model.text.encode([text])
        tokens = query.tokens[0][query.mask[0]]  # (T, d), real tokens only
        logits = []
        for image_id in candidate_ids:
            regions = torch.from_numpy(index.store.regions([int(image_id)]).astype(np.float32))  # (1, R, d)
            logits.append(float(model.scorer(tokens[None], torch.ones(1, len(tokens), dtype=torch.bool), regions)[0]))
    return np.array(logits, dtype=np.float32)


# ImageNet's per-channel mean and std, written out here rather than taken from the package.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def expected_pixels(path, size: int) -> torch.Tensor:
    """The model input for one test image, by plain PIL and numpy, apart from the pipeline's code:
    the whole frame resized (bilinear) to size x size, scaled to [0, 1], normalised with ImageNet's
    mean and std. (The test images have no EXIF orientation and no transparency.)"""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    pixels = (np.asarray(rgb, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD  # (S, S, 3)
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())[None]  # (S, S, 3) --> (1, 3, S, S)


def encode_file(encoder, path) -> torch.Tensor:
    assert encoder.backbone_config.name == "vgg"  # ImageNet normalisation, as expected_pixels does
    with torch.inference_mode():
        return encoder.project(*encoder.backbone(expected_pixels(path, encoder.image_size)))


def test_stored_vectors_equal_the_encoder_on_each_file(built, image_folder):
    index, summary = built
    assert (summary.added, summary.failed, summary.unchanged, summary.updated) == (12, 0, 0, 0)
    encoder = index.model.image
    stored_ids, stored = index.store.global_vectors()
    assert len(stored_ids) == 12
    for image_id, vector in zip(stored_ids, stored):
        row = index.store.images([int(image_id)])[int(image_id)]
        with Image.open(row.path) as image:
            assert (row.width, row.height) == image.size
        assert row.sha256 == hashlib.sha256(Path(row.path).read_bytes()).hexdigest()
        expected = encode_file(encoder, row.path)
        np.testing.assert_allclose(vector, expected.global_[0].numpy(), atol=ATOL)
        np.testing.assert_allclose(np.linalg.norm(vector), 1.0, atol=ATOL)
        regions = index.store.regions([int(image_id)])[0].astype(np.float32)  # float16 on disk
        np.testing.assert_allclose(regions, expected.regions[0].numpy(), atol=2e-3)
    # The FAISS ids are the SQLite ids.
    assert np.array_equal(index.vectors.ids(), stored_ids)


@pytest.mark.parametrize("text", QUERIES)
def test_first_stage_equals_brute_force(built, text):
    index, _ = built
    ref_ids, ref_scores = reference_first_stage(index, text)
    results = index.search(text, k=5, rerank=False)
    assert [r.rank for r in results] == [1, 2, 3, 4, 5]
    got_ids = np.array([r.id for r in results])
    got_scores = np.array([r.first_stage_score for r in results])
    ids, vectors = index.store.global_vectors()
    assert_same_top_k(got_scores, got_ids, ids, vectors, query_vector(index.model, text), 5)
    np.testing.assert_allclose(got_scores, ref_scores[:5], atol=ATOL)
    assert_same_ids_unless_tied(got_ids, ref_ids[:5], ref_scores[:5])
    for r in results:
        assert r.rerank_score is None
        assert r.score == r.first_stage_score
        assert r.first_stage_rank == r.rank
        assert r.path == index.store.images([r.id])[r.id].path


@pytest.mark.parametrize("text", QUERIES)
@pytest.mark.parametrize("k, candidates", [(4, 6), (3, 12), (6, 2)])
def test_reranked_order_equals_scorer_order_over_top_candidates(built, text, k, candidates):
    index, _ = built
    depth = max(k, candidates)
    ref_ids, ref_first = reference_first_stage(index, text)
    top_ids, top_first = ref_ids[:depth], ref_first[:depth]
    logits = reference_rerank(index, text, top_ids)
    order = np.argsort(-logits, kind="stable")[:k]

    results = index.search(text, k=k, candidates=candidates)

    assert len(results) == k
    np.testing.assert_allclose([r.rerank_score for r in results], logits[order], atol=ATOL)
    np.testing.assert_allclose([r.score for r in results], logits[order], atol=ATOL)  # fusion_weight 0
    first_stage_of = dict(zip(top_ids.tolist(), top_first.tolist()))
    logit_of = dict(zip(top_ids.tolist(), logits.tolist()))
    rank_of = {image_id: rank for rank, image_id in enumerate(top_ids.tolist(), start=1)}
    for r in results:
        assert r.id in first_stage_of, "a result that was not a first-stage candidate"
        assert abs(r.first_stage_score - first_stage_of[r.id]) <= ATOL
        assert abs(r.rerank_score - logit_of[r.id]) <= ATOL
        assert r.first_stage_rank == rank_of[r.id]
    # Order is by final score, and the ids are those of the reference (up to ties).
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    assert_same_ids_unless_tied([r.id for r in results], top_ids[order], logits[order])


def test_fusion_weight_adds_first_stage_score(tmp_path, tiny_bert_dir, image_folder):
    model = make_model_dir(tmp_path / "fused-model", small_config(tiny_bert_dir, fusion_weight=0.5), seed=2)
    index, _ = build_index(tmp_path / "index", model, image_folder)
    with index:
        text = QUERIES[1]
        ref_ids, ref_first = reference_first_stage(index, text)
        logits = reference_rerank(index, text, ref_ids[:8])
        final = logits + np.float32(0.5) * ref_first[:8]
        order = np.argsort(-final, kind="stable")[:5]

        results = index.search(text, k=5, candidates=8)

        assert_same_ids_unless_tied([r.id for r in results], ref_ids[:8][order], final[order])
        np.testing.assert_allclose([r.score for r in results], final[order], atol=ATOL)
        for r in results:
            assert abs(r.score - (r.rerank_score + 0.5 * r.first_stage_score)) <= ATOL


def test_search_of_an_empty_index(tmp_path, model_dir):
    with Index.create(tmp_path / "empty", model_dir, device="cpu") as index:
        assert index.search("anything", k=3) == []
        assert index.search("anything", k=3, rerank=False) == []


def test_k_beyond_the_index_returns_every_image_once(built):
    index, _ = built
    for rerank in (True, False):
        results = index.search("a red circle", k=50, candidates=5, rerank=rerank)
        assert len(results) == 12
        assert len({r.id for r in results}) == 12
        assert [r.rank for r in results] == list(range(1, 13))


# ---- (4) vectors.faiss is derived: rebuilt from SQLite ---------------------------------


def snapshot(index):
    out = []
    for text in QUERIES:
        for rerank in (True, False):
            out.append(
                [
                    (r.id, r.path, r.score, r.first_stage_score, r.rerank_score)
                    for r in index.search(text, k=7, candidates=9, rerank=rerank)
                ]
            )
    return out


def damage_missing(path, ids):
    path.unlink()


def damage_garbage(path, ids):
    path.write_bytes(b"this is not a faiss index" * 10)


def damage_empty(path, ids):
    path.write_bytes(b"")


def damage_drop_one(path, ids):
    vectors = VectorIndex.load(path)
    vectors.remove([int(vectors.ids()[3])])
    vectors.save(path)


def damage_extra_id(path, ids):
    vectors = VectorIndex.load(path)
    vectors.add(np.array([10**6]), np.ones((1, vectors.dim), np.float32) / np.sqrt(vectors.dim))
    vectors.save(path)


def damage_wrong_dim(path, ids):
    VectorIndex.build(ids, np.zeros((len(ids), 5), np.float32), 5).save(path)


@pytest.mark.parametrize(
    "damage", [damage_missing, damage_garbage, damage_empty, damage_drop_one, damage_extra_id, damage_wrong_dim]
)
def test_damaged_vectors_file_is_rebuilt_with_identical_results(built, damage, caplog):
    index, _ = built
    before = snapshot(index)
    directory, model = index.directory, index.model_dir
    ids = index.store.ok_ids()
    index.close()
    damage(directory / VECTORS_NAME, ids)

    with caplog.at_level(logging.WARNING, logger="imgsearch"):
        reopened = Index.open(directory, device="cpu")
    with reopened:
        assert "rebuilding" in caplog.text
        assert reopened.model_dir == model
        assert np.array_equal(reopened.vectors.ids(), reopened.store.ok_ids())
        ok_ids = reopened.store.ok_ids()
        after = snapshot(reopened)
    assert after == before
    # The rebuilt file was saved: the next open needs no rebuild.
    assert np.array_equal(VectorIndex.load(directory / VECTORS_NAME).ids(), ok_ids)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imgsearch"):
        Index.open(directory, device="cpu").close()
    assert "rebuilding" not in caplog.text


def test_intact_vectors_file_is_not_rebuilt(built, caplog, monkeypatch):
    index, _ = built
    directory = index.directory
    index.close()
    saved = (directory / VECTORS_NAME).read_bytes()
    # Every rebuild, saved or in memory only, logged or not, builds through VectorIndex.build.
    monkeypatch.setattr(VectorIndex, "build", lambda *args, **kwargs: pytest.fail("rebuilt an intact index"))
    with caplog.at_level(logging.INFO, logger="imgsearch"), Index.open(directory, device="cpu") as reopened:
        assert len(reopened.search("a red circle", k=3)) == 3
    assert "rebuilding" not in caplog.text
    assert (directory / VECTORS_NAME).read_bytes() == saved


@pytest.mark.parametrize(
    "damage, reason",
    [
        (damage_missing, "is missing"),
        (damage_garbage, 'is unreadable (Index type 0x73696874 ("this") not recognized)'),
        (damage_empty, "is unreadable (Error: 'ret == (1)' failed: read error in"),
        (damage_drop_one, "is out of step with index.db (11 vectors for 12 indexed images"),
        (damage_wrong_dim, "holds 5-d vectors, not the index's 32-d"),
    ],
)
def test_why_vectors_faiss_is_rebuilt_is_logged(built, caplog, damage, reason):
    index, _ = built
    directory, ids = index.directory, index.store.ok_ids()
    index.close()
    damage(directory / VECTORS_NAME, ids)
    with caplog.at_level(logging.WARNING, logger="imgsearch"):
        Index.open(directory, device="cpu").close()
    assert f"{directory / VECTORS_NAME} {reason}" in caplog.text
    assert "rebuilding it from index.db" in caplog.text


# ---- (5) re-indexing is incremental ----------------------------------------------------


def rewrite(path, image, mtime_shift=10.0):
    """Write new content and move the mtime, so the change is seen even within one clock tick."""
    stat = path.stat()
    image.save(path)
    os.utime(path, (stat.st_atime, stat.st_mtime + mtime_shift))


def test_re_adding_the_same_folder_changes_nothing(built, image_folder):
    index, _ = built
    ids_before = index.store.ok_ids().copy()
    vectors_before = index.store.global_vectors()[1].copy()

    summary = index.add([image_folder], workers=0)

    assert (summary.added, summary.updated, summary.unchanged, summary.failed) == (0, 0, 12, 0)
    assert np.array_equal(index.store.ok_ids(), ids_before)
    assert np.array_equal(index.store.global_vectors()[1], vectors_before)
    assert len(index.vectors) == 12
    assert index.store.counts() == {"ok": 12, "error": 0, "distinct_contents": 12}


def test_rewritten_file_is_updated_under_a_new_id(built, image_folder):
    index, _ = built
    target = image_folder / "deeper" / "img_00.png"
    old = index.store.get(str(target))
    assert old is not None and old.status == "ok"

    rewrite(target, draw_image(1000))
    summary = index.add([image_folder], workers=0)

    assert (summary.added, summary.updated, summary.unchanged, summary.failed) == (0, 1, 11, 0)
    new = index.store.get(str(target))
    assert new.id != old.id and new.id > max(index.store.ok_ids()[:-1])  # ids are never reused
    assert new.sha256 != old.sha256
    assert old.id not in index.vectors.ids().tolist()
    assert new.id in index.vectors.ids().tolist()
    assert len(index.vectors) == 12
    assert index.store.counts() == {"ok": 12, "error": 0, "distinct_contents": 12}  # old content dropped
    assert np.array_equal(index.vectors.ids(), index.store.ok_ids())
    # The new vector is the new content's, and search finds the new id.
    ids, vectors = index.store.global_vectors()
    expected = encode_file(index.image_encoder, target).global_[0].numpy()
    np.testing.assert_allclose(vectors[ids.tolist().index(new.id)], expected, atol=ATOL)
    scores, found = index.vectors.search(expected, 1)
    assert found.tolist() == [new.id]


def test_touched_file_is_confirmed_by_its_hash_and_keeps_its_row(built, image_folder):
    index, _ = built
    target = image_folder / "sub" / "img_01.jpg"
    old = index.store.get(str(target))
    stat = target.stat()
    os.utime(target, (stat.st_atime, stat.st_mtime + 5))

    summary = index.add([image_folder], workers=0)

    # The new mtime makes the file a candidate; its unchanged sha256 says there is nothing to embed.
    assert (summary.updated, summary.unchanged, summary.embedded) == (0, 12, 0)
    new = index.store.get(str(target))
    assert new.id == old.id and new.sha256 == old.sha256 and new.mtime == stat.st_mtime + 5
    assert index.store.counts()["distinct_contents"] == 12
    assert index.store.regions([new.id]).shape == (1, index.manifest.num_regions, index.manifest.embed_dim)


def test_identical_content_under_two_paths_shares_one_row(built, image_folder):
    index, _ = built
    original = image_folder / "deeper" / "img_00.png"
    copy = image_folder / "copy_of_00.png"
    shutil.copyfile(original, copy)

    summary = index.add([image_folder], workers=0)

    assert (summary.added, summary.unchanged) == (1, 12)
    assert index.store.counts() == {"ok": 13, "error": 0, "distinct_contents": 12}
    a, b = index.store.get(str(original)), index.store.get(str(copy))
    assert a.sha256 == b.sha256 and a.id != b.id
    assert len(index.vectors) == 13
    np.testing.assert_array_equal(index.store.regions([a.id]), index.store.regions([b.id]))
    # Both paths come back for a query that matches them, with equal scores.
    ids, vectors = index.store.global_vectors()
    scores, found = index.vectors.search(vectors[ids.tolist().index(a.id)], 2)
    assert set(found.tolist()) == {a.id, b.id}

    # Changing one copy must not drop the shared content the other still uses.
    rewrite(copy, draw_image(2000))
    summary = index.add([image_folder], workers=0)
    assert (summary.updated, summary.unchanged) == (1, 12)
    assert index.store.counts() == {"ok": 13, "error": 0, "distinct_contents": 13}
    assert index.store.regions([a.id]).shape[0] == 1
    assert a.id in index.vectors.ids().tolist()
    results = index.search("a red circle", k=13, candidates=13)
    assert len(results) == 13


def test_same_content_twice_in_one_batch(tmp_path, model_dir):
    folder = tmp_path / "dupes"
    folder.mkdir()
    draw_image(5).save(folder / "a.png")
    shutil.copyfile(folder / "a.png", folder / "b.png")
    draw_image(6).save(folder / "c.png")
    index, summary = build_index(tmp_path / "index", model_dir, folder)
    with index:
        assert summary.added == 3
        assert index.store.counts() == {"ok": 3, "error": 0, "distinct_contents": 2}
        assert len(index.vectors) == 3


def test_file_that_breaks_and_is_repaired(built, image_folder):
    index, _ = built
    target = image_folder / "img_02.webp"
    old = index.store.get(str(target))
    stat = target.stat()
    target.write_bytes(b"garbage, not a webp")
    os.utime(target, (stat.st_atime, stat.st_mtime + 10))

    summary = index.add([image_folder], workers=0)

    assert summary.failed == 1 and summary.failures[0][0] == str(target)
    assert index.store.counts() == {"ok": 11, "error": 1, "distinct_contents": 11}
    assert old.id not in index.vectors.ids().tolist()
    assert all(r.id != old.id for r in index.search("a red circle", k=12, candidates=12))
    assert index.add([image_folder], workers=0).unchanged == 12  # a failed file is not retried unchanged

    Image.new("RGB", (20, 20), (10, 200, 10)).save(target, format="WEBP")
    os.utime(target, (stat.st_atime, stat.st_mtime + 20))
    summary = index.add([image_folder], workers=0)
    assert (summary.updated, summary.failed) == (1, 0)
    assert index.store.counts() == {"ok": 12, "error": 0, "distinct_contents": 12}
    assert np.array_equal(index.vectors.ids(), index.store.ok_ids())


def test_worker_processes_and_batch_size_do_not_change_vectors(tmp_path, model_dir, image_folder):
    calls = []
    a, _ = build_index(tmp_path / "a", model_dir, image_folder)
    b, summary = build_index(
        tmp_path / "b",
        model_dir,
        image_folder,
        workers=1,
        batch_size=5,
        progress=lambda done, total: calls.append((done, total)),
    )
    with a, b:
        assert summary.added == 12
        assert calls == [(5, 12), (10, 12), (12, 12)]
        by_path = {}
        for index in (a, b):
            ids, vectors = index.store.global_vectors()
            rows = index.store.images(ids.tolist())
            by_path[index] = {rows[int(i)].path: v for i, v in zip(ids, vectors)}
        assert by_path[a].keys() == by_path[b].keys()
        for path, vector in by_path[a].items():
            np.testing.assert_allclose(by_path[b][path], vector, atol=ATOL)
