"""Thread counts of torch and FAISS: set once per process, never flipped per call.

A query is small work: on a busy 2-core machine two torch threads waiting on each other
made text encoding 500 ms instead of 10 ms and re-ranking 2x slower, and FAISS's OpenMP
threads cost 30 ms per query (bench/benchmarks/query.sh). So a process that answers queries (the
`search` command, a server whose requests run on threads of their own) runs each on one
thread; a process that indexes keeps all cores. The library leaves the choice to its
caller: call use_threads() once, before the work starts.
"""

from __future__ import annotations

__all__ = ["QUERY_THREADS", "use_threads"]

QUERY_THREADS = 1  # per query; concurrency comes from queries running side by side


def use_threads(count: int) -> None:
    """Let torch's intra-op pool and FAISS's OpenMP use `count` threads in this process."""
    if count < 1:
        raise ValueError(f"thread count must be at least 1 (got {count}).")
    import faiss
    import torch

    torch.set_num_threads(count)
    faiss.omp_set_num_threads(count)
