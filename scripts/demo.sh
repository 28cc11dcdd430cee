#!/usr/bin/env bash
# The main job, offline: index the sample photos in data/photos with the default
# model (the photo model packaged with imgsearch) and find some of them by
# description. Everything goes to demo-out/, never to the per-user index.
# The synthetic-scenes demo is bench/recipes/scenes_demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
unset IMGSEARCH_MODEL IMGSEARCH_INDEX  # the demo shows the defaults, whatever the shell has set
out=demo-out
rm -rf "$out"
imgsearch index data/photos --index "$out/index" --quiet
imgsearch info --index "$out/index"
for query in "a parrot" "a cat" "a sunflower" "a hot dog" "a dog running in the water" \
             "a couple walking in the snow" "cars on a highway" "a woman in a naval uniform"; do
  echo
  echo "query: \"$query\""
  imgsearch search "$query" --index "$out/index" -k 3
done
