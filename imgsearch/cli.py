"""The `imgsearch` command line: parse, call one library function, print.

Results go to stdout (a table, or JSON with --json); progress and logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from imgsearch.common import CONTEXT, Date, Relevance, WholeNumber, json_option, keep_freed_memory_on_cpu, user_errors
from imgsearch.ground.errors import ModelNotFound
from imgsearch.ground.locations import default_index_dir
from imgsearch.model.packaged import PACKAGED_MODELS, default_model_dir
from imgsearch.search.defaults import DEFAULT_CANDIDATES
from imgsearch.train_commands import calibrate_command, eval_command, train_command

# Only light modules above: `imgsearch --help`, `--version` and `CMD -h` answer without
# loading torch (tests/test_cli_start.py). Each command imports what it runs.

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report a Ctrl-C


class _DefaultIndexDir:
    """--index's default, read when a command runs (HOME and XDG_DATA_HOME then); --help shows it."""

    def __call__(self) -> str:
        return str(default_index_dir())

    def __str__(self) -> str:
        return self()


class _PackagedModel:
    """--model's default: none, so an existing index uses its recorded model and a new one
    the packaged photo model (Index.open_or_create decides); --help shows that model's path."""

    def __call__(self) -> None:
        return None

    def __str__(self) -> str:
        try:
            return f"the packaged photo model, {default_model_dir()}"
        except ModelNotFound:
            return "the packaged photo model (missing from this installation)"


index_option = click.option(
    "--index",
    "index_dir",
    default=_DefaultIndexDir(),
    show_default=True,
    envvar="IMGSEARCH_INDEX",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Index directory (env IMGSEARCH_INDEX); without either, $XDG_DATA_HOME/imgsearch/index, "
    "else ~/.local/share/imgsearch/index.",
)


class _ModelParam(click.Path):
    """--model: a packaged model's name (photo, fast) or an existing model directory."""

    name = "model"

    def __init__(self) -> None:
        super().__init__(exists=True, file_okay=False)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value in PACKAGED_MODELS and not os.path.exists(value):
            return value
        return super().convert(value, param, ctx)


create_model_option = click.option(
    "--model",
    envvar="IMGSEARCH_MODEL",
    metavar="NAME|DIR",
    default=_PackagedModel(),
    show_default=True,
    type=_ModelParam(),
    help="Model for a new index (env IMGSEARCH_MODEL): 'photo' (the default: EfficientNet-Lite0, "
    "better results), 'fast' (MobileNetV2: finds the right photo less often; indexes about 1.35x "
    "faster where torch runs it, a GPU or no onnxruntime) or an alignment model directory. An existing "
    "index uses the model it was made with (a different one is refused).",
)
model_option = click.option(
    "--model",
    envvar="IMGSEARCH_MODEL",
    metavar="NAME|DIR",
    default=None,
    type=_ModelParam(),
    help="Model (env IMGSEARCH_MODEL): a packaged model's name (photo, fast) or a directory. By "
    "default the one the index records; a different one is refused.",
)
device_option = click.option(
    "--device", default="auto", show_default=True, help="'auto' (CUDA when present, else CPU), 'cpu' or 'cuda'."
)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="imgsearch-offline", prog_name="imgsearch")
@click.option("-v", "--verbose", is_flag=True, help="Log more on stderr.")
def cli(verbose: bool) -> None:
    """Find images in your photo folders by describing them in words.

    Without --index, the index lives in $XDG_DATA_HOME/imgsearch/index
    (~/.local/share/imgsearch/index); a new index uses the photo model packaged
    with imgsearch unless --model says otherwise.

    \b
    Example:
      imgsearch index ~/Pictures
      imgsearch search "a dog running on the beach"
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr, format="%(levelname)s: %(message)s"
    )


@cli.command("index", context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@index_option
@create_model_option
@click.option("--batch-size", default=32, show_default=True, type=WholeNumber(min=1), help="Images per forward pass.")
@click.option("--workers", default=None, type=WholeNumber(min=0), help="Decoding processes (default: spare cores).")
@click.option(
    "--prune/--no-prune",
    default=True,
    show_default=True,
    help="Remove indexed files under the given folders that no longer exist. Files indexed "
    "from other folders are never removed.",
)
@device_option
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Embed on Ray actors (one per GPU, else per CPU; needs `pip install 'imgsearch-offline[ray]'`): "
    "alone, on a new local Ray; with an address (HOST:PORT, ray://HOST:PORT, auto), on that cluster, "
    "whose nodes must see the files and the model at the same paths. Give it after the paths "
    "(or as --ray=ADDRESS). --workers and --device then do not apply.",
)
@click.option(
    "--shard-size",
    default=256,
    show_default=True,
    type=WholeNumber(min=1),
    help="With --ray: files per shard, the unit of work of an actor.",
)
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bar (there is none either when stderr is not a terminal)."
)
@json_option
@user_errors
def index_command(
    paths, index_dir, model, batch_size, workers, prune, device, ray_address, shard_size, quiet, as_json
) -> None:
    """Index image files and folders (recursively) into an index directory.

    Creates the index on first use, with --model or else the packaged photo
    model; later runs use the model the index records. Runs are
    incremental: files with the same size and mtime are skipped, and a file
    whose content is already indexed (a copy, a move or a rename, told by its
    sha256) keeps its vectors without re-running the model. Files that are gone
    from the given folders leave the index (--no-prune keeps them). Unreadable
    files are recorded with the reason (see `imgsearch errors`) and the run goes
    on; they are retried once they change. Ctrl-C stops after the current batch
    and keeps everything done so far; a killed run is finished by running it again.

    \b
    Example:
      imgsearch index ~/Pictures /mnt/photos
      imgsearch index data/photos --index demo-out/index --model my-model
      imgsearch index /mnt/archive --ray 10.0.0.5:6379
    """
    from imgsearch.ground.interrupt import stop_on_interrupt
    from imgsearch.index import Index
    from imgsearch.indexer.files import input_roots
    from imgsearch.progress import ProgressBar

    input_roots(paths)  # a path that does not exist is an error before any index is made
    ray = None if ray_address is None else True if ray_address == "local" else ray_address
    if ray is not None:
        from imgsearch.indexer.ray_engine import require_ray

        require_ray()  # before any index is made
    if ray is None:  # on Ray, each actor's process sees to its own (indexer/ray_engine.py)
        keep_freed_memory_on_cpu(device)  # before any index is made: a bad --device is said first
    with Index.open_or_create(index_dir, model, device) as index:
        bar = ProgressBar(sys.stderr, quiet=quiet)
        with stop_on_interrupt() as stop:
            try:
                summary = index.add(
                    paths,
                    batch_size=batch_size,
                    workers=workers,
                    progress=bar,
                    prune=prune,
                    should_stop=stop,
                    ray=ray,
                    shard_size=shard_size,
                )
            except BaseException:
                index.discard_if_empty()  # a failed first run leaves no empty index behind
                raise
            finally:
                bar.finish()
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        click.echo(
            f"added {summary.added}, updated {summary.updated}, moved {summary.moved}, "
            f"removed {summary.removed}, unchanged {summary.unchanged}, failed {summary.failed}"
            + (f" ({_still_failing(len(summary.still_failing))})" if summary.still_failing else "")
            + f"; {_speed_note(summary)}"
        )
        for path, error in summary.failures:
            click.echo(f"  failed: {path}: {error}", err=True)
        for path, error in summary.still_failing:
            click.echo(f"  still failing: {path}: {error}", err=True)
    if summary.interrupted:
        click.echo(
            "interrupted: everything counted above is stored; run the same command again to index the rest.", err=True
        )
        sys.exit(INTERRUPTED_EXIT_CODE)


def _still_failing(count: int) -> str:
    """'and 1 unchanged file still fails' / 'and 2 unchanged files still fail'."""
    return f"and {count} unchanged file still fails" if count == 1 else f"and {count} unchanged files still fail"


def _speed_note(summary) -> str:
    """'1.4 s, 300 new images embedded at 212.5 images/s' or '0.3 s, nothing new to embed'."""
    if not summary.embedded:
        return f"{summary.seconds:.1f} s, nothing new to embed"
    return (
        f"{summary.seconds:.1f} s, {summary.embedded} new images embedded at {summary.images_per_second:.1f} images/s"
    )


precision_option = click.option(
    "--precision",
    type=click.Choice(["auto", "float32", "bfloat16"]),
    default="auto",
    show_default=True,
    help="Re-ranker arithmetic: auto is bfloat16 where the hardware runs it natively (a GPU, a CPU with "
    "AVX512-BF16 or AMX), about 3x faster; float32 gives the reference scores.",
)


@cli.command("search", context_settings=CONTEXT)
@click.argument("query", required=False)
@click.option(
    "--image",
    "image",
    metavar="PATH",
    type=click.Path(exists=True, dir_okay=False),
    help="Search with a photo instead of words: images that look like it.",
)
@click.option(
    "--like",
    "like",
    metavar="PATH_OR_ID",
    help="More like an indexed image, given by its path or its id (--json shows ids); it and its byte-identical "
    "copies are left out.",
)
@index_option
@model_option
@click.option("-k", "--top", "k", default=10, show_default=True, type=WholeNumber(min=1), help="Results to show.")
@click.option(
    "--under",
    "under",
    metavar="FOLDER",
    type=click.Path(file_okay=False),
    help="Only images inside this folder (and its subfolders).",
)
@click.option(
    "--after",
    "taken_after",
    metavar="DATE",
    type=Date(),
    help="Only photos dated on or after DATE (YYYY-MM-DD): the date taken (EXIF), or the file's date for a "
    "photo that has none.",
)
@click.option(
    "--before",
    "taken_before",
    metavar="DATE",
    type=Date(),
    help="Only photos dated on or before DATE (YYYY-MM-DD), dated as --after dates them.",
)
@click.option(
    "--min-score",
    type=Relevance(),
    metavar="P",
    help="Only images at least this likely to match (the 'match' column): 0.5 or 50% keeps the good matches. "
    "Needs a calibrated model (the packaged ones are).",
)
@click.option(
    "--candidates",
    default=DEFAULT_CANDIDATES,
    show_default=True,
    type=WholeNumber(min=1),
    help="First-stage candidates handed to the re-ranker.",
)
@click.option("--no-rerank", is_flag=True, help="Skip re-ranking by the scorer; rank by the first stage alone.")
@click.option(
    "--keep-duplicates",
    is_flag=True,
    help="List near-duplicates (one photo at two sizes, re-saved, copied) as results of their own; by default "
    "each folds into the best-ranked one ('+1 near-duplicate').",
)
@precision_option
@device_option
@json_option
@user_errors
def search_command(
    query,
    image,
    like,
    index_dir,
    model,
    k,
    under,
    taken_after,
    taken_before,
    min_score,
    candidates,
    no_rerank,
    keep_duplicates,
    precision,
    device,
    as_json,
) -> None:
    """Find the images that best match a text description, a photo (--image),
    or an indexed image (--like).

    The table shows each result's rank and how likely it is to match: the
    model's score turned into an estimated probability, fitted on captioned
    photos the model never trained on (the good matches, at least 50%, come
    first; a line marks where the weaker ones start). --json has the raw
    scores too: the final score that orders the list (the re-ranker's plus the
    model's fusion weight times the first stage's) and the first stage's
    (cosine similarity in the shared space, plus the weighted label score). A
    model without a calibration shows the raw scores in the table.

    \b
    Example:
      imgsearch search "a dog on the beach" -k 5
      imgsearch search "a parrot" --index demo-out/index -k 3 --json
      imgsearch search "birthday cake" --under ~/Pictures/2023 --after 2023-06-01
      imgsearch search --image ~/Downloads/beach.jpg
      imgsearch search --like ~/Pictures/cat.jpg
    """
    _check_one_query(query, image, like)
    options = dict(
        image=image,
        like=None if like is None else _image_ref(like),
        under=under,
        taken_after=taken_after,
        taken_before=taken_before,
        min_score=min_score,
        candidates=candidates,
        rerank=not no_rerank,
        rerank_precision=precision,
        collapse_duplicates=not keep_duplicates,
    )
    _check_search_early(index_dir, query, k, **options)
    from imgsearch.ground.threads import QUERY_THREADS, use_threads
    from imgsearch.index import Index

    use_threads(QUERY_THREADS)  # one query is small work (ground/threads.py)
    with Index.open(index_dir, model, device) as index:
        if image is not None:
            keep_freed_memory_on_cpu(index.device)
        page = index.search_page(query, k, **options)
    if not page.results and under is not None and not os.path.isdir(os.path.expanduser(under)):
        # a folder that is gone may still have images in the index (an unplugged drive); only
        # when nothing is found is its absence the answer
        raise click.ClickException(f"--under: there is no folder {under}, and the index holds no images under it.")
    if as_json:
        asked = {"query": query} if query is not None else {"image": image} if image is not None else {"like": like}
        click.echo(
            json.dumps(
                {
                    **asked,
                    "reranked": page.reranked,
                    "good_matches": page.good_matches,
                    "good_matches_complete": page.good_matches_complete,
                    "good_threshold": page.good_threshold,
                    "results": [r.to_dict() for r in page.results],
                    "timings_ms": page.timings_ms,
                    "warnings": page.warnings,
                },
                indent=2,
            )
        )
        return
    for warning in page.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if not page.results:
        if under or taken_after or taken_before:
            message = "no images match; add some with `imgsearch index`, or loosen the filters."
        elif min_score is not None:
            message = f"no photos are at least {min_score:.0%} likely to match; lower --min-score."
        else:
            message = "no images in the index yet; add some with `imgsearch index`."
        click.echo(message, err=True)
    else:
        if (summary := _good_summary(page)) is not None:
            click.echo(summary)
        click.echo(_results_table(page.results, reranked=page.reranked, good=page.good_threshold))


@cli.command("rerank", context_settings=CONTEXT)
@click.argument("query")
@click.argument("images", nargs=-1, required=True, metavar="PATH_OR_ID...")
@index_option
@model_option
@precision_option
@device_option
@json_option
@user_errors
def rerank_command(query, images, index_dir, model, precision, device, as_json) -> None:
    """Order the given images for a text description with the re-ranker (the
    scorer) alone. Indexed images (by path or id) are scored from their stored
    regions; other image files are read and encoded now. The table is search's.

    \b
    Example:
      imgsearch rerank "a dog on the beach" ~/Pictures/a.jpg ~/Pictures/b.jpg 17
    """
    from imgsearch.ground.threads import QUERY_THREADS, use_threads
    from imgsearch.index import Index

    use_threads(QUERY_THREADS)
    refs = [_image_ref(item) for item in images]
    with Index.open(index_dir, model, device) as index:
        if any(isinstance(ref, str) for ref in refs):  # a file may be encoded now
            keep_freed_memory_on_cpu(index.device)
        results = index.rerank(query, refs, rerank_precision=precision)
    if as_json:
        click.echo(json.dumps({"query": query, "reranked": True, "results": [r.to_dict() for r in results]}, indent=2))
    else:
        from imgsearch.model.calibration import GOOD_MATCH

        calibrated = bool(results) and results[0].relevance is not None
        click.echo(_results_table(results, reranked=True, good=GOOD_MATCH if calibrated else None))


@cli.command("serve", context_settings=CONTEXT)
@index_option
@model_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback lets others on the network see every indexed photo.",
)
@click.option("--port", default=8000, show_default=True, type=WholeNumber(min=0, max=65535), help="TCP port.")
@device_option
@user_errors
def serve_command(index_dir, model, host, port, device) -> None:
    """Serve the index as a web page and a JSON API (docs at /docs), read-only.

    The model loads once; open the printed address in a browser. New images that
    `imgsearch index` adds to the same index meanwhile show up in searches.

    \b
    Example:
      imgsearch serve
      imgsearch serve --index demo-out/index --port 8080
    """
    from imgsearch.server.run import serve

    serve(index_dir, model=model, host=host, port=port, device=device)


def _check_one_query(query, image, like) -> None:
    """The library's check that exactly one of QUERY, --image and --like is given (made before
    the index is opened), its error said as a usage error in the command's words."""
    from imgsearch.ground.errors import InvalidQuery
    from imgsearch.search.arguments import query_kind

    try:
        query_kind(query, image, like)
    except InvalidQuery:
        given = [flag for flag, value in (("QUERY", query), ("--image", image), ("--like", like)) if value is not None]
        raise click.UsageError(
            "give exactly one of QUERY, --image PATH or --like PATH_OR_ID"
            + (f" (got {' and '.join(given)})." if given else ".")
        ) from None


def _check_search_early(index_dir: str, query, k: int, **options) -> None:
    """What Index.search_page will check (search/arguments.py) and whether there is an index,
    asked before torch, FAISS or the model load: a mistake is answered in a fraction of a second.
    Light imports only."""
    from pathlib import Path

    from imgsearch.search.arguments import check_search
    from imgsearch.storage.manifest import read_index_manifest

    check_search(query, k, **options)
    read_index_manifest(Path(os.path.expanduser(index_dir)))


def _image_ref(text: str) -> int | str:
    """A PATH_OR_ID argument: digits alone are an image id (write ./123 for a file named 123)."""
    return int(text) if text.isdigit() else text


def _results_table(results, *, reranked: bool, good: float | None = None) -> str:
    """The search results as a table with a header.

    With a calibrated model (`good`: its good-match threshold), each result's relevance (the
    estimated probability that it matches, in percent) and a line between the good matches and
    the weaker ones; the raw scores are --json's. Without one, the raw scores: re-ranked, the
    final one (ordering this list) and the first stage's with the rank it gave."""
    if good is not None and all(r.relevance is not None for r in results):
        lines = [f"{'rank':>4}  {'match':>5}  path  [labels]"]
        for n, r in enumerate(results):
            if r.relevance < good and n and results[n - 1].relevance >= good:  # (none good: the summary says so)
                lines.append(f"{'':4}  {'':5}  -- weaker matches (under {good:.0%}) --")
            lines.append(f"{r.rank:4d}  {r.relevance:5.0%}  {r.path}{_copies_note(r)}{_label_note(r.labels)}")
    elif reranked:
        lines = [f"{'rank':>4}  {'score':>8}  {'first stage (rank)':>18}  path  [labels]"]
        for r in results:
            first = f"{r.first_stage_score:.4f} (#{r.first_stage_rank})"
            lines.append(f"{r.rank:4d}  {r.score:8.4f}  {first:>18}  {r.path}{_copies_note(r)}{_label_note(r.labels)}")
    else:
        lines = [f"{'rank':>4}  {'first stage':>11}  path  [labels]"]
        for r in results:
            lines.append(f"{r.rank:4d}  {r.score:11.4f}  {r.path}{_copies_note(r)}{_label_note(r.labels)}")
    return "\n".join(lines)


def _copies_note(result) -> str:
    """'  (+1 near-duplicate)' when near-duplicates folded into this result, else ''."""
    count = len(result.near_duplicates)
    return f"  (+{count} near-duplicate{'s' if count > 1 else ''})" if count else ""


def _good_summary(page) -> str | None:
    """'3 good matches; 7 weaker shown' (what the page's results hold), or None without a calibration."""
    if page.good_matches is None:
        return None
    count = f"{page.good_matches}{'' if page.good_matches_complete else '+'}"
    shown_weaker = sum(1 for r in page.results if r.relevance is not None and r.relevance < page.good_threshold)
    head = "no good matches" if not page.good_matches else f"{count} good match{'es' if count != '1' else ''}"
    return f"{head}; {shown_weaker} weaker shown" if shown_weaker else head


SHOWN_LABELS = 2  # at most, in the search table
# Classifier probability a label needs to be shown there: the page's detail view's (only
# labels the model is fairly sure of; an ImageNet label at 20% is often absurd).
SHOWN_LABEL_MIN_SCORE = 0.5


def _label_note(labels: list[dict]) -> str:
    """'  [golden retriever 82%]': the image's top 1-2 labels with probability >= 0.5, or ''."""
    shown = [
        f"{_short(item['label'])} {item['score']:.0%}" for item in labels if item["score"] >= SHOWN_LABEL_MIN_SCORE
    ][:SHOWN_LABELS]
    return f"  [{', '.join(shown)}]" if shown else ""


@cli.command("info", context_settings=CONTEXT)
@index_option
@json_option
@user_errors
def info_command(index_dir, as_json) -> None:
    """Describe an index: image counts, failures, model and files.

    \b
    Example:
      imgsearch info
      imgsearch info --index demo-out/index --json
    """
    from imgsearch.index import Index

    with Index.open(index_dir) as index:
        info = index.info()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    manifest = info["manifest"]
    click.echo(f"index:      {info['directory']}")
    click.echo(f"images:     {info['images']} indexed, {info['failed']} failed (see `imgsearch errors`)")
    for reason, count in info["failures_by_reason"].items():
        click.echo(f"            {count:6d} failed: {reason}")
    click.echo(
        f"vectors:    {info['vectors']} x {manifest['embed_dim']} ({manifest['metric']}), "
        f"{manifest['num_regions']} regions per image ({manifest['region_dtype']})"
    )
    click.echo(f"labels:     {_labels_summary(info['labels'], info['images'])}")
    click.echo(
        f"model:      {manifest['model']['path']} ({manifest['model']['fingerprint'][:12]}"
        f"{_packaged_note(manifest['model']['path'])})"
    )
    click.echo(f"backbone:   {manifest['model']['backbone']}")
    click.echo(f"text:       {manifest['model']['text_encoder']}")
    click.echo(f"relevance:  {_relevance_summary(info['relevance'])}")
    click.echo(f"disk:       {sum(info['bytes_on_disk'].values()):,} bytes")


def _relevance_summary(relevance: dict | None) -> str:
    """info's line on the model's relevance scale (model/calibration.py)."""
    if relevance is None:
        return "none: the model has no calibration.json, so results show raw scores (`imgsearch calibrate`)"
    fitted = relevance["fitted_on"]
    near = relevance["near_duplicate_cosine"]
    return (
        f"calibrated on {fitted.get('data', '?')} ({fitted.get('images', 0):,} photos); good match at "
        f"{relevance['good_match']:.0%}; near-duplicates at cosine {near if near is not None else '1 (same file)'}"
    )


def _short(label: str) -> str:
    """An ImageNet class name's first synonym ('hotdog, hot dog, red hot' --> 'hotdog') for the
    terminal; --json keeps the full name."""
    return label.split(",")[0].strip() or label


def _labels_summary(labels: dict, images: int) -> str:
    """'golden retriever (12), tabby (3), ... (top-1, 15 of 16 images labelled)', or why there are none."""
    if not labels["top1"]:
        return "none stored (the model has no classifier, or the images were indexed before labels were kept)"
    counts = ", ".join(f"{_short(item['label'])} ({item['images']})" for item in labels["top1"])
    return f"{counts} (top-1, {labels['labeled_images']} of {images} images labelled)"


@cli.command("errors", context_settings=CONTEXT)
@index_option
@json_option
@user_errors
def errors_command(index_dir, as_json) -> None:
    """List files that could not be indexed, with the reason.

    \b
    Example:
      imgsearch errors
    """
    from imgsearch.index import Index

    with Index.open(index_dir) as index:
        failures = index.failures()
    if as_json:
        click.echo(json.dumps(failures, indent=2))
        return
    if not failures:
        click.echo(f"no failed files in {index_dir}.", err=True)
    for failure in failures:
        click.echo(f"{failure['path']}: {failure['error']}")


def _packaged_note(model_path: str) -> str:
    from imgsearch.model.packaged import packaged_model_dir

    for name in PACKAGED_MODELS:
        try:
            if str(packaged_model_dir(name)) == model_path:
                return f", the packaged {name} model"
        except ModelNotFound:
            continue
    return ""


cli.add_command(train_command)
cli.add_command(eval_command)
cli.add_command(calibrate_command)


def main(args: list[str] | None = None) -> None:
    cli(args=args, prog_name="imgsearch")
