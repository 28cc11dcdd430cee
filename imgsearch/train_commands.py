"""`imgsearch train` and `imgsearch eval`. Training code is imported only when they run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from imgsearch.common import CONTEXT, json_option, user_errors
from indexer.errors import ImgsearchError

captions_argument = click.argument("captions", type=click.Path(exists=True, dir_okay=False))
images_option = click.option(
    "--images", type=click.Path(exists=True, file_okay=False), default=None,
    help="Folder the captions' image paths are relative to (default: the captions file's folder).",
)
only_option = click.option(
    "--only", type=click.Path(exists=True, dir_okay=False), default=None,
    help="File listing the image names to use, one per line (e.g. Flickr8k's train.txt).",
)
split_option = click.option("--split", default=None, help="Karpathy JSON split to use (train, val, test, restval).")


def _read(captions, images, only, split):
    from training.captions import read_captions

    names = None
    if only is not None:
        names = {line.strip() for line in Path(only).read_text().splitlines() if line.strip()}
    return read_captions(captions, images, split=split, only=names)


@click.command("train", context_settings=CONTEXT)
@captions_argument
@images_option
@only_option
@split_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for the trained model.")
@click.option("--preset", "preset_name", default="small", show_default=True,
              type=click.Choice(["scenes", "small", "mobilenet_v2", "vgg16"]), help="Starting model configuration.")
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Pretrained backbone weights (mobilenet_v2: the TFLite file or its converted .safetensors).")
@click.option("--labels", "labels_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Class names of the backbone's classifier, one a line (mobilenet_v2: imagenet_labels.txt), "
              "stored in the model so that indexed images get labels.")
@click.option("--text-encoder", default=None, help="Transformers name or local directory of a BERT-family encoder.")
@click.option("--backbone-mode", type=click.Choice(["scratch", "finetune", "frozen"]), default=None,
              help="Train the backbone from scratch, fine-tune it, or freeze it (default: the preset's).")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=96, show_default=True, type=click.IntRange(min=2))
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--loss", type=click.Choice(["infonce", "vsepp"]), default="infonce", show_default=True,
              help="Contrastive loss of the dual encoder.")
@click.option("--itm-weight", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Weight of a joint ITM loss in the first stage (0: the scorer trains in the second stage only).")
@click.option("--local-weight", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Weight of a first-stage contrastive loss on the re-ranker's token-region alignment term.")
@click.option("--zero-shot-weight", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Weight of the zero-shot ImageNet score in the first stage (needs --labels; "
              "search/zero_shot.py). Stored in the model; it does not change training.")
@click.option("--scorer-layers", default=None, type=click.IntRange(min=0),
              help="Attention layers of the re-ranker (default: the preset's). 0 keeps only its "
              "token-region alignment term (with --local-weight, trained in the first stage).")
@click.option("--scorer-epochs", default=20, show_default=True, type=click.IntRange(min=0),
              help="Epochs of the second stage: the re-ranker on the frozen dual encoder.")
@click.option("--hard-share", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Share of the re-ranker's negatives mined from the first stage (the rest are uniform).")
@click.option("--scorer-lr", default=5e-4, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Learning rate of the second stage.")
@click.option("--val-fraction", default=0.05, show_default=True, type=click.FloatRange(0, 0.5),
              help="Share of the images held out to choose the re-ranker's epoch and fusion weight (0: none).")
@click.option("--no-augment", is_flag=True, help="No random resized crops.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--time-limit", default=None, type=click.FloatRange(min=0, min_open=True), help="Stop after this many minutes.")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="Decoding processes.")
@click.option("--resume", is_flag=True, help="Continue from OUT/training-state.pt.")
@user_errors
def train_command(captions, images, only, split, out, preset_name, backbone_weights, labels_file, text_encoder, backbone_mode, epochs, batch_size, scorer_layers, zero_shot_weight,
                  lr, loss, itm_weight, local_weight, scorer_epochs, hard_share, scorer_lr, val_fraction, no_augment, seed, time_limit, workers, resume) -> None:
    """Train an alignment model on captioned images and save it to --out.

    CAPTIONS is a TSV/CSV (image and caption columns), JSON Lines, a
    Flickr8k/30k token file (name.jpg#N<TAB>caption), COCO captions JSON or a
    Karpathy split JSON. Any number of captions per image.

    \b
    Example:
      python data/scenes.py scenes --count 3000 --swaps
      imgsearch train scenes/captions.tsv --preset scenes --epochs 40 --out my-model
    """
    import torch

    from search.alignment import AlignmentModel
    from training.presets import preset
    from training.trainer import TrainConfig, train

    if (Path(out) / "config.json").exists() and not resume:
        raise ImgsearchError(f"{out} already holds a model; choose another --out, or pass --resume.")
    items = _read(captions, images, only, split)
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
        from training.backbone_weights import load_backbone_weights

        backbone_state = load_backbone_weights(backbone_weights)
        config = dataclasses.replace(
            config, backbone=dataclasses.replace(config.backbone, weights=f"converted from {Path(backbone_weights).name}")
        )
    if labels_file is not None:
        if not config.backbone.has_classifier:
            raise ImgsearchError(f"--labels needs a backbone with a classifier (mobilenet_v2), not {preset_name}.")
        labels = tuple(line.strip() for line in Path(labels_file).read_text().splitlines() if line.strip())
        config = dataclasses.replace(config, image_labels=labels)
    if zero_shot_weight:
        if not config.image_labels:
            raise ImgsearchError("--zero-shot-weight needs the classifier's class names: pass --labels FILE.")
        config = dataclasses.replace(config, zero_shot_weight=zero_shot_weight)
    model = AlignmentModel.initialize(config, backbone_state)
    train_config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, loss=loss, itm_weight=itm_weight, local_weight=local_weight, scorer_epochs=scorer_epochs,
        scorer_lr=scorer_lr, hard_share=hard_share, val_fraction=val_fraction,
        backbone_mode=backbone_mode or default_mode, augment=not no_augment, seed=seed, workers=workers,
        time_limit_s=time_limit * 60 if time_limit else None,
    )
    summary = train(model, items, out, train_config, resume=resume)
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


@click.command("eval", context_settings=CONTEXT)
@captions_argument
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False), help="Alignment model directory.")
@images_option
@only_option
@split_option
@click.option("--rerank-depth", default=20, show_default=True, type=click.IntRange(min=1),
              help="Candidates per query that the re-ranker reorders.")
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="Decoding processes.")
@json_option
@user_errors
def eval_command(captions, model, images, only, split, rerank_depth, device, workers, as_json) -> None:
    """Recall@1/5/10 (text->image, image->text), first stage and re-ranked.

    \b
    Example:
      imgsearch eval ../shared/data/flickr8k/captions.tsv --images ../shared/data/flickr8k/images \\
          --only ../shared/data/flickr8k/dev.txt --model my-model
    """
    from search.alignment import AlignmentModel
    from training.data import encode_captions, load_images
    from training.evaluate import evaluate, format_table

    items = _read(captions, images, only, split)
    loaded = AlignmentModel.from_pretrained(model, device=device)
    bank_images = load_images(items, loaded.config.backbone.image_size, workers)
    for path, error in bank_images.failures:
        click.echo(f"skipped {path}: {error}", err=True)
    bank = encode_captions(loaded.text, bank_images.items, cache_states=False)
    result = evaluate(loaded, bank_images.pixels, bank, rerank_depth)
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))
