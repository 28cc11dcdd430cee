"""Run the `imgsearch` command line in real child processes, quickly.

Starting a Python process that imports torch takes seconds, so the children are
forked from a multiprocessing "forkserver" that has imported imgsearch, torch and
transformers once.
Each child is a separate OS process running `imgsearch.cli.main(args)`, with
its stdout and stderr in a file, and can be killed (SIGKILL) or interrupted
(SIGINT) like any other.

A child can also be told to pause just before it reads a given file, which
makes "a writer is half-way through" a deterministic state for a test: it
creates `<pause>.reached` and waits until the test creates `<pause>.go`.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path

_CONTEXT = multiprocessing.get_context("forkserver")
# imgsearch.cli imports torch only when a command needs it (a fast --help); the commands the tests
# run do, so the forkserver imports what they load (5 s a child otherwise, on 2 cores).
_CONTEXT.set_forkserver_preload(
    [
        "imgsearch.cli",
        "cli_process",
        "torch",
        "transformers",
        "imgsearch.index",
        "imgsearch.indexer.pipeline",
        "imgsearch.model.alignment",
    ]
)


def _child(args: list[str], output: str, pause_before: str | None, pause: str | None, stderr_to: str | None) -> None:
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(os.open(stderr_to, os.O_WRONLY | os.O_NOCTTY) if stderr_to else fd, 2)
    # A process started by the forkserver defaults to starting its own children (the
    # DataLoader's decode workers) the same slow way; a CLI process forks them, as here.
    multiprocessing.set_start_method("fork", force=True)
    if pause_before is not None:
        _pause_before_reading(pause_before, pause)
    from imgsearch.cli import main

    sys.argv = ["imgsearch", *args]
    main(args)


def _pause_before_reading(name: str, pause: str) -> None:
    """Have this process's Index.add runs read files through a local embedder whose decoder
    pauses before the file called `name` (in whichever process decodes it: a worker or this one)."""
    from imgsearch.images.decode import decode_file
    from imgsearch.index import Index
    from imgsearch.indexer.pipeline import LocalEmbedder

    def decode_with_pause(path, **options):
        if Path(path).name == name:
            Path(pause + ".reached").touch()
            deadline = time.monotonic() + 120
            while not Path(pause + ".go").exists() and time.monotonic() < deadline:
                time.sleep(0.005)
        return decode_file(path, **options)

    class PausingEmbedder:
        """The local embedder `imgsearch index` would use, with the pausing decoder; the model is
        loaded once the run has the writer lock, as Index.add loads it."""

        def __init__(self, index: Index, batch_size: int, workers: int | None) -> None:
            self.index, self.batch_size, self.workers = index, batch_size, workers

        def embed(self, paths, known_contents):
            local = LocalEmbedder(
                self.index.image_encoder, batch_size=self.batch_size, workers=self.workers, decode=decode_with_pause
            )
            yield from local.embed(paths, known_contents)

    add = Index.add

    def add_pausing(self, paths, *, batch_size: int = 32, workers: int | None = None, ray=None, **options):
        assert ray is None, "a pause is for local runs"
        return add(self, paths, embedder=PausingEmbedder(self, batch_size, workers), **options)

    Index.add = add_pausing


class CliProcess:
    def __init__(self, args, output: Path, *, pause_before: str | None = None, stderr_to: str | None = None) -> None:
        """`stderr_to`: a path to send stderr to instead of `output`, e.g. a pseudo-terminal."""
        self.output = Path(output)
        self.pause = str(self.output) + ".pause"
        self.process = _CONTEXT.Process(
            target=_child, args=([str(a) for a in args], str(output), pause_before, self.pause, stderr_to)
        )
        self.process.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_until_paused(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not Path(self.pause + ".reached").exists():
            if not self.process.is_alive():
                raise AssertionError(f"the child exited before pausing:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError("the child did not reach its pause")
            time.sleep(0.005)

    def resume(self) -> None:
        Path(self.pause + ".go").touch()

    def wait(self, timeout: float = 120) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
            raise AssertionError(f"the child did not finish in {timeout} s:\n{self.text()}")
        return self.process.exitcode

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""


def run_cli(args, output: Path, timeout: float = 120) -> tuple[int, str]:
    child = CliProcess(args, output)
    code = child.wait(timeout)
    return code, child.text()
