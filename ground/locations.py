"""Where imgsearch keeps things by default (no heavy imports: the command line's --help reads it)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["default_index_dir", "default_cache_dir"]


def default_index_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user index: $XDG_DATA_HOME/imgsearch/index, else ~/.local/share/imgsearch/index.

    As the XDG base directory spec says, an empty or relative XDG_DATA_HOME is ignored.
    (The CLI's --index, then IMGSEARCH_INDEX, come before this.)
    """
    environ = os.environ if environ is None else environ
    data_home = environ.get("XDG_DATA_HOME", "")
    if not data_home or not os.path.isabs(data_home):
        home = environ.get("HOME") or str(Path.home())
        data_home = os.path.join(home, ".local", "share")
    return Path(data_home) / "imgsearch" / "index"


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Per-user cache of things worth not recomputing (class-name vectors):
    $XDG_CACHE_HOME/imgsearch, else ~/.cache/imgsearch. Safe to delete."""
    environ = os.environ if environ is None else environ
    cache_home = environ.get("XDG_CACHE_HOME", "")
    if not cache_home or not os.path.isabs(cache_home):
        home = environ.get("HOME") or str(Path.home())
        cache_home = os.path.join(home, ".cache")
    return Path(cache_home) / "imgsearch"
