"""Reading and writing an alignment model directory's files (model/model_files.py names them),
and its fingerprint. What config.json means is model/config.py's.

Both halves of the product load from the same directory: the indexer reads
only the image side ("image.*" tensors), search reads all of it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from imgsearch.ground.durable import replace_durably
from imgsearch.ground.errors import ModelConfigError
from imgsearch.model.model_files import (  # fingerprints are model_files'; named here as before
    CONFIG_NAME,
    LABELS_NAME,
    WEIGHTS_NAME,
    answers_to_fingerprint,
    fingerprint,
    require_model_files,
)

__all__ = ["read_tensors", "write_checkpoint", "fingerprint", "answers_to_fingerprint", "load_module_state"]


def read_tensors(directory: str | os.PathLike, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors whose key starts with `prefix`, with the prefix removed."""
    directory = Path(directory)
    require_model_files(directory)
    tensors = {}
    with safe_open(str(directory / WEIGHTS_NAME), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open's handle is not a mapping
            if key.startswith(prefix):
                tensors[key[len(prefix) :]] = handle.get_tensor(key)
    return tensors


def write_checkpoint(
    directory: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor], files: Mapping[str, str] | None = None
) -> None:
    """Write the weights, the text `files` (name --> UTF-8 text, e.g. the labels) and config.json
    as temp files, then rename them into place, config.json last. A labels file left from an
    earlier save that this config does not name is removed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = dict(files or {})
    weights_tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(weights_tmp))
    text_files = {**files, CONFIG_NAME: json.dumps(config, indent=2) + "\n"}
    for name, text in text_files.items():
        (directory / (name + ".tmp")).write_text(text, encoding="utf-8")
    replace_durably(weights_tmp, directory / WEIGHTS_NAME)
    for name in text_files:  # config.json last: it names the others
        replace_durably(directory / (name + ".tmp"), directory / name)
    if LABELS_NAME not in files:
        (directory / LABELS_NAME).unlink(missing_ok=True)


def load_module_state(
    module: torch.nn.Module, tensors: dict[str, torch.Tensor], *, provided_elsewhere: tuple[str, ...] = ()
) -> None:
    """Load `tensors` into `module`, strictly, except keys under `provided_elsewhere`
    prefixes, which pretrained weights loaded beforehand already filled."""
    result = module.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(provided_elsewhere)]
    if missing or result.unexpected_keys:
        raise ModelConfigError(
            "checkpoint weights do not match its config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}. Was the directory written by another version?"
        )
