"""The re-ranking hot path (model/fast_scorer.py) against the reference CrossAttentionScorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgsearch.model.fast_scorer import score_candidates_fast
from imgsearch.model.scorer import CrossAttentionScorer, ScorerConfig


def make_scorer(layers: int = 2, seed: int = 0) -> CrossAttentionScorer:
    torch.manual_seed(seed)
    scorer = CrossAttentionScorer(ScorerConfig(num_layers=layers, num_heads=4, max_regions=36), embed_dim=64)
    with torch.no_grad():  # trained-looking scale: the fresh head and position table are tiny
        for p in scorer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return scorer.eval()


def inputs(count: int, seed: int, tokens: int = 9, real: int = 6, regions: int = 36):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(tokens, 64, generator=g)
    mask = torch.arange(tokens) < real
    region_features = torch.tanh(torch.randn(count, regions, 64, generator=g))  # tanh-bounded like stored features
    return query, mask, region_features


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("count", [1, 5, 40])
def test_float32_path_equals_reference_forward(layers, count):
    scorer = make_scorer(layers, seed=layers)
    query, mask, regions = inputs(count, seed=count)
    with torch.inference_mode():
        expected = scorer.score_candidates(query, mask, regions)  # (C,)
        got = score_candidates_fast(scorer, query, mask, regions, torch.float32)
    assert got.shape == (count,) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4, rtol=1e-5)
    assert count == 1 or float(expected.std()) > 1e-2  # candidates really differ


def test_float32_path_with_fewer_regions_than_positions():
    scorer = make_scorer()
    query, mask, regions = inputs(4, seed=3, regions=16)
    with torch.inference_mode():
        np.testing.assert_allclose(
            score_candidates_fast(scorer, query, mask, regions).numpy(),
            scorer.score_candidates(query, mask, regions).numpy(),
            atol=1e-4,
        )


def test_bfloat16_path_is_close_and_keeps_the_ranking():
    scorer = make_scorer()
    query, mask, regions = inputs(100, seed=7)
    with torch.inference_mode():
        expected = scorer.score_candidates(query, mask, regions).numpy()
        got = score_candidates_fast(scorer, query, mask, regions, torch.bfloat16).numpy()
    spread = expected.std()
    assert np.abs(got - expected).max() < 0.05 * spread
    top_expected, top_got = set(np.argsort(-expected)[:10]), set(np.argsort(-got)[:10])
    assert len(top_expected & top_got) >= 9


def test_refuses_training_mode_and_too_many_regions():
    scorer = make_scorer()
    query, mask, regions = inputs(2, seed=1, regions=37)
    with pytest.raises(ValueError, match="37 regions"):
        score_candidates_fast(scorer, query, mask, regions)
    with pytest.raises(ValueError, match="eval"):
        score_candidates_fast(scorer.train(), query, mask, regions[:, :36])


def test_index_search_in_bfloat16_matches_float32_top_results(tmp_path, model_dir, image_folder):
    from imgsearch import Index
    from imgsearch.ground.errors import InvalidQuery

    with Index.create(tmp_path / "idx", model=model_dir, device="cpu") as index:
        index.add([image_folder], workers=0)
        exact = index.search("a red circle", k=12)
        fast = index.search("a red circle", k=12, rerank_precision="bfloat16")
        assert sorted(r.id for r in fast) == sorted(r.id for r in exact)  # all 12 images, re-ordered alike
        np.testing.assert_allclose(
            [r.rerank_score for r in fast],
            [dict((e.id, e.rerank_score) for e in exact)[r.id] for r in fast],
            atol=0.05 * np.std([r.rerank_score for r in exact]) + 1e-3,
        )
        with pytest.raises(InvalidQuery, match="rerank_precision"):
            index.search("a red circle", rerank_precision="half")
