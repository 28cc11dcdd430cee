"""The `imgsearch` command line: parse, call one library function, print.

Results go to stdout (a table, or JSON with --json); progress and logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import sys

import click

from imgsearch.common import CONTEXT, json_option, user_errors
from imgsearch.index import Index
from imgsearch.interrupt import stop_on_interrupt
from imgsearch.progress import ProgressBar
from imgsearch.train_commands import eval_command, train_command
from search.searcher import DEFAULT_CANDIDATES

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report a Ctrl-C

index_option = click.option(
    "--index", "index_dir", required=True, envvar="IMGSEARCH_INDEX", metavar="DIR",
    type=click.Path(file_okay=False), help="Index directory (env IMGSEARCH_INDEX).",
)
model_option = click.option(
    "--model", envvar="IMGSEARCH_MODEL", metavar="DIR", default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Alignment model directory (env IMGSEARCH_MODEL). Needed to create an index; "
    "later commands use the model recorded in the index.",
)
device_option = click.option(
    "--device", default="auto", show_default=True, help="'auto' (CUDA when present, else CPU), 'cpu' or 'cuda'."
)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="imgsearch")
@click.option("-v", "--verbose", is_flag=True, help="Log more on stderr.")
def cli(verbose: bool) -> None:
    """Find images in your photo folders by describing them in words.

    \b
    Example:
      imgsearch index ~/Pictures --index ~/.imgsearch --model data/demo-model
      imgsearch search "a dog running on the beach" --index ~/.imgsearch
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr, format="%(levelname)s: %(message)s"
    )
    if not verbose:  # transformers' per-load "Loading weights" bars are noise on the command line
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


@cli.command("index", context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@index_option
@model_option
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1), help="Images per forward pass.")
@click.option("--workers", default=None, type=click.IntRange(min=0), help="Decoding processes (default: spare cores).")
@click.option(
    "--prune/--no-prune", default=True, show_default=True,
    help="Remove indexed files under the given folders that no longer exist. Files indexed "
    "from other folders are never removed.",
)
@device_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (there is none either when stderr is not a terminal).")
@json_option
@user_errors
def index_command(paths, index_dir, model, batch_size, workers, prune, device, quiet, as_json) -> None:
    """Index image files and folders (recursively) into an index directory.

    Creates the index on first use (then --model is needed). Runs are
    incremental: files with the same size and mtime are skipped, and a file
    whose content is already indexed (a copy, a move or a rename, told by its
    sha256) keeps its vectors without re-running the model. Files that are gone
    from the given folders leave the index (--no-prune keeps them). Unreadable
    files are recorded with the reason (see `imgsearch errors`) and the run goes
    on; they are retried once they change. Ctrl-C stops after the current batch
    and keeps everything done so far; a killed run is finished by running it again.

    \b
    Example:
      imgsearch index ~/Pictures /mnt/photos --index ~/.imgsearch --model data/demo-model
    """
    with Index.open_or_create(index_dir, model, device) as index:
        bar = ProgressBar(sys.stderr, quiet=quiet)
        with stop_on_interrupt() as stop:
            try:
                summary = index.add(paths, batch_size=batch_size, workers=workers, progress=bar,
                                    prune=prune, should_stop=stop)
            finally:
                bar.finish()
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        click.echo(
            f"added {summary.added}, updated {summary.updated}, moved {summary.moved}, "
            f"removed {summary.removed}, unchanged {summary.unchanged}, failed {summary.failed} "
            f"({summary.images_per_second:.1f} images/s)"
        )
        for path, error in summary.failures:
            click.echo(f"  failed: {path}: {error}", err=True)
    if summary.interrupted:
        click.echo("interrupted: everything counted above is stored; run the same command again "
                   "to index the rest.", err=True)
        sys.exit(INTERRUPTED_EXIT_CODE)


@cli.command("search", context_settings=CONTEXT)
@click.argument("query")
@index_option
@model_option
@click.option("-k", "--top", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Results to show.")
@click.option(
    "--candidates", default=DEFAULT_CANDIDATES, show_default=True, type=click.IntRange(min=1),
    help="First-stage candidates handed to the re-ranker.",
)
@click.option("--no-rerank", is_flag=True, help="Skip cross-attention re-ranking; rank by the first stage alone.")
@click.option(
    "--precision", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto", show_default=True,
    help="Re-ranker arithmetic: auto is bfloat16 where the hardware runs it natively (a GPU, a CPU with "
         "AVX512-BF16 or AMX), about 3x faster; float32 gives the reference scores.",
)
@device_option
@json_option
@user_errors
def search_command(query, index_dir, model, k, candidates, no_rerank, precision, device, as_json) -> None:
    """Find the images that best match a text description.

    \b
    Example:
      imgsearch search "a small red circle left of a blue square" --index demo-out/index -k 5
    """
    with Index.open(index_dir, model, device) as index:
        results = index.search(query, k, candidates=candidates, rerank=not no_rerank, rerank_precision=precision)
    if as_json:
        click.echo(json.dumps({"query": query, "reranked": not no_rerank,
                               "results": [r.to_dict() for r in results]}, indent=2))
        return
    if not results:
        click.echo("no images in the index yet; add some with `imgsearch index`.", err=True)
    for r in results:
        click.echo(f"{r.rank:3d}  {r.score:8.4f}  (first stage {r.first_stage_score:.4f}, #{r.first_stage_rank})  {r.path}")


@cli.command("info", context_settings=CONTEXT)
@index_option
@json_option
@user_errors
def info_command(index_dir, as_json) -> None:
    """Describe an index: image counts, failures, model and files.

    \b
    Example:
      imgsearch info --index ~/.imgsearch --json
    """
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
    click.echo(f"vectors:    {info['vectors']} x {manifest['embed_dim']} ({manifest['metric']}), "
               f"{manifest['num_regions']} regions per image ({manifest['region_dtype']})")
    click.echo(f"model:      {manifest['model']['path']} ({manifest['model']['fingerprint'][:12]})")
    click.echo(f"backbone:   {manifest['model']['backbone']}")
    click.echo(f"text:       {manifest['model']['text_encoder']}")
    click.echo(f"disk:       {sum(info['bytes_on_disk'].values()):,} bytes")


@cli.command("errors", context_settings=CONTEXT)
@index_option
@json_option
@user_errors
def errors_command(index_dir, as_json) -> None:
    """List files that could not be indexed, with the reason.

    \b
    Example:
      imgsearch errors --index ~/.imgsearch
    """
    with Index.open(index_dir) as index:
        failures = index.failures()
    if as_json:
        click.echo(json.dumps(failures, indent=2))
        return
    for failure in failures:
        click.echo(f"{failure['path']}: {failure['error']}")


cli.add_command(train_command)
cli.add_command(eval_command)


def main(args: list[str] | None = None) -> None:
    cli(args=args, prog_name="imgsearch")
