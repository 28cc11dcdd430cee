"""`imgsearch eval` ranks text->image as `Index.search` does (issue 20): every fused score
(cosine, zero-shot labels, hubness correction) and the re-ranker, on one small gallery.

The oracle is the index itself: each caption is searched, and the rank of its image in the
results must equal evaluation's rank for that caption, with re-ranking off and on."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import make_photos
from imgsearch import Index
from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.hubness import HubnessConfig, HubnessCorrection
from imgsearch.training.captions import CaptionedImage
from imgsearch.training.data import encode_captions, load_images
from imgsearch.training.evaluate import embed_images, evaluate, search_t2i_ranks

COUNT = 10


@pytest.fixture(scope="module")
def fused_model_dir(tmp_path_factory, mobilenet_model_dir):
    """The random mobilenet model with every part of the ranking switched on, each weighted so
    that it changes some ranks: zero-shot labels, a hubness bank, the re-ranker with fusion."""
    model = AlignmentModel.from_pretrained(mobilenet_model_dir, device="cpu")
    hubness = HubnessConfig(weight=3.0, k=4, bank_size=40)
    model.config = dataclasses.replace(model.config, zero_shot_weight=5.0, fusion_weight=2.0, hubness=hubness)
    model.hubness = HubnessCorrection(hubness, model.config.embed_dim)
    torch.manual_seed(1)
    model.hubness.set_bank(torch.nn.functional.normalize(torch.randn(40, model.config.embed_dim), dim=-1))
    directory = tmp_path_factory.mktemp("fused-model")
    model.save_pretrained(directory)
    return directory


def _captions() -> dict[str, list[str]]:
    return {
        f"img_{i:03d}.png": [f"class {i * 7} photo", f"a picture of class {i * 31 % 1000} and red"]
        for i in range(COUNT)
    }


def test_a_saved_hubness_bank_loads_back(fused_model_dir):
    model = AlignmentModel.from_pretrained(fused_model_dir, device="cpu")
    assert model.config.hubness == HubnessConfig(weight=3.0, k=4, bank_size=40)
    assert model.hubness.bank.shape == (40, model.config.embed_dim)
    vectors = torch.nn.functional.normalize(torch.randn(5, model.config.embed_dim), dim=-1)
    brute = np.array([sorted((model.hubness.bank.float() @ v).tolist())[-4:] for v in vectors]).mean(1)
    assert model.hubness.scores(vectors).numpy() == pytest.approx(brute, abs=1e-5)


@pytest.mark.parametrize("candidates", [COUNT, 4])
def test_eval_ranks_every_caption_as_search_does(tmp_path, fused_model_dir, candidates):
    photos = make_photos(tmp_path / "photos", range(COUNT))
    captions = _captions()
    model = AlignmentModel.from_pretrained(fused_model_dir, device="cpu")
    items = [CaptionedImage(photos / name, texts) for name, texts in captions.items()]
    images = load_images(items, model.config.backbone.image_size)
    bank = encode_captions(model.text, images.items, cache_states=False)
    image_global, regions, class_probs = embed_images(model, images.pixels, with_class_probs=True)
    first, final = search_t2i_ranks(model, image_global, regions, class_probs, bank.captions, bank.image_of, candidates)
    assert not np.array_equal(first, final), "the re-ranker changes some ranks here"
    with Index.create(tmp_path / "index", fused_model_dir, device="cpu") as index:
        index.add([photos])
        for expected, rerank in ((first, False), (final, True)):
            ranks = []
            for name, texts in captions.items():
                for text in texts:
                    # pages of `candidates` results: search re-ranks the top max(k, candidates)
                    order = [
                        r.path
                        for offset in range(0, COUNT, candidates)
                        for r in index.search(text, k=candidates, candidates=candidates, rerank=rerank, offset=offset)
                    ]
                    ranks.append(order.index(str(photos / name)))
            assert np.array_equal(np.array(ranks), expected), rerank
    result = evaluate(model, images.pixels, bank, depth=4, candidates=candidates)
    for k in (1, 5, 10):
        assert result["first_stage"]["t2i"][f"R@{k}"] == pytest.approx(100.0 * np.mean(first < k))
        assert result["reranked"]["t2i"][f"R@{k}"] == pytest.approx(100.0 * np.mean(final < k))


def test_each_fused_part_changes_the_ranks(tmp_path, fused_model_dir):
    """Leaving out any part of the ranking changes evaluation's ranks on this gallery, so the
    test above would catch search and evaluation disagreeing about it."""
    photos = make_photos(tmp_path / "photos", range(COUNT))
    model = AlignmentModel.from_pretrained(fused_model_dir, device="cpu")
    items = [CaptionedImage(photos / name, texts) for name, texts in _captions().items()]
    images = load_images(items, model.config.backbone.image_size)
    bank = encode_captions(model.text, images.items, cache_states=False)
    image_global, regions, class_probs = embed_images(model, images.pixels, with_class_probs=True)

    def ranks() -> tuple[np.ndarray, np.ndarray]:
        return search_t2i_ranks(model, image_global, regions, class_probs, bank.captions, bank.image_of, COUNT)

    full = ranks()
    base = model.config
    for change in ({"zero_shot_weight": 0.0}, {"hubness": dataclasses.replace(base.hubness, weight=0.0)}):
        model.config = dataclasses.replace(base, **change)
        assert not np.array_equal(ranks()[0], full[0]), change
    model.config = dataclasses.replace(base, fusion_weight=1000.0)  # the re-ranker drowned out
    assert np.array_equal(ranks()[1], full[0])
