#!/usr/bin/env bash
# Indexing throughput (JPEG files --> stored vectors) next to forward-only throughput, in one
# run, for the packaged photo and fast models (EfficientNet-Lite0 and MobileNetV2 at 224px), VGG16 at
# 224px and the small presets; appends a section to bench/RESULTS.md.
#
#   bench/benchmarks/indexing.sh [IMAGES_DIR] [-- extra bench/benchmarks/indexing.py options]
#
# IMAGES_DIR defaults to ../shared/data/flickr8k/images (224x224 JPEGs). About 5 minutes
# on a 2-core CPU with the default sizes (64 images for VGG16, 1200 and 2400 for the small ones).
set -euo pipefail
cd "$(dirname "$0")/../.."
images=${1:-../shared/data/flickr8k/images}
shift $(( $# < 1 ? $# : 1 ))
[ "${1:-}" = "--" ] && shift
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python bench/benchmarks/indexing.py "$images" "$@"
