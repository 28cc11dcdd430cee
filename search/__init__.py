"""The read side of imgsearch: text --> BERT --> FAISS candidates --> cross-attention re-rank."""

from search.alignment import AlignmentConfig, AlignmentModel
from search.scorer import CrossAttentionScorer, ScorerConfig
from search.searcher import SearchResult, search
from search.text_encoder import TextEncoder, TextEncoderConfig

__all__ = [
    "AlignmentConfig", "AlignmentModel", "CrossAttentionScorer", "ScorerConfig",
    "SearchResult", "search", "TextEncoder", "TextEncoderConfig",
]
