#!/usr/bin/env bash
# Query latency (text encoding + FAISS + fetch + re-rank of K=100, p50/p95/p99 by stage),
# recall@10 of the approximate index against exact search, and bytes per image, at
# 10k, 100k and 1M images; appends a section to bench/RESULTS.md.
#
#   bench/benchmarks/query.sh [MODEL_DIR] [DATA_DIR] [-- extra bench/benchmarks/query.py options]
#
# MODEL_DIR: a trained model (default bench/out/flickr8k/model); DATA_DIR: Flickr8k
# (default ../shared/data/flickr8k). The model's embeddings of Flickr8k are cached in
# bench/out/ (not committed). About 10 minutes on a 2-core CPU.
source "$(dirname "$0")/flickr8k_cache.sh"
python bench/benchmarks/query.py "$cache" "$model" "$@"
