"""The CPU forward pass in allocator-sized chunks (model/allocator.py, ImageEncoder.encode)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import imgsearch.model.image_encoder as image_encoder_module
from imgsearch.model.backbone import BackboneConfig
from imgsearch.model.image_encoder import ImageEncoder


def _fresh_process(probe: str, **env: str) -> list[str]:
    """What `probe` prints, run in a new interpreter: the allocator is set once per process,
    and this test process's is left as it is."""
    done = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux only")
def test_keep_freed_memory_takes_effect_on_glibc():
    probe = (
        "from imgsearch.model.allocator import keep_freed_memory, heap_block_limit; "
        "print(heap_block_limit(), keep_freed_memory(), keep_freed_memory(), heap_block_limit())"
    )
    # none before it is asked for; the second call is a no-op
    assert _fresh_process(probe, IMGSEARCH_DEFAULT_MALLOC="") == ["None", "True", "True", str(32 * 1024 * 1024)]


def _encoder(name: str) -> ImageEncoder:
    torch.manual_seed(0)
    layers = (8, "M", 16, "M") if name == "vgg" else ()
    backbone = BackboneConfig(
        name=name, image_size=64, weights=None, global_pool="mean", **({"layers": layers} if layers else {})
    )
    return ImageEncoder(backbone, embed_dim=16).eval()


@pytest.mark.parametrize("name", ["vgg", "mobilenet_v2"])
def test_chunked_encode_equals_one_whole_batch_forward(name, monkeypatch):
    encoder = _encoder(name)
    pixels = torch.randint(0, 256, (7, 3, 64, 64), dtype=torch.uint8)  # (B, 3, S, S)
    with torch.inference_mode():
        whole = encoder(encoder.normalize(pixels))  # the oracle: one forward over the batch
        largest = _largest_activation(encoder)
    seen = []
    encoder.backbone.register_forward_hook(lambda _m, inputs, _o: seen.append(len(inputs[0])))
    with torch.inference_mode():
        # a limit that fits two images' largest activation: the first image alone (it is
        # measured), then chunks of 2, 2, 2
        monkeypatch.setattr(image_encoder_module, "heap_block_limit", lambda: 2 * largest + 1)
        chunked = encoder.encode(pixels)
    assert seen == [1, 2, 2, 2]  # and no extra forward pass to measure
    torch.testing.assert_close(chunked.global_, whole.global_, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(chunked.regions, whole.regions, atol=1e-5, rtol=1e-4)
    if whole.class_probs is not None:
        torch.testing.assert_close(chunked.class_probs, whole.class_probs, atol=1e-6, rtol=1e-4)


def _largest_activation(encoder: ImageEncoder) -> int:
    """Bytes per image of the largest tensor a layer takes or gives: a brute-force walk over every
    leaf module's inputs and outputs, for one image."""
    largest = []
    hooks = [
        m.register_forward_hook(
            lambda _m, i, o: largest.extend(
                t.numel() * t.element_size() for t in (*i, o) if isinstance(t, torch.Tensor)
            )
        )
        for m in encoder.modules()
        if not list(m.children())
    ]
    encoder(encoder.normalize(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)))
    for hook in hooks:
        hook.remove()
    return max(largest)


def test_the_first_cpu_batch_measures_the_widest_layer(monkeypatch):
    # mobilenet_v2 at 64px: the first block's expansion to 96 channels at 32x32, float32,
    # padded by one row and column on the way into the stride-2 depthwise convolution
    encoder = _encoder("mobilenet_v2")
    monkeypatch.setattr(image_encoder_module, "heap_block_limit", lambda: 32 * 1024 * 1024)
    with torch.inference_mode():
        encoder.encode(torch.zeros(3, 3, 64, 64, dtype=torch.uint8))
    assert encoder._activation_bytes == 96 * 33 * 33 * 4 == _largest_activation(encoder)


def test_the_environment_can_leave_malloc_alone():
    probe = (
        "from imgsearch.model.allocator import keep_freed_memory, heap_block_limit; "
        "print(keep_freed_memory(), heap_block_limit())"
    )
    assert _fresh_process(probe, IMGSEARCH_DEFAULT_MALLOC="1") == ["False", "None"]


def test_without_the_setting_encode_runs_the_batch_whole(monkeypatch):
    # a library user who has not asked for it: malloc as glibc set it, one forward pass
    encoder = _encoder("mobilenet_v2")
    monkeypatch.setattr(image_encoder_module, "heap_block_limit", lambda: None)
    seen = []
    encoder.backbone.register_forward_hook(lambda _m, inputs, _o: seen.append(len(inputs[0])))
    with torch.inference_mode():
        encoder.encode(torch.zeros(5, 3, 64, 64, dtype=torch.uint8))
    assert seen == [5] and encoder._activation_bytes is None
