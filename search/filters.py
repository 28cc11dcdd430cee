"""Search, filter stage: which indexed images a search may return (folder, date taken, score).

Folder and date filters become the set of allowed image ids, read from SQLite; the
candidate stage (search/candidates.py) searches only inside it. min_score is applied to
each candidate's relevance afterwards (the estimated probability of a match, model/calibration.py).
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgsearch.ground.errors import InvalidQuery
from imgsearch.ground.paths import path_to_text

if TYPE_CHECKING:  # parsing filters loads neither numpy nor the store (search/arguments.py)
    import numpy as np

    from imgsearch.storage.store import Store

__all__ = ["SearchFilters", "DateLike"]

DateLike = dt.date | dt.datetime | str


@dataclass(frozen=True)
class SearchFilters:
    under: str | None = None  # a folder, as stored (path_to_text of its absolute path)
    taken_after: str | None = None  # ISO text, inclusive
    taken_before: str | None = None  # ISO text, inclusive
    min_score: float | None = None  # the least relevance (model/calibration.py), 0-1

    @classmethod
    def parse(
        cls,
        under: str | os.PathLike | None = None,
        taken_after: DateLike | None = None,
        taken_before: DateLike | None = None,
        min_score: float | None = None,
    ) -> SearchFilters:
        """Filters as a user gives them: a folder ("~" expanded, relative to the working
        directory), dates as date, datetime or ISO text ("2021-06-01", "2021-06-01T12:00").
        A date alone as taken_before means the end of that day. Raises InvalidQuery."""
        folder = None
        if under is not None:
            if not os.fspath(under).strip():
                raise InvalidQuery("the folder filter is empty; give a folder, or leave it out.")
            folder = path_to_text(os.path.abspath(os.path.expanduser(os.fspath(under))))
        after = _iso_bound(taken_after, "taken_after", end_of_day=False)
        before = _iso_bound(taken_before, "taken_before", end_of_day=True)
        if after is not None and before is not None and after > before:
            raise InvalidQuery(f"taken_after ({after}) is later than taken_before ({before}); swap them.")
        if min_score is not None:
            try:
                min_score = float(min_score)
            except (TypeError, ValueError):
                raise InvalidQuery(f"min_score must be a number (got {min_score!r}).") from None
            if not math.isfinite(min_score) or not 0 <= min_score <= 1:
                raise InvalidQuery(
                    f"min_score is a relevance between 0 and 1, the estimated probability of a match "
                    f"(got {min_score}); 0.5 keeps the good matches."
                )
        return cls(folder, after, before, min_score)

    @property
    def narrows_ids(self) -> bool:
        """Do the folder or date filters leave out images before ranking?"""
        return self.under is not None or self.taken_after is not None or self.taken_before is not None

    def allowed_ids(self, store: Store) -> np.ndarray | None:
        """Sorted ids (int64) the folder and date filters allow; None when they allow every image."""
        if not self.narrows_ids:
            return None
        return store.filtered_ids(under=self.under, taken_after=self.taken_after, taken_before=self.taken_before)


def _iso_bound(value: DateLike | None, name: str, *, end_of_day: bool) -> str | None:
    """A date bound --> ISO text comparable with stored taken_at ("YYYY-MM-DDTHH:MM:SS")."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidQuery(
                f"{name} {value!r} is not a date; write it as YYYY-MM-DD (or YYYY-MM-DDTHH:MM:SS)."
            ) from None
        date_only = len(text) == 10
    elif isinstance(value, dt.datetime):
        parsed, date_only = value, False
    elif isinstance(value, dt.date):
        parsed, date_only = dt.datetime.combine(value, dt.time()), True
    else:
        raise InvalidQuery(f"{name} must be a date, a datetime or ISO text (got {type(value).__name__}).")
    if parsed.tzinfo is not None:  # stored times are local wall-clock times
        parsed = parsed.astimezone().replace(tzinfo=None)
    if date_only and end_of_day:
        parsed = parsed.replace(hour=23, minute=59, second=59)
    return parsed.isoformat(timespec="seconds")
