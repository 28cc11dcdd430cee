"""The writer lock: one process at a time may change an index.

An exclusive `flock` on `write.lock` in the index directory, held while a
process adds, updates or prunes. The operating system releases it when the
holder exits or dies (even by SIGKILL), so a crashed writer never blocks the
next one. The file also says who holds it (pid, host, command, since when),
so a second writer can be told whom it is waiting for. Readers never take it
to search; they take it only for a moment, when it is free, to save a
rebuilt vectors.faiss.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
from pathlib import Path

from indexer.errors import IndexLocked

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

__all__ = ["LOCK_NAME", "WriterLock", "close_inherited_locks"]

LOCK_NAME = "write.lock"

# Descriptors of locks held by this process. A forked child (a DataLoader
# decode worker) shares them; it closes its copies so that, if the writer
# dies, the lock does not live on in its orphaned workers.
_held_fds: set[int] = set()


def close_inherited_locks() -> None:
    """Call in a forked child: drop its copies of the parent's lock descriptors."""
    for fd in list(_held_fds):
        try:
            os.close(fd)
        except OSError:
            pass
        _held_fds.discard(fd)


def _lock_without_waiting(fd: int) -> None:
    """Raise OSError if another open file description holds the lock."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:  # lock one byte far past the holder details, which others must still read
        os.lseek(fd, 1 << 30, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)


def _command_line() -> str:
    """This process's command, as the user would type it: `imgsearch index ...`."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    name = program.parent.name if program.name == "__main__.py" else program.name
    return " ".join([name, *sys.argv[1:]])


class WriterLock:
    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; False if another writer holds it or it cannot be made."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # e.g. a read-only index directory
            return False
        try:
            _lock_without_waiting(fd)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        _held_fds.add(fd)
        holder = {
            "pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        return True

    def acquire(self) -> None:
        """Take the lock, or raise IndexLocked naming the process that holds it."""
        if not self.try_acquire():
            raise IndexLocked(
                f"index {self.directory} is being written by {self.describe_holder()}; "
                "wait for that run to finish (or stop it), then try again."
            )

    def describe_holder(self) -> str:
        try:
            holder = json.loads(self.path.read_text())
            return (f"pid {holder['pid']} on {holder['host']} (`{holder['command']}`, "
                    f"since {holder['since']})")
        except (OSError, ValueError, KeyError, TypeError):  # being written this instant, or unreadable
            return "another process (its details are not readable yet)"

    def release(self) -> None:
        if self._fd is None:
            return
        _held_fds.discard(self._fd)
        os.close(self._fd)  # closing drops the flock; the file stays, holder details and all
        self._fd = None

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
