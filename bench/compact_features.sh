#!/usr/bin/env bash
# Re-ranked recall on the Flickr8k dev split with region features in float32, float16
# (stored) and int8, and with a bfloat16 scorer; appends a section to bench/RESULTS.md.
#
#   bench/compact_features.sh [MODEL_DIR] [DATA_DIR] [-- extra options]
#
# MODEL_DIR defaults to /tmp/flickr-model-v1; embeddings are cached in bench/out/. About 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-/tmp/flickr-model-v1}
data=${2:-../shared/data/flickr8k}
shift $(( $# < 2 ? $# : 2 ))
[ "${1:-}" = "--" ] && shift
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
mkdir -p bench/out
cache="bench/out/flickr8k-embeddings-$(basename "$model").npz"
[ -f "$cache" ] || python bench/flickr8k_embeddings.py "$model" "$data" "$cache"
python bench/compact_features.py "$cache" "$model" "$@"
