"""The command line answers --help, --version and CMD -h without loading torch (issue 12.5), a
text search without torch or transformers and its mistakes before anything heavy (issue 22);
the time each takes is measured in bench/benchmarks/cli_start.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "transformers", "faiss", "sqlite_utils", "safetensors", "PIL")
COMMANDS = ("index", "search", "info", "errors", "train", "eval")

PROBE = (
    f"HEAVY = {HEAVY!r}\n"
    + """
import json, sys
from imgsearch.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "heavy": sorted({m.split('.')[0] for m in sys.modules} & set(HEAVY))}))
"""
)


def _run(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [("--help",), ("--version",)] + [(command, "-h") for command in COMMANDS])
def test_help_and_version_load_no_heavy_module(args):
    result = _run(*args)
    assert result == {"code": 0, "heavy": []}


def test_the_probe_sees_heavy_modules_when_a_command_runs(tmp_path):
    # the oracle's other side: a command that opens an index loads the store and FAISS
    result = _run("info", "--index", str(tmp_path / "none"))
    assert result["code"] != 0  # no index there: a clear error, after the library loaded
    assert {"faiss", "sqlite_utils"} <= set(result["heavy"]) and "torch" not in result["heavy"]


def test_a_text_search_loads_neither_torch_nor_transformers(tmp_path, model_dir, image_folder):
    """A text search on the CPU runs on the numpy query runtime (search/query_model.py); a photo
    as the query needs the image encoder, torch."""
    from imgsearch import Index

    with Index.create(tmp_path / "index", model=model_dir, device="cpu") as index:
        index.add([image_folder], workers=0)
    where = ("--index", str(tmp_path / "index"), "--device", "cpu")
    text = _run("search", "a red circle", *where)
    assert text["code"] == 0 and not {"torch", "torchvision", "transformers"} & set(text["heavy"])
    photo = _run("search", "--image", str(next(image_folder.rglob("*.png"))), *where)
    assert photo["code"] == 0 and "torch" in photo["heavy"]


def test_an_index_run_with_nothing_to_embed_loads_no_torch(tmp_path, model_dir, image_folder):
    """A re-run that finds every file unchanged (the common nightly run) loads no model:
    the encoder is loaded when there is something to embed (pipeline.LocalEmbedder)."""
    where = ("--index", str(tmp_path / "index"), "--model", str(model_dir), "--device", "cpu", "--workers", "0", "-q")
    first = _run("index", str(image_folder), *where)
    assert first["code"] == 0 and "torch" in first["heavy"]  # the oracle: embedding loads it
    assert "transformers" not in first["heavy"]  # indexing needs no text encoder
    again = _run("index", str(image_folder), *where)
    assert again["code"] == 0 and not {"torch", "torchvision", "transformers"} & set(again["heavy"])


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("search", "", "--index", "NOWHERE"), 1),
        (("search", "a dog", "--index", "NOWHERE"), 1),
        (("search", "a dog", "--after", "01/06/2023", "--index", "NOWHERE"), 2),  # click's usage error
        (("search", "a dog", "-k", "0", "--index", "NOWHERE"), 2),
    ],
)
def test_search_mistakes_are_answered_before_anything_heavy_loads(args, code):
    """An empty query, no index, a date that is not one: answered by the light checks
    (the options' types, search/arguments.py, the manifest) before FAISS, the store or a model."""
    result = _run(*args)
    assert result == {"code": code, "heavy": []}


def test_library_names_load_on_first_use():
    probe = (
        "import sys, imgsearch; before = 'torch' in sys.modules; from imgsearch import Index, "
        "ImgsearchError; after_index = 'torch' in sys.modules; from imgsearch import AlignmentModel; "
        "print(before, after_index, 'torch' in sys.modules, Index.__module__, ImgsearchError.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["False", "False", "True", "imgsearch.index", "ImgsearchError"]


def test_opening_a_model_prints_nothing(model_dir):
    # transformers draws a "Loading weights" bar on stderr for every load; a library open stays quiet
    probe = (
        "import sys; from imgsearch.model.alignment import AlignmentModel; "
        f"AlignmentModel.from_pretrained({str(model_dir)!r}, device='cpu')"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
