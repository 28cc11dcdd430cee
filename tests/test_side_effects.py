"""No process-wide side effects from importing or calling the library.

glibc's allocator settings (model/allocator.py), thread counts, logging set-up and signal
handlers belong to the program. The `imgsearch` command and its server make them
(imgsearch/cli.py, imgsearch/train_commands.py, imgsearch/server/run.py); a program that
wants the allocator setting calls imgsearch.keep_freed_memory(). Importing imgsearch, and
Index, encode and the indexer's functions, never do (tests/test_conventions.py keeps the
calls where they are).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import imgsearch.model.allocator as allocator
from imgsearch.cli import cli

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux only")

# A fresh interpreter: imports every imgsearch module, then indexes, searches and encodes with
# a small model on the CPU, and prints what it found of the process's settings before and after.
# (Warning filters are not compared: the dependencies' imports add some, some of them lazily
# (scipy, sympy); tests/test_conventions.py sees that the library's own stay in catch_warnings.)
PROBE = r"""
import importlib, json, logging, os, pkgutil, signal, sys
import faiss, torch

import imgsearch.model.allocator as allocator

calls = []
allocator._libc_mallopt = lambda: (lambda param, value: calls.append((param, value)) or 1)


def settings():
    return {
        "malloc": allocator.heap_block_limit(), "mallopt calls": list(calls),
        "torch threads": torch.get_num_threads(), "faiss threads": faiss.omp_get_max_threads(),
        "cudnn benchmark": torch.backends.cudnn.benchmark, "environment": dict(os.environ),
        "root logger": [logging.root.level, len(logging.root.handlers)],
        "SIGINT": repr(signal.getsignal(signal.SIGINT)),
    }


model_dir, photos, index_dir = sys.argv[1:4]
before = settings()
for name in ("imgsearch", "imgsearch.indexer", "imgsearch.search", "imgsearch.model", "imgsearch.training",
             "imgsearch.server"):
    package = importlib.import_module(name)
    for module in pkgutil.walk_packages(package.__path__, name + "."):
        if module.name != "imgsearch.__main__":  # runs the command line
            importlib.import_module(module.name)
imported = settings()

from imgsearch import Index
from imgsearch.indexer.embed_worker import embed_shard

files = [os.path.join(photos, name) for name in sorted(os.listdir(photos))]
with Index.create(index_dir, model_dir, device="cpu") as index:
    index.add([photos], workers=0)
    index.search("a red circle", k=3)
    index.search_page(None, 3, image=files[0])
    encoder = index.image_encoder
    encoder.encode(torch.zeros(4, 3, encoder.image_size, encoder.image_size, dtype=torch.uint8))
    embed_shard(files, encoder)
used = settings()
print(json.dumps({"before": before, "imported": imported, "used": used}))
"""


@pytest.fixture
def pngs(tmp_path):
    from conftest import make_photos

    return make_photos(tmp_path / "photos", range(4))


def test_importing_and_using_the_library_changes_no_process_setting(tmp_path, model_dir, pngs):
    env = {k: v for k, v in os.environ.items() if k != allocator.DEFAULT_MALLOC_ENV}
    # Two threads to begin with, whatever this suite runs with (make test: one per worker), so
    # that a library setting them to one would show.
    threads = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "2")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(model_dir), str(pngs), str(tmp_path / "index")],
        env={**env, **threads, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["before"]["malloc"] is None and found["before"]["mallopt calls"] == []
    assert found["before"]["torch threads"] == found["before"]["faiss threads"] == 2
    assert found["imported"] == found["before"]
    assert found["used"] == found["before"]


@pytest.fixture
def thread_counts_kept():
    """The command line and the server set this process's thread counts (ground/threads.py):
    put them back for the tests that follow."""
    import faiss
    import torch

    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


@pytest.fixture
def mallopt_calls(monkeypatch):
    """Each mallopt(param, value) made in this process during the test, recorded instead of
    made; the test starts as a process that never asked for the setting."""
    calls = []

    def mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    monkeypatch.setattr(allocator, "_libc_mallopt", lambda: mallopt)
    monkeypatch.setattr(allocator, "_kept", False)
    monkeypatch.delenv(allocator.DEFAULT_MALLOC_ENV, raising=False)
    return calls


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@glibc_only
def test_the_index_command_keeps_freed_memory_before_it_encodes(tmp_path, model_dir, pngs, mallopt_calls, monkeypatch):
    import imgsearch.index as index_module

    seen_at_add = []
    add = index_module.Index.add
    monkeypatch.setattr(
        index_module.Index, "add", lambda self, *a, **k: seen_at_add.append(len(mallopt_calls)) or add(self, *a, **k)
    )
    run("index", pngs, "--index", tmp_path / "index", "--model", model_dir, "--device", "cpu", "--workers", 0, "-q")
    assert seen_at_add == [2]  # both thresholds, before the run starts (and its workers fork)
    assert allocator.heap_block_limit() == 32 * 1024 * 1024


@glibc_only
def test_search_keeps_freed_memory_only_when_it_encodes_a_photo(
    tmp_path, model_dir, pngs, mallopt_calls, monkeypatch, thread_counts_kept
):
    from imgsearch.index import Index

    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        index.add([pngs], workers=0)
    run("search", "a red circle", "--index", tmp_path / "index", "--device", "cpu")
    assert mallopt_calls == []  # words only: no image to encode
    run("search", "--image", pngs / "img_000.png", "--index", tmp_path / "index", "--device", "cpu")
    assert len(mallopt_calls) == 2


@glibc_only
def test_the_server_keeps_freed_memory_at_start(
    tmp_path, model_dir, pngs, mallopt_calls, monkeypatch, thread_counts_kept
):
    import uvicorn

    from imgsearch.index import Index
    from imgsearch.server.run import serve

    with Index.create(tmp_path / "index", model_dir, device="cpu") as index:
        index.add([pngs], workers=0)
    assert mallopt_calls == []  # the library alone: nothing
    ran = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: ran.append(len(mallopt_calls)))
    serve(tmp_path / "index", port=0, device="cpu")
    assert ran == [2]


def test_keep_freed_memory_is_public():
    import imgsearch

    assert imgsearch.keep_freed_memory is allocator.keep_freed_memory
