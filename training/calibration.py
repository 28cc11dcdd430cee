"""Fitting a model's relevance scale (model/calibration.py) on held-out captioned images.

What "matches" means. A captions set like Flickr8k names one photo per caption, yet a query
such as "a dog runs on the grass" fits dozens; counting only the named photo as a match would
call every other dog on grass wrong, and no score could be calibrated against that (bench/
RESULTS.md, 2026-12-05: the observed share stayed at 12-27% whatever the score). So a photo
counts as matching a query when one of its own human captions says what the query says about as
closely as the described photo's other captions do: the cosine of the two sentences (the text
encoder's mean-pooled sentence vectors, those the zero-shot label score compares) is at least
the median of the query's cosines to its own photo's other captions. The described photo always
matches. This judge reads captions only, never the pixels the model scores.

The queries. People type short queries; captions are sentences. Each caption is a query, and so
is its opening phrase (the words before the first function word that follows a content word,
at most four: "A snowboarder in a green jacket ..." --> "A snowboarder"), judged the same way.
Seeded nonsense (made-up words, "xqzv blorft") match nothing, so that a score that nonsense
reaches is not called good. Each query's candidates are scored exactly as Index.search scores
them (training/evaluate.py's search_pools); the `text` curve is fitted on the final scores of
the pool, `text_first_stage` on the first-stage scores, `image` on the cosines of each photo's
nearest other photos, a photo matching another when it matches at least half of that photo's
opening phrases (its subject, what "more like this" asks about).
A score means something else for a few words that many photos fit than for a sentence, so short
text queries (model/calibration.py's is_short_query: at most three content words) have curves
of their own (`text_short`, `text_first_stage_short`).

Each curve is an isotonic regression (scikit-learn) of match (0/1) on the score. Held out: fit
on the queries of the first half of the images, measure on the second, then the other way; the
report gives calibration by bin and the precision and recall of the good band (p >= GOOD_MATCH).
The curves written are fitted on all of it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.calibration import GOOD_MATCH, Calibration, Curve, is_short_query
from imgsearch.model.words import is_content_word
from imgsearch.model.zero_shot import sentence_vectors
from imgsearch.search.defaults import DEFAULT_CANDIDATES
from imgsearch.training.captions import CaptionedImage
from imgsearch.training.data import encode_captions, load_images
from imgsearch.training.evaluate import embed_images, search_pools

__all__ = [
    "opening_phrase",
    "nonsense_queries",
    "caption_matches",
    "fit_curve",
    "near_duplicate_threshold",
    "calibrate",
    "CalibrationRun",
]

log = logging.getLogger(__name__)

MAX_KNOTS = 200  # knots kept per curve (isotonic regression's steps, thinned evenly)
NONSENSE = 500  # nonsense queries per calibration
# Near-duplicates (model/calibration.py): a cosine this far above the closest two distinct held-out
# photos, and at least the floor. With the packaged photo model the closest distinct Flickr8k dev
# photos (two shots of one scene) have 0.846, the sample cat.jpg and its 1280x720 copy 0.988, a
# dev photo and its copy 20% brighter 0.988 (median), mirrored 0.956 (bench/RESULTS.md).
NEAR_DUPLICATE_MARGIN = 0.05
NEAR_DUPLICATE_FLOOR = 0.95


def opening_phrase(caption: str, max_words: int = 4) -> str | None:
    """The caption's opening phrase, as a short query: its words up to the first function word
    that follows a content word, at most `max_words`; None when that is the whole caption or
    holds no content word."""
    words = caption.split()
    taken: list[str] = []
    for word in words[:max_words]:
        if taken and any(is_content_word(w) for w in taken) and not is_content_word(word):
            break
        taken.append(word)
    while taken and not is_content_word(taken[-1]):
        taken.pop()
    if not taken or len(taken) == len([w for w in words if w.strip(".,;:!?")]):
        return None
    return " ".join(taken)


def nonsense_queries(count: int, seed: int = 0) -> list[str]:
    """`count` queries of one to three made-up words (consonant-vowel syllables), seeded."""
    rng = random.Random(seed)
    consonants, vowels = "bcdfghjklmnpqrstvwxz", "aeiouy"

    def word() -> str:
        return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 3))) + rng.choice(
            consonants
        )

    return [" ".join(word() for _ in range(rng.randint(1, 3))) for _ in range(count)]


def caption_matches(
    query_vectors: np.ndarray,
    source: np.ndarray,
    caption_vectors: np.ndarray,
    image_of: np.ndarray,
    n_images: int,
) -> np.ndarray:
    """Which images match each query, by their captions (the module's rule): query sentence
    vectors (Nq, h) L2-normalised; source (Nq,) the caption each query came from (-1: none, a
    nonsense query, which matches nothing); caption vectors (Nc, h) and their images (Nc,),
    each image's captions contiguous. --> (Nq, n_images) bool."""
    starts = np.flatnonzero(np.r_[True, image_of[1:] != image_of[:-1]])  # each image's first caption
    matches = np.zeros((len(query_vectors), n_images), bool)
    for begin in range(0, len(query_vectors), 1024):
        rows = slice(begin, begin + 1024)
        sims = query_vectors[rows] @ caption_vectors.T  # (b, Nc)
        best = np.maximum.reduceat(sims, starts, axis=1)  # (b, n_images): each image's closest caption
        for r, caption in enumerate(source[rows]):
            if caption < 0:
                continue
            image = image_of[caption]
            siblings = np.flatnonzero(image_of == image)
            others = sims[r, siblings[siblings != caption]]
            if len(others):
                matches[begin + r] = best[r] >= np.median(others)
            matches[begin + r, image] = True
    return matches


def fit_curve(scores: np.ndarray, matched: np.ndarray, max_knots: int = MAX_KNOTS) -> Curve:
    """Isotonic regression of matched (0/1) on scores --> a Curve of at most max_knots knots."""
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
        scores.astype(np.float64).ravel(), matched.astype(np.float64).ravel()
    )
    x, p = fitted.X_thresholds_, fitted.y_thresholds_
    if len(x) > max_knots:
        keep = np.unique(np.r_[np.linspace(0, len(x) - 1, max_knots).round().astype(int)])
        x, p = x[keep], p[keep]
    return Curve(tuple(round(float(v), 6) for v in x), tuple(round(float(v), 6) for v in np.maximum.accumulate(p)))


@dataclass
class _Pairs:
    """Scored (query, candidate) pairs of one kind: scores (Q, C), matched (Q, C), and per query
    the image it came from (-1: nonsense) and its sort (captions, openings, nonsense, photos)."""

    scores: np.ndarray
    matched: np.ndarray
    image: np.ndarray
    sort: np.ndarray


@dataclass
class CalibrationRun:
    calibration: Calibration
    report: str  # markdown: held-out calibration and the good band's precision and recall


def calibrate(
    model: AlignmentModel,
    items: list[CaptionedImage],
    *,
    candidates: int = DEFAULT_CANDIDATES,
    workers: int = 0,
    seed: int = 0,
    describe: str = "",
    progress: Callable[[str], None] = lambda line: None,
) -> CalibrationRun:
    """Fit the model's relevance curves on captioned images the model was not trained on."""
    model.eval()
    images = load_images(items, model.config.backbone.image_size, workers)
    bank = encode_captions(model.text, images.items, cache_states=False)
    n_images = len(images.items)
    progress(f"embedding {n_images:,} images")
    image_global, regions, class_probs = embed_images(model, images.pixels, with_class_probs=True)

    openings = [(n, text) for n, caption in enumerate(bank.captions) if (text := opening_phrase(caption))]
    nonsense = nonsense_queries(NONSENSE, seed)
    texts = bank.captions + [text for _, text in openings] + nonsense
    source = np.r_[np.arange(len(bank.captions)), [n for n, _ in openings], np.full(len(nonsense), -1)].astype(int)
    sort = np.r_[np.zeros(len(bank.captions)), np.ones(len(openings)), np.full(len(nonsense), 2)].astype(int)
    caption_vectors = sentence_vectors(model, bank.captions)
    query_vectors = np.concatenate([caption_vectors, sentence_vectors(model, texts[len(bank.captions) :])])
    matches = caption_matches(query_vectors, source, caption_vectors, bank.image_of, n_images)  # (Nq, Ni)
    query_image = np.where(source >= 0, bank.image_of[np.maximum(source, 0)], -1)

    progress(f"scoring {len(texts):,} queries as search does")
    depth = min(candidates, n_images)
    final = np.empty((len(texts), depth), np.float32)
    first = np.empty_like(final)
    matched = np.empty(final.shape, bool)
    for q, order, scored in search_pools(model, image_global, regions, class_probs, texts, depth):
        final[q], first[q], matched[q] = scored.final, scored.first_stage, matches[q, order[:depth]]
    short = np.array([is_short_query(text) for text in texts])

    # Photos: each photo's nearest other photos by cosine; one is like it when it matches at least
    # half of the photo's short descriptions (its captions' opening phrases: "A cat", "Two dogs
    # play"; its captions when it has none), the subject "more like this" is asked about.
    progress("scoring photo to photo")
    cosines = image_global @ image_global.T  # (Ni, Ni)
    np.fill_diagonal(cosines, -np.inf)
    nearest = np.argsort(-cosines, axis=1, kind="stable")[:, : min(candidates, n_images - 1)]
    described: list[list[int]] = [[] for _ in range(n_images)]  # per photo, its openings' query rows
    for row, (caption, _) in enumerate(openings, start=len(bank.captions)):
        described[bank.image_of[caption]].append(row)
    share = np.stack(
        [matches[rows or own].mean(0, dtype=np.float32) for rows, own in zip(described, bank.captions_of)]
    )  # (Ni, Ni)
    photo = _Pairs(
        np.take_along_axis(cosines, nearest, 1),
        np.take_along_axis(share, nearest, 1) >= 0.5,
        np.arange(n_images),
        np.full(n_images, 3),
    )

    near_duplicate, closest_distinct = near_duplicate_threshold(image_global)
    pairs: dict[str, _Pairs] = {}
    for name, scores in (("text", final), ("text_first_stage", first)):
        for kind, rows in ((name, ~short), (f"{name}_short", short)):
            pairs[kind] = _Pairs(scores[rows], matched[rows], query_image[rows], sort[rows])
    pairs["image"] = photo
    report = _held_out_report(pairs, n_images, describe)
    curves = {kind: fit_curve(p.scores, p.matched) for kind, p in pairs.items()}
    fitted_on = {
        "data": describe,
        "images": n_images,
        "captions": len(bank.captions),
        "opening_phrases": len(openings),
        "nonsense_queries": len(nonsense),
        "candidates": depth,
        "matches_per_caption": round(float(matches[: len(bank.captions)].sum(1).mean()), 2),
        "closest_distinct_photos_cosine": round(closest_distinct, 4),
    }
    report += (
        f"\nNear-duplicates: the closest two distinct photos here have cosine {closest_distinct:.4f}; "
        f"photos at least {near_duplicate} alike fold into one result.\n"
    )
    return CalibrationRun(Calibration(curves, GOOD_MATCH, fitted_on, near_duplicate), report)


def near_duplicate_threshold(image_global: np.ndarray) -> tuple[float, float]:
    """The cosine from which two photos count as near-duplicates, for a model whose held-out
    photos (distinct, as a captions set's photos are) have global vectors image_global (N, d):
    NEAR_DUPLICATE_MARGIN above the closest two of them, and never under NEAR_DUPLICATE_FLOOR.
    Returns it (2 decimals) and that closest pair's cosine."""
    similar = image_global @ image_global.T
    np.fill_diagonal(similar, -np.inf)
    closest = float(similar.max()) if len(image_global) > 1 else 0.0
    return round(min(1.0, max(NEAR_DUPLICATE_FLOOR, closest + NEAR_DUPLICATE_MARGIN)), 2), closest


_SORTS = {0: "captions", 1: "opening phrases", 2: "nonsense", 3: "photos"}
_BINS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0001)


def _held_out_report(pairs: dict[str, _Pairs], n_images: int, describe: str) -> str:
    """Markdown: for each kind, fit on the queries of one half of the images (nonsense split by
    position), measure on the other, both ways; calibration by bin and the good band."""
    lines = [f"Held-out calibration on {describe or 'the given images'} ({n_images:,} images):", ""]
    for kind, p in pairs.items():
        position = np.arange(len(p.image))
        halves = np.where(p.image >= 0, p.image < n_images // 2, position % 2 == 0)
        lines += [
            f"**{kind}**: predicted p against the observed share of matches, held-out half (both ways summed)",
            "",
            "| predicted p | pairs | mean p | observed |",
            "|---|---|---|---|",
        ]
        predicted = np.empty(p.scores.shape, np.float32)
        for fit_half in (True, False):
            curve = fit_curve(p.scores[halves == fit_half], p.matched[halves == fit_half])
            predicted[halves != fit_half] = curve(p.scores[halves != fit_half])
        for lo, hi in zip(_BINS[:-1], _BINS[1:]):
            inside = (predicted >= lo) & (predicted < hi)
            if inside.any():
                lines.append(
                    f"| {lo:.1f}-{min(hi, 1):.1f} | {inside.sum():,} | {predicted[inside].mean():.3f} | "
                    f"{p.matched[inside].mean():.3f} |"
                )
        lines += ["", "| queries | good matches per query | precision | recall | queries with a good match |"]
        lines.append("|---|---|---|---|---|")
        for sort in np.unique(p.sort):
            rows = p.sort == sort
            good, truth = predicted[rows] >= GOOD_MATCH, p.matched[rows]
            precision = f"{truth[good].mean():.3f}" if good.any() else "-"
            recall = f"{(good & truth).sum() / truth.sum():.3f}" if truth.any() else "-"
            lines.append(
                f"| {_SORTS[int(sort)]} ({rows.sum():,}) | {good.sum(1).mean():.2f} | {precision} | {recall} | "
                f"{good.any(1).mean():.1%} |"
            )
        lines.append("")
    return "\n".join(lines)
