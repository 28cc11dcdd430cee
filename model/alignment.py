"""The alignment model: image encoder + text encoder + cross-attention scorer.

A model directory holds config.json and model.safetensors, with the usual
`from_pretrained(dir)` / `save_pretrained(dir)`. Tensor keys are prefixed
"image.", "text." and "scorer.". Pretrained parts that the checkpoint does not
carry (torchvision VGG16 ImageNet weights, the BERT encoder) are loaded from
where the config names them; if they cannot be found, loading fails with
WeightsMissing. Nothing falls back to random weights.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from imgsearch.model.backbone import BackboneConfig
from imgsearch.model.checkpoint import load_module_state, read_config, read_tensors, write_checkpoint
from imgsearch.model.device import resolve_device
from imgsearch.errors import ModelConfigError, WeightsMissing
from imgsearch.model.hubness import HubnessConfig, HubnessCorrection
from imgsearch.model.image_encoder import ImageEncoder
from imgsearch.model.scorer import CrossAttentionScorer, ScorerConfig
from imgsearch.model.text_encoder import TextEncoder, TextEncoderConfig, load_bert

__all__ = ["AlignmentConfig", "AlignmentModel", "ZERO_SHOT_TEXTS"]

ZERO_SHOT_TEXTS = ("names", "wordnet")  # AlignmentConfig.zero_shot_texts


@dataclass(frozen=True)
class AlignmentConfig:
    embed_dim: int = 256  # size of the shared image-text space
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    # Final re-ranked score = scorer logit + fusion_weight * first-stage cosine.
    fusion_weight: float = 0.0
    # Weight of the zero-shot ImageNet score added to each candidate's first-stage cosine
    # (model/zero_shot.py); 0 turns it off. Needs image_labels and labels in the index.
    zero_shot_weight: float = 0.0
    # What the zero-shot score compares a query with (model/zero_shot.py): "names", each class's
    # name as image_labels gives it; "wordnet", its first name and WordNet parent
    # (model/imagenet_class_texts.tsv: "macaw, parrot"). With zero_shot_temperature T > 0 a
    # class's match is the softmax over all classes of cosine / T (how specifically the query
    # names it) instead of the cosine.
    zero_shot_texts: str = "names"
    zero_shot_temperature: float = 0.0
    # Class names of the backbone's classifier (mobilenet_v2: ImageNet's 1,001), for image labels.
    image_labels: tuple[str, ...] | None = None
    # The first stage's hubness correction (model/hubness.py): cosine - weight * hub score.
    hubness: HubnessConfig = field(default_factory=HubnessConfig)

    def __post_init__(self) -> None:
        if self.zero_shot_texts not in ZERO_SHOT_TEXTS:
            raise ModelConfigError(
                f"rerank.zero_shot.class_texts is {self.zero_shot_texts!r}; expected one of {', '.join(ZERO_SHOT_TEXTS)}."
            )
        if self.zero_shot_temperature < 0:
            raise ModelConfigError(f"rerank.zero_shot.temperature is {self.zero_shot_temperature}; expected >= 0.")
        if self.embed_dim % self.scorer.num_heads:
            raise ModelConfigError(
                f"embed_dim {self.embed_dim} is not divisible by scorer.num_heads {self.scorer.num_heads}."
            )
        if self.backbone.grid_side**2 > self.scorer.max_regions:
            raise ModelConfigError(
                f"the backbone gives {self.backbone.grid_side**2} regions but scorer.max_regions "
                f"is {self.scorer.max_regions}; raise max_regions."
            )

    def to_dict(self) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "image": {"backbone": self.backbone.to_dict(),
                      **({"labels": list(self.image_labels)} if self.image_labels else {})},
            # "pool" only when not the mean, so that configs written before it existed read the same
            "text": {k: v for k, v in dataclasses.asdict(self.text).items() if k != "pool" or v != "mean"},
            "scorer": dataclasses.asdict(self.scorer),
            "rerank": {"fusion_weight": self.fusion_weight, "zero_shot_weight": self.zero_shot_weight,
                       **({"hubness": dataclasses.asdict(self.hubness)} if self.hubness.bank_size else {}),
                       # only when not the default, so that configs written before it existed read the same
                       **({"zero_shot": {"class_texts": self.zero_shot_texts, "temperature": self.zero_shot_temperature}}
                          if (self.zero_shot_texts, self.zero_shot_temperature) != ("names", 0.0) else {})},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "AlignmentConfig":
        try:
            return cls(
                embed_dim=int(data["embed_dim"]),
                backbone=BackboneConfig(**data["image"]["backbone"]),
                text=TextEncoderConfig(**data["text"]),
                scorer=ScorerConfig(**data["scorer"]),
                fusion_weight=float(data.get("rerank", {}).get("fusion_weight", 0.0)),
                zero_shot_weight=float(data.get("rerank", {}).get("zero_shot_weight", 0.0)),
                image_labels=tuple(data["image"]["labels"]) if data["image"].get("labels") else None,
                hubness=HubnessConfig(**data.get("rerank", {}).get("hubness", {})),
                zero_shot_texts=str(data.get("rerank", {}).get("zero_shot", {}).get("class_texts", "names")),
                zero_shot_temperature=float(data.get("rerank", {}).get("zero_shot", {}).get("temperature", 0.0)),
            )
        except (KeyError, TypeError) as exc:
            raise ModelConfigError(f"alignment model config is incomplete or has unknown fields: {exc}") from exc


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
    ) -> "AlignmentModel":
        """A new model for training: pretrained backbone and text encoder where the
        config names them, freshly initialised heads and scorer. On the CPU.

        `backbone_state` gives the backbone's weights directly (the converted
        MobileNetV2, which has no download); a mobilenet_v2 config needs it."""
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
            model.image.backbone.load_pretrained()
        return model

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, device: str | torch.device = "auto", **overrides
    ) -> "AlignmentModel":
        """Load a saved model in eval mode. `overrides` replace top-level config fields
        (e.g. fusion_weight=0.5); unknown names raise TypeError."""
        config = AlignmentConfig.from_dict(read_config(directory))
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
        """Write config.json + model.safetensors (temp files, then renamed).

        The checkpoint carries the backbone when it is not a pinned torchvision
        download, and the BERT weights only when config.text.carries_weights."""
        tensors = {}
        for key, value in self.state_dict().items():
            if key.startswith("image.backbone.") and self.config.backbone.name == "vgg16" and self.config.backbone.weights:
                continue
            if key.startswith("text.bert.") and not self.config.text.carries_weights:
                continue
            tensors[key] = value
        write_checkpoint(directory, self.config.to_dict(), tensors)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

