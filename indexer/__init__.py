"""The write side of imgsearch, indexing: files --> plan --> decode --> encode (model) --> store + vectors.

Import the stage modules themselves (imgsearch.indexer.pipeline, imgsearch.indexer.store, ...): this package
imports nothing, so that light modules (files, paths, lock, manifest) load without torch.
"""
