"""The write side of imgsearch: files --> decoded images --> backbone features --> store.

Import the stage modules themselves (indexer.pipeline, indexer.store, ...): this package
imports nothing, so that light modules (errors, model_files) load without torch.
"""
