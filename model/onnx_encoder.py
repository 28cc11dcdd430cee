"""The image encoder on ONNX Runtime: the same network, weights and outputs, faster on a CPU.

Indexing on the CPU runs the image encoder here (ImageEncoder.use_onnx_runtime, called by
indexer/embed_worker.py): uint8 pixels in; projected regions, the global vector and, with a
classifier, the class posteriors out, as ImageEncoder.forward gives them. ONNX Runtime fuses
each convolution with its normalisation and activation and picks CPU kernels by instruction
set: forward-only on the 2-core EPYC, EfficientNet-Lite0 (the default photo model) ran about
2x and MobileNetV2 (the fast model) about 1.2x as fast as on torch, outputs equal to about 1e-5
(bench/RESULTS.md, "ONNX Runtime"; tests/test_onnx_encoder.py). Training and GPUs stay on torch.

The encoder is exported once (torch.onnx, about 1.5 s) into the per-user cache, keyed by its
weights, class and input size and the torch and ONNX Runtime versions. An unreadable cached graph
is exported again; a cache that cannot be written leaves the encoder on torch (said in the log).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from imgsearch.ground.durable import replace_durably
from imgsearch.ground.locations import default_cache_dir

if TYPE_CHECKING:
    from imgsearch.model.image_encoder import ImageEncoder

__all__ = ["OnnxEncoder", "onnx_encoder"]

log = logging.getLogger(__name__)

OPSET = 17


class OnnxEncoder:
    """An image encoder on ONNX Runtime: uint8 pixels (B, 3, S, S) --> its outputs (regions (B, R, d),
    global (B, d), and class posteriors (B, classes) with a classifier) as torch tensors on the CPU.

    A batch runs as chunks of `chunk` images, each on one thread, `threads` chunks at a time: on
    2 cores 3-12% faster than one session running each chunk on both threads, and a core taken by
    another process (a decode worker) then slows one chunk rather than every step of all of them.
    submit() starts a batch and returns at once (indexing overlaps it with the next batch)."""

    def __init__(self, session: Any, path: Path, threads: int, chunk: int = 8) -> None:
        self.session = session  # intra-op threads: 1; run() is safe to call from several threads
        self.path = path  # the exported graph, in the cache
        self.chunk = chunk
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="onnx-encoder")

    def __call__(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return self.submit(pixels)()

    def submit(self, pixels: torch.Tensor) -> Callable[[], list[torch.Tensor]]:
        """Start the batch on the encoder's threads; the function returned waits for its outputs.
        Batches submitted one after another queue up, so the threads never wait for the caller."""
        futures = [self._pool.submit(self._run, part.contiguous().numpy()) for part in pixels.split(self.chunk)]

        def outputs() -> list[torch.Tensor]:
            parts = [future.result() for future in futures]
            return [torch.from_numpy(np.concatenate(chunks)) for chunks in zip(*parts)]

        return outputs

    def _run(self, pixels: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {"pixels": pixels})


class _Exported(nn.Module):
    """What is exported: ImageEncoder.forward of normalised pixels, as a tuple of tensors."""

    def __init__(self, encoder: ImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.encoder(self.encoder.normalize(pixels))
        return (out.regions, out.global_) if out.class_probs is None else (out.regions, out.global_, out.class_probs)


def onnx_encoder(encoder: ImageEncoder, threads: int) -> OnnxEncoder | None:
    """`encoder` (an ImageEncoder) as an ONNX Runtime session on `threads` threads, or None (said
    in the log) where onnxruntime or onnx is not installed or the export fails: torch then runs it."""
    try:
        import onnxruntime
    except ImportError:
        log.info("onnxruntime is not installed: the image encoder runs on torch (slower on a CPU)")
        return None
    key = _cache_key(encoder, onnxruntime.__version__)
    path = default_cache_dir() / "onnx" / f"image-encoder-{key}.onnx"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # OnnxEncoder runs `threads` chunks at once instead
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    for attempt in ("cached", "exported"):
        if attempt == "exported" or not path.exists():
            try:
                _export(encoder, path)
            except Exception as exc:  # any export failure: torch runs the encoder instead
                log.info("the image encoder could not be exported to ONNX (%s): it runs on torch", exc)
                return None
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            version = onnxruntime.__version__
            log.info("the image encoder runs on ONNX Runtime %s, %d thread(s) (%s)", version, threads, path)
            return OnnxEncoder(session, path, threads)
        except Exception as exc:  # an unreadable cache file: export it again, once
            if attempt == "exported":
                log.info("ONNX Runtime could not load the exported encoder (%s): it runs on torch", exc)
                return None
            log.info("the cached encoder %s is unreadable (%s); exporting it again", path, exc)
    return None


def _cache_key(encoder: ImageEncoder, runtime_version: str) -> str:
    """What the exported graph depends on: every tensor of the encoder (names, shapes, bytes), its
    backbone's class, the input size, and the versions of torch (the exporter) and ONNX Runtime."""
    digest = hashlib.blake2b(digest_size=16)
    backbone = type(encoder.backbone).__qualname__
    header = [type(encoder).__qualname__, backbone, encoder.image_size, torch.__version__, runtime_version, OPSET]
    digest.update(json.dumps(header).encode())
    for name, tensor in encoder.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _export(encoder: ImageEncoder, path: Path) -> None:
    """Export `encoder` (in eval mode, on the CPU, float32) with a free batch dimension to `path`, durably."""
    size = encoder.image_size
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    was_training = encoder.training
    encoder.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's notes on traced shapes and deprecations
            exported = _Exported(encoder)
            names = ["regions", "global", "class_probs"][: len(exported(example))]
            torch.onnx.export(
                exported,
                (example,),
                str(temp),
                input_names=["pixels"],
                output_names=names,
                dynamic_axes={name: {0: "batch"} for name in ["pixels", *names]},
                opset_version=OPSET,
                dynamo=False,
            )
        replace_durably(temp, path)
    finally:
        encoder.train(was_training)
        temp.unlink(missing_ok=True)
