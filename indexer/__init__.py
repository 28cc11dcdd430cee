"""The write side of imgsearch: files --> decoded images --> VGG features --> store."""

from indexer.backbone import BackboneConfig, VGGBackbone
from indexer.errors import ImgsearchError
from indexer.image_encoder import ImageEncoder
from indexer.pipeline import AddSummary, index_files
from indexer.store import Store
from indexer.vectors import VectorIndex

__all__ = ["BackboneConfig", "VGGBackbone", "ImageEncoder", "AddSummary", "index_files", "Store", "VectorIndex", "ImgsearchError"]
