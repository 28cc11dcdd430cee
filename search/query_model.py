"""What search asks of a model for a text query, from either runtime.

A text search needs five things of the model: its config, the query's embedding, the label
score of its candidates, their hub scores and the re-ranker's logits. Two runtimes give them:

- model/numpy_query.py's NumpyQueryModel: the query side alone, in numpy, without torch or
  transformers (a command line search starts in a fraction of the time; issue 22);
- TorchQueryModel below: the full AlignmentModel (torch), on any device and precision; what
  image queries, explanations and indexing load anyway.

Search (search/searcher.py) and evaluation (training/evaluate.py) rank through this interface
only, so both runtimes rank with the same code; tests/test_numpy_query.py holds the numpy
runtime's numbers to torch's, and tests/test_query_runtimes.py the search results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np

from imgsearch.model.config import AlignmentConfig
from imgsearch.model.numpy_query import QueryEmbedding

if TYPE_CHECKING:
    from imgsearch.model.alignment import AlignmentModel
    from imgsearch.model.text_encoder import TextEmbedding

__all__ = ["QueryModel", "QueryEmbedding", "TorchQueryModel", "query_from_batch"]


class QueryModel(Protocol):
    config: AlignmentConfig
    runtime: str  # "numpy" or "torch"

    def encode_query(self, text: str) -> QueryEmbedding: ...

    def readable_token_count(self, text: str) -> int: ...

    def label_scores(self, sentence: np.ndarray, labels: list[list[tuple[str, float]]]) -> np.ndarray: ...

    def hub_scores(self, image_vectors: np.ndarray) -> np.ndarray: ...

    def rerank_logits(self, query: QueryEmbedding, regions: np.ndarray, precision: str = "float32") -> np.ndarray: ...


class TorchQueryModel:
    """QueryModel over a loaded AlignmentModel (any device; bfloat16 re-ranking where asked)."""

    runtime = "torch"

    def __init__(self, model: AlignmentModel) -> None:
        self.model = model
        self.config = model.config

    def encode_query(self, text: str) -> QueryEmbedding:
        import torch

        with torch.inference_mode():
            return query_from_batch(self.model.text.encode([text]), 0)

    def readable_token_count(self, text: str) -> int:
        return len(self.model.text.tokenizer(text, add_special_tokens=False)["input_ids"])

    def label_scores(self, sentence: np.ndarray, labels: list[list[tuple[str, float]]]) -> np.ndarray:
        from imgsearch.model.zero_shot import zero_shot_scores

        return zero_shot_scores(self.model, sentence, labels)  # the class table is kept per AlignmentModel

    def hub_scores(self, image_vectors: np.ndarray) -> np.ndarray:
        import torch

        return self.model.hubness.scores(torch.from_numpy(np.asarray(image_vectors, np.float32))).numpy()

    def rerank_logits(self, query: QueryEmbedding, regions: np.ndarray, precision: str = "float32") -> np.ndarray:
        import torch

        from imgsearch.model.fast_scorer import default_compute_dtype
        from imgsearch.search.rerank import rerank_scores

        device = self.model.device
        dtype = (
            default_compute_dtype(device)
            if precision == "auto"
            else torch.bfloat16
            if precision == "bfloat16"
            else torch.float32
        )
        tokens = torch.from_numpy(query.tokens).to(device)
        mask = torch.from_numpy(query.mask).to(device)
        return rerank_scores(
            self.model.scorer, tokens, mask, regions, np.zeros(len(regions), np.float32), compute_dtype=dtype
        )


def query_from_batch(batch: TextEmbedding, row: int) -> QueryEmbedding:
    """Row `row` of a batch of encoded texts (TextEncoder.encode), as one query: its tokens
    without the batch's padding, in numpy float32."""
    length = int(batch.mask[row].sum())
    return QueryEmbedding(
        tokens=batch.tokens[row, :length].float().cpu().numpy(),
        mask=batch.mask[row, :length].bool().cpu().numpy(),
        global_=batch.global_[row].float().cpu().numpy(),
        sentence=None if batch.sentence is None else batch.sentence[row].float().cpu().numpy(),
        truncated=bool(batch.truncated[row]),
    )
