"""Retrieval evaluation: Recall@K for text->image and image->text, before and after re-ranking.

Ranks are 0-based: rank r means r gallery items scored strictly higher than
the best correct one. Re-ranking reorders each query's top-`depth` first-stage
candidates by the scorer (plus fusion), a stable sort: candidates with equal
fused scores keep their first-stage order. A query whose match lies deeper
keeps its first-stage rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imgsearch.model.alignment import AlignmentModel
from imgsearch.model.backbone import first_real_class
from imgsearch.model.labels import TOP_LABELS, top_labels
from imgsearch.model.zero_shot import class_matches, sentence_vectors
from imgsearch.search.defaults import DEFAULT_CANDIDATES
from imgsearch.training.data import CaptionBank

if TYPE_CHECKING:
    from imgsearch.search.searcher import PoolScores

__all__ = [
    "recall_at_k",
    "t2i_ranks",
    "i2t_ranks",
    "rerank_t2i_ranks",
    "rerank_i2t_ranks",
    "t2i_candidate_scores",
    "fused_t2i_ranks",
    "captions_describing",
    "embed_images",
    "embed_captions",
    "evaluate",
    "search_t2i_ranks",
    "search_pools",
    "format_table",
    "KS",
]

KS = (1, 5, 10)


def recall_at_k(ranks: np.ndarray, ks=KS) -> dict[str, float]:
    """Percentage of queries whose best correct item has rank < k."""
    return {f"R@{k}": float(100.0 * np.mean(ranks < k)) for k in ks}


def t2i_ranks(sim: np.ndarray, image_of: np.ndarray) -> np.ndarray:
    """sim (Nc, Ni), image_of (Nc,) --> (Nc,) rank of each caption's image."""
    correct = sim[np.arange(len(sim)), image_of][:, None]  # (Nc, 1)
    return (sim > correct).sum(axis=1)


def captions_describing(texts: list[str], captions_of: list[list[int]]) -> list[list[int]]:
    """Per image, every caption whose text is one of its own, word for word: two images may
    share a caption, and either copy describes both (image->text counts it as correct)."""
    by_text: dict[str, list[int]] = {}
    for index, text in enumerate(texts):
        by_text.setdefault(text, []).append(index)
    return [sorted({c for own in captions for c in by_text[texts[own]]}) for captions in captions_of]


def i2t_ranks(sim: np.ndarray, captions_of: list[list[int]]) -> np.ndarray:
    """sim (Nc, Ni) --> (Ni,) rank of the best-placed caption of each image among all captions."""
    by_image = sim.T  # (Ni, Nc)
    ranks = np.empty(len(captions_of), dtype=np.int64)
    for i, own in enumerate(captions_of):
        best = by_image[i, own].max()
        ranks[i] = (by_image[i] > best).sum()
    return ranks


def embed_images(model: AlignmentModel, pixels: torch.Tensor, batch_size: int = 128, *, with_class_probs: bool = False):
    """uint8 (N, 3, S, S) --> global (N, d) float32 and regions (N, R, d) float16, as the indexer stores them,
    and with `with_class_probs` the classifier's posteriors (N, C) float32 (None without a classifier)."""
    device = model.device
    globals_, regions, probs = [], [], []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch_size):
            out = model.image.encode(pixels[start : start + batch_size].to(device))  # as the indexer runs it
            globals_.append(out.global_.float().cpu())
            regions.append(out.regions.to(torch.float16).cpu())
            if out.class_probs is not None:
                probs.append(out.class_probs.float().cpu())
    if with_class_probs:
        return torch.cat(globals_).numpy(), torch.cat(regions), torch.cat(probs) if probs else None
    return torch.cat(globals_).numpy(), torch.cat(regions)


def zero_shot_matrix(model: AlignmentModel, class_probs: torch.Tensor, captions: list[str]) -> np.ndarray:
    """(Nc, Ni) zero-shot scores (model/zero_shot.py) from each image's top classes, as the index
    stores them (TOP_LABELS best non-background classes, probabilities to 4 decimals)."""
    names, matches = class_matches(model, sentence_vectors(model, captions))  # (Nc, C') over sorted names
    labels = model.config.image_labels
    assert labels is not None  # a model with a classifier: class_probs are its posteriors
    row = {name: i for i, name in enumerate(names)}
    label_rows = torch.tensor([row[name] for name in labels])  # classifier class --> names row
    probs = class_probs.clone()
    probs[:, : first_real_class(labels)] = 0  # "background" is never stored
    top, index = probs.topk(TOP_LABELS, dim=1)  # (Ni, TOP_LABELS)
    sparse = torch.zeros_like(probs).scatter_(1, index, torch.round(top * 1e4) / 1e4)  # (Ni, C)
    per_class = torch.from_numpy(matches)[:, label_rows]  # (Nc, C): each classifier class's match
    return (per_class @ sparse.T).numpy()  # (Nc, C) x (C, Ni) --> (Nc, Ni)


def embed_captions(model: AlignmentModel, captions: list[str], batch_size: int = 256):
    """captions --> global (Nc, d) float32, tokens (Nc, T, d) float32, mask (Nc, T) bool."""
    batch, _ = model.text.tokenize(captions, model.device)
    globals_, tokens = [], []
    with torch.inference_mode():
        for start in range(0, len(captions), batch_size):
            part = {k: v[start : start + batch_size] for k, v in batch.items()}
            tok, glob = model.text(part["input_ids"], part["attention_mask"])
            globals_.append(glob.float().cpu())
            tokens.append(tok.float().cpu())
    return torch.cat(globals_).numpy(), torch.cat(tokens), batch["attention_mask"].bool().cpu()


def _scores(model: AlignmentModel, tokens, mask, regions) -> np.ndarray:
    device = model.device
    with torch.inference_mode():
        return model.scorer(tokens.to(device), mask.to(device), regions.to(device, torch.float32)).float().cpu().numpy()


def t2i_candidate_scores(model, sim, tokens, mask, regions, depth: int, pairs_per_call: int = 2048):
    """The scorer's logits for each caption's top-`depth` first-stage images.

    sim (Nc, Ni), tokens (Nc, T, d), mask (Nc, T), regions (Ni, R, d) -->
    candidates (Nc, depth) image indices, best first, and scores (Nc, depth) float32.
    Fusing them with a weight is then cheap (fused_t2i_ranks), so that many fusion
    weights can be tried on one scoring pass.
    """
    depth = min(depth, sim.shape[1])
    top = np.argsort(-sim, axis=1, kind="stable")[:, :depth]  # (Nc, depth)
    scores = np.empty(top.shape, dtype=np.float32)
    queries_per_call = max(1, pairs_per_call // depth)
    for start in range(0, len(sim), queries_per_call):
        rows = np.arange(start, min(start + queries_per_call, len(sim)))
        q = len(rows)
        t = tokens[rows].unsqueeze(1).expand(-1, depth, -1, -1).reshape(q * depth, *tokens.shape[1:])  # (q*depth, T, d)
        m = mask[rows].unsqueeze(1).expand(-1, depth, -1).reshape(q * depth, -1)  # (q*depth, T)
        r = regions[torch.from_numpy(top[rows].reshape(-1))]  # (q*depth, R, d)
        scores[rows] = _scores(model, t, m, r).reshape(q, depth)
    return top, scores


def fused_t2i_ranks(sim, image_of, top, scores, fusion_weight: float) -> np.ndarray:
    """Ranks after re-ordering each caption's candidates by scores + fusion_weight * sim;
    a caption whose image is not among its candidates keeps its first-stage rank."""
    ranks = t2i_ranks(sim, image_of)
    fused = scores + fusion_weight * np.take_along_axis(sim, top, 1)  # (Nc, depth)
    for row in range(len(sim)):
        rank = _rank_in_list(fused[row], top[row] == image_of[row])
        if rank is not None:
            ranks[row] = rank
    return ranks


def _rank_in_list(fused: np.ndarray, correct: np.ndarray) -> int | None:
    """Position of the first correct candidate once the list (first-stage order) is sorted
    by fused score, stably: equal scores keep the first-stage order, so a scorer that
    cannot tell candidates apart leaves the ranking as it was. None if none is correct."""
    if not correct.any():
        return None
    order = np.argsort(-fused, kind="stable")  # (depth,)
    return int(np.argmax(correct[order]))


def rerank_t2i_ranks(model, sim, image_of, tokens, mask, regions, depth: int, pairs_per_call: int = 2048) -> np.ndarray:
    """Re-rank each caption's top-`depth` images; sim (Nc, Ni), tokens (Nc, T, d), regions (Ni, R, d)."""
    top, scores = t2i_candidate_scores(model, sim, tokens, mask, regions, depth, pairs_per_call)
    return fused_t2i_ranks(sim, image_of, top, scores, model.config.fusion_weight)


def rerank_i2t_ranks(
    model, sim, captions_of, tokens, mask, regions, depth: int, pairs_per_call: int = 2048
) -> np.ndarray:
    """Re-rank each image's top-`depth` captions."""
    by_image = sim.T  # (Ni, Nc)
    depth = min(depth, by_image.shape[1])
    ranks = i2t_ranks(sim, captions_of)
    top = np.argsort(-by_image, axis=1, kind="stable")[:, :depth]  # (Ni, depth)
    images_per_call = max(1, pairs_per_call // depth)
    for start in range(0, len(by_image), images_per_call):
        rows = np.arange(start, min(start + images_per_call, len(by_image)))
        cand = top[rows]  # (q, depth)
        q = len(rows)
        flat = torch.from_numpy(cand.reshape(-1))
        r = (
            regions[torch.from_numpy(rows)]
            .unsqueeze(1)
            .expand(-1, depth, -1, -1)
            .reshape(q * depth, *regions.shape[1:])
        )
        fused = _scores(model, tokens[flat], mask[flat], r).reshape(
            q, depth
        ) + model.config.fusion_weight * np.take_along_axis(by_image[rows], cand, 1)
        for j, row in enumerate(rows):
            rank = _rank_in_list(fused[j], np.isin(cand[j], captions_of[row]))
            if rank is not None:
                ranks[row] = rank
    return ranks


def search_pools(
    model: AlignmentModel,
    image_global: np.ndarray,
    regions: torch.Tensor,
    class_probs: torch.Tensor | None,
    captions: list[str],
    candidates: int = DEFAULT_CANDIDATES,
    rerank: bool = True,
) -> Iterator[tuple[int, np.ndarray, PoolScores]]:
    """Each caption's candidates scored as Index.search scores them, over a gallery of images:
    the top `candidates` by cosine (what FAISS returns), scored by search's own score_pool (the
    zero-shot label score from the labels an index would store, the hubness correction, the
    re-ranker unless `rerank` is off). Yields (caption index, every image in FAISS order (Ni,),
    the scores of its first `candidates`).

    image_global (Ni, d), regions (Ni, R, d) float16, class_probs (Ni, C) or None."""
    from imgsearch.search.query_model import TorchQueryModel, query_from_batch
    from imgsearch.search.searcher import score_pool

    labels = None
    if model.config.zero_shot_weight and model.config.image_labels and class_probs is not None:
        labels = top_labels(class_probs, model.config.image_labels)  # per image, as the store keeps them
    region_array = regions.numpy()  # (Ni, R, d) float16, as the store returns them
    query_model = TorchQueryModel(model)
    with torch.inference_mode():
        for start in range(0, len(captions), 256):
            queries = model.text.encode(captions[start : start + 256])
            cosines = image_global @ queries.global_.float().cpu().numpy().T  # (Ni, b)
            for row in range(len(queries.global_)):
                order = np.argsort(-cosines[:, row], kind="stable")  # FAISS order
                pool = order[:candidates]
                scored = score_pool(
                    query_model,
                    query_from_batch(queries, row),
                    cosines[pool, row],
                    region_array[pool] if rerank else None,
                    None if labels is None else [labels[i] for i in pool],
                    "float32",
                    image_global[pool],
                )
                yield start + row, order, scored


def search_t2i_ranks(
    model: AlignmentModel,
    image_global: np.ndarray,
    regions: torch.Tensor,
    class_probs: torch.Tensor | None,
    captions: list[str],
    image_of: np.ndarray,
    candidates: int = DEFAULT_CANDIDATES,
    rerank: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Each caption's image ranked as Index.search ranks it (search_pools' scores, ordered by
    search's final_order). Returns the 0-based ranks of each caption's image (Nc,) with
    re-ranking off (the first stage) and on (equal to the first without `rerank`)."""
    from imgsearch.search.searcher import final_order

    first_ranks = np.empty(len(captions), np.int64)
    final_ranks = np.empty(len(captions), np.int64)
    for n, order, scored in search_pools(model, image_global, regions, class_probs, captions, candidates, rerank):
        correct = order == image_of[n]  # (Ni,) in FAISS order
        first_ranks[n] = int(np.argmax(correct[final_order(scored.first_stage, len(order))]))
        final_ranks[n] = int(np.argmax(correct[final_order(scored.final, len(order))]))
    return first_ranks, final_ranks


def evaluate(
    model: AlignmentModel,
    pixels: torch.Tensor,
    bank: CaptionBank,
    depth: int = 20,
    rerank: bool = True,
    candidates: int = DEFAULT_CANDIDATES,
) -> dict:
    """Recall@1/5/10 both directions, first stage and re-ranked (None with rerank=False), plus mean recall.

    With `rerank`, text->image is ranked exactly as Index.search ranks (search_t2i_ranks,
    `candidates` deep); image->text, which search does not do, in matrix form (the
    re-ranker reorders each image's top-`depth` captions). Without it (the trainer's
    per-epoch validation), both directions in matrix form, hubness correction left out."""
    model.eval()
    image_global, regions, class_probs = embed_images(model, pixels, with_class_probs=True)
    text_global, tokens, mask = embed_captions(model, bank.captions)
    sim = text_global @ image_global.T  # (Nc, Ni)
    if model.config.zero_shot_weight and model.config.image_labels and class_probs is not None:
        # the first stage as search() scores it: cosine + weight * zero-shot ImageNet score
        sim = sim + np.float32(model.config.zero_shot_weight) * zero_shot_matrix(model, class_probs, bank.captions)
    describing = captions_describing(bank.captions, bank.captions_of)  # per image, for image->text
    first: dict[str, Any] = {
        "t2i": recall_at_k(t2i_ranks(sim, bank.image_of)),
        "i2t": recall_at_k(i2t_ranks(sim, describing)),
    }
    reranked: dict[str, Any] | None = None
    if rerank:
        first_ranks, final_ranks = search_t2i_ranks(
            model, image_global, regions, class_probs, bank.captions, bank.image_of, candidates
        )
        first["t2i"] = recall_at_k(first_ranks)
        reranked = {
            "t2i": recall_at_k(final_ranks),
            "i2t": recall_at_k(rerank_i2t_ranks(model, sim, describing, tokens, mask, regions, depth)),
        }
    for block in (first, reranked):
        if block is not None:  # reranked: with rerank
            block["mean_recall"] = float(np.mean([v for d in ("t2i", "i2t") for v in block[d].values()]))
    return {
        "images": len(pixels),
        "captions": len(bank.captions),
        "rerank_depth": depth,
        "candidates": candidates if rerank else None,
        "first_stage": first,
        "reranked": reranked,
    }


def format_table(result: dict) -> str:
    lines = [
        f"{result['images']} images, {result['captions']} captions, re-rank depth {result['rerank_depth']}",
        f"{'':12s} {'t2i R@1':>8s} {'R@5':>6s} {'R@10':>6s}   {'i2t R@1':>8s} {'R@5':>6s} {'R@10':>6s}   {'mean':>6s}",
    ]
    for name in ("first_stage", "reranked"):
        block = result[name]
        if block is None:
            continue
        t, i = block["t2i"], block["i2t"]
        lines.append(
            f"{name:12s} {t['R@1']:8.1f} {t['R@5']:6.1f} {t['R@10']:6.1f}   "
            f"{i['R@1']:8.1f} {i['R@5']:6.1f} {i['R@10']:6.1f}   {block['mean_recall']:6.1f}"
        )
    return "\n".join(lines)
