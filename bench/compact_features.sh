#!/usr/bin/env bash
# Re-ranked recall on the Flickr8k dev split with region features in float32, float16
# (stored) and int8, and with a bfloat16 scorer; appends a section to bench/RESULTS.md.
#
#   bench/compact_features.sh [MODEL_DIR] [DATA_DIR] [-- extra options]
#
# MODEL_DIR defaults to bench/out/flickr8k/model; embeddings are cached in bench/out/. About 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-bench/out/flickr8k/model}
data=${2:-../shared/data/flickr8k}
shift $(( $# < 2 ? $# : 2 ))
[ "${1:-}" = "--" ] && shift
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
mkdir -p bench/out
if [ ! -f "$model/model.safetensors" ]; then
  echo "Error: no trained model in $model; run make bench-flickr8k first, or pass a model directory." >&2
  exit 1
fi
# keyed by the weights, so a retrained model never reuses another's embeddings
cache="bench/out/flickr8k-embeddings-$(sha256sum "$model/model.safetensors" | cut -c1-16).npz"
[ -f "$cache" ] || python bench/flickr8k_embeddings.py "$model" "$data" "$cache"
python bench/compact_features.py "$cache" "$model" "$@"
