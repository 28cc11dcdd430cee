"""Search settings shared by the library and the command line (no heavy imports)."""

DEFAULT_CANDIDATES = 100  # first-stage depth K that the re-ranker sees
