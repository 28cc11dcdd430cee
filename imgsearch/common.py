"""Pieces shared by the CLI command modules."""

from __future__ import annotations

import functools

import click

from imgsearch.errors import ImgsearchError

__all__ = ["CONTEXT", "json_option", "user_errors"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


def user_errors(command):
    """Turn library errors into `Error: ...` and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ImgsearchError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper
