#!/usr/bin/env bash
# Flickr8k benchmark: train on the train split (backbone from scratch, packaged
# MiniLM text encoder, frozen) on this machine's CPU, evaluate on the dev split,
# and append the results to bench/RESULTS.md.
#
#   bench/benchmarks/flickr8k.sh [DATA_DIR] [MINUTES]
#
# DATA_DIR defaults to ../shared/data/flickr8k; MINUTES (first-stage time budget,
# default 35; loading, the re-ranker stage with its per-epoch validation and the
# evaluation took 44 more on this machine) keep the whole run inside 90 minutes. Nothing is copied from the
# data directory; the model and logs go to bench/out/ (not committed).
# --local-weight 1.0: on this machine 2.0 gave a weaker alignment term (bench/RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-../shared/data/flickr8k}
minutes=${2:-35}
out=bench/out/flickr8k
if [ ! -f "$data/captions.tsv" ]; then
  echo "Error: $data/captions.tsv not found; pass the Flickr8k folder as the first argument." >&2
  exit 1
fi
rm -rf "$out"
mkdir -p "$out"
start=$(date +%s)
imgsearch train "$data/captions.tsv" --images "$data/images" --only "$data/train.txt" \
  --preset small --epochs 200 --time-limit "$minutes" --local-weight 1.0 --scorer-epochs 3 --val-fraction 0.15 --batch-size 128 --lr 2e-3 --workers 1 \
  --out "$out/model" > "$out/train.json"
trained=$(date +%s)
imgsearch eval "$data/captions.tsv" --images "$data/images" --only "$data/dev.txt" \
  --model "$out/model" --rerank-depth 20 --json > "$out/eval.json"
done_at=$(date +%s)
python -c "import json, sys; from imgsearch.training.evaluate import format_table; print(format_table(json.load(open(sys.argv[1]))))" "$out/eval.json"
python bench/benchmarks/report_flickr8k.py "$out" $((trained - start)) $((done_at - trained)) "$data" >> bench/RESULTS.md
echo "appended to bench/RESULTS.md" >&2
