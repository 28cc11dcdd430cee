"""The numpy query runtime (model/numpy_query.py) against the torch modules it mirrors: the
text encoder (tokens, query vector, sentence vector), the scorer (with and without attention
layers) and the hubness bank, on the packaged photo model and on a small random model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import make_model_dir, small_config
from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.config import HubnessConfig
from imgsearch.model.numpy_query import NumpyQueryModel, RuntimeUnsupported
from imgsearch.model.packaged import packaged_model_dir

TEXTS = [
    "a parrot",
    "A dog runs on the beach, with a red ball!",
    "café naïve 東京 — ünïcödé",
    "children playing in a fountain " * 12,  # longer than max_length: truncated
    "x",
]


def torch_encoding(model: AlignmentModel, text: str):
    with torch.inference_mode():
        return model.text.encode([text])


def assert_same_encoding(numpy_model: NumpyQueryModel, torch_model: AlignmentModel, text: str) -> None:
    got, expected = numpy_model.text.encode(text), torch_encoding(torch_model, text)
    assert got.truncated == expected.truncated[0]
    assert got.tokens.shape == tuple(expected.tokens.shape[1:]) and got.mask.all()
    np.testing.assert_allclose(got.tokens, expected.tokens[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(got.global_, expected.global_[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(got.sentence, expected.sentence[0].numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def photo_models():
    directory = packaged_model_dir("photo")
    return NumpyQueryModel.from_pretrained(directory), AlignmentModel.from_pretrained(directory, device="cpu")


@pytest.mark.parametrize("text", TEXTS)
def test_text_encoder_equals_torch_on_the_photo_model(photo_models, text):
    assert_same_encoding(*photo_models, text)


def test_long_text_is_truncated_like_transformers(photo_models):
    numpy_model, torch_model = photo_models
    text = TEXTS[3]
    batch, truncated = torch_model.text.tokenize([text])
    assert truncated == [True]
    ids = batch["input_ids"][0].tolist()
    assert len(ids) == torch_model.config.text.max_length
    full = numpy_model.text.token_ids(text)
    assert full[: len(ids) - 1] + full[-1:] == ids  # [CLS] first tokens ... [SEP]


def test_scorer_and_hubness_equal_torch_on_the_photo_model(photo_models):
    numpy_model, torch_model = photo_models
    assert torch_model.config.scorer.num_layers == 0 and torch_model.config.hubness.bank_size
    query = numpy_model.text.encode("a dog on the beach")
    regions = np.tanh(np.random.default_rng(0).standard_normal((30, 49, 256))).astype(np.float16)
    with torch.inference_mode():
        reference = torch_model.scorer.score_candidates(
            torch.from_numpy(query.tokens), torch.from_numpy(query.mask), torch.from_numpy(regions).float()
        )
        vectors = torch.nn.functional.normalize(torch.from_numpy(regions[:, 0]).float(), dim=-1)
        hubs = torch_model.hubness.scores(vectors)
    np.testing.assert_allclose(
        numpy_model.scorer.score(query.tokens, query.mask, regions), reference.numpy(), atol=1e-4
    )
    assert float(reference.std()) > 1e-2  # the candidates really differ
    np.testing.assert_allclose(numpy_model.hub_scores(vectors.numpy()), hubs.numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def small_models(tmp_path_factory, tiny_bert_dir):
    """A random model with an attention layer in its scorer, the attention text pool and a
    hubness bank: the parts the photo model does not have."""
    config = small_config(tiny_bert_dir, hubness=HubnessConfig(weight=0.5, k=3, bank_size=20))
    config = dataclasses.replace(config, text=dataclasses.replace(config.text, pool="attention"))
    directory = make_model_dir(tmp_path_factory.mktemp("small"), config)
    torch_model = AlignmentModel.from_pretrained(directory, device="cpu")
    with torch.no_grad():  # trained-looking scales: fresh heads are near zero
        for parameter in [*torch_model.scorer.parameters(), *torch_model.text.pool_score.parameters()]:
            parameter.add_(0.2 * torch.randn_like(parameter))
        torch_model.hubness.set_bank(torch.nn.functional.normalize(torch.randn(20, 32), dim=-1))
    torch_model.save_pretrained(directory)
    return NumpyQueryModel.from_pretrained(directory), AlignmentModel.from_pretrained(directory, device="cpu")


@pytest.mark.parametrize("text", TEXTS)
def test_text_encoder_equals_torch_with_the_attention_pool(small_models, text):
    assert_same_encoding(*small_models, text)


@pytest.mark.parametrize("count", [1, 7])
def test_scorer_with_attention_layers_equals_torch(small_models, count):
    numpy_model, torch_model = small_models
    assert torch_model.config.scorer.num_layers == 1
    query = numpy_model.text.encode("a red square above a blue circle")
    regions = np.tanh(np.random.default_rng(count).standard_normal((count, 16, 32))).astype(np.float16)
    with torch.inference_mode():
        reference = torch_model.scorer.score_candidates(
            torch.from_numpy(query.tokens), torch.from_numpy(query.mask), torch.from_numpy(regions).float()
        )
    got = numpy_model.scorer.score(query.tokens, query.mask, regions)
    assert got.shape == (count,) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference.numpy(), atol=1e-4)


def test_hub_scores_equal_torch(small_models):
    numpy_model, torch_model = small_models
    vectors = torch.nn.functional.normalize(torch.randn(9, 32), dim=-1)
    np.testing.assert_allclose(
        numpy_model.hub_scores(vectors.numpy()), torch_model.hubness.scores(vectors).numpy(), atol=1e-5
    )
    assert numpy_model.hub_scores(np.zeros((0, 32), np.float32)).shape == (0,)


def test_what_the_runtime_cannot_read_is_refused(tmp_path, model_dir):
    """A text encoder named by hub id (not a local directory) cannot run here: the caller
    loads the torch model instead of guessing."""
    import json
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["text"]["name_or_path"] = "bert-base-uncased"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeUnsupported, match="not a local directory"):
        NumpyQueryModel.from_pretrained(copy)


def test_class_texts_encode_the_same_and_share_the_cache(small_models, photo_models):
    """The zero-shot label score's class vectors: the same vectors from both runtimes (a padded
    batch here), under the same cache key, so one runtime reads what the other wrote."""
    from imgsearch.model import zero_shot

    for numpy_model, torch_model in (small_models, photo_models):
        texts = ["macaw, parrot", "dragonfly, odonate", "a much longer class text with several words", "x"]
        np.testing.assert_allclose(
            zero_shot.sentence_vectors(numpy_model, texts), zero_shot.sentence_vectors(torch_model, texts), atol=1e-5
        )
        assert zero_shot._cache_key(numpy_model, texts) == zero_shot._cache_key(torch_model, texts)
