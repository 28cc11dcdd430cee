"""The read side of imgsearch: text --> BERT --> FAISS candidates --> cross-attention re-rank.

Import the stage modules themselves (search.searcher, search.alignment, ...): this package
imports nothing, so that light modules (defaults) load without torch.
"""
