"""The re-ranker's training stage: negative mining against brute force, and a tiny run."""

import random

import numpy as np
import pytest
import torch

from imgsearch.training.rerank_stage import _draw, mine_negatives


@pytest.mark.parametrize("depth", [1, 3, 10])
def test_mine_negatives_matches_brute_force(depth):
    rng = np.random.default_rng(depth)
    sim = torch.from_numpy(rng.standard_normal((30, 12)).astype(np.float32))
    matches = {(q, j) for q in range(30) for j in range(12) if rng.random() < 0.2}
    mined = mine_negatives(sim, lambda q, j: (q, j) in matches, depth)
    for q in range(30):
        by_score = sorted(range(12), key=lambda j: -float(sim[q, j]))
        expected = [j for j in by_score if (q, j) not in matches][:depth]
        assert mined[q] == expected


def test_mine_negatives_skips_many_matches_at_the_top():
    sim = torch.arange(40, dtype=torch.float32).flip(0).repeat(2, 1)  # both rows: 0 best, 39 worst
    mined = mine_negatives(sim, lambda q, j: j < 10, depth=5)  # the ten best are all matches
    assert mined == [[10, 11, 12, 13, 14]] * 2


def test_draw_never_returns_a_match():
    rng = random.Random(0)
    is_match = lambda j: j % 3 == 0  # noqa: E731
    hard = [1, 2, 4]
    drawn = [_draw(hard, rng, 0.5, 30, is_match) for _ in range(2000)]
    assert not any(is_match(j) for j in drawn)
    assert set(hard) <= set(drawn)  # hard ones are drawn
    assert len(set(drawn) - set(hard)) > 10  # and uniform ones too
    only_hard = {_draw(hard, rng, 1.0, 30, is_match) for _ in range(300)}
    assert only_hard == set(hard)
