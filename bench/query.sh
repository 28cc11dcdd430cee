#!/usr/bin/env bash
# Query latency (text encoding + FAISS + fetch + re-rank of K=100, p50/p95/p99 by stage),
# recall@10 of the approximate index against exact search, and bytes per image, at
# 10k, 100k and 1M images; appends a section to bench/RESULTS.md.
#
#   bench/query.sh [MODEL_DIR] [DATA_DIR] [-- extra bench/query.py options]
#
# MODEL_DIR: a trained model (default bench/out/flickr8k/model); DATA_DIR: Flickr8k
# (default ../shared/data/flickr8k). The model's embeddings of Flickr8k are cached in
# bench/out/ (not committed). About 10 minutes on a 2-core CPU.
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
python bench/query.py "$cache" "$model" "$@"
