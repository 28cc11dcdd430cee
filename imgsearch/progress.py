"""The `index` progress bar: files done of files to read, images per second, ETA, on stderr.

Shown only when the stream is a terminal and --quiet is not given, so logs and
pipes get no control characters.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, TextIO

import click

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar as ClickProgressBar  # what click.progressbar returns

__all__ = ["ProgressBar"]


class ProgressBar:
    """A callable for Index.add(progress=...): (files done, files to read), called after each batch."""

    def __init__(self, stream: TextIO, *, quiet: bool = False) -> None:
        self.enabled = not quiet and stream.isatty()
        self.stream = stream
        self._bar: ClickProgressBar[str | None] | None = None
        self._first: tuple[float, int] | None = None  # (time, files done) at the first report

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._bar is None:
            self._first = (now, done)
            self._bar = click.progressbar(
                length=max(total, 1),
                label="indexing",
                file=self.stream,
                show_pos=True,
                show_eta=False,
                item_show_func=lambda text: text,
                width=30,
            )
        self._bar.update(done - self._bar.pos, self._rate_and_eta(now, done, total))

    def _rate_and_eta(self, now: float, done: int, total: int) -> str | None:
        """'12.5 images/s, ETA 0:01:20', measured from the first report (which includes start-up)."""
        assert self._first is not None  # set with the bar, at the first report
        start_time, start_done = self._first
        if now <= start_time or done <= start_done:
            return None
        rate = (done - start_done) / (now - start_time)
        eta = dt.timedelta(seconds=round((total - done) / rate))
        return f"{rate:.1f} images/s, ETA {eta}"

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.render_finish()
