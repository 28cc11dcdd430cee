"""The VGG backbone: same layer layout as torchvision's VGG16, config checks, missing weights.

No network: torchvision's weight download is replaced by a random-init
torchvision model's state dict, or by a function that fails like an offline download.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from imgsearch.ground.errors import ModelConfigError, WeightsMissing
from imgsearch.model.backbone import VGG16_LAYERS, BackboneConfig, VGGBackbone
from imgsearch.model.mobilenet_v2 import MobileNetV2


@pytest.fixture
def offline_vgg16_download(monkeypatch, tmp_path):
    """Make every VGG16_Weights download fail as it does offline; TORCH_HOME points at an empty dir."""
    calls = []

    def fail(self, *args, **kwargs):
        calls.append(self)
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torchvision.models.VGG16_Weights, "get_state_dict", fail)
    return calls


def test_vgg16_matches_torchvision_layer_for_layer(monkeypatch):
    torch.manual_seed(0)
    reference = torchvision.models.vgg16().eval()  # random init; stands in for the ImageNet weights
    state = reference.state_dict()
    monkeypatch.setattr(torchvision.models.VGG16_Weights, "get_state_dict", lambda self, *args, **kwargs: state)

    ours = VGGBackbone(BackboneConfig(name="vgg16", weights="IMAGENET1K_V1", global_pool="fc7"))
    ours.load_pretrained()  # maps features.* and classifier.0/3.* onto our modules
    ours.eval()
    for key, value in ours.state_dict().items():  # every tensor of ours came from torchvision
        source = key.replace("fc67.", "classifier.") if key.startswith("fc67.") else key
        assert torch.equal(value, state[source]), key

    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        regions, global_ = ours(pixels)
        grid = reference.features(pixels)  # (1, 512, 7, 7)
        fc7 = reference.classifier[:5](torch.flatten(reference.avgpool(grid), 1))  # (1, 4096)

    assert regions.shape == (1, 49, 512)
    assert global_.shape == (1, 4096)
    # (1, 512, 7, 7) --> (1, 512, 49) --> (1, 49, 512): region r is grid cell (r // 7, r % 7)
    assert torch.allclose(regions, grid.flatten(2).transpose(1, 2), atol=1e-5)
    assert torch.allclose(regions[0, 7 * 2 + 3], grid[0, :, 2, 3], atol=1e-5)
    assert torch.allclose(global_, fc7, atol=1e-5)
    assert fc7.abs().max() > 0  # not a vacuous comparison of zeros


def test_vgg16_config_dimensions():
    config = BackboneConfig()
    assert config.layers == VGG16_LAYERS
    assert (config.grid_side, config.region_dim, config.global_dim) == (7, 512, 4096)
    assert "VGG16_Weights.IMAGENET1K_V1" in config.describe()  # pinned, never DEFAULT


@pytest.mark.parametrize(
    "layers, image_size, grid_side, region_dim",
    [((8, "M", 16, "M", 16, "M"), 32, 4, 16), ((4, 4, "M", 12, "M"), 24, 6, 12), ((6, "M"), 10, 5, 6)],
)
def test_custom_vgg_gives_grid_of_regions(layers, image_size, grid_side, region_dim):
    config = BackboneConfig(name="vgg", weights=None, layers=layers, image_size=image_size, global_pool="mean")
    assert (config.grid_side, config.region_dim, config.global_dim) == (grid_side, region_dim, region_dim)
    backbone = VGGBackbone(config).eval()
    pixels = torch.randn(3, 3, image_size, image_size)
    with torch.inference_mode():
        regions, global_ = backbone(pixels)
        grid = backbone.features(pixels)  # (3, C, G, G)
    assert regions.shape == (3, grid_side**2, region_dim)
    assert global_.shape == (3, region_dim)
    assert torch.allclose(global_, grid.mean(dim=(2, 3)), atol=1e-6)  # mean over the grid cells
    assert backbone.fc67 is None


def test_custom_vgg_with_batch_norm_builds():
    config = BackboneConfig(
        name="vgg", weights=None, layers=(4, "M"), image_size=8, global_pool="mean", batch_norm=True
    )
    backbone = VGGBackbone(config)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.features)


def test_config_layers_given_as_list_are_stored_as_tuple():
    config = BackboneConfig(name="vgg", weights=None, layers=[8, "M"], image_size=8, global_pool="mean")
    assert config.layers == (8, "M")
    assert BackboneConfig(**config.to_dict()) == config  # round trip through JSON-able dict


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="vgg16", image_size=100), "not divisible"),  # 100 is not a multiple of 2^5
        (dict(name="vgg", weights=None, layers=(8, "M", 8, "M"), image_size=30, global_pool="mean"), "not divisible"),
        (dict(name="vgg", weights=None, layers=(8, "M"), image_size=8, global_pool="fc7"), "fc7"),
        (dict(name="resnet"), "unknown backbone"),
        (dict(global_pool="max"), "global_pool"),
    ],
)
def test_bad_configs_raise_model_config_error(kwargs, message):
    with pytest.raises(ModelConfigError, match=message):
        BackboneConfig(**kwargs)


def test_missing_vgg16_weights_raise_weights_missing_naming_url_and_cache(offline_vgg16_download, tmp_path):
    backbone = VGGBackbone(BackboneConfig(name="vgg16", weights="IMAGENET1K_V1"))
    with pytest.raises(WeightsMissing) as caught:
        backbone.load_pretrained()
    message = str(caught.value)
    url = torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
    assert url in message
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]) in message
    assert "TORCH_HOME" in message
    assert offline_vgg16_download, "the download was attempted"


def test_unknown_vgg16_weights_name_is_a_config_error():
    backbone = VGGBackbone(BackboneConfig(name="vgg16", weights="NO_SUCH_WEIGHTS", image_size=32))
    with pytest.raises(ModelConfigError, match="IMAGENET1K_V1"):
        backbone.load_pretrained()


def test_no_download_when_weights_are_not_named(offline_vgg16_download):
    VGGBackbone(BackboneConfig(name="vgg16", weights=None, image_size=32)).load_pretrained()
    config = BackboneConfig(name="vgg", weights="IMAGENET1K_V1", layers=(4, "M"), image_size=8, global_pool="mean")
    VGGBackbone(config).load_pretrained()  # "vgg" never downloads, whatever `weights` says
    assert offline_vgg16_download == []


# ---- mobilenet_v2: the converted ImageNet backbone (its oracle test is tests/test_mobilenet_v2.py) ----

MOBILENET = BackboneConfig(name="mobilenet_v2", weights=None, image_size=64, global_pool="mean")


def test_mobilenet_config_dimensions_follow_the_input_size():
    assert (MOBILENET.grid_side, MOBILENET.region_dim, MOBILENET.global_dim) == (2, 1280, 1280)
    big = BackboneConfig(name="mobilenet_v2", weights=None, image_size=288, global_pool="mean")
    assert big.grid_side == 9
    assert BackboneConfig(**MOBILENET.to_dict()) == MOBILENET
    with pytest.raises(ModelConfigError, match="use 'mean'"):
        BackboneConfig(name="mobilenet_v2", weights=None)  # fc7 is VGG16's
    with pytest.raises(ModelConfigError, match="not divisible"):
        BackboneConfig(name="mobilenet_v2", weights=None, image_size=100, global_pool="mean")


def test_mobilenet_backbone_regions_global_and_classifier_agree_with_the_network():
    from imgsearch.model.backbone import MobileNetV2Backbone, build_backbone

    torch.manual_seed(0)
    backbone = build_backbone(MOBILENET).eval()
    assert isinstance(backbone, MobileNetV2Backbone)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        regions, global_ = backbone(pixels)
        grid, logits = backbone.net(pixels)  # (2, 1280, 2, 2), (2, 1001)
        classified = backbone.classify(global_)
    assert regions.shape == (2, 4, 1280) and global_.shape == (2, 1280)
    # region r is grid cell (r // 2, r % 2), row-major
    assert torch.equal(regions[:, 3], grid[:, :, 1, 1])
    assert torch.equal(regions[:, 1], grid[:, :, 0, 1])
    assert torch.allclose(global_, grid.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(classified, logits, atol=1e-4)


def test_mobilenet_input_is_normalised_as_the_tflite_input():
    from imgsearch.model.image_encoder import ImageEncoder

    encoder = ImageEncoder(MOBILENET, embed_dim=8)
    pixels = torch.tensor([0, 1, 127, 128, 200, 255], dtype=torch.uint8).repeat(3, 1).view(1, 3, 2, 3)
    expected = (pixels.float() - 128.0) / 128.0  # uint8 q --> (q - 128) / 128, as the TFLite file's input
    assert torch.allclose(encoder.normalize(pixels), expected, atol=1e-6)
    vgg = ImageEncoder(BackboneConfig(name="vgg", weights=None, layers=(4, "M"), image_size=8, global_pool="mean"), 8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(vgg.normalize(pixels), (pixels / 255.0 - mean) / std, atol=1e-6)


def test_mobilenet_model_needs_its_weights_and_saves_them(tiny_bert_dir, tmp_path):
    from imgsearch.model.alignment import AlignmentConfig, AlignmentModel
    from imgsearch.model.scorer import ScorerConfig
    from imgsearch.model.text_encoder import TextEncoderConfig

    config = AlignmentConfig(
        embed_dim=16,
        backbone=MOBILENET,
        text=TextEncoderConfig(name_or_path=str(tiny_bert_dir)),
        scorer=ScorerConfig(num_layers=1, num_heads=2, max_regions=4),
        image_labels=tuple(f"class {i}" for i in range(1001)),
    )
    with pytest.raises(WeightsMissing, match="--backbone-weights"):
        AlignmentModel.initialize(config)  # never random ImageNet weights
    torch.manual_seed(1)
    state = {f"net.{k}": v for k, v in MobileNetV2().state_dict().items()}
    model = AlignmentModel.initialize(config, backbone_state=state)
    model.save_pretrained(tmp_path / "m")
    loaded = AlignmentModel.from_pretrained(tmp_path / "m", device="cpu")
    for key, value in state.items():
        assert torch.equal(loaded.image.backbone.state_dict()[key], value), key
    assert loaded.image.labels == config.image_labels
    pixels = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        out = loaded.image(loaded.image.normalize(pixels))
        logits = loaded.image.backbone.net(loaded.image.normalize(pixels))[1]
    assert out.class_probs.shape == (2, 1001)
    assert torch.allclose(out.class_probs, logits.softmax(-1), atol=1e-5)


def test_backbone_weights_without_the_tflite_package_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    from imgsearch.model.backbone_weights import load_backbone_weights

    model = tmp_path / "m.tflite"
    model.write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "tflite", None)  # import tflite now raises ImportError
    with pytest.raises(WeightsMissing, match="imgsearch-offline\\[convert\\]"):
        load_backbone_weights(model)
    with pytest.raises(WeightsMissing, match="not found"):
        load_backbone_weights(tmp_path / "missing.tflite")
