"""Thread counts of the numeric libraries (torch, numpy's BLAS, FAISS's OpenMP): set once per
process, never flipped per call.

A query is small work: on a busy 2-core machine two threads waiting on each other made text
encoding 500 ms instead of 10 ms (torch; numpy's OpenBLAS the same, 1-2 s instead of 30 ms)
and re-ranking 2x slower, and FAISS's OpenMP threads cost 30 ms per query
(bench/benchmarks/query.sh). So a process that answers queries (the `search` command, a
server whose requests run on threads of their own) runs each on one thread; a process that
indexes keeps all cores. The library leaves the choice to its caller: call use_threads()
once, before the work starts.
"""

from __future__ import annotations

import os
import sys

__all__ = ["QUERY_THREADS", "use_threads"]

QUERY_THREADS = 1  # per query; concurrency comes from queries running side by side

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def use_threads(count: int) -> None:
    """Let torch's intra-op pool, numpy's BLAS and FAISS's OpenMP use `count` threads in this
    process: those loaded already now (threadpoolctl, torch.set_num_threads), those loaded
    later when they start (the environment variables they read). Loads none of them."""
    if count < 1:
        raise ValueError(f"thread count must be at least 1 (got {count}).")
    from threadpoolctl import threadpool_limits

    for name in _THREAD_VARIABLES:
        os.environ[name] = str(count)
    threadpool_limits(count)  # every BLAS and OpenMP library loaded so far
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(count)
