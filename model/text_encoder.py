"""Text encoder (model core; search's text encoder stage, training's caption states):
text --> tokenizer --> BERT --> projection into the shared space."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as transformers_logging

from imgsearch.ground.errors import ModelConfigError, WeightsMissing
from imgsearch.model.config import (  # defined with the other configs; resolve_name serves both runtimes
    PACKAGED_MINILM,
    TextEncoderConfig,
    resolve_name,
)
from imgsearch.model.projection import ProjectionHead, l2_normalize

__all__ = ["TextEncoderConfig", "TextEncoder", "TextEmbedding", "PACKAGED_MINILM", "load_bert", "resolve_name"]

log = logging.getLogger(__name__)


@dataclass
class TextEmbedding:
    tokens: torch.Tensor  # (B, T, d): projected token states for the re-ranker
    mask: torch.Tensor  # (B, T) bool, True on real tokens
    global_: torch.Tensor  # (B, d): L2-normalised query vector for the first stage
    truncated: list[bool]  # per text: was it cut to max_length?
    # (B, h): the frozen BERT's mean-pooled states, L2-normalised, before any head: the
    # sentence vector the zero-shot label score compares with class names (model/zero_shot.py)
    sentence: torch.Tensor | None = None


def load_bert(name_or_path: str):
    """(tokenizer, encoder) from a transformers name or local directory, or a clear error."""
    resolved = resolve_name(name_or_path)
    path = Path(resolved).expanduser()
    local = path.is_dir()
    if local:
        resolved = str(path)  # transformers does not expand "~" itself
    elif path.is_absolute() or resolved.startswith((".", "~")):
        raise WeightsMissing(
            f"text encoder directory {name_or_path!r} does not exist. Give the directory that holds "
            f"the model (config.json, weights and tokenizer files), or use {PACKAGED_MINILM!r}."
        )
    try:
        with _quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(resolved, local_files_only=local)
            encoder = AutoModel.from_pretrained(resolved, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise WeightsMissing(
            f"text encoder {name_or_path!r} could not be loaded ({str(exc).splitlines()[0]}). "
            "Put the model in a local directory (config.json, weights and tokenizer files, e.g. "
            "from `huggingface-cli download NAME --local-dir DIR` on a machine with network access) "
            "and give that directory, or set HF_HOME to a cache that holds it. "
            f"The packaged offline encoder is {PACKAGED_MINILM!r}."
        ) from exc
    if not hasattr(encoder.config, "hidden_size"):
        raise ModelConfigError(f"{name_or_path!r} is not a BERT-family encoder (no hidden_size).")
    return tokenizer, encoder


class TextEncoder(nn.Module):
    def __init__(self, config: TextEncoderConfig, tokenizer, bert: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.bert = bert
        bert_config: Any = bert.config  # a transformers config; load_bert checked that it has hidden_size
        self.hidden_size: int = bert_config.hidden_size
        hidden = self.hidden_size
        self.token_head = ProjectionHead(hidden, embed_dim)
        self.global_head = ProjectionHead(hidden, embed_dim)
        # One score per token state (pool "attention"); zero-initialised, so training starts from the mean.
        self.pool_score = nn.Linear(hidden, 1) if config.pool == "attention" else None
        if self.pool_score is not None:
            nn.init.zeros_(self.pool_score.weight)
            nn.init.zeros_(self.pool_score.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, h)
        return self.project(states, attention_mask)

    def project(self, states: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT states (B, T, h) --> token features (B, T, d) and the query vector (B, d)."""
        if self.pool_score is None:
            pooled = mean_pool(states, attention_mask)  # (B, T, h) --> (B, h)
        else:
            scores = self.pool_score(states).squeeze(-1)  # (B, T, h) --> (B, T)
            weights = scores.masked_fill(~attention_mask.bool(), float("-inf")).softmax(dim=1)  # (B, T)
            pooled = (weights.unsqueeze(-1) * states).sum(1)  # (B, T, 1) * (B, T, h) --> (B, h)
        return self.token_head(states), l2_normalize(self.global_head(pooled))  # (B, T, d), (B, d)

    def tokenize(self, texts: list[str], device: torch.device | None = None) -> tuple[dict, list[bool]]:
        full = self.tokenizer(texts, truncation=False)["input_ids"]
        truncated = [len(ids) > self.config.max_length for ids in full]
        batch = self.tokenizer(
            texts, truncation=True, max_length=self.config.max_length, padding=True, return_tensors="pt"
        )
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return batch, truncated

    def sentence_vectors(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Mean-pooled, L2-normalised BERT states of `texts` (the zero-shot label score's): (N, h) float32."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch, _ = self.tokenize(texts[start : start + batch_size], next(self.parameters()).device)
                states = self.bert(**batch).last_hidden_state  # (b, T, h)
                out.append(F.normalize(mean_pool(states, batch["attention_mask"]), dim=-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.hidden_size), np.float32)

    def bert_weight_bytes(self) -> Iterator[tuple[str, bytes]]:
        """BERT's weights by name, sorted, as bytes (cache keys: model/zero_shot.py)."""
        for key, tensor in sorted(self.bert.state_dict().items()):
            yield key, tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()

    def encode(self, texts: list[str]) -> TextEmbedding:
        device = next(self.parameters()).device
        batch, truncated = self.tokenize(texts, device)
        states = self.bert(**batch).last_hidden_state  # (B, T, h)
        tokens, global_ = self.project(states, batch["attention_mask"])
        sentence = F.normalize(mean_pool(states, batch["attention_mask"]), dim=-1)  # (B, h)
        return TextEmbedding(tokens, batch["attention_mask"].bool(), global_, truncated, sentence)


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """BERT states (B, T, h) --> their mean over the real tokens (B, h)."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
    return (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bar from transformers while a model loads, unless logging
    asks for INFO (the command line's -v): opening an index should print nothing."""
    if log.isEnabledFor(logging.INFO) or not transformers_logging.is_progress_bar_enabled():
        yield
        return
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.enable_progress_bar()
