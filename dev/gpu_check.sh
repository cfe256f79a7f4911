#!/usr/bin/env bash
# The prepared GPU check: build the op for the visible GPU, run its CUDA tests,
# benchmark the op and the model, write every figure as docs/benchmarks.md rows into
# <out>/gpu_results.md. At most 8 minutes on one H200; needs no detectron2 and no install
# (the package is used from this checkout). See dev/gpu_check.py for the steps.
#
#   bash dev/gpu_check.sh [--dry-run] [--out DIR] [--baseline-ext DIR] [--d2-source DIR]
#                           [--steps STEP ...] [--time-limit SECONDS]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO/projects${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" "$REPO/dev/gpu_check.py" "$@"
