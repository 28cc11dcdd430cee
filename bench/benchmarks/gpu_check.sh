#!/usr/bin/env bash
# The GPU benchmarks in one call (about 2 minutes on an H200, well under 8): VGG16 at 224px
# (random init, timing only) forward-only and end to end from synthetic JPEGs, GPU JPEG
# decoding, and re-ranking K=100 on the device. Prints a short table (also OUT/gpu_check.md
# when $OUT is set). On a machine without faiss-cpu or sqlite-utils, install them first.
#
#   bench/benchmarks/gpu_check.sh [-- bench/benchmarks/gpu_check.py options]     e.g. -- --images 256 --device cpu
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "${1:-}" = "--" ] && shift
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && python=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
# Decode workers hand batches over through /dev/shm (about 40 MB per 256-image batch, 4 batches
# ahead per worker); a container's 64 MB default makes workers die with a bus error.
df -h /dev/shm 2>/dev/null | tail -1 || true
timeout 470 "$python" bench/benchmarks/gpu_check.py "$@"
