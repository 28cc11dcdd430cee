#!/usr/bin/env bash
# Held-out synthetic scenes: how much re-ranking fixes attribute-binding and
# relation swaps. 600 scenes in swap triples (a scene, its colour swap, its
# position swap), a seed the demo model never saw; prints the eval table and
# appends it to bench/RESULTS.md.   Usage: bench/benchmarks/scenes.sh [MODEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-data/demo-model}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python data/scenes.py "$work/scenes" --count 600 --seed 2 --size 64 --swaps
commit=$(PYTHONPATH=. python -c "from bench.benchmarks.machine import commit; print(commit())")
table=$(imgsearch eval "$work/scenes/captions.tsv" --model "$model" --rerank-depth 20)
echo "$table"
{
  echo
  echo "## Synthetic scenes, held out (seed 2, 600 images in swap triples), $(date -u +%F) (bench/benchmarks/scenes.sh)"
  echo
  echo "Model: $model. Machine: $(uname -m), $(nproc) cores, CPU. Commit $commit."
  echo
  echo '```'
  echo "$table"
  echo '```'
} >> bench/RESULTS.md
