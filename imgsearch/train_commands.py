"""`imgsearch train` and `imgsearch eval`: options --> training/run.py --> printed results.
Training code is imported only when they run. Training progress is logged (imgsearch.training
at INFO) and shown on stderr without -v; the summary goes to stdout."""

from __future__ import annotations

import json
import logging

import click

from imgsearch.common import CONTEXT, WholeNumber, json_option, keep_freed_memory_on_cpu, user_errors
from imgsearch.search.defaults import DEFAULT_CANDIDATES
from imgsearch.training.config import TrainConfig  # the options' defaults (no heavy imports)

captions_argument = click.argument("captions", type=click.Path(exists=True, dir_okay=False))
images_option = click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder the captions' image paths are relative to (default: the captions file's folder).",
)
only_option = click.option(
    "--only",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="File listing the image names to use, one per line (e.g. Flickr8k's train.txt).",
)
split_option = click.option("--split", default=None, help="Karpathy JSON split to use (train, val, test, restval).")
# eval's and calibrate's: a trained model directory, where it runs, and the decoding processes
model_dir_option = click.option(
    "--model", required=True, type=click.Path(exists=True, file_okay=False), help="Alignment model directory."
)
device_option = click.option("--device", default="auto", show_default=True)
decode_workers_option = click.option(
    "--workers", default=0, show_default=True, type=WholeNumber(min=0), help="Decoding processes."
)


@click.command("train", context_settings=CONTEXT)
@captions_argument
@images_option
@only_option
@split_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for the trained model.")
@click.option(
    "--preset",
    "preset_name",
    default="small",
    show_default=True,
    type=click.Choice(["scenes", "small", "mobilenet_v2", "efficientnet_lite0", "vgg16"]),
    help="Starting model configuration.",
)
@click.option(
    "--backbone-weights",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Pretrained backbone weights (mobilenet_v2: the TFLite file or its converted .safetensors).",
)
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Class names of the backbone's classifier, one a line (mobilenet_v2: imagenet_labels.txt), "
    "stored in the model so that indexed images get labels.",
)
@click.option("--text-encoder", default=None, help="Transformers name or local directory of a BERT-family encoder.")
@click.option(
    "--backbone-mode",
    type=click.Choice(["scratch", "finetune", "frozen"]),
    default=None,
    help="Train the backbone from scratch, fine-tune it, or freeze it (default: the preset's).",
)
@click.option("--epochs", default=TrainConfig.epochs, show_default=True, type=WholeNumber(min=1))
@click.option("--batch-size", default=TrainConfig.batch_size, show_default=True, type=WholeNumber(min=2))
@click.option("--lr", default=TrainConfig.lr, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option(
    "--loss",
    type=click.Choice(["infonce", "vsepp"]),
    default=TrainConfig.loss,
    show_default=True,
    help="Contrastive loss of the dual encoder.",
)
@click.option(
    "--itm-weight",
    default=TrainConfig.itm_weight,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Weight of a joint ITM loss in the first stage (0: the scorer trains in the second stage only).",
)
@click.option(
    "--local-weight",
    default=TrainConfig.local_weight,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Weight of a first-stage contrastive loss on the re-ranker's token-region alignment term.",
)
@click.option(
    "--zero-shot-weight",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Weight of the zero-shot ImageNet score in the first stage (needs --labels; "
    "model/zero_shot.py). Stored in the model; it does not change training.",
)
@click.option(
    "--zero-shot-texts",
    type=click.Choice(["names", "wordnet"]),
    default="names",
    show_default=True,
    help="What the zero-shot score compares a query with: each class's names as --labels gives them, "
    "or its first name and WordNet parent (ImageNet classes; model/imagenet_class_texts.tsv).",
)
@click.option(
    "--zero-shot-temperature",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="0: a class matches a query by cosine; T > 0: by the softmax over all classes of cosine / T.",
)
@click.option(
    "--scorer-layers",
    default=None,
    type=WholeNumber(min=0),
    help="Attention layers of the re-ranker (default: the preset's). 0 keeps only its "
    "token-region alignment term (with --local-weight, trained in the first stage).",
)
@click.option(
    "--scorer-epochs",
    default=TrainConfig.scorer_epochs,
    show_default=True,
    type=WholeNumber(min=0),
    help="Epochs of the second stage: the re-ranker on the frozen dual encoder.",
)
@click.option(
    "--hard-share",
    default=TrainConfig.hard_share,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Share of the re-ranker's negatives mined from the first stage (the rest are uniform).",
)
@click.option(
    "--scorer-lr",
    default=TrainConfig.scorer_lr,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Learning rate of the second stage.",
)
@click.option(
    "--val-fraction",
    default=TrainConfig.val_fraction,
    show_default=True,
    type=click.FloatRange(0, 0.5),
    help="Share of the images held out to choose the re-ranker's epoch and fusion weight (0: none).",
)
@click.option(
    "--mix",
    "mix_captions",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A second captions file (e.g. webcaps) whose images fill --mix-share of every first-stage batch.",
)
@click.option(
    "--mix-images",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder of --mix's images (default: the captions file's folder).",
)
@click.option(
    "--mix-share",
    default=TrainConfig.mix_share,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of each first-stage batch drawn from --mix.",
)
@click.option(
    "--multi-positive",
    is_flag=True,
    default=TrainConfig.multi_positive,
    help="Every caption of each batch image joins the batch (all are its positives), not one drawn at random.",
)
@click.option(
    "--hubness-weight",
    default=TrainConfig.hubness_weight,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Weight of the hubness correction in the first stage (model/hubness.py; 0: none). "
    "The model keeps a bank of training caption vectors for it.",
)
@click.option("--no-augment", is_flag=True, help="No random resized crops.")
@click.option("--seed", default=TrainConfig.seed, show_default=True, type=WholeNumber())
@click.option(
    "--time-limit", default=None, type=click.FloatRange(min=0, min_open=True), help="Stop after this many minutes."
)
@click.option(
    "--workers", default=TrainConfig.workers, show_default=True, type=WholeNumber(min=0), help="Decoding processes."
)
@click.option("--resume", is_flag=True, help="Continue from OUT/training-state.pt.")
@user_errors
def train_command(
    captions,
    images,
    only,
    split,
    out,
    preset_name,
    backbone_weights,
    labels_file,
    text_encoder,
    backbone_mode,
    epochs,
    batch_size,
    scorer_layers,
    zero_shot_weight,
    zero_shot_texts,
    zero_shot_temperature,
    lr,
    loss,
    itm_weight,
    local_weight,
    scorer_epochs,
    hard_share,
    scorer_lr,
    val_fraction,
    mix_captions,
    mix_images,
    mix_share,
    multi_positive,
    hubness_weight,
    no_augment,
    seed,
    time_limit,
    workers,
    resume,
) -> None:
    """Train an alignment model on captioned images and save it to --out.

    CAPTIONS is a TSV/CSV (image and caption columns), JSON Lines, a
    Flickr8k/30k token file (name.jpg#N<TAB>caption), COCO captions JSON or a
    Karpathy split JSON. Any number of captions per image.

    \b
    Example:
      python data/scenes.py scenes --count 3000 --swaps
      imgsearch train scenes/captions.tsv --preset scenes --epochs 40 --out my-model
    """
    from imgsearch.training.run import build_model, check_output_dir, read_dataset, train_model

    show_training_progress()
    check_output_dir(out, resume)  # before reading a large dataset
    dataset = read_dataset(captions, images, only, split)
    mix = read_dataset(mix_captions, mix_images) if mix_captions else None
    model, default_mode = build_model(
        preset_name,
        backbone_weights=backbone_weights,
        labels_file=labels_file,
        text_encoder=text_encoder,
        scorer_layers=scorer_layers,
        zero_shot_weight=zero_shot_weight,
        zero_shot_texts=zero_shot_texts,
        zero_shot_temperature=zero_shot_temperature,
        seed=seed,
    )
    train_config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        loss=loss,
        itm_weight=itm_weight,
        local_weight=local_weight,
        scorer_epochs=scorer_epochs,
        scorer_lr=scorer_lr,
        hard_share=hard_share,
        val_fraction=val_fraction,
        backbone_mode=backbone_mode or default_mode,
        augment=not no_augment,
        seed=seed,
        workers=workers,
        time_limit_s=time_limit * 60 if time_limit else None,
        multi_positive=multi_positive,
        mix_share=mix_share,
        hubness_weight=hubness_weight,
    )
    keep_freed_memory_on_cpu(model.device)
    summary = train_model(model, dataset, out, train_config, resume=resume, mix=mix)
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


def show_training_progress() -> None:
    """Let training's INFO lines (epochs, validation, the kept re-ranker) through the CLI's
    WARNING-level logging: a training run is long and its progress is what the user waits for."""
    training_log = logging.getLogger("imgsearch.training")
    if training_log.getEffectiveLevel() > logging.INFO:
        training_log.setLevel(logging.INFO)


@click.command("eval", context_settings=CONTEXT)
@captions_argument
@model_dir_option
@images_option
@only_option
@split_option
@click.option(
    "--rerank-depth",
    default=20,
    show_default=True,
    type=WholeNumber(min=1),
    help="Image->text: captions per image that the re-ranker reorders.",
)
@click.option(
    "--candidates",
    default=DEFAULT_CANDIDATES,
    show_default=True,
    type=WholeNumber(min=1),
    help="Text->image: first-stage candidates per caption, re-ranked as `imgsearch search` does.",
)
@device_option
@decode_workers_option
@json_option
@user_errors
def eval_command(captions, model, images, only, split, rerank_depth, candidates, device, workers, as_json) -> None:
    """Recall@1/5/10 (text->image, image->text), first stage and re-ranked.

    Text->image is ranked as `imgsearch search` ranks (training/evaluate.py's
    search_t2i_ranks): its first-stage numbers are search with --no-rerank.

    \b
    Example:
      imgsearch eval flickr8k/captions.tsv --images flickr8k/images \\
          --only flickr8k/dev.txt --model my-model
    """
    from imgsearch.model.device import resolve_device
    from imgsearch.training.evaluate import format_table
    from imgsearch.training.run import evaluate_model, read_dataset

    dataset = read_dataset(captions, images, only, split)
    keep_freed_memory_on_cpu(resolve_device(device))
    result = evaluate_model(
        model,
        dataset,
        rerank_depth=rerank_depth,
        candidates=candidates,
        device=device,
        workers=workers,
        on_skip=lambda path, error: click.echo(f"skipped {path}: {error}", err=True),
    )
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


# Fewer held-out photos than this give each half of the held-out fit too few matches to mean anything.
MIN_CALIBRATION_IMAGES = 50


@click.command("calibrate", context_settings=CONTEXT)
@captions_argument
@model_dir_option
@images_option
@only_option
@split_option
@click.option(
    "--candidates",
    default=DEFAULT_CANDIDATES,
    show_default=True,
    type=WholeNumber(min=1),
    help="First-stage candidates per query, scored as `imgsearch search` scores them.",
)
@click.option("--report", type=click.Path(dir_okay=False), help="Also write the held-out report (markdown) here.")
@device_option
@decode_workers_option
@user_errors
def calibrate_command(captions, model, images, only, split, candidates, report, device, workers) -> None:
    """Fit the model's relevance scale: its scores turned into the estimated
    probability that a photo matches, which search shows and --min-score
    filters on. Give captioned photos the model was not trained on (Flickr8k's
    dev split for the packaged models). Writes calibration.json beside the
    model (not part of its fingerprint: indexes made with it stay valid) and
    prints the held-out calibration and the precision and recall of the
    good-match band. training/calibration.py says how "matches" is judged.

    \b
    Example:
      imgsearch calibrate flickr8k/captions.tsv --images flickr8k/images \\
          --only flickr8k/dev.txt --model my-model
    """
    from pathlib import Path

    from imgsearch.model.alignment import AlignmentModel
    from imgsearch.model.device import resolve_device
    from imgsearch.training.calibration import calibrate
    from imgsearch.training.run import read_dataset

    if report and not Path(report).resolve().parent.is_dir():
        raise click.BadParameter(f"there is no folder {Path(report).parent} to write it in.", param_hint="'--report'")
    dataset = read_dataset(captions, images, only, split)
    if len(dataset) < MIN_CALIBRATION_IMAGES:
        raise click.ClickException(
            f"the captions name {len(dataset)} images; calibrating needs at least {MIN_CALIBRATION_IMAGES} "
            "captioned photos the model did not train on (Flickr8k dev has 1,000)."
        )
    torch_device = resolve_device(device)
    keep_freed_memory_on_cpu(torch_device)
    aligned = AlignmentModel.from_pretrained(model, device=torch_device)
    described = f"{Path(captions).name}" + (f", {Path(only).name}" if only else f", split {split}" if split else "")
    run = calibrate(
        aligned,
        dataset,
        candidates=candidates,
        workers=workers,
        describe=described,
        progress=lambda line: click.echo(line, err=True),
    )
    written = run.calibration.save(model)
    if report:
        Path(report).write_text(run.report + "\n")
    click.echo(run.report)
    click.echo(f"wrote {written}", err=True)
