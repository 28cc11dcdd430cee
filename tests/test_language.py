"""The not-English warning (search/language.py) against labelled queries: English captions and
short queries get none; queries in eight other languages get one, the short one-word and
one-character ones included where the script tells."""

from __future__ import annotations

import pytest

from imgsearch.search.language import detected_language, english_warning

ENGLISH = [
    "a dog",
    "a cat",
    "a girl",
    "sunset",
    "a parrot",
    "a hot dog",
    "birthday cake",
    "people at a concert",
    "children playing in a fountain",
    "A black dog is running through the shallow water at the beach .",
    "Two men in climbing gear sit on a rock ledge",
    "xqzv blorft wug",  # nonsense is not a foreign language: the score must say it, not this warning
    "",
    "   ",
    "photo \udce9 from a Latin-1 terminal",  # a lone surrogate, as Python decodes such bytes
]
FOREIGN = {
    "un chien qui court sur la plage": "fr",
    "des enfants jouent dans une fontaine": "fr",
    "ein Hund läuft am Strand": "de",
    "Kinder spielen im Brunnen": "de",
    "un perro corriendo en la playa": "es",
    "una macchina rossa": "it",
    "een rode auto": "nl",
    "красная машина": "ru",
    "海滩上奔跑的狗": "zh",
    "ビーチを走る犬": "ja",
}
SCRIPT_ONLY = ["猫", "犬", "一只狗", "собака"]  # too short for the identifier; the script says it


@pytest.mark.parametrize("query", ENGLISH)
def test_english_queries_get_no_warning(query):
    assert english_warning(query) is None


@pytest.mark.parametrize(("query", "language"), FOREIGN.items())
def test_other_languages_are_named(query, language):
    assert detected_language(query) == language
    warning = english_warning(query)
    assert warning is not None and "reads English" in warning and f"'{language}'" in warning


@pytest.mark.parametrize("query", SCRIPT_ONLY)
def test_other_scripts_are_warned_even_when_too_short_to_name(query):
    assert detected_language(query) is not None
    assert "reads English" in english_warning(query)
