"""How the zero-shot label score reads ImageNet class names, on Flickr8k dev and the sample photos.

    python bench/experiments/labels.py MODEL_DIR [--data ../shared/data/flickr8k]
        [--names full first] [--temperatures 0 0.05] [--weights 0.3 0.6]

The label score is sum_c p(c | image) * match(query, c) over the image's stored top classes
(model/zero_shot.py). Variants:
- names "full": the class's whole WordNet synonym list as one text ("dragonfly, darning needle,
  devil's darning needle, sewing needle, snake feeder, ..."), as the photo model was shipped;
  "first": its first name only ("dragonfly"); "wordnet": first name and WordNet parent, as shipped
  now ("dragonfly, odonate"); any other value: a TSV file of class name, text.
- temperature 0: match = cos(s(query), s(name)); T > 0: match = softmax over all classes of
  cos / T, i.e. how specifically the query names c among the 1,000 classes.
For each variant and weight: dev text->image R@1/5/10 ranked as search ranks (score_pool and final_order;
the re-rank term is computed once per caption, since it does not depend on the label score),
and, for the sample photos' demo queries (data/photos/queries.json's first eight and
"a dragonfly"), the rank of the described photo among the 24 photos.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.zero_shot import sentence_vectors
from imgsearch.training.captions import CaptionedImage
from imgsearch.training.data import encode_captions, load_images
from imgsearch.training.evaluate import embed_images, recall_at_k
from imgsearch.training.run import read_dataset

PHOTOS = Path(__file__).parents[2] / "data" / "photos"


def class_texts(labels: tuple[str, ...], mode: str) -> list[str]:
    if mode == "full":
        return list(labels)
    if mode == "first":
        return [name.split(",")[0].strip() for name in labels]
    if mode == "wordnet":  # as shipped: first name and WordNet parent (model/imagenet_class_texts.tsv)
        from imgsearch.model.zero_shot import wordnet_texts

        texts = wordnet_texts()
    else:
        with open(mode, encoding="utf-8") as f:
            texts = dict(line.rstrip("\n").split("\t") for line in f if not line.startswith("#"))  # name, text
    return [texts.get(name, name.split(",")[0].strip()) for name in labels]


def label_scorer(model: AlignmentModel, mode: str, temperature: float):
    labels = list(model.config.image_labels)
    vectors = sentence_vectors(model, class_texts(tuple(labels), mode))  # (C, h)
    row = {name: i for i, name in enumerate(labels)}

    def scores(_model, query_sentence: np.ndarray, image_labels) -> np.ndarray:
        cos = vectors @ query_sentence  # (C,)
        match = (
            cos
            if temperature == 0
            else np.exp((cos - cos.max()) / temperature) / np.exp((cos - cos.max()) / temperature).sum()
        )
        out = np.zeros(len(image_labels), np.float32)
        for i, own in enumerate(image_labels):
            for name, prob in own:
                if name in row:
                    out[i] += np.float32(prob) * match[row[name]]
        return out

    return scores


def content_tokens(model: AlignmentModel, query, caption: str):
    """The query with its mask off on [CLS], [SEP], punctuation and function words (model/words.py),
    for the re-rank term's mean over tokens; unchanged when no content word is left."""
    from imgsearch.model.words import is_content_word

    encoding = model.text.tokenizer(caption, truncation=True, max_length=model.text.config.max_length)
    text_of: dict[int, str] = {}
    for position, word_id in enumerate(encoding.word_ids()):
        if word_id is not None:
            start, end = encoding.word_to_chars(word_id)
            text_of[position] = caption[start:end]
    keep = np.array([is_content_word(text_of.get(p, "")) for p in range(len(query.mask))])
    if not keep.any():
        return query
    return dataclasses.replace(query, mask=query.mask & keep)


def pool_parts(model: AlignmentModel, image_global, regions, class_probs, captions, candidates, content_only=False):
    """Per caption: its pool (the top `candidates` by cosine, FAISS order), the pool's first-stage
    score and re-rank term with the label weight at 0 (neither depends on the label score), the
    query's sentence vector and the pool's stored labels."""
    from imgsearch.model.labels import top_labels
    from imgsearch.search.query_model import TorchQueryModel, query_from_batch
    from imgsearch.search.searcher import score_pool

    labels = top_labels(class_probs, model.config.image_labels)
    parts = []
    with torch.inference_mode():
        for start in range(0, len(captions), 256):
            queries = model.text.encode(captions[start : start + 256])
            cosines = image_global @ queries.global_.float().cpu().numpy().T
            for row in range(len(queries.global_)):
                query = query_from_batch(queries, row)
                if content_only:
                    query = content_tokens(model, query, captions[start + row])
                order = np.argsort(-cosines[:, row], kind="stable")
                pool = order[:candidates]
                scored = score_pool(
                    TorchQueryModel(model),
                    query,
                    cosines[pool, row],
                    regions.numpy()[pool],
                    None,
                    "float32",
                    image_global[pool],
                )
                parts.append((order, scored.first_stage, scored.reranked, query.sentence, [labels[i] for i in pool]))
    return parts


def ranks_with(parts, image_of, scorer, weight: float, fusion: float) -> np.ndarray:
    """Each caption's 0-based rank after re-ranking with label score `scorer` at `weight`
    (search's final_order: the pool by final score, ties in FAISS order, then the rest)."""
    from imgsearch.search.searcher import final_order

    ranks = np.empty(len(parts), np.int64)
    for n, (order, first, reranked, sentence, pool_labels) in enumerate(parts):
        label = scorer(None, sentence, pool_labels) if weight else 0.0
        final = reranked + np.float32(fusion) * (first + np.float32(weight) * label)
        ranks[n] = int(np.argmax((order == image_of[n])[final_order(final.astype(np.float32), len(order))]))
    return ranks


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--data", default="../shared/data/flickr8k")
    p.add_argument("--names", nargs="+", default=["full", "first"])
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0])
    p.add_argument("--weights", type=float, nargs="+", default=None)
    p.add_argument("--fusions", type=float, nargs="+", default=None, help="fusion weights (default: the model's)")
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--content-words", action="store_true", help="the re-rank term averages content-word tokens only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    model = AlignmentModel.from_pretrained(args.model, device="cpu")
    base = model.config
    model.config = dataclasses.replace(base, zero_shot_weight=0.0)
    cache = (
        Path("bench/out")
        / f"labels-parts-{Path(args.model).resolve().name}-{args.candidates}{'-content' * args.content_words}.pt"
    )
    if cache.exists():  # the pools do not depend on the label score: computed once a model
        saved = torch.load(cache, weights_only=True)  # tensors, lists and numbers only
        dev = [(*(t.numpy() for t in arrays), labels) for *arrays, labels in saved["parts"]]
        image_of, n_images = saved["image_of"].numpy(), saved["images"]
    else:
        items = read_dataset(data / "captions.tsv", data / "images", data / "dev.txt")
        images = load_images(items, base.backbone.image_size, workers=1)
        bank = encode_captions(model.text, images.items, cache_states=False)
        dev = pool_parts(
            model,
            *embed_images(model, images.pixels, with_class_probs=True),
            bank.captions,
            args.candidates,
            args.content_words,
        )
        image_of, n_images = bank.image_of, len(images.items)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "parts": [(*(torch.from_numpy(np.asarray(a)) for a in part[:-1]), part[-1]) for part in dev],
                "image_of": torch.from_numpy(np.asarray(image_of)),
                "images": n_images,
            },
            cache,
        )

    queries = json.loads((PHOTOS / "queries.json").read_text())
    demo = dict(list(queries.items())[:8]) | {"a dragonfly": queries["a dragonfly"]}
    photo_bank = load_images([CaptionedImage(path) for path in sorted(PHOTOS.glob("*.jpg"))], base.backbone.image_size)
    names = [item.path.name for item in photo_bank.items]
    photos = pool_parts(
        model,
        *embed_images(model, photo_bank.pixels, with_class_probs=True),
        list(demo),
        len(names),
        args.content_words,
    )

    print(
        f"{args.model}: {n_images} dev images, {len(dev)} captions, "
        f"{args.candidates} candidates, fusion weight {base.fusion_weight:g}"
    )
    print(
        "| class names | temperature | label weight | fusion | t2i R@1 | R@5 | R@10 | demo queries first | "
        "demo misses (rank) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, temperature, weight, fusion in itertools.product(
        args.names, args.temperatures, args.weights or [base.zero_shot_weight], args.fusions or [base.fusion_weight]
    ):
        scorer = label_scorer(model, mode, temperature)
        r = recall_at_k(ranks_with(dev, image_of, scorer, weight, fusion))
        misses = []
        for n, (query, wanted) in enumerate(demo.items()):
            best = min(
                int(ranks_with(photos[n : n + 1], np.array([names.index(w)]), scorer, weight, fusion)[0])
                for w in wanted
            )
            if best:
                misses.append(f"{query} ({best + 1})")
        print(
            f"| {mode} | {temperature:g} | {weight:g} | {fusion:g} | "
            f"{r['R@1']:.2f} | {r['R@5']:.2f} | {r['R@10']:.2f} | "
            f"{len(demo) - len(misses)}/{len(demo)} | {', '.join(misses)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
