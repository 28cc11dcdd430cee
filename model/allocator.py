"""Keep freed memory in the process, so that a CPU forward pass does not pay page faults.

glibc's malloc hands blocks above its mmap threshold straight to the kernel and returns
them on free; every fresh block then costs a page fault per 4 KiB touched. A CNN forward
pass allocates and frees the same large activations batch after batch, so by default it
spends much of its time in the kernel: the photo model ran 48 images/s forward-only on
2 cores, and 126 with freed memory kept (bench/RESULTS-archive.md, "Photo model speed").

Two settings fix it. The trim threshold keeps freed memory at the top of the heap in the
process. The mmap threshold moves large blocks onto the heap, but mallopt() caps it at
32 MiB on 64-bit machines; a forward pass on the CPU therefore runs in chunks whose
largest activation stays under that cap (ImageEncoder.encode sizes them with
`heap_block_limit()`).

The settings are the whole process's, so the library never makes them by itself: the
entry points that encode images on the CPU call keep_freed_memory() before they start
(the `imgsearch` commands index, search --image, rerank, train and eval; the server,
imgsearch.server.run.serve; a Ray embed actor, in its own process). A program that uses
the library may call it too (`imgsearch.keep_freed_memory()`); until one does, encode()
runs each batch whole and malloc stays as glibc set it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "heap_block_limit", "DEFAULT_MALLOC_ENV"]

DEFAULT_MALLOC_ENV = "IMGSEARCH_DEFAULT_MALLOC"  # "1": leave glibc's malloc as it is

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's cap for M_MMAP_THRESHOLD on 64-bit
_TRIM_THRESHOLD = 1024 * 1024 * 1024  # freed memory the heap keeps before returning any

_kept = False


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory, for the whole process (once per process;
    call it before the work starts, and before any worker processes are forked: they inherit
    it). From then on ImageEncoder.encode runs CPU batches in heap-sized chunks. False where
    the C library is not glibc (macOS, Windows, musl), or when IMGSEARCH_DEFAULT_MALLOC=1
    asks to leave malloc as it is (a process then returns freed memory sooner, and runs slower)."""
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux") or os.environ.get(DEFAULT_MALLOC_ENV) == "1":
        return False
    mallopt = _libc_mallopt()
    if mallopt is None:
        return False
    _kept = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _kept


def _libc_mallopt():
    """The C library's mallopt(int, int) -> int, or None where it has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return mallopt


def heap_block_limit() -> int | None:
    """The largest block (bytes) that stays on the heap once keep_freed_memory() has run,
    or None where it has not (no limit is worth keeping to then)."""
    return _MMAP_THRESHOLD_MAX if _kept else None
