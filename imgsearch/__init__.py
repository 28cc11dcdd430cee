"""imgsearch: find images in photo folders by describing them in words."""

from imgsearch.index import Index
from indexer.errors import ImgsearchError
from indexer.pipeline import AddSummary
from search.alignment import AlignmentConfig, AlignmentModel
from search.searcher import SearchResult

__all__ = ["Index", "AddSummary", "SearchResult", "AlignmentModel", "AlignmentConfig", "ImgsearchError"]
