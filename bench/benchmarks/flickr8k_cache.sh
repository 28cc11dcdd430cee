# Sourced by bench/benchmarks/query.sh and bench/benchmarks/compact_features.sh (arguments: [MODEL_DIR] [DATA_DIR]
# [-- options]). Sets $model, $data and $cache (the model's Flickr8k embeddings, computed
# once and kept in bench/out/), and leaves the extra options in "$@".
set -euo pipefail
cd "$(dirname "$0")/../.."
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
[ -f "$cache" ] || python bench/benchmarks/flickr8k_embeddings.py "$model" "$data" "$cache"
