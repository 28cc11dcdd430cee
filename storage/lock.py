"""The index directory's locks: one writer at a time, and one saver of vectors.faiss.

`write.lock`: an exclusive `flock`, held while a process adds, updates or
prunes. The operating system releases it when the holder exits or dies (even
by SIGKILL), so a crashed writer never blocks the next one. The file also says
who holds it (pid, host, command, since when), so a second writer can be told
whom it is waiting for. Searches never hold it: they only check, for an
instant and without writing anything, whether a writer is running.

`vectors.lock`: held while vectors.faiss is written (by a writer, or by a
search that rebuilt it), so that two processes never write its temp file at
once. A search that rebuilds vectors.faiss takes only this one, so an
`imgsearch index` started meanwhile is not refused.

Both locks count nesting: an inner `with lock:` does not release the outer one.
Lock files are opened with O_NOFOLLOW: a symbolic link planted at `write.lock`
is refused, never followed (its target would be truncated and overwritten).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from imgsearch.ground.errors import IndexLocked, StoreCorrupt, StoreWriteFailed

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]  # the code checks for None
    import msvcrt

__all__ = ["LOCK_NAME", "VECTORS_LOCK_NAME", "FileLock", "WriterLock", "close_inherited_locks"]

LOCK_NAME = "write.lock"
VECTORS_LOCK_NAME = "vectors.lock"
# How long a writer retries a busy lock before it gives up: covers a search's instant check.
WRITER_PATIENCE_S = 0.5

# Descriptors of locks held by this process. A forked child (a DataLoader
# decode worker) shares them; it closes its copies so that, if the writer
# dies, the lock does not live on in its orphaned workers.
_held_fds: set[int] = set()


def close_inherited_locks() -> None:
    """Call in a forked child: drop its copies of the parent's lock descriptors."""
    for fd in list(_held_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
        _held_fds.discard(fd)


def _open_lock_file(path: Path) -> int:
    """The lock file's descriptor; raises StoreCorrupt if `path` is a symbolic link."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise StoreCorrupt(
                f"{path} is a symbolic link; imgsearch does not follow it (it would overwrite the "
                f"link's target). Remove the link (rm {path}) and try again."
            ) from exc
        raise


def _lock_without_waiting(fd: int) -> None:
    """Raise OSError if another open file description holds the lock."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:  # lock one byte far past the holder details, which others must still read
        os.lseek(fd, 1 << 30, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)


def _replace_contents(fd: int, data: bytes) -> None:
    """Make `data` the whole file. Seek + write, as os.pwrite does not exist on Windows."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    while data:
        data = data[os.write(fd, data) :]


def _command_line() -> str:
    """This process's command, as the user would type it: `imgsearch index ...`."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    name = program.parent.name if program.name == "__main__.py" else program.name
    return " ".join([name, *sys.argv[1:]])


class FileLock:
    """An exclusive lock on one file, taken without waiting; nested takes are counted."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._depth = 0  # takes not yet released

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free: False if another holder has it. Raises StoreCorrupt
        (a symbolic link) or OSError (e.g. a read-only directory) if it cannot be made."""
        if self._fd is not None:
            self._depth += 1
            return True
        fd = _open_lock_file(self.path)
        try:
            _lock_without_waiting(fd)
        except OSError:
            os.close(fd)
            return False
        _held_fds.add(fd)
        self._fd, self._depth = fd, 1
        try:
            self._on_acquired(fd)
        except BaseException:  # never keep a lock whose setup failed
            self.close()
            raise
        return True

    def try_acquire_within(self, seconds: float) -> bool:
        """try_acquire, retried for up to `seconds` while another holder has the lock."""
        deadline = time.monotonic() + seconds
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def _on_acquired(self, fd: int) -> None:
        """Hook for subclasses, run right after the lock is taken."""

    def busy(self) -> bool:
        """Does another holder have the lock now? Checked by taking it for an instant,
        writing nothing. True also when that cannot be told (the file cannot be made)."""
        if self._fd is not None:
            return False
        try:
            fd = _open_lock_file(self.path)
        except (OSError, StoreCorrupt):
            return True
        try:
            _lock_without_waiting(fd)
        except OSError:
            return True
        finally:
            os.close(fd)  # closing drops the lock, if it was taken
        return False

    def release(self) -> None:
        """Undo one take; the last one drops the lock."""
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth <= 0:
            self.close()

    def close(self) -> None:
        """Drop the lock, however many takes are outstanding."""
        if self._fd is None:
            return
        fd, self._fd, self._depth = self._fd, None, 0
        _held_fds.discard(fd)
        os.close(fd)  # closing drops the flock; the file stays


class WriterLock(FileLock):
    """write.lock: the one process writing an index; the file names it for the others."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        super().__init__(self.directory / LOCK_NAME)

    def _on_acquired(self, fd: int) -> None:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": _command_line(),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        _replace_contents(fd, (json.dumps(holder) + "\n").encode())

    def acquire(self, patience: float = WRITER_PATIENCE_S) -> None:
        """Take the lock, retrying for `patience` seconds, or raise IndexLocked naming the
        process that holds it (StoreWriteFailed if the lock file cannot be made or written)."""
        try:
            if self.try_acquire_within(patience):
                return
        except OSError as exc:
            raise StoreWriteFailed(
                f"cannot take the writer lock {self.path} ({exc.strerror or exc}); the index "
                "directory must be writable, with space left, to index into it."
            ) from exc
        raise IndexLocked(
            f"index {self.directory} is being written by {self.describe_holder()}; "
            "wait for that run to finish (or stop it), then try again."
        )

    def describe_holder(self) -> str:
        try:
            holder = json.loads(self.path.read_text())
            return f"pid {holder['pid']} on {holder['host']} (`{holder['command']}`, since {holder['since']})"
        except (OSError, ValueError, KeyError, TypeError):  # being written this instant, or unreadable
            return "another process (its details are not readable yet)"

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
