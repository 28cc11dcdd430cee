"""Pieces shared by the CLI command modules."""

from __future__ import annotations

import functools

import click

from imgsearch.ground.errors import ImgsearchError

__all__ = ["CONTEXT", "json_option", "user_errors", "keep_freed_memory_on_cpu"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


def keep_freed_memory_on_cpu(device) -> None:
    """Before a command encodes images on `device` (a torch.device): on the CPU, have glibc's
    malloc keep freed memory in this process (model/allocator.py), which the library never
    does by itself. Call it before any decode workers are forked."""
    if device.type == "cpu":
        from imgsearch.model.allocator import keep_freed_memory

        keep_freed_memory()


def user_errors(command):
    """Turn library errors into `Error: ...` and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ImgsearchError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper
