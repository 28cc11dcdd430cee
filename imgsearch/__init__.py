"""imgsearch: find images in photo folders by describing them in words.

`from imgsearch import Index` works as always; the names below load on first use, so
that `import imgsearch` (and the command line's --help) does not load torch.

Importing imgsearch or calling it changes nothing in the process beyond the objects it
returns: no allocator settings, thread counts or logging set-up. Those belong to the
program: the `imgsearch` command and its server make them, and a program may ask for the
same with keep_freed_memory() (glibc's malloc keeps freed memory: CPU indexing 2.1x faster,
model/allocator.py) and use_threads() (one thread per query keeps a query fast on a busy
machine: ground/threads.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "Index",
    "AddSummary",
    "SearchResult",
    "AlignmentModel",
    "AlignmentConfig",
    "ImgsearchError",
    "keep_freed_memory",
    "use_threads",
]

_WHERE = {  # public name --> the module that defines it
    "Index": "imgsearch.index",
    "AddSummary": "imgsearch.indexer.merge",
    "SearchResult": "imgsearch.search.searcher",
    "AlignmentModel": "imgsearch.model.alignment",
    "AlignmentConfig": "imgsearch.model.alignment",
    "ImgsearchError": "imgsearch.ground.errors",
    "keep_freed_memory": "imgsearch.model.allocator",
    "use_threads": "imgsearch.ground.threads",
}

if TYPE_CHECKING:
    from imgsearch.ground.errors import ImgsearchError
    from imgsearch.ground.threads import use_threads
    from imgsearch.index import Index
    from imgsearch.indexer.merge import AddSummary
    from imgsearch.model.alignment import AlignmentConfig, AlignmentModel
    from imgsearch.model.allocator import keep_freed_memory
    from imgsearch.search.searcher import SearchResult


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'imgsearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
