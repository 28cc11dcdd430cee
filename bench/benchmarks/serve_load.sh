#!/usr/bin/env bash
# The service under load (issue 14): 8 clients search a 100,000-image index for 60 s through
# `imgsearch serve` while `imgsearch index` adds photos to it; then every image the writer
# committed must be searchable. Appends a section to bench/RESULTS.md. About 6 minutes on a
# 2-core CPU (most of it building the index), and 2.6 GB of temporary disk.
#
#   bench/benchmarks/serve_load.sh [DATA_DIR] [-- extra bench/benchmarks/serve_load.py options]
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-../shared/data/flickr8k}
shift $(( $# < 1 ? $# : 1 ))
[ "${1:-}" = "--" ] && shift
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
out=$(mktemp)
python bench/benchmarks/serve_load.py "$data" "$@" | tee "$out"
cat "$out" >> bench/RESULTS.md
rm -f "$out"
