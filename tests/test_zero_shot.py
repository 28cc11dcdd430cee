"""The zero-shot ImageNet term of the first stage (model/zero_shot.py), against naive oracles.

zero_shot(query, image) = sum over the image's stored top classes of p(class) * cos(s(query),
s(class name)), s() the text encoder's mean-pooled, L2-normalised BERT state. The oracle
encodes every text alone (no padding, no batching) and reads the stored global vectors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_photos
from imgsearch import Index
from imgsearch.model.alignment import AlignmentModel

WEIGHT = 0.7
QUERIES = ["class 3", "a picture of class 17 and class 250", "something red"]


@pytest.fixture(scope="module")
def zero_shot_model_dir(tmp_path_factory, mobilenet_model_dir):
    model = AlignmentModel.from_pretrained(mobilenet_model_dir, device="cpu")
    model.config = dataclasses.replace(model.config, zero_shot_weight=WEIGHT)
    directory = tmp_path_factory.mktemp("zero-shot-model")
    model.save_pretrained(directory)
    return directory


def _sentence(model: AlignmentModel, text: str) -> np.ndarray:
    """One text alone through the tokenizer and BERT: mean of its states, L2-normalised."""
    ids = model.text.tokenizer(text, truncation=True, max_length=model.config.text.max_length, return_tensors="pt")
    with torch.inference_mode():
        states = model.text.bert(input_ids=ids["input_ids"]).last_hidden_state[0]  # (T, h)
    vector = states.mean(0).numpy()
    return vector / np.linalg.norm(vector)


@pytest.mark.parametrize("rerank", [False, True])
def test_first_stage_is_cosine_plus_weighted_zero_shot(tmp_path, zero_shot_model_dir, rerank):
    photos = make_photos(tmp_path / "photos", range(12))
    with Index.create(tmp_path / "index", zero_shot_model_dir, device="cpu") as index:
        index.add([photos])
        model = index.model
        ids, stored = index.store.global_vectors()  # (N,), (N, d)
        vector_of = {int(i): stored[n] for n, i in enumerate(ids)}
        for query in QUERIES:
            results = index.search(query, k=12, candidates=12, rerank=rerank)
            assert len(results) == 12
            with torch.inference_mode():
                query_vector = model.text.encode([query]).global_[0].numpy()  # (d,)
            sentence = _sentence(model, query)
            expected_first = {}
            for r in results:
                assert r.labels, "every image of a classifier model has labels"
                zero_shot = sum(
                    label["score"] * float(_sentence(model, label["label"]) @ sentence) for label in r.labels
                )
                assert r.zero_shot_score == pytest.approx(zero_shot, abs=1e-4)
                cosine = float(query_vector @ vector_of[r.id])
                expected_first[r.id] = cosine + WEIGHT * zero_shot
                assert r.first_stage_score == pytest.approx(expected_first[r.id], abs=1e-4)
            # first-stage ranks follow the fused first-stage score (brute force over all images)
            by_first = [r.id for r in sorted(results, key=lambda r: -expected_first[r.id])]
            assert [r.id for r in sorted(results, key=lambda r: r.first_stage_rank)] == by_first
            if not rerank:
                assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
                assert all(r.score == r.first_stage_score for r in results)
            else:
                fusion = model.config.fusion_weight
                for r in results:
                    assert r.score == pytest.approx(r.rerank_score + fusion * r.first_stage_score, abs=1e-3)


def test_zero_shot_is_off_for_models_without_the_weight(tmp_path, mobilenet_model_dir):
    photos = make_photos(tmp_path / "photos", range(4))
    with Index.create(tmp_path / "index", mobilenet_model_dir, device="cpu") as index:
        index.add([photos])
        results = index.search("class 3", k=4, rerank=False)
    assert all(r.zero_shot_score is None for r in results)


def test_eval_first_stage_matches_search_with_zero_shot(tmp_path, mobilenet_model_dir):
    """`imgsearch eval`'s first stage (training/evaluate.py) scores as search() does: recall
    computed from search results over the same images equals evaluate()'s. A large weight makes
    the zero-shot term decide, so leaving it out of either would change the numbers."""
    from imgsearch.training.captions import CaptionedImage
    from imgsearch.training.data import encode_captions, load_images
    from imgsearch.training.evaluate import evaluate

    model = AlignmentModel.from_pretrained(mobilenet_model_dir, device="cpu")
    model.config = dataclasses.replace(model.config, zero_shot_weight=50.0)
    model.save_pretrained(tmp_path / "model")
    photos = make_photos(tmp_path / "photos", range(10))
    captions = {f"img_{i:03d}.png": [f"class {i * 7} photo", f"a picture of class {i * 31 % 1000}"] for i in range(10)}
    items = [CaptionedImage(photos / name, texts) for name, texts in captions.items()]
    images = load_images(items, model.config.backbone.image_size)
    bank = encode_captions(model.text, images.items, cache_states=False)
    result = evaluate(model, images.pixels, bank, depth=4)
    model.config = dataclasses.replace(model.config, zero_shot_weight=0.0)
    without = evaluate(model, images.pixels, bank, depth=4)
    assert without["first_stage"]["t2i"] != result["first_stage"]["t2i"]  # the term matters here
    with Index.create(tmp_path / "index", tmp_path / "model", device="cpu") as index:
        index.add([photos])
        ranks = []
        for name, texts in captions.items():
            for text in texts:
                order = [r.path for r in index.search(text, k=10, candidates=10, rerank=False)]
                ranks.append(order.index(str(photos / name)))
    ranks = np.array(ranks)
    for k in (1, 5, 10):
        assert result["first_stage"]["t2i"][f"R@{k}"] == pytest.approx(100.0 * np.mean(ranks < k))


def test_class_name_vectors_are_cached_per_text_encoder_and_equal_a_fresh_encoding(
    tmp_path, zero_shot_model_dir, monkeypatch
):
    import imgsearch.model.zero_shot as zero_shot

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    encoded = []
    real = zero_shot.sentence_vectors
    monkeypatch.setattr(
        zero_shot, "sentence_vectors", lambda model, texts: encoded.append(len(texts)) or real(model, texts)
    )

    first = zero_shot.class_name_vectors(AlignmentModel.from_pretrained(zero_shot_model_dir, device="cpu"))
    assert len(encoded) == 1 and len(list((tmp_path / "cache" / "imgsearch").glob("class-names-*.npz"))) == 1
    model = AlignmentModel.from_pretrained(zero_shot_model_dir, device="cpu")  # as the next process would
    second = zero_shot.class_name_vectors(model)
    assert len(encoded) == 1  # read from the cache, not encoded again
    fresh = real(model, sorted(second))  # the oracle: the names encoded now
    assert sorted(first) == sorted(second)
    for i, name in enumerate(sorted(second)):
        np.testing.assert_array_equal(second[name], fresh[i])

    # Another text encoder (one weight changed): another cache entry, encoded anew.
    other = AlignmentModel.from_pretrained(zero_shot_model_dir, device="cpu")
    with torch.no_grad():
        other.text.bert.embeddings.word_embeddings.weight[100, 0] += 1.0
    zero_shot.class_name_vectors(other)
    assert len(encoded) == 2 and len(list((tmp_path / "cache" / "imgsearch").glob("class-names-*.npz"))) == 2


def test_class_name_vectors_are_kept_beside_the_model_not_on_it(tmp_path, zero_shot_model_dir, monkeypatch):
    import gc
    import weakref

    import imgsearch.model.zero_shot as zero_shot

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    encoded = []
    real = zero_shot.sentence_vectors
    monkeypatch.setattr(
        zero_shot, "sentence_vectors", lambda model, texts: encoded.append(len(texts)) or real(model, texts)
    )
    kept = len(zero_shot._NAME_VECTORS)  # other tests' models, still alive
    model = AlignmentModel.from_pretrained(zero_shot_model_dir, device="cpu")
    attributes = set(vars(model))
    first = zero_shot.class_name_vectors(model)
    assert zero_shot.class_name_vectors(model) is first  # in memory: the cache file is not read again
    assert set(vars(model)) == attributes  # nothing set on the caller's model
    assert len(encoded) == 1
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None  # the memo does not keep the model alive
    assert len(zero_shot._NAME_VECTORS) <= kept  # and its entry went with it


def test_an_unreadable_class_name_cache_is_encoded_again(tmp_path, zero_shot_model_dir, monkeypatch):
    import imgsearch.model.zero_shot as zero_shot

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    want = zero_shot.class_name_vectors(AlignmentModel.from_pretrained(zero_shot_model_dir, device="cpu"))
    (cache_file,) = (tmp_path / "cache" / "imgsearch").glob("class-names-*.npz")
    cache_file.write_bytes(b"not an npz file")
    got = zero_shot.class_name_vectors(AlignmentModel.from_pretrained(zero_shot_model_dir, device="cpu"))
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert cache_file.read_bytes()[:2] == b"PK"  # written again, whole


def test_the_querys_sentence_vector_is_its_own_bert_run_mean_pooled(zero_shot_model_dir):
    # search reuses the text encoder's BERT run for the label score instead of running BERT again
    from imgsearch.model.zero_shot import sentence_vectors

    model = AlignmentModel.from_pretrained(zero_shot_model_dir, device="cpu")
    texts = ["a dog running in the water", "a hot dog"]
    with torch.inference_mode():
        encoded = model.text.encode(texts)
    np.testing.assert_allclose(sentence_vectors(model, texts), encoded.sentence.float().numpy(), rtol=0, atol=1e-6)


# ---- class texts from WordNet and the softmax match (zero_shot_texts, zero_shot_temperature) ----

TEMPERATURE = 0.05
TEXTS_FILE = Path(__file__).parents[1] / "model" / "imagenet_class_texts.tsv"
DATA = Path(__file__).parents[1] / "data"
FAST_LABELS = (DATA / "photo-model-fast" / "labels.txt").read_text(encoding="utf-8").splitlines()


def _texts_table() -> dict[str, str]:
    table = {}
    for line in TEXTS_FILE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, text = line.split("\t")
            table[name] = text
    return table


@pytest.fixture(scope="module")
def wordnet_model_dir(tmp_path_factory, mobilenet_model_dir):
    """The 1,001-class test model with ImageNet's real class names (the fast model's, "background"
    first), WordNet class texts and the softmax match."""
    model = AlignmentModel.from_pretrained(mobilenet_model_dir, device="cpu")
    model.config = dataclasses.replace(
        model.config,
        zero_shot_weight=WEIGHT,
        image_labels=tuple(FAST_LABELS),
        zero_shot_texts="wordnet",
        zero_shot_temperature=TEMPERATURE,
    )
    directory = tmp_path_factory.mktemp("wordnet-model")
    model.save_pretrained(directory)
    return directory


def test_every_imagenet_class_has_a_wordnet_text():
    table = _texts_table()
    photo_labels = (DATA / "photo-model" / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert set(photo_labels) == set(table)
    assert set(FAST_LABELS) - set(table) == {"background"}
    assert table["macaw"] == "macaw, parrot"
    assert (
        table[
            "dragonfly, darning needle, devil's darning needle, sewing needle, snake feeder, snake doctor, "
            "mosquito hawk, skeeter hawk"
        ]
        == "dragonfly, odonate"
    )
    assert table["screw"] == "screw, inclined plane"  # a machine, not the prison guard (WordNet's first sense)


def test_softmax_match_over_wordnet_texts_against_a_naive_loop(tmp_path, wordnet_model_dir):
    """zero_shot = sum over stored labels of p * softmax over all classes (cos(query, text) / T),
    every text encoded alone; a class's text is its WordNet line, else its first name."""
    table = _texts_table()
    photos = make_photos(tmp_path / "photos", range(6))
    with Index.create(tmp_path / "index", wordnet_model_dir, device="cpu") as index:
        index.add([photos])
        model = index.model
        names = sorted(set(FAST_LABELS))
        text_vectors = np.stack([_sentence(model, table.get(name, name.split(",")[0].strip())) for name in names])
        for query in ["a parrot", "a dragonfly on a leaf"]:
            cosines = text_vectors @ _sentence(model, query)  # (classes,)
            softmax = np.exp((cosines - cosines.max()) / TEMPERATURE)
            match = dict(zip(names, softmax / softmax.sum()))
            results = index.search(query, k=6, candidates=6, rerank=False)
            assert len(results) == 6
            for r in results:
                expected = sum(label["score"] * match[label["label"]] for label in r.labels)
                assert r.zero_shot_score == pytest.approx(expected, abs=1e-5)


def test_the_zero_shot_settings_round_trip_and_old_configs_read_the_same(mobilenet_model_dir):
    from imgsearch.ground.errors import ModelConfigError

    config = AlignmentModel.from_pretrained(mobilenet_model_dir, device="cpu").config
    assert "zero_shot" not in config.to_dict()["rerank"]  # a config without them is written as before
    changed = dataclasses.replace(config, zero_shot_texts="wordnet", zero_shot_temperature=TEMPERATURE)
    assert changed.to_dict()["rerank"]["zero_shot"] == {"class_texts": "wordnet", "temperature": TEMPERATURE}
    written = changed.to_dict()
    written["image"]["labels"] = list(changed.image_labels)  # as read_model_config gives labels.txt to from_dict
    assert type(config).from_dict(written) == changed
    with pytest.raises(ModelConfigError, match="class_texts"):
        dataclasses.replace(config, zero_shot_texts="glove")
    with pytest.raises(ModelConfigError, match="temperature"):
        dataclasses.replace(config, zero_shot_temperature=-1.0)
