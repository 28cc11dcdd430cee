"""Training and evaluation as library calls: what `imgsearch train` and `imgsearch eval` run.

    dataset = read_dataset("flickr8k/captions.tsv", images="flickr8k/images", only="flickr8k/train.txt")
    model, mode = build_model("mobilenet_v2", backbone_weights="mobilenet_v2.tflite", labels_file="imagenet_labels.txt")
    summary = train_model(model, dataset, "my-model", TrainConfig(backbone_mode=mode, epochs=4))
    recalls = evaluate_model("my-model", read_dataset(..., only="flickr8k/dev.txt"))

Stages: captions file --> dataset; preset + options --> initialised model; model + dataset -->
trained model directory (training/trainer.py); model directory + dataset --> recalls
(training/evaluate.py). The command line only parses options and prints what these return.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch

from imgsearch.ground.errors import ImgsearchError
from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.model_files import CONFIG_NAME
from imgsearch.search.defaults import DEFAULT_CANDIDATES
from imgsearch.training.captions import CaptionedImage, read_captions
from imgsearch.training.config import BackboneMode
from imgsearch.training.presets import preset
from imgsearch.training.trainer import TrainConfig, train

__all__ = ["read_dataset", "build_model", "train_model", "check_output_dir", "evaluate_model", "TrainConfig"]


def read_dataset(
    captions: str | os.PathLike,
    images: str | os.PathLike | None = None,
    only: str | os.PathLike | None = None,
    split: str | None = None,
) -> list[CaptionedImage]:
    """A captions file --> captioned images, optionally only those named in `only` (one name a
    line, e.g. Flickr8k's train.txt) or in a Karpathy JSON `split`."""
    names = None
    if only is not None:
        names = {line.strip() for line in Path(only).read_text().splitlines() if line.strip()}
    return read_captions(captions, images, split=split, only=names)


def build_model(
    preset_name: str = "small",
    *,
    backbone_weights: str | os.PathLike | None = None,
    labels_file: str | os.PathLike | None = None,
    text_encoder: str | None = None,
    scorer_layers: int | None = None,
    zero_shot_weight: float = 0.0,
    zero_shot_texts: str = "names",
    zero_shot_temperature: float = 0.0,
    seed: int = 0,
) -> tuple[AlignmentModel, BackboneMode]:
    """A preset, adjusted by the options --> a freshly initialised model (seeded) and the
    preset's backbone mode ("scratch", "finetune" or "frozen"). Raises ImgsearchError on
    options that do not fit the preset."""
    config, default_mode = preset(preset_name)
    if scorer_layers is not None:
        config = dataclasses.replace(config, scorer=dataclasses.replace(config.scorer, num_layers=scorer_layers))
    if text_encoder:
        config = dataclasses.replace(config, text=dataclasses.replace(config.text, name_or_path=text_encoder))
    torch.manual_seed(seed)
    backbone_state = None
    if backbone_weights is not None:
        if config.backbone.name != "mobilenet_v2":
            raise ImgsearchError(
                f"--backbone-weights is for the mobilenet_v2 preset; the {preset_name} preset's backbone "
                "gets its weights elsewhere (see README, Models)."
            )
        from imgsearch.model.backbone_weights import load_backbone_weights
        from imgsearch.model.provenance import WeightsSource, sha256_file

        backbone_state = load_backbone_weights(backbone_weights)
        name = Path(backbone_weights).name
        source = WeightsSource(f"converted from {name}", file=name, sha256=sha256_file(backbone_weights))
        config = dataclasses.replace(config, provenance=dataclasses.replace(config.provenance, backbone_weights=source))
    if labels_file is not None:
        if not config.backbone.has_classifier:
            raise ImgsearchError(
                f"--labels needs a backbone with a classifier (mobilenet_v2, efficientnet_lite0), not {preset_name}."
            )
        labels = tuple(line.strip() for line in Path(labels_file).read_text().splitlines() if line.strip())
        config = dataclasses.replace(config, image_labels=labels)
    if zero_shot_weight:
        if not config.image_labels:
            raise ImgsearchError("--zero-shot-weight needs the classifier's class names: pass --labels FILE.")
        config = dataclasses.replace(
            config,
            zero_shot_weight=zero_shot_weight,
            zero_shot_texts=zero_shot_texts,
            zero_shot_temperature=zero_shot_temperature,
        )
    return AlignmentModel.initialize(config, backbone_state), default_mode


def train_model(
    model: AlignmentModel,
    dataset: list[CaptionedImage],
    out: str | os.PathLike,
    config: TrainConfig,
    *,
    resume: bool = False,
    mix: list[CaptionedImage] | None = None,
) -> dict:
    """Train `model` on `dataset` (and `mix` in each batch, config.mix_share of it) and save it
    to `out` (training/trainer.py); returns the training summary. Refuses to overwrite a model
    in `out` unless resuming."""
    check_output_dir(out, resume)
    return train(model, dataset, out, config, resume=resume, mix=mix)


def check_output_dir(out: str | os.PathLike, resume: bool) -> None:
    """Raise ImgsearchError if `out` holds a model already and this is not a resumed run."""
    if (Path(out) / CONFIG_NAME).exists() and not resume:
        raise ImgsearchError(f"{out} already holds a model; choose another --out, or pass --resume.")


def evaluate_model(
    model_dir: str | os.PathLike,
    dataset: list[CaptionedImage],
    *,
    rerank_depth: int = 20,
    candidates: int = DEFAULT_CANDIDATES,
    device: str = "auto",
    workers: int = 0,
    on_skip: Callable[[str, str], None] | None = None,
) -> dict:
    """Recall@1/5/10 (text->image, image->text), first stage and re-ranked, of the model in
    `model_dir` on `dataset`. Images that cannot be read are skipped, each reported to
    `on_skip(path, reason)`."""
    from imgsearch.training.data import encode_captions, load_images
    from imgsearch.training.evaluate import evaluate

    model = AlignmentModel.from_pretrained(model_dir, device=device)
    bank_images = load_images(dataset, model.config.backbone.image_size, workers)
    for path, error in bank_images.failures:
        if on_skip is not None:
            on_skip(path, error)
    bank = encode_captions(model.text, bank_images.items, cache_states=False)
    return evaluate(model, bank_images.pixels, bank, rerank_depth, candidates=candidates)
