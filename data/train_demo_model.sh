#!/usr/bin/env bash
# How data/demo-model was made: 3,000 synthetic scenes (1,000 swap triples) at
# 64px, backbone trained from scratch, packaged MiniLM text encoder (frozen).
# About 10 minutes on a 2-core CPU.   Usage: data/train_demo_model.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-data/demo-model}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python data/scenes.py "$work/scenes" --count 3000 --seed 1 --size 64 --swaps
imgsearch train "$work/scenes/captions.tsv" --preset scenes --epochs 20 --scorer-epochs 30 --scorer-lr 5e-4 \
  --batch-size 96 --lr 2e-3 --seed 0 --out "$work/model"
mkdir -p "$out"
cp "$work/model/config.json" "$work/model/model.safetensors" "$work/model/training.json" "$out/"
