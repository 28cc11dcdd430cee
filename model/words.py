"""Function words: the English words that carry no content a photo could show.

Used where a query's words are weighed one by one: the explanation offers only content words
("a dog on the beach" --> "dog", "beach"). A closed list, as function words are a closed class
(articles, pronouns, prepositions, conjunctions, auxiliaries, a few adverbs and quantifiers);
nouns and adjectives a stop-word list for document search also drops ("front", "top", "side",
"fire", "two") are kept, since a photo can show them.
"""

from __future__ import annotations

__all__ = ["FUNCTION_WORDS", "is_content_word"]

_LIST = """
    a an the this that these those some any each every either neither no another such
    i me my mine we us our ours you your yours he him his she her hers it its they them their theirs
    myself yourself himself herself itself ourselves themselves someone something
    who whom whose which what where when why how whether
    in on at of to from by with without within into onto upon over under above below across along
    through throughout around about against among amongst between beside besides behind beneath
    near off out up down toward towards past via per than like as
    and or but nor so yet if then because while although though unless until since
    is am are was were be been being do does did doing done have has had having
    will would shall should can could may might must
    not very too also just only still even quite rather really almost
    there here all both few many much more most other own same several
"""
FUNCTION_WORDS = frozenset(_LIST.split())


def is_content_word(word: str) -> bool:
    """True unless `word` (any case, surrounding punctuation ignored) is a function word or
    has no letter or digit (punctuation)."""
    stripped = word.strip(".,;:!?\"'()[]{}-").lower()
    return bool(stripped) and any(c.isalnum() for c in stripped) and stripped not in FUNCTION_WORDS
