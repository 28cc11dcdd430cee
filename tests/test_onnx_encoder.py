"""The image encoder on ONNX Runtime (model/onnx_encoder.py) against the same encoder on torch.

Indexing on the CPU embeds through ONNX Runtime; torch's forward is the oracle: the same
outputs to float32 rounding, for each kind of backbone, in an index as in a batch.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import imgsearch.model.onnx_encoder as onnx_encoder_module
from imgsearch.index import Index
from imgsearch.indexer.embed_worker import DecodeDataset
from imgsearch.model.image_encoder import ImageEncoder
from imgsearch.model.packaged import packaged_model_dir
from index_oracle import rows_of

ATOL = 1e-4  # float32 sums in another order: the differences measured are about 1e-5


def torch_outputs(encoder: ImageEncoder, pixels: torch.Tensor):
    """The oracle: ImageEncoder.forward on torch, one image at a time."""
    with torch.inference_mode():
        outs = [encoder(encoder.normalize(pixels[i : i + 1])) for i in range(len(pixels))]
    probs = [o.class_probs for o in outs]
    return (
        torch.cat([o.regions for o in outs]),
        torch.cat([o.global_ for o in outs]),
        None if probs[0] is None else torch.cat([p for p in probs if p is not None]),
    )


def assert_same_outputs(encoder: ImageEncoder, count: int = 11) -> None:
    g = torch.Generator().manual_seed(count)
    pixels = torch.randint(0, 256, (count, 3, encoder.image_size, encoder.image_size), dtype=torch.uint8, generator=g)
    regions, global_, probs = torch_outputs(encoder, pixels)
    assert encoder.use_onnx_runtime(threads=2)
    with torch.inference_mode():
        got = encoder.encode(pixels)  # chunks of 8 on two threads at once: 8 + 3 images
    np.testing.assert_allclose(got.regions.numpy(), regions.numpy(), atol=ATOL)
    np.testing.assert_allclose(got.global_.numpy(), global_.numpy(), atol=ATOL)
    assert (got.class_probs is None) == (probs is None)
    if probs is not None and got.class_probs is not None:
        np.testing.assert_allclose(got.class_probs.numpy(), probs.numpy(), atol=ATOL)
        assert torch.equal(got.class_probs.argmax(1), probs.argmax(1))
    assert float(global_.std(0).mean()) > 1e-3  # the images really differ


def test_a_small_vgg_encoder_on_onnx_equals_torch(model_dir):
    assert_same_outputs(ImageEncoder.from_pretrained(model_dir, device="cpu"))


def test_a_mobilenet_encoder_with_a_classifier_on_onnx_equals_torch(mobilenet_model_dir):
    assert_same_outputs(ImageEncoder.from_pretrained(mobilenet_model_dir, device="cpu"))


@pytest.mark.parametrize("name", ["photo", "fast"])
def test_the_packaged_encoders_on_onnx_equal_torch(name):
    assert_same_outputs(ImageEncoder.from_pretrained(packaged_model_dir(name), device="cpu"), count=9)


def test_the_export_is_cached_by_weights_and_a_broken_cache_is_exported_again(model_dir, monkeypatch):
    first = ImageEncoder.from_pretrained(model_dir, device="cpu")
    assert first.use_onnx_runtime() and first._onnx is not None
    path = first._onnx.path
    assert path.exists()

    exports = []
    real_export = onnx_encoder_module._export
    monkeypatch.setattr(onnx_encoder_module, "_export", lambda *a: exports.append(a) or real_export(*a))
    again = ImageEncoder.from_pretrained(model_dir, device="cpu")
    assert again.use_onnx_runtime() and again._onnx is not None and again._onnx.path == path
    assert exports == []  # read from the cache

    changed = ImageEncoder.from_pretrained(model_dir, device="cpu")
    with torch.no_grad():
        changed.global_head.linear.weight.add_(0.01)
    assert changed.use_onnx_runtime() and changed._onnx is not None
    assert changed._onnx.path != path and len(exports) == 1  # other weights, another graph

    path.write_bytes(b"not an ONNX graph")
    broken = ImageEncoder.from_pretrained(model_dir, device="cpu")
    assert broken.use_onnx_runtime() and len(exports) == 2  # exported again
    assert_same_outputs(broken)


def test_without_onnxruntime_torch_runs_the_encoder(model_dir, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    encoder = ImageEncoder.from_pretrained(model_dir, device="cpu")
    with caplog.at_level("INFO", logger="imgsearch.model.onnx_encoder"):
        assert not encoder.use_onnx_runtime()
    assert "onnxruntime is not installed" in caplog.text
    pixels = torch.randint(0, 256, (3, 3, encoder.image_size, encoder.image_size), dtype=torch.uint8)
    with torch.inference_mode():
        got = encoder.encode(pixels).global_.numpy()
    np.testing.assert_allclose(got, torch_outputs(encoder, pixels)[1].numpy(), atol=1e-5)


def test_an_index_made_on_the_cpu_holds_torchs_vectors(tmp_path, model_dir, image_folder):
    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        index.add([image_folder], workers=0, batch_size=5)
        assert index.image_encoder._onnx is not None  # indexing ran on ONNX Runtime
        rows = {path: row for path, row in rows_of(index).items() if row.status == "ok"}
        reference = ImageEncoder.from_pretrained(model_dir, device="cpu")  # torch only
    assert len(rows) == 12
    decoded = DecodeDataset(sorted(rows), reference.image_size)  # the pixels indexing decoded
    for i, path in enumerate(sorted(rows)):
        _, pixels = decoded[i]
        assert pixels is not None
        _, global_, _ = torch_outputs(reference, pixels[None])
        np.testing.assert_allclose(rows[path].vector, global_[0].numpy(), atol=ATOL, err_msg=path)
