"""The `index` progress bar: files done of files to read, images per second, ETA, on stderr.

Shown only when the stream is a terminal and --quiet is not given, so logs and
pipes get no control characters.
"""

from __future__ import annotations

import time
from typing import TextIO

import click

__all__ = ["ProgressBar"]


class ProgressBar:
    """A callable for Index.add(progress=...): (files done, files to read)."""

    def __init__(self, stream: TextIO, *, quiet: bool = False) -> None:
        self.enabled = not quiet and stream.isatty()
        self.stream = stream
        self._bar = None
        self._started = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._started = time.perf_counter()
            self._bar = click.progressbar(
                length=max(total, 1), label="indexing", file=self.stream, show_pos=True, show_eta=True,
                item_show_func=lambda rate: rate, width=30,
            )
        elapsed = time.perf_counter() - self._started
        rate = f"{done / elapsed:.1f} images/s" if elapsed > 0 and done else None
        # click redraws when the position moves; the rate shows beside the bar
        self._bar.current_item = rate
        self._bar.update(done - self._bar.pos, rate)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.render_finish()
