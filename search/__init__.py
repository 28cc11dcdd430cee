"""The read side of imgsearch, search: query --> text encoder (model) --> FAISS candidates -->
re-rank (model scorer) --> results.

Import the stage modules themselves (imgsearch.search.searcher, imgsearch.search.rerank, ...): this package
imports nothing, so that light modules (defaults) load without torch.
"""
