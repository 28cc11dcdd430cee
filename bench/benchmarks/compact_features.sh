#!/usr/bin/env bash
# Re-ranked recall on the Flickr8k dev split with region features in float32, float16
# (stored) and int8, and with a bfloat16 scorer; appends a section to bench/RESULTS.md.
#
#   bench/benchmarks/compact_features.sh [MODEL_DIR] [DATA_DIR] [-- extra options]
#
# MODEL_DIR defaults to bench/out/flickr8k/model; embeddings are cached in bench/out/. About 5 minutes.
source "$(dirname "$0")/flickr8k_cache.sh"
python bench/benchmarks/compact_features.py "$cache" "$model" "$@"
