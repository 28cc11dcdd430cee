"""The read side of imgsearch: text --> BERT --> FAISS candidates --> cross-attention re-rank.

Import the stage modules themselves (imgsearch.search.searcher, imgsearch.model.alignment, ...): this package
imports nothing, so that light modules (defaults) load without torch.
"""
