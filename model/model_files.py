"""The files of an alignment model directory and the config's format: the one place that names
them. No heavy imports: the command line's --help names the packaged model's directory.

A model directory (format version 2) holds

    config.json                what to load: the architecture, re-rank weights, the labels file's
                               name; where the weights came from in its own "provenance" section
    model.safetensors          the weights ("image.*", "text.*", "scorer.*", "hubness.*")
    labels.txt                 the backbone classifier's class names, one a line (models with labels)
    legacy-fingerprints.txt    optional: fingerprints of this same model in an earlier layout,
                               which indexes made with it recorded (not part of the fingerprint)
    calibration.json           optional: the model's scores mapped to the probability of a match
                               (model/calibration.py; `imgsearch calibrate`; not part of the
                               fingerprint: it changes no stored vector)

Format version 1 (a config.json without "format_version") carried the labels inline and every
backbone's settings whatever the backbone; model/config.py still reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import partial
from pathlib import Path

from imgsearch.ground.errors import ModelConfigError, ModelNotFound

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "LABELS_NAME",
    "LEGACY_FINGERPRINTS_NAME",
    "CALIBRATION_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "require_model_files",
    "read_config_json",
    "labels_file_name",
    "fingerprinted_files",
    "legacy_fingerprints",
    "read_labels",
    "labels_text",
    "fingerprint",
    "answers_to_fingerprint",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LABELS_NAME = "labels.txt"
LEGACY_FINGERPRINTS_NAME = "legacy-fingerprints.txt"
CALIBRATION_NAME = "calibration.json"
FORMAT = "imgsearch-alignment"  # config.json["format"]: guards against pointing at other models
# config.json["format_version"]; a config without it is version 1. 2: labels in their own file,
# per-backbone and per-scorer settings only where they apply, provenance apart.
FORMAT_VERSION = 2

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def require_model_files(directory: Path) -> None:
    """Raise ModelNotFound unless `directory` holds config.json and model.safetensors."""
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / n).is_file()]
    if missing:
        raise ModelNotFound(
            f"{directory} is not an alignment model directory (missing {', '.join(missing)}). "
            "Pass the directory written by `imgsearch train` or save_pretrained(), "
            "e.g. data/demo-model."
        )


def read_config_json(directory: str | os.PathLike) -> dict:
    """config.json as JSON, checked to be an imgsearch alignment config of a format version this
    release reads. model/config.py turns it into an AlignmentConfig."""
    directory = Path(directory)
    require_model_files(directory)
    path = directory / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise ModelConfigError(
            f"{path} is not an imgsearch alignment model config (format {found!r}, expected {FORMAT!r})."
        )
    version = config.get("format_version", 1)
    if version not in range(1, FORMAT_VERSION + 1):
        raise ModelConfigError(
            f"{path} has format_version {version!r}; this imgsearch reads versions 1 to {FORMAT_VERSION}. "
            "Upgrade imgsearch to load it."
        )
    return config


def labels_file_name(config: dict, path: Path | None = None) -> str | None:
    """The labels file a config (format 2) names, or None (no labels, or labels inline as in
    format 1). Only a plain file name inside the model directory is accepted."""
    labels = config.get("image", {}).get("labels")
    if not isinstance(labels, str):
        return None
    if not labels or labels != os.path.basename(labels) or labels in (".", "..") or "\\" in labels:
        raise ModelConfigError(
            f"{path or CONFIG_NAME}: image.labels {labels!r} must name a file in the model directory."
        )
    return labels


def fingerprinted_files(directory: Path) -> list[Path]:
    """The files that make the model, in the order its fingerprint hashes them: config.json, the
    labels file it names (if any), model.safetensors. For a format 1 directory, config.json and
    model.safetensors, as fingerprints were always computed."""
    labels = labels_file_name(read_config_json(directory), directory / CONFIG_NAME)
    return [directory / CONFIG_NAME, *([directory / labels] if labels else []), directory / WEIGHTS_NAME]


def legacy_fingerprints(directory: str | os.PathLike) -> set[str]:
    """The fingerprints this directory's model had in an earlier layout (legacy-fingerprints.txt:
    one sha256 hex a line, then optionally a note; '#' starts a comment). Empty without the file."""
    path = Path(directory) / LEGACY_FINGERPRINTS_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return set()
    except OSError as exc:
        raise ModelConfigError(f"cannot read {path}: {exc}") from exc
    found = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        value = line.split()[0]
        if not _FINGERPRINT.fullmatch(value):
            raise ModelConfigError(f"{path}, line {number}: {value!r} is not a sha256 fingerprint (64 hex digits).")
        found.add(value)
    return found


def read_labels(path: Path) -> tuple[str, ...]:
    """A labels file: one class name a line, in class order, UTF-8."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelNotFound(f"{path} is missing: the model's config.json names it as its labels file.") from None
    except (OSError, ValueError) as exc:
        raise ModelConfigError(f"cannot read {path}: {exc}") from exc
    lines = text.split("\n")  # read_text has made "\r\n" (a file edited on Windows) "\n"
    labels = tuple(lines[:-1] if lines[-1] == "" else lines)  # the last line's newline ends no name
    if not labels or any(not name for name in labels):
        raise ModelConfigError(f"{path}: every line must name a class (no empty lines).")
    return labels


def labels_text(labels: tuple[str, ...] | list[str]) -> str:
    """The labels file's text for `labels`: one a line. read_labels gives them back exactly."""
    bad = [name for name in labels if not name or "\n" in name or "\r" in name]
    if bad:
        raise ModelConfigError(f"class names must be non-empty single lines; got {bad[:3]!r}.")
    return "".join(f"{name}\n" for name in labels)


def fingerprint(directory: str | os.PathLike) -> str:
    """sha256 over the model's files (config.json, its labels file if it names one,
    model.safetensors, in that order): which exact model made a vector."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in fingerprinted_files(directory):
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the `with` below; the try is for the open alone
        except FileNotFoundError:
            raise ModelConfigError(f"{path} is missing: {directory / CONFIG_NAME} names it.") from None
        with handle:
            for block in iter(partial(handle.read, 1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def answers_to_fingerprint(directory: str | os.PathLike, fingerprint_hex: str) -> bool:
    """Whether the model in `directory` is the one with `fingerprint_hex`: its fingerprint now, or
    one it had in an earlier layout of the same files (legacy-fingerprints.txt; the shipped models
    list the fingerprints their format 1 config.json gave, so indexes made with them still open)."""
    return fingerprint_hex in legacy_fingerprints(directory) or fingerprint(directory) == fingerprint_hex
