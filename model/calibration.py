"""A model's relevance scale: its raw scores mapped to the probability that a photo matches.

Search ranks by raw scores whose scale means nothing to a person (a text search's final score
runs from about -10 to 40, a photo's cosine from -1 to 1). calibration.json, beside a model's
config.json, maps each kind of score onto one scale: the estimated probability that the photo
matches the query, fitted on held-out captioned images (`imgsearch calibrate`,
training/calibration.py, which also says what "matches" means there). It is what the table, the
JSON, the page, "more like this" and --min-score show and filter on, and what separates good
matches from weaker ones (GOOD_MATCH).

Each curve is monotone (isotonic regression) and stored as knots: a score between two knots
gets the straight line between them, a score outside them the nearest end's value. Not part of
the model's fingerprint: it changes no vector an index stores, only how scores are shown.

    text              a text search's final score (re-ranked, search/searcher.py's PoolScores.final)
    text_first_stage  a text search's first-stage score (re-ranking off, or past the re-ranked pool)
    image             the cosine of two photos' global vectors ("more like this", a photo as query)

A short text query (at most SHORT_QUERY_CONTENT_WORDS content words: "a dog on the beach")
reads its scores on curves of their own (`text_short`, `text_first_stage_short`): a score means
something else for a few words that many photos fit than for a sentence whose every detail had
to agree with the photo.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from imgsearch.ground.durable import write_text_durably
from imgsearch.ground.errors import ModelConfigError
from imgsearch.model.model_files import CALIBRATION_NAME
from imgsearch.model.words import is_content_word

__all__ = [
    "CALIBRATION_NAME",
    "GOOD_MATCH",
    "SHORT_QUERY_CONTENT_WORDS",
    "is_short_query",
    "Curve",
    "Calibration",
    "ScoreKind",
    "read_calibration",
]

FORMAT = "imgsearch-calibration"
# A good match: more likely than not to match. bench/RESULTS.md has the band's precision and
# recall on Flickr8k dev for the packaged models.
GOOD_MATCH = 0.5

SHORT_QUERY_CONTENT_WORDS = 3  # a text query of at most this many content words is short

ScoreKind = Literal["text", "text_first_stage", "image"]
KINDS: tuple[str, ...] = ("text", "text_short", "text_first_stage", "text_first_stage_short", "image")


@dataclass(frozen=True)
class Curve:
    """A monotone map from one kind of raw score to a probability: knots (x ascending, p in
    [0, 1], non-decreasing), linear between them, flat beyond them."""

    x: tuple[float, ...]
    p: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.x) != len(self.p) or not self.x:
            raise ValueError("a curve needs as many probabilities as scores, at least one")
        if any(not math.isfinite(v) for v in self.x + self.p):
            raise ValueError("a curve's knots must be finite numbers")
        if any(b < a for a, b in zip(self.x, self.x[1:])) or any(b < a for a, b in zip(self.p, self.p[1:])):
            raise ValueError("a curve's scores and probabilities must both be non-decreasing")
        if self.p[0] < 0 or self.p[-1] > 1:
            raise ValueError("a curve's probabilities must lie in [0, 1]")

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """Raw scores (any shape) --> probabilities, float32. NaN stays NaN."""
        values = np.asarray(scores, np.float64)
        return np.interp(values, self.x, self.p).astype(np.float32)


@dataclass(frozen=True)
class Calibration:
    curves: Mapping[str, Curve]  # ScoreKind --> its curve
    good: float = GOOD_MATCH  # the probability from which a result counts as a good match
    # How it was fitted (data, counts, held-out figures), kept as written.
    fitted_on: dict = field(default_factory=dict)
    # Two photos whose global vectors have at least this cosine are near-duplicates (one photo at
    # two sizes, re-saved, lightly edited), folded into one result by search. Measured on the
    # held-out photos (training/calibration.py, near_duplicate_threshold); None: byte-identical
    # copies alone are folded.
    near_duplicate_cosine: float | None = None

    def relevance(self, kind: ScoreKind, scores: np.ndarray, query: str | None = None) -> np.ndarray:
        """Raw scores of one kind --> probabilities of a match (float32). A text kind needs the
        `query`: a short one reads the short curve."""
        if kind != "image":
            if query is None:
                raise ValueError("a text score's relevance depends on its query")
            if is_short_query(query):
                return self.curves[f"{kind}_short"](scores)
        return self.curves[kind](scores)

    def to_json(self) -> str:
        body = {
            "format": FORMAT,
            "format_version": 1,
            "good_match": self.good,
            "near_duplicate_cosine": self.near_duplicate_cosine,
            "curves": {kind: {"x": list(c.x), "p": list(c.p)} for kind, c in self.curves.items()},
            "fitted_on": self.fitted_on,
        }
        return json.dumps(body, indent=1) + "\n"

    def save(self, model_dir: str | os.PathLike) -> Path:
        path = Path(model_dir) / CALIBRATION_NAME
        write_text_durably(path, self.to_json())
        return path


def is_short_query(text: str) -> bool:
    """Whether a text query reads the short curves: at most SHORT_QUERY_CONTENT_WORDS content
    words (model/words.py), words split on spaces."""
    return sum(is_content_word(word) for word in text.split()) <= SHORT_QUERY_CONTENT_WORDS


def read_calibration(model_dir: str | os.PathLike) -> Calibration | None:
    """The calibration beside the model in `model_dir`, or None when it has none. A file that is
    there but unreadable raises ModelConfigError: a broken calibration is not silently dropped."""
    path = Path(model_dir) / CALIBRATION_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ModelConfigError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        body = json.loads(text)
        if body.get("format") != FORMAT or body.get("format_version") != 1:
            raise ValueError(f"not an {FORMAT} file of format_version 1")
        curves = {}
        for kind in KINDS:
            knots = body["curves"][kind]
            curves[kind] = Curve(tuple(float(v) for v in knots["x"]), tuple(float(v) for v in knots["p"]))
        good = float(body.get("good_match", GOOD_MATCH))
        if not 0 < good <= 1:
            raise ValueError(f"good_match {good} is not in (0, 1]")
        near = body.get("near_duplicate_cosine")
        if near is not None and not 0 < float(near) <= 1:
            raise ValueError(f"near_duplicate_cosine {near} is not in (0, 1]")
        return Calibration(curves, good, dict(body.get("fitted_on") or {}), None if near is None else float(near))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelConfigError(
            f"{path} is not a valid calibration ({e}); run `imgsearch calibrate` again or delete it."
        ) from None
