"""Choosing the second-stage epoch and fusion weight on validation (training/selection.py),
checked against evaluate() run once per (candidate, weight)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

import imgsearch.training.selection as selection_module
from conftest import draw_image, small_config
from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.scorer import ScorerConfig
from imgsearch.training.captions import CaptionedImage, read_captions
from imgsearch.training.data import encode_captions, load_images
from imgsearch.training.evaluate import embed_captions, embed_images, evaluate, t2i_ranks
from imgsearch.training.selection import RerankerSelection
from imgsearch.training.trainer import TrainConfig, split_validation, train

GRID = (0.0, 0.5, 3.0, 50.0)
DEPTH = 8


@pytest.fixture(scope="module")
def validation(tmp_path_factory, tiny_bert_dir):
    """A tiny random model and 30 validation images with 1 to 3 captions each."""
    folder = tmp_path_factory.mktemp("val")
    items = []
    for i in range(30):
        path = folder / f"v{i}.png"
        draw_image(400 + i, 32).save(path)
        items.append(CaptionedImage(path, [f"a shape number {i} seen {k} times" for k in range(1 + i % 3)]))
    torch.manual_seed(0)
    model = AlignmentModel.initialize(small_config(tiny_bert_dir)).eval()
    images = load_images(items, model.config.backbone.image_size)
    bank = encode_captions(model.text, images.items, cache_states=False)
    return model, images.pixels, bank


def oracle_choice(model, pixels, bank):
    """(R@1, weight) that evaluate() gives, best first, the smaller weight on ties."""
    results = []
    for weight in GRID:
        model.config = dataclasses.replace(model.config, fusion_weight=weight)
        results.append((evaluate(model, pixels, bank, DEPTH, candidates=DEPTH)["reranked"]["t2i"]["R@1"], weight))
    best = max(r for r, _ in results)
    return best, min(w for r, w in results if r == best)


def test_selection_keeps_the_best_candidate_and_restores_its_weights(validation, monkeypatch):
    model, pixels, bank = validation
    model = copy.deepcopy(model)
    selection = RerankerSelection(pixels, bank, DEPTH, GRID)
    # Candidate 2 gets an oracle bonus on the true image (random tiny models all re-rank at
    # chance, so no real candidate would stand out); the others are scored as they are.
    current = {"epoch": None}
    real_scores = selection_module.t2i_candidate_scores

    def scores_with_oracle(*args, **kwargs):
        top, scores = real_scores(*args, **kwargs)
        if current["epoch"] == 2:
            scores = scores + 1000.0 * (top == bank.image_of[:, None])
        return top, scores

    monkeypatch.setattr(selection_module, "t2i_candidate_scores", scores_with_oracle)
    states, expected = [], []
    generator = torch.Generator().manual_seed(1)
    for epoch in range(4):
        if epoch:  # a different scorer per candidate, as training epochs would give
            with torch.no_grad():
                for p in model.scorer.parameters():
                    p.add_(torch.randn(p.shape, generator=generator) * 2.0)
        states.append({k: v.clone() for k, v in model.scorer.state_dict().items()})
        current["epoch"] = epoch
        choice = selection.consider(model, epoch)
        if epoch == 2:  # every weight finds the true image first whenever it is a candidate
            first = evaluate(model, pixels, bank, DEPTH, rerank=False)["first_stage"]["t2i"]
            image_global, _ = embed_images(model, pixels)
            text_global, _, _ = embed_captions(model, bank.captions)
            in_list = t2i_ranks(text_global @ image_global.T, bank.image_of) < DEPTH
            r1, weight = 100.0 * in_list.mean(), GRID[0]
            assert r1 > first["R@1"]
        else:
            r1, weight = oracle_choice(model, pixels, bank)
        expected.append((epoch, weight, r1))
        assert (choice.epoch, choice.fusion_weight) == (epoch, weight)
        assert choice.t2i_r1 == pytest.approx(r1)
    assert [(c.epoch, c.fusion_weight, c.t2i_r1) for c in selection.history] == [
        (e, w, pytest.approx(r)) for e, w, r in expected
    ]
    kept = selection.restore(model)
    assert (kept.epoch, kept.fusion_weight) == (2, GRID[0]) and kept.t2i_r1 == pytest.approx(expected[2][2])
    restored = model.scorer.state_dict()
    assert all(torch.equal(restored[k], states[2][k]) for k in restored)
    assert any(not torch.equal(restored[k], states[3][k]) for k in restored)  # it really moved back


def test_selection_keeps_the_earlier_candidate_on_ties(validation):
    model, pixels, bank = validation
    selection = RerankerSelection(pixels, bank, DEPTH, GRID)
    first = selection.consider(model, 0)
    again = selection.consider(model, 1)  # the same scorer: the same recall
    assert again.t2i_r1 == first.t2i_r1 and selection.restore(model).epoch == 0


def test_selection_needs_a_grid_and_a_candidate(validation):
    model, pixels, bank = validation
    with pytest.raises(ValueError):
        RerankerSelection(pixels, bank, DEPTH, ())
    with pytest.raises(RuntimeError):
        RerankerSelection(pixels, bank, DEPTH, GRID).restore(model)


def _captioned_images(folder, first_seed: int):
    """16 generated 32px images with two captions each, and their captions.tsv, in `folder`."""
    folder.mkdir()
    rows = []
    for i in range(16):
        draw_image(first_seed + i, 32).save(folder / f"i{i}.png")
        rows += [f"i{i}.png\tpicture {i} view {k}\n" for k in range(2)]
    (folder / "captions.tsv").write_text("image\tcaption\n" + "".join(rows))
    return folder


def test_train_with_local_weight_considers_the_scorer_before_its_stage(tmp_path, tiny_bert_dir):
    """With the alignment loss, the re-ranker stage starts from a zero output head (the scorer
    is its alignment term) and that start is candidate epoch 0; the saved model is the kept one."""
    folder = _captioned_images(tmp_path / "images", first_seed=500)
    config = TrainConfig(
        epochs=1,
        batch_size=8,
        val_fraction=0.25,
        rerank_depth=4,
        warmup_steps=1,
        lr=3e-3,
        local_weight=1.0,
        scorer_epochs=2,
        fusion_grid=GRID,
    )
    torch.manual_seed(0)
    items = read_captions(folder / "captions.tsv")
    summary = train(AlignmentModel.initialize(small_config(tiny_bert_dir)), items, tmp_path / "model", config)
    candidates = summary["reranker_candidates"]
    assert [c["epoch"] for c in candidates] == [0, 1, 2]
    kept = summary["reranker_kept"]
    best = max(c["val_t2i_R@1"] for c in candidates)
    assert kept == next(c for c in candidates if c["val_t2i_R@1"] == best)
    assert summary["fusion_weight"] == kept["fusion_weight"]
    assert json.loads((tmp_path / "model" / "training.json").read_text())["reranker_kept"] == kept
    # the saved model re-ranks the validation split exactly as the kept candidate did
    model = AlignmentModel.from_pretrained(tmp_path / "model", device="cpu")
    assert model.config.fusion_weight == kept["fusion_weight"]
    _, val_items = split_validation(items, config.val_fraction, config.seed)
    images = load_images(val_items, model.config.backbone.image_size)
    bank = encode_captions(model.text, images.items, cache_states=False)
    result = evaluate(model, images.pixels, bank, config.rerank_depth)
    assert result["reranked"]["t2i"]["R@1"] == pytest.approx(kept["val_t2i_R@1"])


def test_train_with_local_weight_and_no_scorer_stage_keeps_the_alignment_term(tmp_path, tiny_bert_dir):
    """--scorer-epochs 0 with the alignment loss (and no attention layers): the re-ranker is the
    trained alignment term alone, chosen with its fusion weight on validation, and saved so."""
    folder = _captioned_images(tmp_path / "images", first_seed=700)
    config = TrainConfig(
        epochs=1,
        batch_size=8,
        val_fraction=0.25,
        rerank_depth=4,
        warmup_steps=1,
        lr=3e-3,
        local_weight=1.0,
        scorer_epochs=0,
        fusion_grid=GRID,
    )
    torch.manual_seed(0)
    items = read_captions(folder / "captions.tsv")
    no_layers = small_config(tiny_bert_dir, scorer=ScorerConfig(num_layers=0, num_heads=2, max_regions=16, dropout=0.0))
    summary = train(AlignmentModel.initialize(no_layers), items, tmp_path / "model", config)
    assert [c["epoch"] for c in summary["reranker_candidates"]] == [0]
    assert summary["reranker_kept"] == summary["reranker_candidates"][0]
    model = AlignmentModel.from_pretrained(tmp_path / "model", device="cpu")
    assert model.config.fusion_weight == summary["fusion_weight"] == summary["reranker_kept"]["fusion_weight"]
    assert len(model.scorer.layers) == 0
    assert torch.count_nonzero(model.scorer.head.weight) == 0 and torch.count_nonzero(model.scorer.head.bias) == 0
    # the scorer's logit is exactly its scaled alignment term (an independent recomputation)
    tokens, mask = torch.randn(3, 5, 32), torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    regions = torch.randn(3, 16, 32)
    with torch.inference_mode():
        logits = model.scorer(tokens, mask, regions)
    positioned = regions + model.scorer.region_position[:16]
    for c in range(3):
        t = tokens[c][mask[c]]
        cos = torch.nn.functional.normalize(t, dim=-1) @ torch.nn.functional.normalize(positioned[c], dim=-1).T
        expected = model.scorer.alignment_scale * cos.max(dim=1).values.mean()
        assert logits[c].item() == pytest.approx(expected.item(), abs=1e-4)
