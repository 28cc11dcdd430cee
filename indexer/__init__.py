"""The write side of imgsearch, indexing: files --> plan --> decode (images) --> encode (model) -->
store + vectors (storage).

Import the stage modules themselves (imgsearch.indexer.pipeline, imgsearch.indexer.run, ...): this package
imports nothing, so that light modules (files) load without torch.
"""
