"""Alignment model directories: save_pretrained / from_pretrained and their errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_model_dir, small_config
from imgsearch.ground.errors import ModelConfigError, ModelNotFound, WeightsMissing
from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.checkpoint import fingerprint, read_tensors
from imgsearch.model.image_encoder import ImageEncoder
from imgsearch.model.model_files import CONFIG_NAME, WEIGHTS_NAME

QUERIES = ["a red circle", "two blue squares next to a green triangle, on a white background"]


def copy_model(model_dir, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(model_dir, target)
    return target


def edit_config(directory, edit) -> None:
    path = directory / CONFIG_NAME
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def edit_tensors(directory, edit) -> None:
    path = directory / WEIGHTS_NAME
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def outputs(model: AlignmentModel):
    """Image embeddings, text embeddings and scorer logits of fixed inputs."""
    size = model.image.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        image = model.image(pixels)
        text = model.text.encode(QUERIES)
        logits = model.scorer.score_candidates(text.tokens[1], text.mask[1], image.regions)  # (3,)
    return image.regions, image.global_, text.tokens, text.global_, text.mask, logits


def test_from_pretrained_loads_in_eval_mode_on_cpu(model_dir):
    model = AlignmentModel.from_pretrained(model_dir, device="cpu")
    assert not model.training
    assert all(not m.training for m in model.modules())
    assert model.device == torch.device("cpu")


def test_save_and_load_round_trip_is_exact(model_dir, tmp_path):
    original = AlignmentModel.from_pretrained(model_dir, device="cpu")
    original.save_pretrained(tmp_path / "saved")
    reloaded = AlignmentModel.from_pretrained(tmp_path / "saved", device="cpu")

    assert reloaded.config == original.config
    before, after = outputs(original), outputs(reloaded)
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    assert before[-1].abs().sum() > 0
    # Same config and tensors --> same identity for the index manifest.
    assert fingerprint(tmp_path / "saved") == fingerprint(model_dir)


def test_round_trip_keeps_every_trained_tensor(model_dir, tmp_path):
    original = AlignmentModel.from_pretrained(model_dir, device="cpu")
    # Change the trained parts, as training would; the copy must carry the change.
    with torch.no_grad():
        original.scorer.head.bias.add_(1.0)
        original.image.backbone.features[0].weight.mul_(2.0)
        original.text.global_head.linear.weight.mul_(-1.0)
    original.save_pretrained(tmp_path / "trained")
    reloaded = AlignmentModel.from_pretrained(tmp_path / "trained", device="cpu")
    saved_keys = set(read_tensors(tmp_path / "trained"))
    for key, value in original.state_dict().items():
        if key.startswith("text.bert."):
            assert key not in saved_keys  # carries_weights is False: BERT comes from name_or_path
            continue
        assert key in saved_keys
        assert torch.equal(value, reloaded.state_dict()[key]), key


def test_override_replaces_config_field(model_dir):
    model = AlignmentModel.from_pretrained(model_dir, device="cpu", fusion_weight=0.5)
    assert model.config.fusion_weight == 0.5
    assert AlignmentModel.from_pretrained(model_dir, device="cpu").config.fusion_weight == 0.0


def test_unknown_override_raises_type_error(model_dir):
    with pytest.raises(TypeError, match="fusion_wieght"):
        AlignmentModel.from_pretrained(model_dir, device="cpu", fusion_wieght=0.5)


@pytest.mark.parametrize("missing", [WEIGHTS_NAME, CONFIG_NAME])
def test_incomplete_model_directory_raises_model_not_found(model_dir, tmp_path, missing):
    broken = copy_model(model_dir, tmp_path)
    (broken / missing).unlink()
    with pytest.raises(ModelNotFound, match=missing):
        AlignmentModel.from_pretrained(broken, device="cpu")
    with pytest.raises(ModelNotFound):
        ImageEncoder.from_pretrained(broken, device="cpu")


def test_nonexistent_model_directory_raises_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound):
        AlignmentModel.from_pretrained(tmp_path / "nowhere", device="cpu")


def test_other_json_config_is_refused(model_dir, tmp_path):
    broken = copy_model(model_dir, tmp_path)
    edit_config(broken, lambda c: c.update(format="something-else"))
    with pytest.raises(ModelConfigError, match="format"):
        AlignmentModel.from_pretrained(broken, device="cpu")


def test_unknown_config_field_is_a_config_error(model_dir, tmp_path):
    broken = copy_model(model_dir, tmp_path)
    edit_config(broken, lambda c: c["scorer"].update(num_layerz=3))
    with pytest.raises(ModelConfigError, match="num_layerz"):
        AlignmentModel.from_pretrained(broken, device="cpu")


def test_text_encoder_path_that_does_not_exist_raises_weights_missing(model_dir, tmp_path):
    broken = copy_model(model_dir, tmp_path)
    missing = tmp_path / "moved-away-bert"
    edit_config(broken, lambda c: c["text"].update(name_or_path=str(missing)))
    with pytest.raises(WeightsMissing, match="moved-away-bert"):
        AlignmentModel.from_pretrained(broken, device="cpu")
    # The indexer needs only the image half, which does not depend on the text encoder.
    ImageEncoder.from_pretrained(broken, device="cpu")


def test_text_encoder_path_with_tilde_is_expanded(model_dir, tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tiny_bert_dir.parent))
    moved = copy_model(model_dir, tmp_path)
    edit_config(moved, lambda c: c["text"].update(name_or_path=f"~/{tiny_bert_dir.name}"))
    model = AlignmentModel.from_pretrained(moved, device="cpu")
    reference = AlignmentModel.from_pretrained(model_dir, device="cpu")
    with torch.inference_mode():
        assert torch.equal(model.text.encode(QUERIES).global_, reference.text.encode(QUERIES).global_)


def test_image_encoder_alone_matches_alignment_models_image_half(model_dir):
    full = AlignmentModel.from_pretrained(model_dir, device="cpu")
    image = ImageEncoder.from_pretrained(model_dir, device="cpu")

    assert not image.training
    assert image.state_dict().keys() == full.image.state_dict().keys()
    for key, value in image.state_dict().items():
        assert torch.equal(value, full.image.state_dict()[key]), key
    pixels = torch.randn(2, 3, image.image_size, image.image_size)
    with torch.inference_mode():
        a, b = image(pixels), full.image(pixels)
    assert torch.equal(a.regions, b.regions) and torch.equal(a.global_, b.global_)
    assert a.regions.shape == (2, image.num_regions, full.config.embed_dim)
    assert torch.allclose(a.global_.norm(dim=-1), torch.ones(2), atol=1e-5)  # L2-normalised


def test_image_encoder_reads_only_image_tensors(model_dir, tmp_path):
    # Scorer and text tensors are not the indexer's business: breaking them must not stop it.
    partial = copy_model(model_dir, tmp_path)
    edit_tensors(partial, lambda t: [t.pop(k) for k in list(t) if not k.startswith("image.")])
    ImageEncoder.from_pretrained(partial, device="cpu")
    with pytest.raises(ModelConfigError):
        AlignmentModel.from_pretrained(partial, device="cpu")


@pytest.mark.parametrize(
    "removed",
    [
        "scorer.head.weight",
        "text.token_head.linear.bias",
        "image.global_head.linear.weight",
        "image.backbone.features.0.weight",
    ],
)
def test_checkpoint_with_a_removed_tensor_raises_model_config_error(model_dir, tmp_path, removed):
    broken = copy_model(model_dir, tmp_path)
    edit_tensors(broken, lambda t: t.pop(removed))
    with pytest.raises(ModelConfigError, match="missing"):
        AlignmentModel.from_pretrained(broken, device="cpu")
    if removed.startswith("image."):
        with pytest.raises(ModelConfigError, match="missing"):
            ImageEncoder.from_pretrained(broken, device="cpu")


def test_checkpoint_without_any_backbone_tensor_is_refused_for_small_vgg(model_dir, tmp_path):
    # A "vgg" backbone has no pretrained download; its weights must be in the checkpoint.
    broken = copy_model(model_dir, tmp_path)
    edit_tensors(broken, lambda t: [t.pop(k) for k in list(t) if k.startswith("image.backbone.")])
    with pytest.raises(ModelConfigError, match="backbone"):
        ImageEncoder.from_pretrained(broken, device="cpu")


def test_checkpoint_with_an_extra_tensor_raises_model_config_error(model_dir, tmp_path):
    broken = copy_model(model_dir, tmp_path)
    edit_tensors(broken, lambda t: t.update({"scorer.extra.weight": torch.zeros(2)}))
    with pytest.raises(ModelConfigError, match="unexpected"):
        AlignmentModel.from_pretrained(broken, device="cpu")


def test_checkpoint_with_a_wrong_shape_is_refused(model_dir, tmp_path):
    broken = copy_model(model_dir, tmp_path)
    edit_tensors(broken, lambda t: t.update({"scorer.head.weight": torch.zeros(1, 7)}))
    with pytest.raises((ModelConfigError, RuntimeError)):
        AlignmentModel.from_pretrained(broken, device="cpu")


def test_models_with_different_seeds_differ(tiny_bert_dir, model_dir, tmp_path):
    other = make_model_dir(tmp_path / "other", small_config(tiny_bert_dir), seed=1)
    assert fingerprint(other) != fingerprint(model_dir)
    a = AlignmentModel.from_pretrained(model_dir, device="cpu")
    b = AlignmentModel.from_pretrained(other, device="cpu")
    assert not torch.equal(outputs(a)[1], outputs(b)[1])


def test_vgg16_model_without_cached_weights_fails_instead_of_random_weights(tiny_bert_dir, tmp_path, monkeypatch):
    """A checkpoint that relies on torchvision's VGG16 download must not silently run random weights."""
    import torchvision

    from imgsearch.model.backbone import BackboneConfig
    from imgsearch.model.scorer import ScorerConfig
    from imgsearch.model.text_encoder import TextEncoder, load_bert

    config = small_config(
        tiny_bert_dir,
        backbone=BackboneConfig(name="vgg16", image_size=32),
        scorer=ScorerConfig(num_layers=1, num_heads=2, max_regions=1, dropout=0.0),
    )
    tokenizer, bert = load_bert(config.text.name_or_path)
    AlignmentModel(config, TextEncoder(config.text, tokenizer, bert, config.embed_dim)).save_pretrained(
        tmp_path / "vgg16-model"
    )
    assert not any(k.startswith("image.backbone.") for k in read_tensors(tmp_path / "vgg16-model"))

    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models.VGG16_Weights, "get_state_dict", offline)
    with pytest.raises(WeightsMissing, match="VGG16"):
        ImageEncoder.from_pretrained(tmp_path / "vgg16-model", device="cpu")
    with pytest.raises(WeightsMissing, match="VGG16"):
        AlignmentModel.from_pretrained(tmp_path / "vgg16-model", device="cpu")
