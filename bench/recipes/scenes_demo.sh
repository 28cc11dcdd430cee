#!/usr/bin/env bash
# The synthetic-scenes demo (the main job before the photo model): generate held-out
# synthetic scenes, index them with data/demo-model, and search for a few of them by
# their captions. Output in bench/out/scenes_demo/.   Usage: bench/recipes/scenes_demo.sh
# (with the project's .venv active, or PATH=.venv/bin:$PATH bench/recipes/scenes_demo.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=bench/out/scenes_demo
rm -rf "$out"
python data/scenes.py "$out/scenes" --count 150 --seed 2027 --size 64 --swaps
imgsearch index "$out/scenes/images" --index "$out/index" --model data/demo-model --quiet
imgsearch info --index "$out/index"
# Queries: captions of scenes 0, 1 and 2 (a scene, its colour swap and its position
# swap: the same words, three different images) and of scenes 30 and 61.
for image in scene_00000 scene_00001 scene_00002 scene_00030 scene_00061; do
  query=$(awk -F'\t' -v img="images/$image.png" '$1 == img { print $2; exit }' "$out/scenes/captions.tsv")
  echo
  echo "query: \"$query\"   (it describes $image.png)"
  imgsearch search "$query" --index "$out/index" -k 3
done
