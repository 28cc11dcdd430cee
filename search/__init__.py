"""The read side of imgsearch, search: query --> text encoder (model) --> FAISS candidates -->
re-rank (model scorer) --> results. The Searcher (session.py) runs it over one index's snapshot;
imgsearch.index.Index hands it arguments checked by arguments.py.

Import the stage modules themselves (imgsearch.search.searcher, imgsearch.search.rerank, ...): this package
imports nothing, so that light modules (defaults) load without torch.
"""
