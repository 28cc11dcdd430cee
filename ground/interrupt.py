"""Ctrl-C during `imgsearch index`: finish the current batch, keep everything, stop.

The first SIGINT only asks the run to stop (Index.add checks after each batch,
which is committed whole); a second one stops at once, which is still safe (the
batch in flight is rolled back) but loses that batch's work.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["StopRequest", "stop_on_interrupt"]

log = logging.getLogger(__name__)


class StopRequest:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested


@contextmanager
def stop_on_interrupt() -> Iterator[StopRequest]:
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
        yield request
        return

    def handle(signum, frame) -> None:
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True
        log.warning("stopping after the current batch; everything done so far is kept (Ctrl-C again stops at once)")

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)
