"""The write side of imgsearch: files --> decoded images --> backbone features --> store.

Import the stage modules themselves (imgsearch.indexer.pipeline, imgsearch.indexer.store, ...): this package
imports nothing, so that light modules (errors, model_files) load without torch.
"""
