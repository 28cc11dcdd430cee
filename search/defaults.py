"""Search settings shared by the library and the command line (no heavy imports)."""

from typing import Literal

DEFAULT_CANDIDATES = 100  # first-stage depth K that the re-ranker sees

# The re-ranker's arithmetic: float32 (the reference scores), bfloat16, or auto (bfloat16 where
# the hardware runs it natively; model/fast_scorer.py default_compute_dtype).
RerankPrecision = Literal["float32", "bfloat16", "auto"]
