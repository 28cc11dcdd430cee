"""Reading and writing alignment model directories: config.json + model.safetensors.

Both halves of the product load from the same directory: the indexer reads
only the image side ("image.*" tensors), search reads all of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from imgsearch.durable import replace_durably
from imgsearch.errors import ModelConfigError, ModelNotFound

__all__ = [
    "CONFIG_NAME", "WEIGHTS_NAME", "FORMAT", "read_config", "read_tensors",
    "write_checkpoint", "fingerprint", "load_module_state",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "imgsearch-alignment"  # config.json["format"]: guards against pointing at other models


def _require(directory: Path) -> None:
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / n).is_file()]
    if missing:
        raise ModelNotFound(
            f"{directory} is not an alignment model directory (missing {', '.join(missing)}). "
            "Pass the directory written by `imgsearch train` or save_pretrained(), "
            "e.g. data/demo-model."
        )


def read_config(directory: str | os.PathLike) -> dict:
    directory = Path(directory)
    _require(directory)
    try:
        config = json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelConfigError(f"cannot read {directory / CONFIG_NAME}: {exc}") from exc
    if config.get("format") != FORMAT:
        raise ModelConfigError(
            f"{directory / CONFIG_NAME} is not an imgsearch alignment model config "
            f"(format {config.get('format')!r}, expected {FORMAT!r})."
        )
    return config


def read_tensors(directory: str | os.PathLike, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors whose key starts with `prefix`, with the prefix removed."""
    directory = Path(directory)
    _require(directory)
    tensors = {}
    with safe_open(str(directory / WEIGHTS_NAME), framework="pt") as handle:
        for key in handle.keys():
            if key.startswith(prefix):
                tensors[key[len(prefix):]] = handle.get_tensor(key)
    return tensors


def write_checkpoint(directory: str | os.PathLike, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Write config and weights as temp files, then rename them into place."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_tmp = directory / (WEIGHTS_NAME + ".tmp")
    config_tmp = directory / (CONFIG_NAME + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(weights_tmp))
    config_tmp.write_text(json.dumps({"format": FORMAT, **config}, indent=2) + "\n")
    replace_durably(weights_tmp, directory / WEIGHTS_NAME)
    replace_durably(config_tmp, directory / CONFIG_NAME)


def fingerprint(directory: str | os.PathLike) -> str:
    """sha256 over config.json and model.safetensors: which exact model made a vector."""
    directory = Path(directory)
    _require(directory)
    digest = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        with open(directory / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


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
