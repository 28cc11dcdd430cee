#!/usr/bin/env bash
# How data/photo-model-fast (the packaged "fast" model; the default before EfficientNet-Lite0)
# is made, from Flickr8k and the ImageNet MobileNetV2 TFLite file.
#
#   data/train_photo_model_fast.sh [FLICKR8K_DIR] [MOBILENET_DIR] [OUT_DIR]
#
# 1. train on Flickr8k's train split with the settings below (chosen on dev: bench/RESULTS-archive.md, issue 11),
#    evaluate that model on the dev split (`imgsearch eval`) and calibrate its relevance scale there
#    (`imgsearch calibrate`); the shipped model gets these curves: it trained on dev too, so its own
#    dev scores would read higher than a new photo's, while the train-only twin's dev scores are
#    scores of photos it never saw, as a user's photos are;
# 2. train again, same settings and seed, on train + dev: the shipped model;
# 3. write OUT_DIR/training.json: data, settings, the second run's record and the dev
#    numbers of the train-only run. The backbone stays frozen (its features are computed
#    once per run); the projection heads, the re-ranker and its fusion weight are trained.
# TRAIN_ONLY=1 stops after step 1 (OUT_DIR is not written) and prints the dev numbers;
# WORK=DIR puts the runs in DIR instead of bench/out/photo-model (emptied first).
# 42 minutes wall on 2 CPU cores shared with other jobs (bench/RESULTS.md). Nothing from the data directories is copied.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/flickr8k}
mobilenet=${2:-../shared/models/mobilenet_v2_imagenet}
out=${3:-data/photo-model-fast}
work=${WORK:-bench/out/photo-model-fast}
for needed in "$data/captions.tsv" "$data/train.txt" "$data/dev.txt" \
              "$mobilenet/mobilenet_v2_1.0_224_quant.tflite" "$mobilenet/imagenet_labels.txt"; do
  [ -f "$needed" ] || { echo "Error: $needed not found (usage: $0 [FLICKR8K_DIR] [MOBILENET_DIR] [OUT_DIR])" >&2; exit 1; }
done
settings=(--preset mobilenet_v2 --backbone-weights "$mobilenet/mobilenet_v2_1.0_224_quant.tflite"
          --labels "$mobilenet/imagenet_labels.txt" --zero-shot-weight 0.3
          --epochs 8 --lr 1e-3 --batch-size 128 --local-weight 1.0 --scorer-layers 0 --scorer-epochs 0 --val-fraction 0.05
          --seed 0 --workers 1)
rm -rf "$work"
mkdir -p "$work"
start=$(date +%s)
imgsearch train "$data/captions.tsv" --images "$data/images" --only "$data/train.txt" "${settings[@]}" \
  --out "$work/train-only" > "$work/train-only.json"
imgsearch eval "$data/captions.tsv" --images "$data/images" --only "$data/dev.txt" \
  --model "$work/train-only" --json > "$work/dev-eval.json"
imgsearch calibrate "$data/captions.tsv" --images "$data/images" --only "$data/dev.txt" \
  --model "$work/train-only" --workers 1 --report "$work/calibration-report.md" > /dev/null
if [ "${TRAIN_ONLY:-0}" = 1 ]; then
  cat "$work/dev-eval.json"
  echo "train-only run and its dev numbers in $work ($(( $(date +%s) - start )) s)" >&2
  exit 0
fi
cat "$data/train.txt" "$data/dev.txt" > "$work/train+dev.txt"
imgsearch train "$data/captions.tsv" --images "$data/images" --only "$work/train+dev.txt" "${settings[@]}" \
  --out "$work/train+dev" > "$work/train+dev.json"
mkdir -p "$out"
cp "$work/train+dev/config.json" "$work/train+dev/model.safetensors" "$work/train-only/calibration.json" "$out/"
python - "$work" "$out" "$data" "$(( $(date +%s) - start ))" "${settings[@]}" <<'PY'
import json, sys
from pathlib import Path
work, out, data, seconds, settings = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5:]
record = {
    "data": {"captions": "Flickr8k captions.tsv", "train": "train.txt + dev.txt (7,000 images; 6,650 trained, 350 held out choose the fusion weight)",
             "dev_numbers_from": "the same settings trained on train.txt alone (5,700 images; 300 held out), evaluated on dev.txt with imgsearch eval"},
    "backbone": "MobileNetV2 1.0 224px ImageNet, converted from mobilenet_v2_1.0_224_quant.tflite (google-coral/test_data), frozen",
    "settings": " ".join(settings[i] if "/" not in settings[i] else Path(settings[i]).name for i in range(len(settings))),
    "dev_eval_of_train_only_run": json.loads((work / "dev-eval.json").read_text()),
    "train_only_run": json.loads((work / "train-only" / "training.json").read_text()),
    "shipped_run": json.loads((work / "train+dev" / "training.json").read_text()),
    "wall_seconds_both_runs": seconds,
}
(out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
PY
echo "wrote $out (config.json, model.safetensors, calibration.json, training.json) in $(( $(date +%s) - start )) s" >&2
