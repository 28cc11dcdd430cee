"""Model directories written before config format 2 still load, as the same model, and indexes
made with the shipped models as they were still open with them.

tests/fixtures/model-format-1/NAME/config.json is data/NAME/config.json exactly as shipped up to
commit fef0449 (format 1: the labels inline, VGG16's layers on every backbone, a note in
`weights`, the attention settings of a scorer without attention layers). The weights file did not
change, so the directory as shipped then is that config beside today's model.safetensors.
Indexes recorded that directory's fingerprint; the shipped directory lists it in
legacy-fingerprints.txt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import make_photos
from imgsearch import Index
from imgsearch.ground.errors import ModelMismatch
from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.config import read_model_config
from imgsearch.model.image_encoder import ImageEncoder, resize_uint8
from imgsearch.model.model_files import (
    CONFIG_NAME,
    LABELS_NAME,
    WEIGHTS_NAME,
    answers_to_fingerprint,
    fingerprint,
    legacy_fingerprints,
)
from imgsearch.model.packaged import packaged_model_dir
from imgsearch.storage.manifest import Manifest

ROOT = Path(__file__).parents[1]
DATA = ROOT / "data"
FORMAT_1 = Path(__file__).parent / "fixtures" / "model-format-1"
SHIPPED = ["photo-model", "photo-model-fast", "demo-model"]
PACKAGED = {"photo-model": "photo", "photo-model-fast": "fast"}
QUERIES = ["a cat sitting on a sofa", "two dogs running on the beach"]
# Ranking settings changed since fef0449, on purpose (they are stored in the model and change no
# weight or vector): the photo model's zero-shot label score reads WordNet class texts with the
# softmax match (issue 20, bench/RESULTS.md).
RANKING_SINCE = {"photo-model": dict(zero_shot_weight=0.6, zero_shot_texts="wordnet", zero_shot_temperature=0.05)}


def format_1_dir(tmp_path: Path, name: str) -> Path:
    """The shipped model directory as it was: the format 1 config.json and the same weights (linked)."""
    directory = tmp_path / f"{name}-format-1"
    directory.mkdir()
    shutil.copyfile(FORMAT_1 / name / CONFIG_NAME, directory / CONFIG_NAME)
    (directory / WEIGHTS_NAME).symlink_to(DATA / name / WEIGHTS_NAME)
    return directory


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_model_is_the_model_it_was(name, tmp_path):
    old, new = format_1_dir(tmp_path, name), DATA / name
    assert "format_version" not in json.loads((old / CONFIG_NAME).read_text())
    assert json.loads((new / CONFIG_NAME).read_text())["format_version"] == 2
    before, now = read_model_config(old), read_model_config(new)
    # the same model to load; its provenance only gained the weights file's name and hash, and its
    # ranking settings changed only as RANKING_SINCE says
    assert dataclasses.replace(now, provenance=before.provenance) == dataclasses.replace(
        before, **RANKING_SINCE.get(name, {})
    )
    if before.provenance.backbone_weights is not None:
        assert now.provenance.backbone_weights.source == before.provenance.backbone_weights.source
        assert len(now.provenance.backbone_weights.sha256) == 64
    assert (LABELS_NAME in {p.name for p in new.iterdir()}) == bool(before.image_labels)
    # the fingerprint indexes recorded: sha256 of config.json then model.safetensors, as format 1 made it
    recorded = hashlib.sha256((old / CONFIG_NAME).read_bytes() + (old / WEIGHTS_NAME).read_bytes()).hexdigest()
    assert fingerprint(old) == recorded
    assert legacy_fingerprints(new) == {recorded}
    assert answers_to_fingerprint(new, recorded) and fingerprint(new) != recorded
    others = [DATA / other for other in SHIPPED if other != name]
    assert not any(answers_to_fingerprint(other, recorded) for other in others)


@pytest.mark.parametrize("name", SHIPPED)
def test_a_format_1_directory_loads_and_gives_the_same_outputs(name, tmp_path):
    old_dir = format_1_dir(tmp_path, name)
    old = AlignmentModel.from_pretrained(old_dir, device="cpu")
    new = AlignmentModel.from_pretrained(DATA / name, device="cpu")
    image = Image.open(DATA / "photos" / "cat.jpg").convert("RGB")
    pixels = resize_uint8(image, new.image.image_size)[None]  # (1, 3, S, S) uint8
    outputs = []
    for model in (old, new):
        with torch.inference_mode():
            embedding = model.image(model.image.normalize(pixels))
            text = model.text.encode(QUERIES)
            logits = model.scorer.score_candidates(text.tokens[0], text.mask[0], embedding.regions)  # (1,)
        outputs.append(
            [
                embedding.regions,
                embedding.global_,
                text.tokens,
                text.global_,
                logits,
                *([embedding.class_probs] if embedding.class_probs is not None else []),
            ]
        )
    for a, b in zip(*outputs):
        assert torch.equal(a, b)
    assert old.image.labels == new.image.labels
    assert ImageEncoder.from_pretrained(old_dir, device="cpu").labels == new.image.labels  # the indexer's reader


@pytest.mark.parametrize("name", SHIPPED)
def test_an_index_made_with_the_model_as_shipped_before_opens_with_it_now(name, tmp_path):
    photos = make_photos(tmp_path / "photos", range(3))
    old = format_1_dir(tmp_path, name)
    with Index.create(tmp_path / "ix", old, device="cpu") as index:
        index.add([photos], workers=0)
        before = [r.to_dict() for r in index.search("a red shape", k=3)]
    # the oracle: the same photos indexed now, with the shipped directory (same weights, today's ranking)
    with Index.create(tmp_path / "fresh", DATA / name, device="cpu") as index:
        index.add([photos], workers=0)
        expected = [r.to_dict() for r in index.search("a red shape", k=3)]
    if name not in RANKING_SINCE:  # relevance reads calibration.json, which format 1 directories lack
        assert [{**r, "relevance": None} for r in expected] == before
    manifest = Manifest.read(tmp_path / "ix")
    assert manifest.model.fingerprint == fingerprint(old)
    # as the earlier release recorded it: the shipped directory's path, and that model's fingerprint
    shutil.rmtree(old)
    dataclasses.replace(manifest, model=dataclasses.replace(manifest.model, path=str(DATA / name))).write(
        tmp_path / "ix"
    )
    with Index.open(tmp_path / "ix", device="cpu") as index:
        assert [r.to_dict() for r in index.search("a red shape", k=3)] == expected
        assert index.model_dir == DATA / name
    with Index.open(tmp_path / "ix", DATA / name, device="cpu") as index:  # named explicitly
        assert [r.to_dict() for r in index.search("a red shape", k=3)] == expected
    with pytest.raises(ModelMismatch):  # another model is still refused
        Index.open(tmp_path / "ix", DATA / next(other for other in SHIPPED if other != name), device="cpu")
    if name in PACKAGED:  # a packaged model that moved: found among the packaged ones by its earlier fingerprint
        dataclasses.replace(manifest, model=dataclasses.replace(manifest.model, path=str(tmp_path / "gone"))).write(
            tmp_path / "ix"
        )
        with Index.open(tmp_path / "ix", device="cpu") as index:
            assert [r.to_dict() for r in index.search("a red shape", k=3)] == expected
            assert index.model_dir == packaged_model_dir(PACKAGED[name])
