"""The command line answers --help, --version and CMD -h without loading torch (issue 12.5);
the time it takes is measured in bench/benchmarks/cli_start.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "transformers", "faiss", "sqlite_utils", "safetensors", "PIL")
COMMANDS = ("index", "search", "info", "errors", "train", "eval")

PROBE = """
import json, sys
from imgsearch.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(json.dumps({"code": code, "heavy": sorted({m.split('.')[0] for m in sys.modules} & set(%r))}))
""" % (HEAVY,)


def _run(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [("--help",), ("--version",)] + [(command, "-h") for command in COMMANDS])
def test_help_and_version_load_no_heavy_module(args):
    result = _run(*args)
    assert result == {"code": 0, "heavy": []}


def test_the_probe_sees_heavy_modules_when_a_command_runs(tmp_path):
    # the oracle's other side: a command that opens an index does load them
    result = _run("info", "--index", str(tmp_path / "none"))
    assert result["code"] != 0  # no index there: a clear error, after the library loaded
    assert "torch" in result["heavy"]


def test_library_names_load_on_first_use():
    probe = ("import sys, imgsearch; before = 'torch' in sys.modules; from imgsearch import Index, "
             "ImgsearchError; print(before, 'torch' in sys.modules, Index.__module__, ImgsearchError.__name__)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["False", "True", "imgsearch.index", "ImgsearchError"]


def test_opening_a_model_prints_nothing(model_dir):
    # transformers draws a "Loading weights" bar on stderr for every load; a library open stays quiet
    probe = ("import sys; from imgsearch.model.alignment import AlignmentModel; "
             f"AlignmentModel.from_pretrained({str(model_dir)!r}, device='cpu')")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
