"""Typed errors of the library. Only the CLI turns them into `Error: ...` messages.

Every message says what went wrong and what to do next. Every exception class of
imgsearch lives here, including two that never reach a caller and so are not in __all__:
ImageTooLarge never leaves the decode stage (it becomes that file's recorded failure), and
RuntimeUnsupported never leaves search (it loads the torch model instead).
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
    "CaptionFileError",
    "ConversionError",
    "InvalidImage",
    "ImageNotFound",
    "ServeFailed",
    "RayNotInstalled",
    "ShardFailed",
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


class CaptionFileError(ImgsearchError):
    """A captions file cannot be read, holds no usable rows, or names no image that decodes."""


class ConversionError(ImgsearchError):
    """The TFLite file is not the MobileNetV2 graph the converter expects."""


class ImageTooLarge(ValueError):
    """An image has more pixels than decoding allows; decode records it as that file's failure."""


class RuntimeUnsupported(Exception):
    """A model the numpy query runtime cannot run; search loads the torch model instead (never shown to users)."""


class InvalidImage(ImgsearchError):
    """An image given as a query or upload is unusable: not an image, too many pixels, or truncated."""


class ImageNotFound(ImgsearchError):
    """An image id the index does not hold, or a file it may not serve (outside the indexed folders)."""


class ServeFailed(ImgsearchError):
    """`imgsearch serve` cannot listen on the host and port asked for."""


class RayNotInstalled(ImgsearchError):
    """`index --ray` was asked for, but the ray package (the imgsearch-offline[ray] extra) is not installed."""


class ShardFailed(ImgsearchError):
    """A shard of files failed on every Ray worker that tried it; what was merged before is kept."""
