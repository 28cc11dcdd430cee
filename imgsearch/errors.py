"""Typed errors of the library. Only the CLI turns them into `Error: ...` messages.

Every message says what went wrong and what to do next.
"""

__all__ = [
    "ImgsearchError",
    "IndexNotFound",
    "IndexExists",
    "StoreCorrupt",
    "ModelMismatch",
    "ModelNotFound",
    "ModelConfigError",
    "WeightsMissing",
    "InputPathNotFound",
    "InvalidQuery",
    "IndexLocked",
    "StoreWriteFailed",
]


class ImgsearchError(Exception):
    """Base class of every error this library raises on purpose."""


class IndexNotFound(ImgsearchError):
    """The index directory does not exist or holds no index."""


class IndexExists(ImgsearchError):
    """An index already exists where a new one was to be created."""


class StoreCorrupt(ImgsearchError):
    """The index directory is damaged or was written by an unknown version."""


class ModelMismatch(ImgsearchError):
    """The index was built by a different alignment model than the one given."""


class ModelNotFound(ImgsearchError):
    """An alignment model directory is missing or incomplete."""


class ModelConfigError(ImgsearchError):
    """An alignment model's config or weights do not fit together."""


class WeightsMissing(ImgsearchError):
    """Pretrained weights (backbone or text encoder) are not available offline."""


class InputPathNotFound(ImgsearchError):
    """A path given to index does not exist."""


class InvalidQuery(ImgsearchError):
    """A search query or search parameter is unusable."""


class IndexLocked(ImgsearchError):
    """Another process is writing to the index right now."""


class StoreWriteFailed(ImgsearchError):
    """A write to the index failed (disk full, read-only, busy); what was stored before is kept."""
