"""Pieces shared by the CLI command modules."""

from __future__ import annotations

import datetime as dt
import functools

import click

from imgsearch.ground.errors import ImgsearchError

__all__ = ["CONTEXT", "json_option", "user_errors", "keep_freed_memory_on_cpu", "WholeNumber", "Date", "Relevance"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")


def keep_freed_memory_on_cpu(device) -> None:
    """Before a command encodes images on `device` (a torch.device, or the --device option's
    text): on the CPU, have glibc's malloc keep freed memory in this process
    (model/allocator.py), which the library never does by itself. Call it before any decode
    workers are forked. The option's text is judged without torch where it can be
    (model/device.py: "cpu", or "auto" on a machine without an NVIDIA driver)."""
    if isinstance(device, str):
        from imgsearch.model.device import resolve_device, runs_on_cpu

        on_cpu = runs_on_cpu(device) or resolve_device(device).type == "cpu"
    else:
        on_cpu = device.type == "cpu"
    if on_cpu:
        from imgsearch.model.allocator import keep_freed_memory

        keep_freed_memory()


class WholeNumber(click.ParamType):
    """An integer option whose mistakes read as a sentence after click's "Invalid value for
    '-k' / '--top':", such as "'abc' is not a whole number." or "it must be at least 1 (got 0)."
    """

    name = "integer"

    def __init__(self, min: int | None = None, max: int | None = None) -> None:
        self.min, self.max = min, max

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a whole number.", param, ctx)
        if self.min is not None and number < self.min:
            self.fail(f"it must be at least {self.min} (got {number}).", param, ctx)
        if self.max is not None and number > self.max:
            self.fail(f"it must be at most {self.max} (got {number}).", param, ctx)
        return number


class Date(click.ParamType):
    """A date option (YYYY-MM-DD), read by the command line so that a mistake names the option
    as the user typed it: "Invalid value for '--after': write the date as YYYY-MM-DD (got
    '01/06/2023')." """

    name = "date"

    def convert(self, value, param, ctx) -> dt.date:
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(f"write the date as YYYY-MM-DD (got {value!r}).", param, ctx)


class Relevance(click.ParamType):
    """A relevance option: a probability, as 0.5 or 50%. "Invalid value for '--min-score': give a
    probability between 0 and 1, or a percentage (got 'high')." """

    name = "relevance"

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, float):
            number = value
        else:
            text = str(value).strip()
            try:
                number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
            except ValueError:
                self.fail(f"give a probability between 0 and 1, or a percentage (got {value!r}).", param, ctx)
        if not 0 <= number <= 1:  # also NaN
            self.fail(f"give a probability between 0 and 1, or a percentage (got {value!r}).", param, ctx)
        return number


def user_errors(command):
    """Turn library errors into `Error: ...` and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ImgsearchError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper
