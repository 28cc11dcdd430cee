#!/usr/bin/env bash
# InfoNCE against VSE++ for the first stage on Flickr8k: the same seed, preset and
# number of epochs for both, the re-ranker stage skipped; validation recall (a
# held-out 5% of train) after every epoch goes into bench/RESULTS.md.
#
#   bench/experiments/compare_losses.sh [DATA_DIR] [EPOCHS]
#
# DATA_DIR defaults to ../shared/data/flickr8k, EPOCHS to 6 (about 12 minutes per
# loss on 2 idle cores). Models and logs go to bench/out/losses/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-../shared/data/flickr8k}
epochs=${2:-6}
out=bench/out/losses
if [ ! -f "$data/captions.tsv" ]; then
  echo "Error: $data/captions.tsv not found; pass the Flickr8k folder as the first argument." >&2
  exit 1
fi
rm -rf "$out"
mkdir -p "$out"
for loss in infonce vsepp; do
  echo "training with $loss" >&2
  imgsearch train "$data/captions.tsv" --images "$data/images" --only "$data/train.txt" \
    --preset small --epochs "$epochs" --scorer-epochs 0 --batch-size 128 --lr 2e-3 --workers 1 --loss "$loss" \
    --out "$out/$loss" > "$out/$loss.json" 2> "$out/$loss.log"
done
python bench/experiments/report_losses.py "$out/infonce" "$out/vsepp" | tee -a bench/RESULTS.md
